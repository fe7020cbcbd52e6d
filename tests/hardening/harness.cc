#include "tests/hardening/harness.h"

#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace marlin::hardening {

std::string AsBytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

uint32_t Crc(const std::string& data) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0),
                                     reinterpret_cast<const Bytef*>(data.data()),
                                     static_cast<uInt>(data.size())));
}

std::string RandomRows(int64_t rows, int64_t k, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<uint16_t> v(static_cast<size_t>(rows * k));
  for (uint16_t& x : v) x = FloatToHalf(d(rng));
  return AsBytes(v.data(), v.size() * 2);
}

std::string TestWeight::Reference(const std::string& x, int64_t rows) const {
  std::vector<uint16_t> xv(static_cast<size_t>(rows * shape.k)), y(rows * shape.n);
  std::memcpy(xv.data(), x.data(), x.size());
  EXPECT_TRUE(gemm->Run(xv.data(), rows, y.data()).ok());
  return AsBytes(y.data(), y.size() * 2);
}

TestWeight RandomWeight(const WeightShape& shape, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-0.1f, 0.1f);
  std::vector<uint16_t> v(static_cast<size_t>(shape.k * shape.n));
  for (uint16_t& x : v) x = FloatToHalf(d(rng));
  TestWeight w;
  w.shape = shape;
  w.data = AsBytes(v.data(), v.size() * 2);
  w.gemm = *CpuGemm::Create(*Pack(*QuantizeFp16(v, shape, DenseLayout::kKN)), 1);
  return w;
}

v1::UploadHeader Header(const std::string& id, const WeightShape& shape, const std::string& data,
                        bool replace) {
  v1::UploadHeader h;
  h.set_weight_id(id);
  h.set_k(shape.k);
  h.set_n(shape.n);
  h.set_source(v1::WEIGHT_SOURCE_DENSE_FP16);
  h.set_layout(v1::DENSE_LAYOUT_KN);
  h.set_group_size(shape.group_size);
  h.set_replace(replace);
  h.set_total_bytes(data.size());
  h.set_crc32(Crc(data));
  return h;
}

v1::MatmulRequest Request(const std::string& id, int64_t rows, std::string x, uint64_t request_id) {
  v1::MatmulRequest r;
  r.set_weight_id(id);
  r.set_rows(static_cast<uint32_t>(rows));
  r.set_activations(std::move(x));
  r.set_request_id(request_id);
  return r;
}

void Authorize(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

grpc::Status Upload(v1::MatmulService::Stub& stub, const v1::UploadHeader& header,
                    const std::string& data, const std::string& token, size_t chunk) {
  grpc::ClientContext ctx;
  Authorize(&ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WeightInfo info;
  auto writer = stub.UploadWeight(&ctx, &info);
  v1::UploadWeightRequest msg;
  *msg.mutable_header() = header;
  if (writer->Write(msg)) {
    for (size_t at = 0; at < data.size(); at += chunk) {
      msg.set_chunk(data.substr(at, std::min(chunk, data.size() - at)));
      if (!writer->Write(msg)) break;  // answered early
    }
    writer->WritesDone();
  }
  return writer->Finish();
}

grpc::Status Matmul(v1::MatmulService::Stub& stub, const v1::MatmulRequest& request,
                    v1::MatmulResponse* response, const std::string& token,
                    std::chrono::milliseconds timeout) {
  grpc::ClientContext ctx;
  Authorize(&ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Matmul(&ctx, request, response);
}

ServerOptions SmallServerOptions() {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.backend = "cpu";
  o.cuda_streams = 2;
  o.cpu_threads = 1;
  o.max_queue_delay_us = 500;
  o.memory_headroom = 0;
  o.device_memory_limit = uint64_t{64} << 20;
  o.max_weight_bytes = uint64_t{16} << 20;
  o.max_weights = 16;
  o.max_rows_per_request = 128;
  o.drain_timeout = absl::Seconds(5);
  return o;
}

std::shared_ptr<grpc::Channel> PlaintextChannel(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

bool Eventually(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

void ExpectStoreHoldsExactly(MarlinServer& server, std::vector<std::string> ids) {
  std::vector<std::string> held;
  uint64_t bytes = 0;
  for (const auto& w : server.store().List()) {
    held.push_back(w->id());
    bytes += w->device_bytes();
  }
  std::sort(held.begin(), held.end());
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(held, ids);
  // A deleted or replaced version stays accounted until the last request using it lets go, which
  // the server may do just after the client has its answer: wait for that, not for ever.
  const bool settled =
      Eventually([&] { return server.store().accounted_bytes() == bytes; }, absl::Seconds(5));
  EXPECT_TRUE(settled) << "an upload left bytes reserved: " << server.store().accounted_bytes()
                       << " accounted, " << bytes << " held";
}

namespace {

absl::Status Run(const std::string& cmd) {
  const std::string full = cmd + " >/dev/null 2>&1";
  if (std::system(full.c_str()) != 0) return absl::InternalError("failed: " + cmd);
  return absl::OkStatus();
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<Certificates> MakeCertificates(const std::string& dir) {
  std::filesystem::create_directories(dir);
  Certificates c;
  c.dir = dir;
  c.ca = dir + "/ca.pem";
  c.server_cert = dir + "/server.pem";
  c.server_key = dir + "/server.key";
  c.client_cert = dir + "/client.pem";
  c.client_key = dir + "/client.key";
  c.rogue_cert = dir + "/rogue-client.pem";
  c.rogue_key = dir + "/rogue-client.key";
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string ca_ext =
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign";
  std::ofstream(dir + "/server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                        "extendedKeyUsage=serverAuth\n";
  std::ofstream(dir + "/client.ext") << "extendedKeyUsage=clientAuth\n";
  for (const std::string& cmd : std::vector<std::string>{
           absl::StrCat("openssl req -x509 ", ec, " -days 2 -subj /CN=marlin-test-ca ", ca_ext,
                        " -keyout ", dir, "/ca.key -out ", c.ca),
           absl::StrCat("openssl req -x509 ", ec, " -days 2 -subj /CN=rogue-ca ", ca_ext,
                        " -keyout ", dir, "/rogue-ca.key -out ", dir, "/rogue-ca.pem"),
           absl::StrCat("openssl req ", ec, " -subj /CN=localhost -keyout ", c.server_key, " -out ",
                        dir, "/server.csr"),
           absl::StrCat("openssl x509 -req -in ", dir, "/server.csr -CA ", c.ca, " -CAkey ", dir,
                        "/ca.key -CAcreateserial -days 2 -extfile ", dir, "/server.ext -out ",
                        c.server_cert),
           absl::StrCat("openssl req ", ec, " -subj /CN=client -keyout ", c.client_key, " -out ",
                        dir, "/client.csr"),
           absl::StrCat("openssl x509 -req -in ", dir, "/client.csr -CA ", c.ca, " -CAkey ", dir,
                        "/ca.key -CAcreateserial -days 2 -extfile ", dir, "/client.ext -out ",
                        c.client_cert),
           absl::StrCat("openssl req ", ec, " -subj /CN=rogue -keyout ", c.rogue_key, " -out ", dir,
                        "/rogue.csr"),
           absl::StrCat("openssl x509 -req -in ", dir, "/rogue.csr -CA ", dir,
                        "/rogue-ca.pem -CAkey ", dir, "/rogue-ca.key -CAcreateserial -days 2 ",
                        "-extfile ", dir, "/client.ext -out ", c.rogue_cert),
       }) {
    if (absl::Status st = Run(cmd); !st.ok()) return st;
  }
  return c;
}

}  // namespace marlin::hardening
