// The CPU implementation of y = x . dequant(W): the oracle for every GPU test and the service's
// backend on machines without a GPU.
//
// FP16 activations x (M x K), FP16 output y (M x N), FP32 accumulation over K in increasing order
// (so results are deterministic and independent of the thread count). Multi-threaded over N;
// F16C/AVX2 where the CPU has them, a portable path otherwise.
//
//   ASSIGN_OR_RETURN(auto gemm, marlin::CpuGemm::Create(packed, /*num_threads=*/0));
//   RETURN_IF_ERROR(gemm->Run(x.data(), m, y.data()));
#ifndef MARLIN_KERNELS_CPU_CPU_GEMM_H_
#define MARLIN_KERNELS_CPU_CPU_GEMM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/format/weight_format.h"

namespace marlin {

// Which inner kernel CpuGemm uses. Both give bit-identical results; kAuto picks kAvx2 when the
// CPU has AVX2, FMA and F16C.
enum class CpuKernel { kAuto, kPortable, kAvx2 };

struct CpuGemmOptions {
  int num_threads = 0;  // 0 = hardware concurrency
  CpuKernel kernel = CpuKernel::kAuto;
};

class CpuGemm {
 public:
  // Prepares `packed` for the CPU (may re-lay it out). num_threads 0 = hardware concurrency.
  static absl::StatusOr<std::unique_ptr<CpuGemm>> Create(const PackedWeight& packed,
                                                         int num_threads);
  // As above with a choice of kernel; kAvx2 on a CPU without it is FailedPrecondition.
  static absl::StatusOr<std::unique_ptr<CpuGemm>> Create(const PackedWeight& packed,
                                                         const CpuGemmOptions& options);
  // True when this CPU can run CpuKernel::kAvx2.
  static bool Avx2Supported();
  ~CpuGemm();

  // y[m * N + n] = fp16(sum_k x[m * K + k] * dequant(W)[k][n]). Thread-safe; x, y are FP16 bits.
  absl::Status Run(const uint16_t* x, int64_t m, uint16_t* y) const;

  const WeightShape& shape() const;
  uint64_t host_bytes() const;
  // The kernel in use (never kAuto) and the number of threads a Run uses (the caller included).
  CpuKernel kernel() const;
  int num_threads() const;

 private:
  struct Impl;
  explicit CpuGemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The float64 naive reference for tests: out[m * N + n] = sum_k x * DequantizeElement(q, s).
// Returns an empty vector when x.size() != m * K or `w` is inconsistent.
std::vector<double> ReferenceGemmF64(absl::Span<const uint16_t> x, int64_t m,
                                     const QuantizedWeight& w);

}  // namespace marlin

#endif  // MARLIN_KERNELS_CPU_CPU_GEMM_H_
