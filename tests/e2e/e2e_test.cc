// marlin-server end to end over a real gRPC channel on an ephemeral port (in-process server):
// uploads, matmuls against CpuGemm, concurrency and batching, every error path with its exact
// status code, health, and the drain under load. The CPU backend (the default, and CI's) must
// answer bit for bit; MARLIN_E2E_BACKEND=cuda runs the same suite on a GPU, where answers must be
// within a relative Frobenius error of 1e-3 of the reference (the kernel's own tolerance).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <zlib.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/io/safetensors.h"
#include "marlin/v1/matmul_service.grpc.pb.h"
#include "server/app/server.h"
#include "server/weight_store/weight_source.h"
#include "tests/testing/health_probe.h"

namespace marlin {
namespace {

// The backend the suite runs on: "cpu" unless MARLIN_E2E_BACKEND says otherwise.
std::string SuiteBackend() {
  const char* backend = std::getenv("MARLIN_E2E_BACKEND");
  return backend != nullptr && *backend != '\0' ? backend : "cpu";
}

// Whether FP16 output bytes `got` answer `want`: identical on the CPU backend, else within a
// relative Frobenius error of 1e-3 (the GPU accumulates in another order).
bool OutputMatches(const std::string& got, const std::string& want) {
  if (SuiteBackend() == "cpu" || got.size() != want.size()) return got == want;
  const size_t count = got.size() / 2;
  std::vector<uint16_t> g(count), w(count);
  std::memcpy(g.data(), got.data(), got.size());
  std::memcpy(w.data(), want.data(), want.size());
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < count; ++i) {
    const double a = HalfToFloat(g[i]), b = HalfToFloat(w[i]);
    if (!std::isfinite(a)) return false;
    err2 += (a - b) * (a - b);
    ref2 += b * b;
  }
  return err2 <= 1e-6 * ref2;
}

using ::testing::HasSubstr;

// ---- helpers -----------------------------------------------------------------------------------

std::string AsBytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

uint32_t Crc(const std::string& data) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0),
                                     reinterpret_cast<const Bytef*>(data.data()),
                                     static_cast<uInt>(data.size())));
}

// A bound on the requests in flight on one stream: its writer Acquires before each write, its
// reader Releases on each answer. std::mutex so that TSan sees the synchronization.
class Window {
 public:
  explicit Window(int size) : size_(size) {}
  // Waits at most `timeout` for room; false when none came.
  bool Acquire(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!room_.wait_for(lock, timeout, [this] { return in_flight_ < size_; })) return false;
    ++in_flight_;
    return true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    --in_flight_;
    room_.notify_one();
  }

 private:
  const int size_;
  std::mutex mu_;
  std::condition_variable room_;
  int in_flight_ = 0;  // guarded by mu_
};

std::vector<uint16_t> RandomHalves(size_t count, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<uint16_t> v(count);
  for (uint16_t& x : v) x = FloatToHalf(d(rng));
  return v;
}

// A dense FP16 weight (K x N) and what the server must make of it.
struct TestWeight {
  WeightShape shape;
  std::string data;  // upload bytes
  PackedWeight packed;
  std::unique_ptr<CpuGemm> gemm;

  // y for x (rows x K), computed by CpuGemm on the same packed weight.
  std::string Reference(const std::string& x, int64_t rows) const {
    std::vector<uint16_t> xv(rows * shape.k), y(rows * shape.n);
    std::memcpy(xv.data(), x.data(), x.size());
    EXPECT_TRUE(gemm->Run(xv.data(), rows, y.data()).ok());
    return AsBytes(y.data(), y.size() * 2);
  }
};

TestWeight DenseFp16(const WeightShape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  TestWeight w;
  w.shape = shape;
  std::vector<uint16_t> v = RandomHalves(shape.k * shape.n, 0.1f, rng);
  w.data = AsBytes(v.data(), v.size() * 2);
  w.packed = *Pack(*QuantizeFp16(v, shape, DenseLayout::kKN));
  w.gemm = *CpuGemm::Create(w.packed, 1);
  return w;
}

v1::UploadHeader Header(const std::string& id, const WeightShape& shape, v1::WeightSource source,
                        const std::string& data, bool replace = false) {
  v1::UploadHeader h;
  h.set_weight_id(id);
  h.set_k(shape.k);
  h.set_n(shape.n);
  h.set_source(source);
  h.set_layout(source == v1::WEIGHT_SOURCE_DENSE_FP16 || source == v1::WEIGHT_SOURCE_DENSE_FP32
                   ? v1::DENSE_LAYOUT_KN
                   : v1::DENSE_LAYOUT_UNSPECIFIED);
  h.set_group_size(shape.group_size);
  h.set_replace(replace);
  h.set_total_bytes(data.size());
  h.set_crc32(Crc(data));
  return h;
}

struct UploadPlan {
  bool send_header = true;
  size_t chunk = 256 << 10;
  size_t send_bytes = SIZE_MAX;  // truncate
};

grpc::Status Upload(v1::MatmulService::Stub& stub, const v1::UploadHeader& header,
                    const std::string& data, v1::WeightInfo* info, UploadPlan plan = {}) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WeightInfo ignored;
  auto writer = stub.UploadWeight(&ctx, info != nullptr ? info : &ignored);
  v1::UploadWeightRequest msg;
  if (plan.send_header) {
    *msg.mutable_header() = header;
    if (!writer->Write(msg)) return writer->Finish();
  }
  const size_t end = std::min(plan.send_bytes, data.size());
  for (size_t at = 0; at < end; at += plan.chunk) {
    msg.set_chunk(data.substr(at, std::min(plan.chunk, end - at)));
    if (!writer->Write(msg)) break;  // the server answered early
  }
  writer->WritesDone();
  return writer->Finish();
}

v1::MatmulRequest Request(const std::string& id, int64_t rows, const std::string& x,
                          uint64_t request_id = 0) {
  v1::MatmulRequest r;
  r.set_weight_id(id);
  r.set_rows(static_cast<uint32_t>(rows));
  r.set_activations(x);
  r.set_request_id(request_id);
  return r;
}

std::string RandomRows(int64_t rows, int64_t k, std::mt19937& rng) {
  std::vector<uint16_t> v = RandomHalves(rows * k, 1.0f, rng);
  return AsBytes(v.data(), v.size() * 2);
}

grpc::Status Matmul(v1::MatmulService::Stub& stub, const v1::MatmulRequest& req,
                    v1::MatmulResponse* resp,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Matmul(&ctx, req, resp);
}

using ::marlin::test_support::HealthStatus;

// The services the server lists through grpc.reflection.v1alpha.ServerReflection (a bidi stream,
// driven through the generic stub): ServerReflectionRequest{list_services: "*"} in, and every
// ServiceResponse.name found in the ListServiceResponse out. Empty on any failure.
std::string ReflectionListing(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](int id) {
    return cq.Next(&tag, &ok) && ok && tag == reinterpret_cast<void*>(id);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step(1)) return "";
  const std::string request = std::string("\x3a\x01*", 3);  // field 7 (list_services) = "*"
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  call->Write(in, reinterpret_cast<void*>(2));
  if (!step(2)) return "";
  call->Read(&out, reinterpret_cast<void*>(3));
  if (!step(3)) return "";
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  std::vector<grpc::Slice> slices;
  if (!out.Dump(&slices).ok()) return "";
  std::string bytes;
  for (const auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return bytes;  // the names appear verbatim inside the serialized response
}

class E2eTest : public ::testing::Test {
 protected:
  static ServerOptions DefaultOptions() {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "";  // one test serves it over HTTP
    o.backend = SuiteBackend();
    o.cuda_streams = 2;
    o.cpu_threads = 1;
    o.max_batch_rows = 64;
    o.max_queue_delay_us = 2000;
    o.max_queue_rows = 8192;
    o.memory_headroom = 0;
    o.device_memory_limit = uint64_t{64} << 20;
    o.max_weight_bytes = uint64_t{16} << 20;
    o.max_weights = 16;
    o.max_rows_per_request = 128;
    o.drain_timeout = absl::Seconds(10);
    return o;
  }
  void StartServer(ServerOptions o = DefaultOptions()) {
    auto s = MarlinServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                         grpc::InsecureChannelCredentials(), args);
    stub_ = v1::MatmulService::NewStub(channel_);
  }
  void SetUp() override { StartServer(); }
  void TearDown() override {
    stub_.reset();
    channel_.reset();
    server_.reset();
  }
  // Uploads `w` as FP16 under `id` (asserting success).
  void Put(const std::string& id, const TestWeight& w) {
    v1::WeightInfo info;
    grpc::Status s =
        Upload(*stub_, Header(id, w.shape, v1::WEIGHT_SOURCE_DENSE_FP16, w.data), w.data, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  // A good request still works: the server keeps serving.
  void ExpectServing(const std::string& id, const TestWeight& w) {
    std::mt19937 rng(99);
    const std::string x = RandomRows(3, w.shape.k, rng);
    v1::MatmulResponse resp;
    grpc::Status s = Matmul(*stub_, Request(id, 3, x), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(OutputMatches(resp.output(), w.Reference(x, 3)));
  }

  std::unique_ptr<MarlinServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MatmulService::Stub> stub_;
};

// ---- uploads and products ------------------------------------------------------------------

TEST_F(E2eTest, ChunkedFp16UploadThenBitExactMatmul) {
  TestWeight w = DenseFp16({.k = 512, .n = 256, .group_size = 128}, 1);
  v1::WeightInfo info;
  grpc::Status s = Upload(*stub_, Header("fp16", w.shape, v1::WEIGHT_SOURCE_DENSE_FP16, w.data),
                          w.data, &info, {.chunk = 100'000});  // 3 chunks, uneven
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(info.weight_id(), "fp16");
  EXPECT_EQ(info.k(), 512);
  EXPECT_EQ(info.n(), 256);
  EXPECT_EQ(info.group_size(), 128);
  EXPECT_EQ(info.version(), 1u);
  EXPECT_GT(info.device_bytes(), 0u);
  EXPECT_GT(info.created().seconds(), 0);

  std::mt19937 rng(2);
  for (int64_t rows : {1, 7, 128}) {
    const std::string x = RandomRows(rows, 512, rng);
    v1::MatmulResponse resp;
    ASSERT_TRUE(Matmul(*stub_, Request("fp16", rows, x, 5), &resp).ok());
    EXPECT_EQ(resp.rows(), rows);
    EXPECT_EQ(resp.n(), 256u);
    EXPECT_TRUE(OutputMatches(resp.output(), w.Reference(x, rows))) << rows << " rows";
    EXPECT_GE(resp.timing().batch_rows(), rows);
  }
  v1::WeightInfo got;
  grpc::ClientContext ctx;
  v1::GetWeightRequest get;
  get.set_weight_id("fp16");
  ASSERT_TRUE(stub_->GetWeight(&ctx, get, &got).ok());
  EXPECT_EQ(got.requests_served(), 3u);
  EXPECT_EQ(got.rows_served(), 136u);
}

TEST_F(E2eTest, Fp32NkUploadOverOneMiBAndPackedUpload) {
  const WeightShape shape{.k = 1024, .n = 512, .group_size = -1};  // 2 MiB of FP32
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> nk(shape.k * shape.n);
  for (float& v : nk) v = d(rng);
  const std::string data = AsBytes(nk.data(), nk.size() * 4);
  v1::UploadHeader h = Header("fp32nk", shape, v1::WEIGHT_SOURCE_DENSE_FP32, data);
  h.set_layout(v1::DENSE_LAYOUT_NK);
  ASSERT_TRUE(Upload(*stub_, h, data, nullptr, {.chunk = 1 << 20}).ok());
  PackedWeight packed = *Pack(*QuantizeFp32(nk, shape, DenseLayout::kNK));
  auto gemm = *CpuGemm::Create(packed, 1);
  const std::string x = RandomRows(5, shape.k, rng);
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("fp32nk", 5, x), &resp).ok());
  std::vector<uint16_t> xv(5 * shape.k), y(5 * shape.n);
  std::memcpy(xv.data(), x.data(), x.size());
  ASSERT_TRUE(gemm->Run(xv.data(), 5, y.data()).ok());
  EXPECT_TRUE(OutputMatches(resp.output(), AsBytes(y.data(), y.size() * 2)));

  // The same weight in our packed wire format gives the same answers.
  std::vector<uint8_t> wire = SerializePacked(packed);
  const std::string pdata = AsBytes(wire.data(), wire.size());
  ASSERT_TRUE(
      Upload(*stub_, Header("packed", shape, v1::WEIGHT_SOURCE_PACKED, pdata), pdata, nullptr)
          .ok());
  v1::MatmulResponse resp2;
  ASSERT_TRUE(Matmul(*stub_, Request("packed", 5, x), &resp2).ok());
  EXPECT_EQ(resp2.output(), resp.output());
}

TEST_F(E2eTest, ChunkedGptqUploadThenBitExactMatmul) {
  const WeightShape shape{.k = 512, .n = 256, .group_size = 128};
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> dense(shape.k * shape.n);
  for (float& v : dense) v = d(rng);
  QuantizedWeight q = *QuantizeFp32(dense, shape, DenseLayout::kKN);
  OwnedGptq g = ExportGptq(q, /*minus_one=*/true);
  std::string data = AsBytes(g.qweight.data(), g.qweight.size() * 4) +
                     AsBytes(g.scales.data(), g.scales.size() * 2) +
                     AsBytes(g.qzeros.data(), g.qzeros.size() * 4) +
                     AsBytes(g.g_idx.data(), g.g_idx.size() * 4);
  v1::UploadHeader h = Header("gptq", shape, v1::WEIGHT_SOURCE_GPTQ, data);
  h.set_has_g_idx(true);
  v1::WeightInfo info;
  ASSERT_TRUE(Upload(*stub_, h, data, &info, {.chunk = 50'000}).ok());
  EXPECT_EQ(info.k(), 512);

  PackedWeight packed = *Pack(q);
  auto gemm = *CpuGemm::Create(packed, 1);
  const std::string x = RandomRows(9, shape.k, rng);
  v1::MatmulResponse resp;
  ASSERT_TRUE(Matmul(*stub_, Request("gptq", 9, x), &resp).ok());
  std::vector<uint16_t> xv(9 * shape.k), y(9 * shape.n);
  std::memcpy(xv.data(), x.data(), x.size());
  ASSERT_TRUE(gemm->Run(xv.data(), 9, y.data()).ok());
  EXPECT_TRUE(OutputMatches(resp.output(), AsBytes(y.data(), y.size() * 2)));
}

TEST_F(E2eTest, ReplaceKeepsServingAndDeleteRemoves) {
  TestWeight v1w = DenseFp16({.k = 256, .n = 128, .group_size = 128}, 5);
  TestWeight v2w = DenseFp16({.k = 128, .n = 64, .group_size = -1}, 6);  // another shape
  Put("r", v1w);
  grpc::Status dup = Upload(*stub_, Header("r", v2w.shape, v1::WEIGHT_SOURCE_DENSE_FP16, v2w.data),
                            v2w.data, nullptr);
  EXPECT_EQ(dup.error_code(), grpc::StatusCode::ALREADY_EXISTS) << dup.error_message();
  ExpectServing("r", v1w);
  v1::WeightInfo info;
  ASSERT_TRUE(Upload(*stub_, Header("r", v2w.shape, v1::WEIGHT_SOURCE_DENSE_FP16, v2w.data, true),
                     v2w.data, &info)
                  .ok());
  EXPECT_EQ(info.version(), 2u);
  ExpectServing("r", v2w);

  v1::ListWeightsResponse list;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->ListWeights(&ctx, {}, &list).ok());
  }
  ASSERT_EQ(list.weights_size(), 1);
  EXPECT_EQ(list.weights(0).k(), 128);
  v1::DeleteWeightRequest del;
  del.set_weight_id("r");
  v1::DeleteWeightResponse dresp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->DeleteWeight(&ctx, del, &dresp).ok());
  }
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->DeleteWeight(&ctx, del, &dresp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  v1::MatmulResponse resp;
  std::mt19937 rng(1);
  EXPECT_EQ(Matmul(*stub_, Request("r", 1, RandomRows(1, 128, rng)), &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // The last batch lets go of the deleted version just after its answer went out.
  for (int i = 0; i < 200 && server_->store().accounted_bytes() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(server_->store().accounted_bytes(), 0u);
}

// ---- concurrency and batching ----------------------------------------------------------------

TEST_F(E2eTest, SixtyFourStreamsOfTwoHundredRequestsAreExactAndBatched) {
  TestWeight w = DenseFp16({.k = 256, .n = 512, .group_size = 128}, 7);
  Put("big", w);
  const ServerMetrics::HistogramTotals before = server_->metrics().Totals("marlin_batch_rows");
  constexpr int kStreams = 64, kPerStream = 200;
  std::atomic<int> failures{0}, answered{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < kStreams; ++s) {
    threads.emplace_back([&, s] {
      std::mt19937 rng(1000 + s);
      std::vector<int64_t> rows(kPerStream);
      std::string all_x;
      std::vector<size_t> offset(kPerStream);
      int64_t total_rows = 0;
      std::vector<v1::MatmulRequest> reqs;
      for (int i = 0; i < kPerStream; ++i) {
        rows[i] = 1 + rng() % 8;
        offset[i] = total_rows;
        total_rows += rows[i];
        reqs.push_back(Request("big", rows[i], RandomRows(rows[i], w.shape.k, rng),
                               static_cast<uint64_t>(s) << 32 | i));
        all_x += reqs.back().activations();
      }
      const std::string all_y = w.Reference(all_x, total_rows);  // rows are independent
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      auto stream = stub_->MatmulStream(&ctx);
      // At most 8 requests in flight per stream: 64 x 8 x 8 rows stay within the queue
      // bound (--max-queue-rows); a client that sends more is refused RESOURCE_EXHAUSTED.
      Window window(8);
      std::thread writer([&] {
        for (const auto& r : reqs) {
          // Past the call's deadline the stream is over anyway.
          if (!window.Acquire(std::chrono::seconds(60)) || !stream->Write(r)) break;
        }
        stream->WritesDone();
      });
      std::vector<bool> seen(kPerStream, false);
      v1::MatmulResponse resp;
      int got = 0;
      while (stream->Read(&resp)) {
        window.Release();
        const uint64_t id = resp.request_id();
        const int i = static_cast<int>(id & 0xffffffff);
        if ((id >> 32) != static_cast<uint64_t>(s) || i >= kPerStream || seen[i] ||
            resp.status().code() != 0 ||
            !OutputMatches(resp.output(),
                           all_y.substr(offset[i] * w.shape.n * 2, rows[i] * w.shape.n * 2))) {
          ++failures;
        }
        if (i < kPerStream) seen[i] = true;
        ++got;
      }
      writer.join();
      grpc::Status st = stream->Finish();
      if (!st.ok() || got != kPerStream) ++failures;
      answered += got;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(answered.load(), kStreams * kPerStream) << "nothing unanswered";
  const ServerMetrics::HistogramTotals after = server_->metrics().Totals("marlin_batch_rows");
  const double mean = (after.sum - before.sum) / static_cast<double>(after.count - before.count);
  EXPECT_GT(mean, 4.0) << "batches: " << after.count - before.count;
  EXPECT_EQ(server_->service().in_flight_requests(), 0);
  EXPECT_THAT(server_->metrics().Scrape(),
              HasSubstr(absl::StrCat("marlin_requests_total{code=\"OK\",weight=\"big\"} ",
                                     kStreams * kPerStream)));
}

// ---- error paths -------------------------------------------------------------------------

TEST_F(E2eTest, MatmulErrorsCarryExactCodesAndTheServerKeepsServing) {
  TestWeight w = DenseFp16({.k = 256, .n = 128, .group_size = 128}, 8);
  Put("w", w);
  std::mt19937 rng(9);
  const std::string x2 = RandomRows(2, 256, rng);
  struct Case {
    v1::MatmulRequest req;
    grpc::StatusCode code;
    std::string says;
  };
  std::vector<Case> cases = {
      {Request("nope", 2, x2), grpc::StatusCode::NOT_FOUND, "no weight 'nope'"},
      {Request("", 2, x2), grpc::StatusCode::INVALID_ARGUMENT, "weight_id"},
      {Request("w", 0, ""), grpc::StatusCode::INVALID_ARGUMENT, "rows must be at least 1"},
      {Request("w", 129, RandomRows(129, 256, rng)), grpc::StatusCode::INVALID_ARGUMENT,
       "max-rows-per-request"},
      {Request("w", 3, x2), grpc::StatusCode::INVALID_ARGUMENT, "activations have"},
      {Request("w", 2, x2 + "x"), grpc::StatusCode::INVALID_ARGUMENT, "activations have"},
  };
  for (const Case& c : cases) {
    v1::MatmulResponse resp;
    grpc::Status s = Matmul(*stub_, c.req, &resp);
    EXPECT_EQ(s.error_code(), c.code) << c.says << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.says));
    ExpectServing("w", w);
  }

  // On a stream: each bad request is answered inside its response and the stream goes on.
  grpc::ClientContext ctx;
  auto stream = stub_->MatmulStream(&ctx);
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::MatmulRequest r = cases[i].req;
    r.set_request_id(100 + i);
    ASSERT_TRUE(stream->Write(r));
  }
  ASSERT_TRUE(stream->Write(Request("w", 2, x2, 7)));
  stream->WritesDone();
  std::map<uint64_t, v1::MatmulResponse> responses;
  v1::MatmulResponse resp;
  while (stream->Read(&resp)) responses[resp.request_id()] = resp;
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_EQ(responses.size(), cases.size() + 1);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(responses[100 + i].status().code(), static_cast<int>(cases[i].code)) << i;
    EXPECT_THAT(responses[100 + i].status().message(), HasSubstr(cases[i].says));
  }
  EXPECT_EQ(responses[7].status().code(), 0);
  EXPECT_TRUE(OutputMatches(responses[7].output(), w.Reference(x2, 2)));
}

TEST_F(E2eTest, UploadErrorsCarryExactCodesAndLeaveNothingBehind) {
  TestWeight w = DenseFp16({.k = 256, .n = 128, .group_size = 128}, 10);
  Put("good", w);
  const std::string& d = w.data;
  auto header = [&](const std::string& id) {
    return Header(id, w.shape, v1::WEIGHT_SOURCE_DENSE_FP16, d);
  };
  struct Case {
    std::string name;
    v1::UploadHeader header;
    std::string data;
    UploadPlan plan;
    grpc::StatusCode code;
    std::string says;
  };
  std::vector<Case> cases;
  {
    v1::UploadHeader h = header("crc");
    h.set_crc32(h.crc32() ^ 1);
    cases.push_back({"bad checksum", h, d, {}, grpc::StatusCode::DATA_LOSS, "checksum"});
  }
  cases.push_back({"truncated",
                   header("trunc"),
                   d,
                   {.send_bytes = d.size() - 10},
                   grpc::StatusCode::INVALID_ARGUMENT,
                   "truncated"});
  cases.push_back({"duplicate without replace",
                   header("good"),
                   d,
                   {},
                   grpc::StatusCode::ALREADY_EXISTS,
                   "already exists"});
  cases.push_back({"header missing",
                   header("nohdr"),
                   d,
                   {.send_header = false},
                   grpc::StatusCode::INVALID_ARGUMENT,
                   "first upload message must be a header"});
  cases.push_back({"no messages at all",
                   header("empty"),
                   "",
                   {.send_header = false},
                   grpc::StatusCode::INVALID_ARGUMENT,
                   "without a header"});
  {
    const std::string two_mib((2 << 20), '\0');  // a 1024 x 1024 FP16 weight
    cases.push_back({"oversize chunk",
                     Header("big", {.k = 1024, .n = 1024, .group_size = 128},
                            v1::WEIGHT_SOURCE_DENSE_FP16, two_mib),
                     two_mib,
                     {.chunk = (1 << 20) + 1},
                     grpc::StatusCode::INVALID_ARGUMENT,
                     "1 MiB"});
  }
  {
    v1::UploadHeader h = header("shape");
    h.set_k(100);
    cases.push_back({"bad shape", h, d, {}, grpc::StatusCode::INVALID_ARGUMENT, "multiple of 16"});
  }
  {
    v1::UploadHeader h = header("group");
    h.set_group_size(64);
    cases.push_back({"bad group size", h, d, {}, grpc::StatusCode::INVALID_ARGUMENT, "group_size"});
  }
  {
    v1::UploadHeader h = header("count");
    h.set_total_bytes(d.size() - 2);
    cases.push_back({"total_bytes disagrees with the shape",
                     h,
                     d,
                     {},
                     grpc::StatusCode::INVALID_ARGUMENT,
                     "total_bytes"});
  }
  cases.push_back({"more bytes than announced",
                   header("more"),
                   d + "xyz",
                   {},
                   grpc::StatusCode::INVALID_ARGUMENT,
                   "more than header.total_bytes"});
  cases.push_back(
      {"bad id", header("bad id!"), d, {}, grpc::StatusCode::INVALID_ARGUMENT, "weight id"});
  {
    v1::UploadHeader h = header("src");
    h.set_source(v1::WEIGHT_SOURCE_UNSPECIFIED);
    cases.push_back({"no source", h, d, {}, grpc::StatusCode::INVALID_ARGUMENT, "header.source"});
  }
  {
    // 8192 x 4096 packs to 16 MiB + scales: over --max-weight-bytes (16 MiB).
    v1::UploadHeader h = header("huge");
    h.set_k(8192);
    h.set_n(4096);
    h.set_total_bytes(uint64_t{8192} * 4096 * 2);
    cases.push_back({"over --max-weight-bytes",
                     h,
                     "",
                     {},
                     grpc::StatusCode::RESOURCE_EXHAUSTED,
                     "max-weight-bytes"});
  }
  for (const Case& c : cases) {
    v1::WeightInfo info;
    grpc::Status s = Upload(*stub_, c.header, c.data, &info, c.plan);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.says)) << c.name;
    if (c.header.weight_id() != "good") {
      EXPECT_EQ(server_->store().Get(c.header.weight_id()), nullptr) << c.name;
    }
    ExpectServing("good", w);
  }
  EXPECT_EQ(server_->store().size(), 1u);
  EXPECT_EQ(server_->store().accounted_bytes(), server_->backend().BytesFor(w.shape))
      << "no reservation left behind";

  // Device memory: the 64 MiB limit holds a few 8 MiB weights, then RESOURCE_EXHAUSTED.
  TestWeight big = DenseFp16({.k = 4096, .n = 4096, .group_size = 128}, 11);
  int stored = 0;
  grpc::Status s;
  for (int i = 0;
       i < 10 &&
       (s = Upload(*stub_,
                   Header(absl::StrCat("m", i), big.shape, v1::WEIGHT_SOURCE_DENSE_FP16, big.data),
                   big.data, nullptr))
           .ok();
       ++i) {
    ++stored;
  }
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_GE(stored, 6);
  EXPECT_LE(stored, 7);
  ExpectServing("good", w);
  {
    grpc::ClientContext ctx;
    v1::GetWeightRequest get;
    get.set_weight_id("crc");
    v1::WeightInfo info;
    EXPECT_EQ(stub_->GetWeight(&ctx, get, &info).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(E2eTest, ServerInfoAndHealth) {
  v1::ServerInfoResponse info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->ServerInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.backend(), SuiteBackend());
  EXPECT_FALSE(info.version().empty());
  EXPECT_EQ(info.limits().max_rows_per_request(), 128u);
  EXPECT_EQ(info.batching().max_batch_rows(), 64u);
  EXPECT_EQ(info.batching().max_queue_delay_us(), 2000u);
  EXPECT_GT(info.device_memory_total(), 0u);
  EXPECT_EQ(HealthStatus(channel_), 1) << "SERVING";
  EXPECT_EQ(HealthStatus(channel_, "marlin.v1.MatmulService"), 1);
  const std::string listing = ReflectionListing(channel_);
  EXPECT_TRUE(absl::StrContains(listing, "marlin.v1.MatmulService")) << "reflection lists the API";
  EXPECT_TRUE(absl::StrContains(listing, "grpc.health.v1.Health"));
}

// Queue bound and deadlines on a server whose batches wait long.
TEST_F(E2eTest, QueueBoundAndDeadlinesInQueue) {
  server_.reset();
  ServerOptions o = DefaultOptions();
  o.max_queue_rows = 8;
  o.max_rows_per_request = 8;
  o.max_queue_delay_us = 300'000;
  o.work_conserving = false;  // batches wait the whole delay even with idle lanes
  ASSERT_NO_FATAL_FAILURE(StartServer(o));
  TestWeight w = DenseFp16({.k = 128, .n = 64, .group_size = 128}, 12);
  Put("slow", w);
  std::mt19937 rng(13);
  const std::string x = RandomRows(4, 128, rng);

  // A request whose deadline passes in the queue is answered DEADLINE_EXCEEDED, never computed.
  v1::MatmulResponse resp;
  grpc::Status s = Matmul(*stub_, Request("slow", 4, x), &resp, std::chrono::milliseconds(50));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server drops it from the queue: DEADLINE_EXCEEDED when its own deadline timer fires
  // first, CANCELLED when the client's cancellation arrives first. Either way it is not computed.
  for (int i = 0; i < 200 && server_->batcher().queued_requests() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(server_->batcher().queued_requests(), 0);

  grpc::ClientContext ctx;
  auto stream = stub_->MatmulStream(&ctx);
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(Request("slow", 4, x, i)));
  stream->WritesDone();
  std::map<uint64_t, v1::MatmulResponse> got;
  while (stream->Read(&resp)) got[resp.request_id()] = resp;
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].status().code(), 0);
  EXPECT_EQ(got[1].status().code(), 0);
  EXPECT_EQ(got[2].status().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(got[2].status().message(), HasSubstr("max-queue-rows"));
  EXPECT_TRUE(OutputMatches(got[0].output(), w.Reference(x, 4)));
  // The expired request was never part of a batch: 2 requests of 4 rows were computed.
  EXPECT_EQ(server_->store().Get("slow")->rows_served(), 8u);
  const std::string scrape = server_->metrics().Scrape();
  EXPECT_TRUE(
      absl::StrContains(scrape,
                        "marlin_requests_total{code=\"DEADLINE_EXCEEDED\",weight=\"slow\"} 1") ||
      absl::StrContains(scrape, "marlin_requests_total{code=\"CANCELLED\",weight=\"slow\"} 1"))
      << scrape;
  ExpectServing("slow", w);
}

TEST_F(E2eTest, WeightsDirIsLoadedBeforeServing) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / ("e2e_weights_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "model");
  TestWeight w = DenseFp16({.k = 256, .n = 128, .group_size = 128}, 20);
  std::vector<uint16_t> v(w.data.size() / 2);
  std::memcpy(v.data(), w.data.data(), w.data.size());
  ASSERT_TRUE(io::WriteSafetensors((dir / "model" / "layer0.safetensors").string(),
                                   {{"mlp.weight", io::Tensor::FromValues<uint16_t>(
                                                       io::DType::kF16, {256, 128}, v)}})
                  .ok());
  server_.reset();
  ServerOptions o = DefaultOptions();
  o.weights_dir = dir.string();
  o.metrics_listen = "127.0.0.1:0";
  ASSERT_NO_FATAL_FAILURE(StartServer(o));
  EXPECT_GT(server_->metrics_port(), 0);
  EXPECT_EQ(HealthStatus(channel_), 1);
  ExpectServing("model/layer0/mlp", w);

  // A malformed file stops the start: replicas never serve different sets of ids.
  std::ofstream(dir / "broken.safetensors") << "not a safetensors file";
  auto bad = MarlinServer::Start(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("broken.safetensors"));
  fs::remove_all(dir);
}

// ---- drain -------------------------------------------------------------------------------

TEST_F(E2eTest, ShutdownUnderLoadAnswersEveryAcceptedRequest) {
  TestWeight w = DenseFp16({.k = 256, .n = 256, .group_size = 128}, 14);
  Put("load", w);
  constexpr int kStreams = 16;
  std::atomic<int> bad_codes{0}, responses{0}, ok{0}, unavailable{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int s = 0; s < kStreams; ++s) {
    threads.emplace_back([&, s] {
      std::mt19937 rng(s);
      grpc::ClientContext ctx;
      auto stream = stub_->MatmulStream(&ctx);
      // A window of 16 requests per stream keeps 16 x 16 x 8 rows under --max-queue-rows, so
      // every refusal seen here can only come from the drain.
      Window window(16);
      std::thread writer([&] {
        for (uint64_t i = 0; !stop.load(); ++i) {
          if (!window.Acquire(std::chrono::milliseconds(100))) continue;  // re-check stop
          const int64_t rows = 1 + rng() % 8;
          if (!stream->Write(Request("load", rows, RandomRows(rows, 256, rng), i))) break;
        }
        stream->WritesDone();
      });
      v1::MatmulResponse resp;
      while (stream->Read(&resp)) {
        window.Release();
        ++responses;
        const int code = resp.status().code();
        if (code == 0) {
          ++ok;
        } else if (code == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) {
          ++unavailable;
        } else {
          ++bad_codes;
        }
      }
      stop = true;
      writer.join();
      grpc::Status st = stream->Finish();
      if (!st.ok() && st.error_code() != grpc::StatusCode::UNAVAILABLE) ++bad_codes;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  server_->Shutdown();
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad_codes.load(), 0);
  EXPECT_GT(ok.load(), 0);
  // Every request the server took (accepted or refused) was answered on the wire.
  double counted = 0;
  for (const auto& family : server_->metrics().registry().Collect()) {
    if (family.name != "marlin_requests_total") continue;
    for (const auto& m : family.metric) counted += m.counter.value;
  }
  EXPECT_EQ(static_cast<double>(responses.load()), counted)
      << "client: ok=" << ok.load() << " unavailable=" << unavailable.load() << "\n"
      << server_->metrics().Scrape().substr(0, 600);
  EXPECT_EQ(server_->service().in_flight_requests(), 0);
  EXPECT_EQ(HealthStatus(channel_), -static_cast<int>(grpc::StatusCode::UNAVAILABLE))
      << "the server is gone";
}

TEST_F(E2eTest, DrainTimeoutAnswersTheRestUnavailable) {
  server_.reset();
  ServerOptions o = DefaultOptions();
  o.drain_timeout = absl::ZeroDuration();
  o.cuda_streams = 1;
  o.max_batch_rows = 100;
  o.max_queue_delay_us = 10'000'000;  // one 64-row request per weight waits until the drain
  o.work_conserving = false;          // ...even though the lane is idle
  ASSERT_NO_FATAL_FAILURE(StartServer(o));
  constexpr int kWeights = 8;
  std::vector<TestWeight> weights;
  for (int i = 0; i < kWeights; ++i) {
    weights.push_back(DenseFp16({.k = 1024, .n = 1024, .group_size = 128}, 100 + i));
    Put(absl::StrCat("q", i), weights.back());
  }
  std::mt19937 rng(16);
  grpc::ClientContext ctx;
  auto stream = stub_->MatmulStream(&ctx);
  std::vector<std::string> xs;
  for (int i = 0; i < kWeights; ++i) {
    xs.push_back(RandomRows(64, 1024, rng));
    ASSERT_TRUE(stream->Write(Request(absl::StrCat("q", i), 64, xs.back(), i)));
  }
  for (int i = 0; i < 500 && server_->batcher().queued_requests() < kWeights; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(server_->batcher().queued_requests(), kWeights);
  std::thread stopper([&] { server_->Shutdown(); });
  int ok = 0, unavailable = 0, other = 0;
  v1::MatmulResponse resp;
  while (stream->Read(&resp)) {
    if (resp.status().code() == 0) {
      ++ok;
      EXPECT_TRUE(OutputMatches(resp.output(),
                                weights[resp.request_id()].Reference(xs[resp.request_id()], 64)));
    } else if (resp.status().code() == static_cast<int>(grpc::StatusCode::UNAVAILABLE)) {
      ++unavailable;
      EXPECT_THAT(resp.status().message(), HasSubstr("drain-timeout"));
    } else {
      ++other;
    }
  }
  stopper.join();
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(other, 0);
  EXPECT_EQ(ok + unavailable, kWeights) << "every accepted request answered";
  EXPECT_GT(unavailable, 0) << "a zero drain timeout leaves work to refuse";
}

}  // namespace
}  // namespace marlin
