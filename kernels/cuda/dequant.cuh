// INT4 -> FP16 dequantization straight into mma.m16n8k16 B fragments.
//
// One 32-bit word of the packed format (docs/weight-format.md) holds, for one lane, the 8 nibbles
// of two 8-column sub-tiles a and b: nibbles (0,4) and (2,6) are a's two fragment registers,
// (1,5) and (3,7) are b's. Each nibble stores u = q + 8. OR-ing a nibble into the mantissa of the
// FP16 number 1024 (0x6400) gives 1024 + u exactly (or 1024 + 16u for the high nibble of a byte),
// so q comes out with one subtraction or one fused multiply-add and no integer conversion.
#ifndef MARLIN_KERNELS_CUDA_DEQUANT_CUH_
#define MARLIN_KERNELS_CUDA_DEQUANT_CUH_

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/ptx_helpers.cuh"

namespace marlin::cuda {

// The B-fragment registers (k rows r..r+1 and r+8..r+9) of two 8-column sub-tiles.
struct FragmentPair {
  half2 a[2];
  half2 b[2];
};

__device__ __forceinline__ half2 BitsToHalf2(uint32_t bits) {
  return *reinterpret_cast<const half2*>(&bits);
}

// Dequantizes one packed word into q (not yet scaled) for sub-tiles a and b.
__device__ __forceinline__ FragmentPair DequantizeWord(uint32_t word) {
  constexpr uint32_t kLowNibbles = 0x000f000f;
  constexpr uint32_t kHighNibbles = 0x00f000f0;
  constexpr uint32_t kMagic = 0x64006400;               // FP16 1024 in both halves
  const half2 kBiasLow = BitsToHalf2(0x64086408);       // 1032 = 1024 + 8
  const half2 kOneSixteenth = BitsToHalf2(0x2c002c00);  // 1/16
  const half2 kBiasHigh = BitsToHalf2(0xd480d480);      // -72 = -(1024 / 16 + 8)

  FragmentPair f;
  f.a[0] = __hsub2(BitsToHalf2(ptx::AndOr(word, kLowNibbles, kMagic)), kBiasLow);
  f.b[0] = __hfma2(BitsToHalf2(ptx::AndOr(word, kHighNibbles, kMagic)), kOneSixteenth, kBiasHigh);
  const uint32_t shifted = word >> 8;
  f.a[1] = __hsub2(BitsToHalf2(ptx::AndOr(shifted, kLowNibbles, kMagic)), kBiasLow);
  f.b[1] =
      __hfma2(BitsToHalf2(ptx::AndOr(shifted, kHighNibbles, kMagic)), kOneSixteenth, kBiasHigh);
  return f;
}

// Dequantizes one packed word and scales it in one FMA a register, for columns a and b (as
// DequantizeWord). AND-ing a nibble u into a zero-exponent FP16 number gives the subnormal
// u * 2^-24 (u * 2^-20 for the high nibble of a byte), so fma(that, b, c) with b_a = s_a 2^24 / P,
// c_a = -8 s_a / P (b_b = s_b 2^20 / P' for the high nibbles) is (u - 8) s / P rounded once:
// FP16((u - 8) s) / P bit for bit, P a power of two, wherever s / P lies in [2^-14, 2^-8) (b, c
// and the result normal; the caller checks). b and c hold one column's constant in both halves.
__device__ __forceinline__ FragmentPair DequantizeWordScaled(uint32_t word, half2 b_a, half2 c_a,
                                                             half2 b_b, half2 c_b) {
  constexpr uint32_t kLowNibbles = 0x000f000f;
  constexpr uint32_t kHighNibbles = 0x00f000f0;
  FragmentPair f;
  f.a[0] = __hfma2(BitsToHalf2(word & kLowNibbles), b_a, c_a);
  f.b[0] = __hfma2(BitsToHalf2(word & kHighNibbles), b_b, c_b);
  const uint32_t shifted = word >> 8;
  f.a[1] = __hfma2(BitsToHalf2(shifted & kLowNibbles), b_a, c_a);
  f.b[1] = __hfma2(BitsToHalf2(shifted & kHighNibbles), b_b, c_b);
  return f;
}

// Multiplies both registers of a fragment by one column's scale (FP16 rounding of q * s).
__device__ __forceinline__ void ScaleFragment(half2 (&frag)[2], __half scale) {
  const half2 s2 = __half2half2(scale);
  frag[0] = __hmul2(frag[0], s2);
  frag[1] = __hmul2(frag[1], s2);
}

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_DEQUANT_CUH_
