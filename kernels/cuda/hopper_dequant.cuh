// The Hopper kernel's dequantization: a ring slot's packed words and scales read into registers,
// and dequantized into wgmma A fragments. Included by hopper_kernel.cuh.
//
// Three ways: q itself (C::kScalesInFp32: the scales multiply FP32 products), q times the scale
// in FP16 (DequantizeStage), and, from 64 rows on (!C::kScalesInFp32), the scale fused into the
// dequantizing FMA relative to a power of two per column and segment (DequantizeStageScaled):
//
//   ColumnPowers<C> powers = PowersOf<C>(first_stage_words);       // a segment's first stage
//   DequantizeStageScaled<C>(words, powers, a);                    // every stage
//   MultiplyByPowers<C>(powers, acc);                              // after the segment's last
#ifndef MARLIN_KERNELS_CUDA_HOPPER_DEQUANT_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_DEQUANT_CUH_

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/hopper_config.cuh"
#include "kernels/cuda/hopper_ptx.cuh"

namespace marlin::cuda::hopper {

// A dequantized word's values in mma A fragment order, for this warp's 16 columns of a tile.
__device__ __forceinline__ void PackAFragment(const FragmentPair& f, uint32_t (&a)[4]) {
  a[0] = *reinterpret_cast<const uint32_t*>(&f.a[0]);  // rows g, k 2t..2t+1
  a[1] = *reinterpret_cast<const uint32_t*>(&f.b[0]);  // rows g + 8
  a[2] = *reinterpret_cast<const uint32_t*>(&f.a[1]);  // rows g, k + 8
  a[3] = *reinterpret_cast<const uint32_t*>(&f.b[1]);  // rows g + 8, k + 8
}

// The A fragment of one k-tile for this warp's 16 columns of a tile: the lane's packed word
// `warp` dequantized, scaled per column (sub-tiles 2 warp and 2 warp + 1), in mma A order.
__device__ __forceinline__ void DequantizeAFragment(uint32_t word, uint32_t scale_pair,
                                                    uint32_t (&a)[4]) {
  FragmentPair f = DequantizeWord(word);
  const half2 scales = BitsToHalf2(scale_pair);
  ScaleFragment(f.a, __low2half(scales));
  ScaleFragment(f.b, __high2half(scales));
  PackAFragment(f, a);
}

// One ring slot's packed words and scales for this thread's A fragments.
template <typename C>
struct StageWords {
  uint32_t scale_pair[C::kWgTiles];
  uint32_t word[C::kWgKTiles][C::kWgTiles];
};

// Reads all of a slot's words and scales at once, so their shared-memory latency is paid once.
// `word_offset` is the thread's TileWordOffset.
template <typename C>
__device__ __forceinline__ StageWords<C> LoadStageWords(const ConsumerRole& role,
                                                        uint32_t word_offset,
                                                        const StageSmem<C>& smem) {
  StageWords<C> w;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) {
    const int tile = TileOf<C>(role, j);
    // Scales of a tile are stored column-in-sub-tile major: column 8 s + c at 8 c + s.
    const uint32_t scale_row = smem.s + FirstKTileOf<C>(role) / kGroupKTiles * C::kScaleRowBytes;
    w.scale_pair[j] =
        ptx::LoadShared4(scale_row + tile * 128 + (role.lane / 4) * 16 + role.warp * 4);
#pragma unroll
    for (int kt = 0; kt < C::kWgKTiles; ++kt) {
      w.word[kt][j] = ptx::LoadShared4(
          smem.w + ((FirstKTileOf<C>(role) + kt) * C::kBlockNTiles + tile) * 512 + word_offset);
    }
  }
  return w;
}

// A warpgroup's A fragments of one stage: kWgKTiles x its tiles.
template <typename C>
using StageFragments = uint32_t[C::kWgKTiles][C::kWgTiles][4];

// A slot's words dequantized into A fragments: scaled per column, or (kScaled false, under
// C::kScalesInFp32) q itself.
template <typename C, bool kScaled>
__device__ __forceinline__ void DequantizeStage(const StageWords<C>& w, StageFragments<C>& a) {
#pragma unroll
  for (int kt = 0; kt < C::kWgKTiles; ++kt)
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j) {
      if constexpr (kScaled) {
        DequantizeAFragment(w.word[kt][j], w.scale_pair[j], a[kt][j]);
      } else {
        PackAFragment(DequantizeWord(w.word[kt][j]), a[kt][j]);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) ptx::PinRegister(a[kt][j][r]);
    }
}

// Per tile, the powers of two P = 2^p that a segment's scaled weights are divided by, one per
// column of the thread (!C::kScalesInFp32): the half2 (2^(12 - p_a), 2^(12 - p_b)).
template <typename C>
struct ColumnPowers {
  uint32_t k[C::kWgTiles];
};

// p = e + 11 for a scale 2^e <= |s| < 2^(e+1) (e = -14 for a zero or subnormal one), so that s / P
// lies in [2^-11, 2^-10): a later group's scale takes the fused form below 4-8 s and the unfused
// one above. As FP16 exponent fields: that of 2^(12 - p) is 31 - that of s, clamped to [1, 30].
__device__ __forceinline__ uint32_t PowerOfHalf(uint32_t scale_bits) {
  const uint32_t exponent = min(max((scale_bits >> 10) & 0x1f, 1u), 30u);
  return (31 - exponent) << 10;
}

template <typename C>
__device__ __forceinline__ ColumnPowers<C> PowersOf(const StageWords<C>& w) {
  ColumnPowers<C> powers;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) {
    powers.k[j] = PowerOfHalf(w.scale_pair[j] & 0xffff) | PowerOfHalf(w.scale_pair[j] >> 16) << 16;
  }
  return powers;
}

// p of one half of a ColumnPowers word, whose exponent field holds 27 - p.
__device__ __forceinline__ int PowerExponent(uint32_t k_half) {
  return 27 - static_cast<int>((k_half >> 10) & 0x1f);
}

// 2^(sign p) as FP32 (p in [-3, 26]), for sign +1 or -1.
__device__ __forceinline__ float PowerOfTwo(uint32_t k_half, int sign) {
  return __int_as_float((127 + sign * PowerExponent(k_half)) << 23);
}

// One tile's constants of DequantizeWordScaled: b = (s_a 2^24 / P_a, s_b 2^20 / P_b) and c = -8
// (s_a / P_a, s_b / P_b). False where either s / P reaches 2^-8, where b would overflow. Below
// 2^-14, c and the products round in FP16's subnormal range, as s / P itself does in the unfused
// form.
__device__ __forceinline__ bool FusedScaleConstants(uint32_t scale_pair, uint32_t k, half2& b,
                                                    half2& c) {
  const half2 u = __hmul2(BitsToHalf2(scale_pair), BitsToHalf2(k));  // 2^12 s / P
  b = __hmul2(u, BitsToHalf2(0x5c006c00));                           // (2^12, 2^8)
  c = __hmul2(u, BitsToHalf2(0x98009800));                           // -2^-9
  return __hblt2(__habs2(u), BitsToHalf2(0x4c004c00));               // 2^4
}

// s / P for both columns, rounded to FP16 (exact where it is a normal number).
__device__ __forceinline__ uint32_t ScalesOverPowers(uint32_t scale_pair, uint32_t k) {
  const float2 s = __half22float2(BitsToHalf2(scale_pair));
  const half2 r =
      __floats2half2_rn(s.x * PowerOfTwo(k & 0xffff, -1), s.y * PowerOfTwo(k >> 16, -1));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// A slot's words dequantized into A fragments scaled per column and divided by the segment's
// powers: with the scale fused into the FMA where every column of the warp allows it (any scale
// under 4 times its segment's first), else as DequantizeStage does with s / P in place of s.
// Either is FP16((u - 8) s) / P bit for bit while s / P is a normal number; below that (a scale
// under an eighth to a sixteenth of the segment's first) a weight may be off by 2^-24 P, one
// subnormal step. FP16 overflows past 2^23 times the segment's first scale (1023 after a zero
// one), which no quantizer produces.
template <typename C>
__device__ __forceinline__ void DequantizeStageScaled(const StageWords<C>& w,
                                                      const ColumnPowers<C>& powers,
                                                      StageFragments<C>& a) {
  half2 b[C::kWgTiles], c[C::kWgTiles];
  bool fused = true;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) {
    fused &= FusedScaleConstants(w.scale_pair[j], powers.k[j], b[j], c[j]);
  }
  if (__all_sync(0xffffffffu, fused)) {
#pragma unroll
    for (int kt = 0; kt < C::kWgKTiles; ++kt)
#pragma unroll
      for (int j = 0; j < C::kWgTiles; ++j) {
        PackAFragment(DequantizeWordScaled(w.word[kt][j], __low2half2(b[j]), __low2half2(c[j]),
                                           __high2half2(b[j]), __high2half2(c[j])),
                      a[kt][j]);
      }
  } else {
#pragma unroll
    for (int kt = 0; kt < C::kWgKTiles; ++kt)
#pragma unroll
      for (int j = 0; j < C::kWgTiles; ++j) {
        DequantizeAFragment(w.word[kt][j], ScalesOverPowers(w.scale_pair[j], powers.k[j]),
                            a[kt][j]);
      }
  }
#pragma unroll
  for (int kt = 0; kt < C::kWgKTiles; ++kt)
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) ptx::PinRegister(a[kt][j][r]);
}

// Multiplies a segment's sums by its powers, column by column (accumulator i of a tile lies in the
// thread's first column when (i / 2) % 2 == 0): exact, so the sums come out as DequantizeStage's.
template <typename C>
__device__ __forceinline__ void MultiplyByPowers(const ColumnPowers<C>& powers,
                                                 HopperAccumulators<C>& acc) {
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) {
    const float p_a = PowerOfTwo(powers.k[j] & 0xffff, 1), p_b = PowerOfTwo(powers.k[j] >> 16, 1);
#pragma unroll
    for (int i = 0; i < C::kAccFloats; ++i) acc[j][i] *= (i / 2) % 2 ? p_b : p_a;
  }
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_DEQUANT_CUH_
