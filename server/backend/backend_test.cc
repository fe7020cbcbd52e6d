#include "server/backend/backend.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "server/backend/cpu_backend.h"
#include "server/backend/null_backend.h"

namespace marlin::backend {
namespace {

PackedWeight RandomPacked(const WeightShape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(shape.k * shape.n));
  for (float& v : w) v = dist(rng);
  auto q = QuantizeFp32(w, shape, DenseLayout::kKN);
  EXPECT_TRUE(q.ok()) << q.status();
  auto packed = Pack(*q);
  EXPECT_TRUE(packed.ok()) << packed.status();
  return *std::move(packed);
}

std::vector<uint16_t> RandomRows(int64_t rows, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> x(static_cast<size_t>(rows * k));
  for (uint16_t& v : x) v = FloatToHalf(dist(rng));
  return x;
}

TEST(CpuBackendTest, GatheredBatchEqualsCpuGemmBitForBit) {
  const WeightShape shape{.k = 256, .n = 128, .group_size = 128};
  PackedWeight packed = RandomPacked(shape, 1);
  auto backend = CpuBackend::Create(/*lanes=*/2, /*threads_per_lane=*/1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
  EXPECT_EQ((*backend)->lanes(), 2);
  auto prepared = (*backend)->Prepare(packed);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ((*prepared)->shape(), shape);
  EXPECT_GT((*prepared)->device_bytes(), 0u);

  // Three requests of 1, 5 and 3 rows in one batch, in unaligned byte buffers.
  const std::vector<int64_t> rows = {1, 5, 3};
  std::vector<std::string> xs, ys;
  std::vector<BatchSlice> slices;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<uint16_t> x = RandomRows(rows[i], shape.k, 10 + i);
    std::string buf(1 + x.size() * 2, '\0');  // one byte of offset: unaligned on purpose
    std::memcpy(buf.data() + 1, x.data(), x.size() * 2);
    xs.push_back(std::move(buf));
    ys.push_back(std::string(1 + rows[i] * shape.n * 2, '\x7f'));
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    slices.push_back({xs[i].data() + 1, rows[i], ys[i].data() + 1});
  }
  ASSERT_TRUE((*backend)->Run(1, **prepared, slices, 9).ok());

  auto gemm = CpuGemm::Create(packed, 1);
  ASSERT_TRUE(gemm.ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<uint16_t> x(rows[i] * shape.k), want(rows[i] * shape.n), got(rows[i] * shape.n);
    std::memcpy(x.data(), xs[i].data() + 1, x.size() * 2);
    ASSERT_TRUE((*gemm)->Run(x.data(), rows[i], want.data()).ok());
    std::memcpy(got.data(), ys[i].data() + 1, got.size() * 2);
    EXPECT_EQ(got, want) << "request " << i;
  }
  EXPECT_EQ((*backend)->Run(2, **prepared, slices, 9).code(), absl::StatusCode::kInvalidArgument);
}

TEST(NullBackendTest, AnswersZerosOfTheRightSize) {
  const WeightShape shape{.k = 128, .n = 64, .group_size = -1};
  auto backend = NullBackend::Create(1);
  ASSERT_TRUE(backend.ok());
  auto prepared = (*backend)->Prepare(RandomPacked(shape, 2));
  ASSERT_TRUE(prepared.ok());
  EXPECT_EQ((*prepared)->device_bytes(), 0u);
  std::vector<uint16_t> x = RandomRows(3, shape.k, 3);
  std::vector<uint16_t> y(3 * shape.n, 0xffff);
  BatchSlice slice{x.data(), 3, y.data()};
  ASSERT_TRUE((*backend)->Run(0, **prepared, {&slice, 1}, 3).ok());
  EXPECT_EQ(y, std::vector<uint16_t>(3 * shape.n, 0));
}

TEST(CreateBackendTest, KindsAndAuto) {
  auto cpu = CreateBackend({.kind = "cpu", .lanes = 1});
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->name(), "cpu");
  auto null = CreateBackend({.kind = "null"});
  ASSERT_TRUE(null.ok());
  EXPECT_EQ((*null)->name(), "null");
  auto bad = CreateBackend({.kind = "tpu"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto zero_lanes = CreateBackend({.kind = "cpu", .lanes = 0});
  EXPECT_EQ(zero_lanes.status().code(), absl::StatusCode::kInvalidArgument);
  auto autob = CreateBackend({.kind = "auto"});
  ASSERT_TRUE(autob.ok()) << autob.status();
  EXPECT_TRUE((*autob)->name() == "cpu" || (*autob)->name() == "cuda");
  EXPECT_GT(HostMemory().total, 0u);
}

}  // namespace
}  // namespace marlin::backend
