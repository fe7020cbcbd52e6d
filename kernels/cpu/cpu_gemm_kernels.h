// Internal to marlin_cpu_gemm: the per-panel kernels behind CpuGemm, in a portable and an
// AVX2/FMA/F16C version that produce bit-identical results.
//
// CpuGemm keeps the weight as 64-column panels. Row k of panel p is 32 bytes at
// nibbles[(p * K + k) * 32]: byte b holds u = q + 8 of column 64p + b in its low nibble and of
// column 64p + b + 32 in its high nibble. A panel kernel dequantizes kBlockK rows at a time into a
// float buffer (FP16 rounding of q * s, like DequantizeElement) and accumulates
// acc[m][j] += x[m][k] * w[k][j] for k in increasing order. The product of two FP16 values is
// exact in FP32, so the AVX2 path's fused multiply-add and the portable path's multiply-then-add
// round identically.
#ifndef MARLIN_KERNELS_CPU_CPU_GEMM_KERNELS_H_
#define MARLIN_KERNELS_CPU_CPU_GEMM_KERNELS_H_

#include <cstdint>

namespace marlin::cpu_internal {

inline constexpr int64_t kPanelN = 64;  // columns per panel
inline constexpr int64_t kBlockK = 64;  // rows dequantized at a time (divides group size 128)
inline constexpr int64_t kPanelRowBytes = kPanelN / 2;

struct PanelArgs {
  const float* x = nullptr;  // M x K activations, already converted to float
  int64_t m = 0;
  int64_t k = 0;
  const uint8_t* nibbles = nullptr;  // this panel's K x 32 bytes
  const float* scales = nullptr;     // scale of (group 0, the panel's first column)
  int64_t scale_stride = 0;          // N: distance between scale rows
  int64_t group_rows = 0;
  float* acc = nullptr;   // M x 64 scratch
  uint16_t* y = nullptr;  // output (row 0, the panel's first column), FP16 bits
  int64_t y_stride = 0;   // N
};

// y for one panel. Both write exactly the same bits.
void PanelPortable(const PanelArgs& args);
void PanelAvx2(const PanelArgs& args);

// FP16 bits to float (identical results; see HalfToFloat).
void HalfToFloatPortable(const uint16_t* in, int64_t count, float* out);
void HalfToFloatAvx2(const uint16_t* in, int64_t count, float* out);

// True when the CPU has AVX2, FMA and F16C.
bool Avx2Supported();

}  // namespace marlin::cpu_internal

#endif  // MARLIN_KERNELS_CPU_CPU_GEMM_KERNELS_H_
