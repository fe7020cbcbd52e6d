// Internal to the client library (not installed): the shared channel and stubs behind
// marlin::Client, and the helpers its calls and MatmulStream use to prepare a grpc::ClientContext.
#ifndef MARLIN_CLIENT_CLIENT_INTERNAL_H_
#define MARLIN_CLIENT_CLIENT_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "marlin/v1/matmul_service.grpc.pb.h"

namespace marlin {

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::MatmulService::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_stub;

  // Asynchronous unary calls whose callback has not returned yet (~Client waits for them).
  absl::Mutex async_mu;
  int64_t async_outstanding ABSL_GUARDED_BY(async_mu) = 0;

  // Applies deadline, wait-for-ready and the bearer token to `ctx`. `timeout` overrides
  // `default_timeout`; an infinite duration means no deadline.
  void PrepareContext(grpc::ClientContext* ctx, const std::optional<absl::Duration>& timeout,
                      absl::Duration default_timeout, bool wait_for_ready) const;
};

// Ties a running call's context to a CancellationToken for the call's lifetime.
class CancelRegistration {
 public:
  CancelRegistration(std::shared_ptr<CancellationToken> token, grpc::ClientContext* ctx);
  ~CancelRegistration();
  CancelRegistration(const CancelRegistration&) = delete;
  CancelRegistration& operator=(const CancelRegistration&) = delete;

 private:
  std::shared_ptr<CancellationToken> token_;
  uint64_t handle_ = 0;
};

absl::Status FromGrpcStatus(const grpc::Status& status);

// Converts a response message to the public result type.
MatmulResult FromProto(v1::MatmulResponse& response);

}  // namespace marlin

#endif  // MARLIN_CLIENT_CLIENT_INTERNAL_H_
