// marlin-cpu-bench: throughput of CpuGemm at K = N = 4096, group size 128, on random data.
//
//   marlin-cpu-bench [num_threads]   (default 0 = hardware concurrency)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_gemm.h"
#include "kernels/format/weight_format.h"

int main(int argc, char** argv) {
  using marlin::CpuGemm;
  const int threads = argc > 1 ? std::atoi(argv[1]) : 0;
  const marlin::WeightShape shape{4096, 4096, 128};
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(shape.k * shape.n);
  for (float& v : w) v = dist(rng);
  auto q = marlin::QuantizeFp32(w, shape, marlin::DenseLayout::kKN);
  if (!q.ok()) return std::fprintf(stderr, "%s\n", q.status().ToString().c_str()), 1;
  auto packed = marlin::Pack(*q);
  if (!packed.ok()) return std::fprintf(stderr, "%s\n", packed.status().ToString().c_str()), 1;
  auto gemm = CpuGemm::Create(*packed, threads);
  if (!gemm.ok()) return std::fprintf(stderr, "%s\n", gemm.status().ToString().c_str()), 1;
  std::printf("K=%lld N=%lld group=128 threads=%d kernel=%s\n", static_cast<long long>(shape.k),
              static_cast<long long>(shape.n), (*gemm)->num_threads(),
              (*gemm)->kernel() == marlin::CpuKernel::kAvx2 ? "avx2" : "portable");
  std::printf("%6s %12s %12s %12s\n", "M", "ms/call", "GFLOP/s", "rows/s");
  for (int64_t m : {1, 16, 64}) {
    std::vector<uint16_t> x(m * shape.k);
    for (uint16_t& v : x) v = marlin::FloatToHalf(dist(rng) * 20);
    std::vector<uint16_t> y(m * shape.n);
    if (!(*gemm)->Run(x.data(), m, y.data()).ok()) return 1;  // warm-up
    int iters = 0;
    const auto start = std::chrono::steady_clock::now();
    double seconds = 0;
    while (seconds < 1.0 || iters < 3) {
      if (!(*gemm)->Run(x.data(), m, y.data()).ok()) return 1;
      ++iters;
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    const double per_call = seconds / iters;
    const double flops = 2.0 * static_cast<double>(m) * shape.k * shape.n;
    std::printf("%6lld %12.3f %12.2f %12.0f\n", static_cast<long long>(m), per_call * 1e3,
                flops / per_call * 1e-9, m / per_call);
  }
  return 0;
}
