// Tests of CpuGemm against the float64 reference, the exact accumulation order, and the bit-for-bit
// agreement of kernels and thread counts.
#include "kernels/cpu/cpu_gemm.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/format/weight_format.h"

namespace marlin {
namespace {

using ::testing::HasSubstr;

struct Problem {
  QuantizedWeight q;
  PackedWeight packed;
};

Problem MakeProblem(std::mt19937& rng, const WeightShape& shape) {
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(shape.k * shape.n);
  for (float& v : w) v = dist(rng);
  absl::StatusOr<QuantizedWeight> q = QuantizeFp32(w, shape, DenseLayout::kKN);
  EXPECT_TRUE(q.ok()) << q.status();
  absl::StatusOr<PackedWeight> packed = Pack(*q);
  EXPECT_TRUE(packed.ok()) << packed.status();
  return {*std::move(q), *std::move(packed)};
}

std::vector<uint16_t> RandomX(std::mt19937& rng, int64_t count, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<uint16_t> x(count);
  for (uint16_t& v : x) v = FloatToHalf(dist(rng));
  return x;
}

std::vector<uint16_t> RunGemm(const PackedWeight& packed, const std::vector<uint16_t>& x, int64_t m,
                              CpuGemmOptions options) {
  absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(packed, options);
  EXPECT_TRUE(gemm.ok()) << gemm.status();
  if (!gemm.ok()) return {};
  std::vector<uint16_t> y(m * packed.shape.n, 0xffff);
  const absl::Status st = (*gemm)->Run(x.data(), m, y.data());
  EXPECT_TRUE(st.ok()) << st;
  return y;
}

const WeightShape kShapes[] = {{128, 256, 128},
                               {256, 64, 128},
                               {1024, 512, 128},
                               {256, 128, kPerChannel},
                               {48, 64, kPerChannel}};
const int64_t kMs[] = {1, 3, 17, 65};

// Bound: each output is rounded to FP16 at the end, a relative error of at most 2^-11 per element
// (so at most 2^-11 ~ 4.9e-4 in relative Frobenius norm). FP32 accumulation over K terms adds a
// relative error of about sqrt(K) * 2^-24 (~2e-6 at K = 1024), far below. 1e-3 leaves a margin of
// 2 over the sum while still catching any wrong element, scale or layout (those give errors ~1).
TEST(CpuGemmTest, MatchesFloat64Reference) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const WeightShape& shape : kShapes) {
    const Problem p = MakeProblem(rng, shape);
    absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(p.packed, 2);
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    EXPECT_EQ((*gemm)->shape(), shape);
    EXPECT_GE((*gemm)->host_bytes(), static_cast<uint64_t>(shape.k * shape.n / 2));
    for (int64_t m : kMs) {
      SCOPED_TRACE(testing::Message() << "K=" << shape.k << " N=" << shape.n
                                      << " group_size=" << shape.group_size << " M=" << m);
      const std::vector<uint16_t> x = RandomX(rng, m * shape.k);
      std::vector<uint16_t> y(m * shape.n);
      ASSERT_TRUE((*gemm)->Run(x.data(), m, y.data()).ok());
      const std::vector<double> ref = ReferenceGemmF64(x, m, p.q);
      ASSERT_EQ(ref.size(), y.size());
      double err = 0, norm = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        const double d = HalfToFloat(y[i]) - ref[i];
        err += d * d;
        norm += ref[i] * ref[i];
      }
      EXPECT_LE(std::sqrt(err / norm), 1e-3);
    }
  }
}

// The documented semantics, exactly: FP32 fused multiply-add over k in increasing order, then one
// rounding to FP16.
TEST(CpuGemmTest, AccumulatesInIncreasingKOrderExactly) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const WeightShape shape{256, 128, 128};
  const Problem p = MakeProblem(rng, shape);
  const int64_t m = 5;
  const std::vector<uint16_t> x = RandomX(rng, m * shape.k);
  for (CpuKernel kernel : {CpuKernel::kPortable, CpuKernel::kAuto}) {
    const std::vector<uint16_t> y = RunGemm(p.packed, x, m, {.num_threads = 2, .kernel = kernel});
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t n = 0; n < shape.n; ++n) {
        float acc = 0;
        for (int64_t k = 0; k < shape.k; ++k) {
          const float d =
              DequantizeElement(p.q.q[k * shape.n + n], p.q.scales[(k / 128) * shape.n + n]);
          acc = std::fma(HalfToFloat(x[i * shape.k + k]), d, acc);
        }
        ASSERT_EQ(y[i * shape.n + n], FloatToHalf(acc)) << "m=" << i << " n=" << n;
      }
    }
  }
}

TEST(CpuGemmTest, PortableAndAvx2AreBitIdentical) {
  if (!CpuGemm::Avx2Supported()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const WeightShape& shape : kShapes) {
    const Problem p = MakeProblem(rng, shape);
    for (int64_t m : kMs) {
      SCOPED_TRACE(testing::Message() << "K=" << shape.k << " N=" << shape.n << " M=" << m);
      // At M = 17 huge activations: some are infinite and many outputs overflow FP16 or are NaN.
      std::vector<uint16_t> x = RandomX(rng, m * shape.k, m == 17 ? 20000.0f : 1.0f);
      if (m == 17) {
        x[0] = 0x7c00;            // +inf: row 0 becomes inf or NaN (inf * 0)
        x[shape.k + 3] = 0xfc00;  // -inf in row 1
      }
      const std::vector<uint16_t> portable =
          RunGemm(p.packed, x, m, {.num_threads = 2, .kernel = CpuKernel::kPortable});
      const std::vector<uint16_t> avx2 =
          RunGemm(p.packed, x, m, {.num_threads = 2, .kernel = CpuKernel::kAvx2});
      ASSERT_EQ(portable, avx2);
      if (m == 17) {
        int non_finite = 0;
        for (uint16_t v : avx2) non_finite += (v & 0x7c00) == 0x7c00;
        EXPECT_GT(non_finite, 0);
      }
    }
  }
}

TEST(CpuGemmTest, ResultIsIndependentOfThreadCount) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const WeightShape shape{1024, 512, 128};
  const Problem p = MakeProblem(rng, shape);
  for (int64_t m : {int64_t{1}, int64_t{17}}) {
    const std::vector<uint16_t> x = RandomX(rng, m * shape.k);
    const std::vector<uint16_t> one = RunGemm(p.packed, x, m, {.num_threads = 1});
    EXPECT_EQ(RunGemm(p.packed, x, m, {.num_threads = 2}), one);
    EXPECT_EQ(RunGemm(p.packed, x, m, {.num_threads = 4}), one);
  }
}

TEST(CpuGemmTest, ConcurrentRunsOnOneInstance) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const WeightShape shape{256, 256, 128};
  const Problem p = MakeProblem(rng, shape);
  absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(p.packed, 2);
  ASSERT_TRUE(gemm.ok());
  constexpr int kCallers = 6;
  std::vector<std::vector<uint16_t>> xs, expect;
  for (int c = 0; c < kCallers; ++c) {
    xs.push_back(RandomX(rng, (c + 1) * shape.k));
    expect.push_back(RunGemm(p.packed, xs.back(), c + 1, {.num_threads = 1}));
  }
  std::vector<std::thread> threads;
  for (int c = 0; c < kCallers; ++c) {
    threads.emplace_back([&, c] {
      std::vector<uint16_t> y((c + 1) * shape.n);
      for (int rep = 0; rep < 20; ++rep) {
        ASSERT_TRUE((*gemm)->Run(xs[c].data(), c + 1, y.data()).ok());
        ASSERT_EQ(y, expect[c]);
      }
    });
  }
  for (std::thread& t : threads) t.join();
}

TEST(CpuGemmTest, RefusesBadInput) {
  std::mt19937 rng(3);
  const Problem p = MakeProblem(rng, WeightShape{128, 64, 128});
  PackedWeight bad = p.packed;
  bad.qweight.pop_back();
  EXPECT_EQ(CpuGemm::Create(bad, 1).status().code(), absl::StatusCode::kInvalidArgument);
  bad = p.packed;
  bad.shape.k = 100;
  EXPECT_THAT(CpuGemm::Create(bad, 1).status().message(), HasSubstr("K=100"));
  EXPECT_EQ(CpuGemm::Create(p.packed, -1).status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::unique_ptr<CpuGemm>> gemm = CpuGemm::Create(p.packed, 0);
  ASSERT_TRUE(gemm.ok());
  EXPECT_GE((*gemm)->num_threads(), 1);
  EXPECT_NE((*gemm)->kernel(), CpuKernel::kAuto);
  std::vector<uint16_t> x(128), y(64);
  EXPECT_EQ((*gemm)->Run(x.data(), -1, y.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*gemm)->Run(nullptr, 1, y.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*gemm)->Run(nullptr, 0, nullptr).ok());
  EXPECT_TRUE(ReferenceGemmF64(x, 2, p.q).empty());  // x too short for M = 2
}

}  // namespace
}  // namespace marlin
