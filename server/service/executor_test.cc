#include "server/service/executor.h"

#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "server/backend/cpu_backend.h"

namespace marlin {
namespace {

// Parameter: answer threads (0: the lane threads answer).
class BatchExecutorTest : public ::testing::TestWithParam<int> {};

TEST_P(BatchExecutorTest, AnswersEveryItemWithTheCpuResult) {
  const WeightShape shape{.k = 256, .n = 128, .group_size = 128};
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0, 0.05f);
  std::vector<float> w(shape.k * shape.n);
  for (float& v : w) v = dist(rng);
  PackedWeight packed = *Pack(*QuantizeFp32(w, shape, DenseLayout::kKN));

  auto backend = backend::CpuBackend::Create(2, 1);
  ASSERT_TRUE(backend.ok());
  auto store = WeightStore::Create({});
  ASSERT_TRUE(store.ok());
  auto metrics = ServerMetrics::Create();
  ASSERT_TRUE(metrics.ok());
  auto batcher = batcher::Batcher::Create(
      {.max_batch_rows = 16, .max_queue_delay = absl::Microseconds(300), .max_queue_rows = 4096});
  ASSERT_TRUE(batcher.ok());
  auto reservation = (*store)->Reserve("w", (*backend)->BytesFor(shape), false);
  ASSERT_TRUE(reservation.ok());
  auto weight =
      (*store)->Publish("w", *(*backend)->Prepare(packed), *std::move(reservation), false);
  ASSERT_TRUE(weight.ok());
  auto exec = BatchExecutor::Create(backend->get(), batcher->get(), metrics->get(), nullptr,
                                    {.answer_threads = GetParam()});
  ASSERT_TRUE(exec.ok());

  constexpr int kItems = 300;
  std::vector<std::vector<uint16_t>> xs(kItems), ys(kItems);
  std::vector<absl::Status> statuses(kItems, absl::UnknownError("unanswered"));
  std::vector<RunTiming> timings(kItems);
  std::vector<MatmulItem*> items(kItems);
  std::vector<char> weight_released(kItems, 0);  // the item let go of its weight before answering
  std::atomic<int> answered{0};
  for (int i = 0; i < kItems; ++i) {
    const int64_t rows = 1 + rng() % 8;
    xs[i].resize(rows * shape.k);
    for (uint16_t& v : xs[i]) v = FloatToHalf(std::uniform_real_distribution<float>(-1, 1)(rng));
    ys[i].assign(rows * shape.n, 0xffff);
    auto item = std::make_shared<MatmulItem>(*weight, xs[i].data(), rows, ys[i].data(),
                                             absl::InfiniteFuture(), nullptr,
                                             [&, i](const absl::Status& s, const RunTiming& t) {
                                               statuses[i] = s;
                                               timings[i] = t;
                                               weight_released[i] = items[i]->weight() == nullptr;
                                               ++answered;
                                             });
    items[i] = item.get();
    ASSERT_TRUE((*batcher)->Enqueue(BatchKey(**weight), item).ok());
  }
  (*batcher)->Close();
  (*exec)->Join();
  EXPECT_EQ(answered.load(), kItems);
  auto gemm = CpuGemm::Create(packed, 1);
  ASSERT_TRUE(gemm.ok());
  int64_t rows_total = 0;
  for (int i = 0; i < kItems; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    const int64_t rows = xs[i].size() / shape.k;
    rows_total += rows;
    std::vector<uint16_t> want(rows * shape.n);
    ASSERT_TRUE((*gemm)->Run(xs[i].data(), rows, want.data()).ok());
    EXPECT_EQ(ys[i], want) << "item " << i;
    EXPECT_GE(timings[i].batch_rows, rows);
    EXPECT_LE(timings[i].batch_rows, 16);
    EXPECT_TRUE(weight_released[i]) << "item " << i << " answered while holding its weight";
  }
  EXPECT_EQ((*weight)->requests_served(), static_cast<uint64_t>(kItems));
  EXPECT_EQ((*weight)->rows_served(), static_cast<uint64_t>(rows_total));
  EXPECT_EQ((*metrics)->Totals("marlin_batch_rows").sum, static_cast<double>(rows_total));
  EXPECT_EQ((*metrics)->Totals("marlin_queue_seconds").count, static_cast<uint64_t>(kItems));
}

INSTANTIATE_TEST_SUITE_P(AnswerThreads, BatchExecutorTest, ::testing::Values(0, 1, 3));

TEST(BatchExecutorOptionsTest, RefusesNegativeAnswerThreads) {
  auto backend = backend::CpuBackend::Create(1, 1);
  ASSERT_TRUE(backend.ok());
  auto metrics = ServerMetrics::Create();
  ASSERT_TRUE(metrics.ok());
  auto batcher = batcher::Batcher::Create({});
  ASSERT_TRUE(batcher.ok());
  EXPECT_EQ(BatchExecutor::Create(backend->get(), batcher->get(), metrics->get(), nullptr,
                                  {.answer_threads = -1})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace marlin
