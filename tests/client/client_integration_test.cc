// marlin::Client against a real marlin-server (CPU backend) on loopback: every call, uploads from
// memory and files, answers checked bit-exactly against CpuGemm, cancellation, deadlines, a retry
// across a server restart, and 32 threads sharing one client and one stream.
#include <atomic>
#include <cstring>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/matmul_stream.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/format/weight_format.h"
#include "kernels/io/npy.h"
#include "kernels/io/safetensors.h"
#include "tests/client/test_util.h"

namespace marlin {
namespace {

using ::marlin::testing::ServerProcess;
using ::marlin::testing::TempDir;
using ::testing::HasSubstr;

constexpr int64_t kK = 256;
constexpr int64_t kN = 128;

std::vector<uint16_t> RandomHalfs(size_t count, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<uint16_t> out(count);
  for (uint16_t& v : out) v = FloatToHalf(dist(rng));
  return out;
}

std::vector<float> RandomFloats(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> out(count);
  for (float& v : out) v = dist(rng);
  return out;
}

// The server's arithmetic, locally: quantize (as the server does), pack, CpuGemm.
std::unique_ptr<CpuGemm> Reference(const QuantizedWeight& q) {
  absl::StatusOr<PackedWeight> packed = Pack(q);
  EXPECT_TRUE(packed.ok()) << packed.status();
  absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(*packed, 1);
  EXPECT_TRUE(gemm.ok()) << gemm.status();
  return *std::move(gemm);
}

std::unique_ptr<CpuGemm> ReferenceFp16(absl::Span<const uint16_t> w, WeightShape shape,
                                       DenseLayout layout) {
  absl::StatusOr<QuantizedWeight> q = QuantizeFp16(w, shape, layout);
  EXPECT_TRUE(q.ok()) << q.status();
  return Reference(*q);
}

std::vector<uint16_t> Expected(const CpuGemm& gemm, absl::Span<const uint16_t> x, int64_t rows) {
  std::vector<uint16_t> y(static_cast<size_t>(rows * gemm.shape().n));
  EXPECT_TRUE(gemm.Run(x.data(), rows, y.data()).ok());
  return y;
}

class ClientIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    ClientOptions options;
    options.target = server_->address();
    options.default_deadline = absl::Seconds(20);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // Uploads a random FP16 K x N weight as `id` and returns its CPU reference.
  std::unique_ptr<CpuGemm> UploadRandom(const std::string& id, uint64_t seed,
                                        int32_t group_size = 128) {
    std::vector<uint16_t> w = RandomHalfs(kK * kN, seed);
    UploadOptions options;
    options.group_size = group_size;
    options.replace = true;
    absl::StatusOr<WeightInfo> info =
        client_->UploadFp16(id, kK, kN, w, WeightLayout::kKN, options);
    EXPECT_TRUE(info.ok()) << info.status();
    return ReferenceFp16(w, {.k = kK, .n = kN, .group_size = group_size}, DenseLayout::kKN);
  }

  static ServerProcess* server_;
  std::unique_ptr<Client> client_;
};

ServerProcess* ClientIntegrationTest::server_ = nullptr;

TEST_F(ClientIntegrationTest, ServerInfoAndHealth) {
  absl::StatusOr<ServerInfo> info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->backend, "cpu");
  EXPECT_FALSE(info->version.empty());
  EXPECT_GT(info->limits.max_rows_per_request, 0u);
  absl::StatusOr<HealthStatus> health = client_->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthStatus::kServing);
}

TEST_F(ClientIntegrationTest, UploadGetListMatmulDelete) {
  std::unique_ptr<CpuGemm> ref = UploadRandom("crud", 1);
  absl::StatusOr<WeightInfo> info = client_->GetWeight("crud");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->k, kK);
  EXPECT_EQ(info->n, kN);
  EXPECT_EQ(info->group_size, 128);
  EXPECT_GT(info->device_bytes, 0u);
  EXPECT_GT(info->created, absl::Now() - absl::Minutes(5));

  absl::StatusOr<std::vector<WeightInfo>> list = client_->ListWeights();
  ASSERT_TRUE(list.ok()) << list.status();
  bool found = false;
  for (const WeightInfo& w : *list) found |= w.weight_id == "crud";
  EXPECT_TRUE(found);

  std::vector<uint16_t> x = RandomHalfs(5 * kK, 2);
  absl::StatusOr<MatmulResult> y = client_->Matmul("crud", 5, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->rows, 5u);
  EXPECT_EQ(y->n, static_cast<uint64_t>(kN));
  EXPECT_EQ(y->output, Expected(*ref, x, 5));
  EXPECT_GE(y->timing.batch_rows, 5u);

  absl::StatusOr<WeightInfo> after = client_->GetWeight("crud");
  ASSERT_TRUE(after.ok());
  EXPECT_GE(after->requests_served, 1u);
  EXPECT_GE(after->rows_served, 5u);

  ASSERT_TRUE(client_->DeleteWeight("crud").ok());
  EXPECT_EQ(client_->GetWeight("crud").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->DeleteWeight("crud").code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientIntegrationTest, ReplaceBumpsTheVersionAndDuplicatesAreRefused) {
  std::vector<uint16_t> w = RandomHalfs(kK * kN, 3);
  absl::StatusOr<WeightInfo> first = client_->UploadFp16("dup", kK, kN, w, WeightLayout::kKN);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(client_->UploadFp16("dup", kK, kN, w, WeightLayout::kKN).status().code(),
            absl::StatusCode::kAlreadyExists);
  UploadOptions replace;
  replace.replace = true;
  absl::StatusOr<WeightInfo> second =
      client_->UploadFp16("dup", kK, kN, w, WeightLayout::kKN, replace);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(second->version, first->version);
  EXPECT_TRUE(client_->DeleteWeight("dup").ok());
}

TEST_F(ClientIntegrationTest, Fp32NkPerChannelUploadWithProgressAndChunks) {
  // 1024 x 512 FP32 = 2 MiB: three chunks of at most 1 MiB after the header.
  const int64_t k = 1024, n = 512;
  std::vector<float> w = RandomFloats(k * n, 4);  // N x K (nn.Linear layout)
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  UploadOptions options;
  options.group_size = kGroupSizePerChannel;
  options.replace = true;
  options.progress = [&](uint64_t sent, uint64_t total) { progress.emplace_back(sent, total); };
  absl::StatusOr<WeightInfo> info = client_->UploadFp32("nk", k, n, w, WeightLayout::kNK, options);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->group_size, -1);
  ASSERT_GE(progress.size(), 3u);
  EXPECT_EQ(progress.front().first, 0u);
  EXPECT_EQ(progress.back().first, w.size() * 4);
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GT(progress[i].first, progress[i - 1].first);
    EXPECT_LE(progress[i].first - progress[i - 1].first, kUploadChunkBytes);
  }
  absl::StatusOr<QuantizedWeight> q =
      QuantizeFp32(w, {.k = k, .n = n, .group_size = kPerChannel}, DenseLayout::kNK);
  ASSERT_TRUE(q.ok()) << q.status();
  std::unique_ptr<CpuGemm> ref = Reference(*q);
  std::vector<uint16_t> x = RandomHalfs(3 * k, 5);
  absl::StatusOr<MatmulResult> y = client_->Matmul("nk", 3, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->output, Expected(*ref, x, 3));
  EXPECT_TRUE(client_->DeleteWeight("nk").ok());
}

TEST_F(ClientIntegrationTest, UploadsFromNpyAndSafetensorsFiles) {
  TempDir dir;
  std::vector<uint16_t> w = RandomHalfs(kK * kN, 6);
  ASSERT_TRUE(io::WriteNpy(dir.File("w.npy"),
                           io::Tensor::FromValues<uint16_t>(io::DType::kF16, {kK, kN}, w))
                  .ok());
  std::vector<float> wt = RandomFloats(kN * kK, 7);  // [N, K]
  ASSERT_TRUE(io::WriteSafetensors(
                  dir.File("m.safetensors"),
                  {{"layer.weight", io::Tensor::FromValues<float>(io::DType::kF32, {kN, kK}, wt)},
                   {"other", io::Tensor::FromValues<float>(io::DType::kF32, {2}, {{1.f, 2.f}})}})
                  .ok());

  UploadOptions replace;
  replace.replace = true;
  ASSERT_TRUE(client_->UploadNpy("from-npy", dir.File("w.npy"), WeightLayout::kKN, replace).ok());
  absl::StatusOr<WeightInfo> st = client_->UploadSafetensors(
      "from-st", dir.File("m.safetensors"), "layer.weight", WeightLayout::kNK, replace);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->k, kK);
  EXPECT_EQ(st->n, kN);

  std::vector<uint16_t> x = RandomHalfs(4 * kK, 8);
  std::unique_ptr<CpuGemm> ref_npy = ReferenceFp16(w, {.k = kK, .n = kN}, DenseLayout::kKN);
  absl::StatusOr<MatmulResult> y = client_->Matmul("from-npy", 4, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->output, Expected(*ref_npy, x, 4));
  absl::StatusOr<QuantizedWeight> q = QuantizeFp32(wt, {.k = kK, .n = kN}, DenseLayout::kNK);
  ASSERT_TRUE(q.ok());
  y = client_->Matmul("from-st", 4, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->output, Expected(*Reference(*q), x, 4));

  // File errors name the cause.
  absl::Status missing =
      client_->UploadNpy("x", dir.File("missing.npy"), WeightLayout::kKN).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("missing.npy"));
  absl::Status no_tensor =
      client_->UploadSafetensors("x", dir.File("m.safetensors"), "nope", WeightLayout::kKN)
          .status();
  EXPECT_EQ(no_tensor.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_tensor.message(), HasSubstr("layer.weight"));
  EXPECT_EQ(client_->UploadSafetensors("x", dir.File("m.safetensors"), "other", WeightLayout::kKN)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(client_->DeleteWeight("from-npy").ok());
  ASSERT_TRUE(client_->DeleteWeight("from-st").ok());
}

TEST_F(ClientIntegrationTest, GptqSafetensorsUpload) {
  // A symmetric GPTQ checkpoint: q in [-8, 7] stored as q + 8, zeros stored as 7 ("minus one").
  const int64_t groups = kK / 128;
  std::mt19937_64 rng(9);
  std::uniform_int_distribution<int> qdist(-8, 7);
  QuantizedWeight qw;
  qw.shape = {.k = kK, .n = kN, .group_size = 128};
  qw.q.resize(kK * kN);
  for (int8_t& v : qw.q) v = static_cast<int8_t>(qdist(rng));
  qw.scales = RandomHalfs(groups * kN, 10, 0.01f);
  for (uint16_t& s : qw.scales) s &= 0x7fff;  // positive scales
  std::vector<int32_t> qweight(kK / 8 * kN, 0);
  for (int64_t k = 0; k < kK; ++k) {
    for (int64_t n = 0; n < kN; ++n) {
      uint32_t nibble = static_cast<uint32_t>(qw.q[k * kN + n] + 8) & 0xF;
      uint32_t& word = reinterpret_cast<uint32_t&>(qweight[(k / 8) * kN + n]);
      word |= nibble << (4 * (k % 8));
    }
  }
  std::vector<int32_t> qzeros(groups * kN / 8, 0x77777777);
  std::vector<int32_t> g_idx(kK);
  for (int64_t k = 0; k < kK; ++k) g_idx[k] = static_cast<int32_t>(k / 128);
  TempDir dir;
  ASSERT_TRUE(
      io::WriteSafetensors(
          dir.File("gptq.safetensors"),
          {{"model.l0.qweight",
            io::Tensor::FromValues<int32_t>(io::DType::kI32, {kK / 8, kN}, qweight)},
           {"model.l0.scales",
            io::Tensor::FromValues<uint16_t>(io::DType::kF16, {groups, kN}, qw.scales)},
           {"model.l0.qzeros",
            io::Tensor::FromValues<int32_t>(io::DType::kI32, {groups, kN / 8}, qzeros)},
           {"model.l0.g_idx", io::Tensor::FromValues<int32_t>(io::DType::kI32, {kK}, g_idx)}})
          .ok());
  UploadOptions replace;
  replace.replace = true;
  absl::StatusOr<WeightInfo> info =
      client_->UploadGptqSafetensors("gptq", dir.File("gptq.safetensors"), "model.l0", replace);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->k, kK);
  EXPECT_EQ(info->n, kN);
  EXPECT_EQ(info->group_size, 128);
  std::vector<uint16_t> x = RandomHalfs(2 * kK, 11);
  absl::StatusOr<MatmulResult> y = client_->Matmul("gptq", 2, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->output, Expected(*Reference(qw), x, 2));
  EXPECT_EQ(client_->UploadGptqSafetensors("g2", dir.File("gptq.safetensors"), "model.l1")
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(client_->DeleteWeight("gptq").ok());
}

TEST_F(ClientIntegrationTest, MatmulErrors) {
  UploadRandom("errors", 12);
  std::vector<uint16_t> x = RandomHalfs(2 * kK, 13);
  EXPECT_EQ(client_->Matmul("no-such-weight", 2, x).status().code(), absl::StatusCode::kNotFound);
  std::vector<uint16_t> wrong_k(2 * (kK + 16), 0);
  EXPECT_EQ(client_->Matmul("errors", 2, wrong_k).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> w(kK * kN, 0);
  EXPECT_EQ(client_
                ->UploadFp16("bad-shape", kK + 1, kN, std::vector<uint16_t>((kK + 1) * kN),
                             WeightLayout::kKN)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->UploadFp16("bad id!", kK, kN, w, WeightLayout::kKN).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(client_->DeleteWeight("errors").ok());
}

TEST_F(ClientIntegrationTest, AsyncFutureAndCallback) {
  std::unique_ptr<CpuGemm> ref = UploadRandom("async", 14);
  std::vector<uint16_t> x = RandomHalfs(3 * kK, 15);
  std::future<absl::StatusOr<MatmulResult>> f = client_->MatmulAsync("async", 3, x);
  // A std::promise rather than absl::Notification, whose absl::Mutex TSan cannot see.
  std::promise<void> done;
  std::future<void> done_future = done.get_future();
  absl::StatusOr<MatmulResult> from_callback;
  client_->MatmulAsync("async", 3, x, [&](absl::StatusOr<MatmulResult> r) {
    from_callback = std::move(r);
    done.set_value();
  });
  absl::StatusOr<MatmulResult> y = f.get();
  // The callback writes to this frame: wait for it before any assertion may return.
  ASSERT_EQ(done_future.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->output, Expected(*ref, x, 3));
  ASSERT_TRUE(from_callback.ok()) << from_callback.status();
  EXPECT_EQ(from_callback->output, y->output);
  EXPECT_EQ(client_->MatmulAsync("nope", 3, x).get().status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(client_->DeleteWeight("async").ok());
}

TEST_F(ClientIntegrationTest, StreamAnswersEachRequestAndReportsPerRequestErrors) {
  std::unique_ptr<CpuGemm> ref = UploadRandom("stream", 16);
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = client_->OpenStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::vector<std::vector<uint16_t>> xs;
  std::vector<std::future<absl::StatusOr<MatmulResult>>> futures;
  for (int i = 0; i < 20; ++i) {
    xs.push_back(RandomHalfs((i % 4 + 1) * kK, 100 + i));
    futures.push_back((*stream)->Submit("stream", i % 4 + 1, xs.back()));
  }
  std::future<absl::StatusOr<MatmulResult>> bad = (*stream)->Submit("missing", 1, xs[0]);
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<MatmulResult> y = futures[i].get();
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_EQ(y->output, Expected(*ref, xs[i], i % 4 + 1)) << i;
  }
  EXPECT_EQ(bad.get().status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*stream)->Close().ok());
  EXPECT_EQ((*stream)->Submit("stream", 1, xs[0]).get().status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(client_->DeleteWeight("stream").ok());
}

TEST_F(ClientIntegrationTest, ThirtyTwoThreadsShareOneClientAndOneStream) {
  std::unique_ptr<CpuGemm> ref = UploadRandom("shared", 17);
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = client_->OpenStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  constexpr int kThreads = 32, kPerThread = 8;
  std::atomic<int> ok{0}, wrong{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        uint32_t rows = 1 + (t + i) % 3;
        std::vector<uint16_t> x = RandomHalfs(rows * kK, 1000 * t + i);
        std::vector<uint16_t> want = Expected(*ref, x, rows);
        // Alternate: the shared stream, the shared client's unary call.
        absl::StatusOr<MatmulResult> y = i % 2 == 0 ? (*stream)->Submit("shared", rows, x).get()
                                                    : client_->Matmul("shared", rows, x);
        if (!y.ok()) {
          ++failed;
        } else if (y->output != want) {
          ++wrong;
        } else {
          ++ok;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kPerThread);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ((*stream)->pending(), 0u);
  EXPECT_TRUE((*stream)->Close().ok());
  ASSERT_TRUE(client_->DeleteWeight("shared").ok());
}

// A server that holds every request in its queue for 3 s (batches close on the delay only, not
// when a lane is idle).
class SlowQueueTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({"--max-queue-delay-us", "3000000", "--max-batch-rows", "4096",
                              "--work-conserving", "false"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    ClientOptions options;
    options.target = server_->address();
    client_ = *Client::Create(options);
    std::vector<uint16_t> w = RandomHalfs(kK * kN, 18);
    UploadOptions replace;
    replace.replace = true;
    ASSERT_TRUE(client_->UploadFp16("slow", kK, kN, w, WeightLayout::kKN, replace).ok());
    x_ = RandomHalfs(kK, 19);
  }
  static ServerProcess* server_;
  std::unique_ptr<Client> client_;
  std::vector<uint16_t> x_;
};

ServerProcess* SlowQueueTest::server_ = nullptr;

TEST_F(SlowQueueTest, DeadlineExceeded) {
  CallOptions call;
  call.timeout = absl::Milliseconds(200);
  absl::Time start = absl::Now();
  EXPECT_EQ(client_->Matmul("slow", 1, x_, call).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(client_->MatmulAsync("slow", 1, x_, call).get().status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(SlowQueueTest, CancelBlockingAsyncAndStreamCalls) {
  CallOptions call;
  call.cancel = std::make_shared<CancellationToken>();
  std::future<absl::StatusOr<MatmulResult>> async = client_->MatmulAsync("slow", 1, x_, call);
  absl::StatusOr<MatmulResult> blocking;
  std::thread t([&] { blocking = client_->Matmul("slow", 1, x_, call); });
  MatmulStreamOptions stream_options;
  stream_options.cancel = call.cancel;
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = client_->OpenStream(stream_options);
  ASSERT_TRUE(stream.ok());
  std::future<absl::StatusOr<MatmulResult>> streamed = (*stream)->Submit("slow", 1, x_);
  absl::SleepFor(absl::Milliseconds(300));
  absl::Time start = absl::Now();
  call.cancel->Cancel();
  t.join();
  EXPECT_EQ(blocking.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(async.get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(streamed.get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ((*stream)->Close().code(), absl::StatusCode::kCancelled);
}

TEST_F(SlowQueueTest, StreamCancelFailsOpenRequests) {
  absl::StatusOr<std::unique_ptr<MatmulStream>> stream = client_->OpenStream();
  ASSERT_TRUE(stream.ok());
  std::vector<std::future<absl::StatusOr<MatmulResult>>> futures;
  for (int i = 0; i < 5; ++i) futures.push_back((*stream)->Submit("slow", 1, x_));
  absl::SleepFor(absl::Milliseconds(200));
  (*stream)->Cancel();
  for (auto& f : futures) EXPECT_EQ(f.get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*stream)->pending(), 0u);
}

TEST(ClientRestartTest, IdempotentCallsRetryAcrossARestart) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.target = (*server)->address();
  options.retry.max_attempts = 5;
  options.retry.initial_backoff = absl::Milliseconds(400);
  options.retry.max_backoff = absl::Seconds(2);
  options.min_reconnect_backoff = absl::Milliseconds(100);
  options.max_reconnect_backoff = absl::Milliseconds(300);
  std::unique_ptr<Client> client = *Client::Create(options);
  ASSERT_TRUE(client->ListWeights().ok());

  // Down: without retries (or with them exhausted) the call fails UNAVAILABLE ...
  (*server)->Stop();
  ClientOptions no_retry = options;
  no_retry.retry.max_attempts = 1;
  std::unique_ptr<Client> impatient = *Client::Create(no_retry);
  EXPECT_EQ(impatient->ListWeights().status().code(), absl::StatusCode::kUnavailable);

  // ... but with retries, a call made while it is down succeeds once it is back.
  std::thread restarter([&] {
    absl::SleepFor(absl::Milliseconds(300));
    EXPECT_TRUE((*server)->Restart(/*wait=*/false).ok());
  });
  absl::StatusOr<ServerInfo> info = client->GetServerInfo();
  restarter.join();
  EXPECT_TRUE(info.ok()) << info.status() << "\n" << (*server)->Log();
}

}  // namespace
}  // namespace marlin
