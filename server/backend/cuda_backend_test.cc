// The CUDA backend against CpuGemm on the same packed weight (<= 1e-3 relative). Skips without a
// GPU; ctest label `gpu`.
#include "server/backend/cuda_backend.h"

#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"

namespace marlin::backend {
namespace {

TEST(CudaBackendTest, BatchesMatchCpuGemmOnEveryLane) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const WeightShape shape{.k = 1024, .n = 512, .group_size = 128};
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(shape.k * shape.n);
  for (float& v : w) v = dist(rng);
  auto packed = Pack(*QuantizeFp32(w, shape, DenseLayout::kKN));
  ASSERT_TRUE(packed.ok());
  auto backend = CudaBackend::Create({.lanes = 3, .max_batch_rows = 64});
  ASSERT_TRUE(backend.ok()) << backend.status();
  auto prepared = (*backend)->Prepare(*packed);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ((*prepared)->device_bytes(), (*backend)->BytesFor(shape));
  auto gemm = CpuGemm::Create(*packed, 0);
  ASSERT_TRUE(gemm.ok());

  std::vector<std::thread> threads;
  for (int lane = 0; lane < 3; ++lane) {
    threads.emplace_back([&, lane] {
      std::mt19937 r(100 + lane);
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (int iter = 0; iter < 20; ++iter) {
        const int64_t a = 1 + r() % 8, b = 1 + r() % 300;  // the second may exceed a batch
        std::vector<uint16_t> x((a + b) * shape.k), y((a + b) * shape.n), want(y.size());
        for (uint16_t& v : x) v = FloatToHalf(u(r));
        BatchSlice slices[2] = {{x.data(), a, y.data()},
                                {x.data() + a * shape.k, b, y.data() + a * shape.n}};
        ASSERT_TRUE((*backend)->Run(lane, **prepared, slices, a + b).ok());
        ASSERT_TRUE((*gemm)->Run(x.data(), a + b, want.data()).ok());
        for (size_t i = 0; i < y.size(); ++i) {
          const float g = HalfToFloat(y[i]), e = HalfToFloat(want[i]);
          ASSERT_LE(std::fabs(g - e), 1e-3f * std::fabs(e) + 2e-3f) << "element " << i;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE((*backend)->healthy());
}

}  // namespace
}  // namespace marlin::backend
