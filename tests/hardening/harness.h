// Shared pieces of the hardening tests: an in-process marlin-server on an ephemeral port, raw
// stubs, upload and matmul helpers on fresh random data, health checks, and X.509 material made
// at test time with the openssl CLI (a CA, a server certificate for localhost/127.0.0.1, a client
// certificate, and a client certificate from an unrelated CA).
#ifndef MARLIN_TESTS_HARDENING_HARNESS_H_
#define MARLIN_TESTS_HARDENING_HARNESS_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/format/weight_format.h"
#include "marlin/v1/matmul_service.grpc.pb.h"
#include "server/app/server.h"
#include "tests/testing/health_probe.h"

namespace marlin::hardening {

std::string AsBytes(const void* p, size_t n);
uint32_t Crc(const std::string& data);
// `rows` x `k` FP16 values uniform in [-1, 1), as little-endian bytes.
std::string RandomRows(int64_t rows, int64_t k, std::mt19937& rng);

// A dense FP16 weight (K x N, KN layout) and the CPU reference of what the server computes.
struct TestWeight {
  WeightShape shape;
  std::string data;  // the upload bytes
  std::shared_ptr<CpuGemm> gemm;
  std::string Reference(const std::string& x, int64_t rows) const;
};
TestWeight RandomWeight(const WeightShape& shape, std::mt19937& rng);

v1::UploadHeader Header(const std::string& id, const WeightShape& shape, const std::string& data,
                        bool replace = false);
v1::MatmulRequest Request(const std::string& id, int64_t rows, std::string x,
                          uint64_t request_id = 0);

// Bearer token (empty: none) sent with a call.
void Authorize(grpc::ClientContext* ctx, const std::string& token);

// Header, then `data` in `chunk`-byte chunks, WritesDone, Finish.
grpc::Status Upload(v1::MatmulService::Stub& stub, const v1::UploadHeader& header,
                    const std::string& data, const std::string& token = "",
                    size_t chunk = 256 << 10);
grpc::Status Matmul(v1::MatmulService::Stub& stub, const v1::MatmulRequest& request,
                    v1::MatmulResponse* response, const std::string& token = "",
                    std::chrono::milliseconds timeout = std::chrono::seconds(20));

// grpc.health.v1 Check: 1 SERVING, 2 NOT_SERVING, -code on an RPC error.
using ::marlin::test_support::HealthStatus;

// Options for a small CPU server on 127.0.0.1:0 without a metrics endpoint.
ServerOptions SmallServerOptions();

std::shared_ptr<grpc::Channel> PlaintextChannel(int port);

// Polls `done` every 5 ms for up to `timeout`; true as soon as it holds.
bool Eventually(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10));

// The store holds exactly `ids` and, once the requests that used removed versions have let go
// (within 5 s), accounts exactly their bytes (nothing half-uploaded).
void ExpectStoreHoldsExactly(MarlinServer& server, std::vector<std::string> ids);

// Certificates in `dir` (created): ca.pem, server.pem/.key (CN and SAN localhost, 127.0.0.1),
// client.pem/.key (signed by ca.pem), rogue-client.pem/.key (signed by another CA).
struct Certificates {
  std::string dir, ca, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key;
};
absl::StatusOr<Certificates> MakeCertificates(const std::string& dir);
std::string ReadFile(const std::string& path);

}  // namespace marlin::hardening

#endif  // MARLIN_TESTS_HARDENING_HARNESS_H_
