// Panel kernels of CpuGemm (see cpu_gemm_kernels.h for the data layout).
#include "kernels/cpu/cpu_gemm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/format/weight_format.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace marlin::cpu_internal {
namespace {

// Columns [0, 32) of a panel row live in the low nibbles, [32, 64) in the high ones.
struct DequantTable {
  float value[kPanelN][16];
};

void FillTable(const float* scales, DequantTable& t) {
  for (int64_t j = 0; j < kPanelN; ++j) {
    for (int u = 0; u < 16; ++u) {
      t.value[j][u] = HalfToFloat(FloatToHalf(static_cast<float>(u - 8) * scales[j]));
    }
  }
}

}  // namespace

void HalfToFloatPortable(const uint16_t* in, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = HalfToFloat(in[i]);
}

void PanelPortable(const PanelArgs& a) {
  alignas(64) float buf[kBlockK * kPanelN];
  DequantTable table;
  int64_t table_group = -1;
  std::fill(a.acc, a.acc + a.m * kPanelN, 0.0f);
  for (int64_t k0 = 0; k0 < a.k; k0 += kBlockK) {
    const int64_t rows = std::min(kBlockK, a.k - k0);
    const int64_t group = k0 / a.group_rows;  // a block never straddles two groups
    if (group != table_group) {
      FillTable(a.scales + group * a.scale_stride, table);
      table_group = group;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* src = a.nibbles + (k0 + r) * kPanelRowBytes;
      float* dst = buf + r * kPanelN;
      for (int64_t b = 0; b < kPanelRowBytes; ++b) {
        dst[b] = table.value[b][src[b] & 0xf];
        dst[b + 32] = table.value[b + 32][src[b] >> 4];
      }
    }
    for (int64_t m = 0; m < a.m; ++m) {
      float* acc = a.acc + m * kPanelN;
      const float* x = a.x + m * a.k + k0;
      for (int64_t r = 0; r < rows; ++r) {
        const float xv = x[r];
        const float* w = buf + r * kPanelN;
        for (int64_t j = 0; j < kPanelN; ++j) acc[j] = acc[j] + xv * w[j];
      }
    }
  }
  for (int64_t m = 0; m < a.m; ++m) {
    for (int64_t j = 0; j < kPanelN; ++j)
      a.y[m * a.y_stride + j] = FloatToHalf(a.acc[m * kPanelN + j]);
  }
}

#if defined(__x86_64__)

bool Avx2Supported() {
  // F16C through cpuid leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know it.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

namespace {

// Dequantizes 32 columns whose u values are the 32 bytes of `u`.
__attribute__((target("avx2,fma,f16c"))) inline void Dequant32(__m256i u, const float* scales,
                                                               float* out) {
  const __m256i eight = _mm256_set1_epi32(8);
  const __m128i lo = _mm256_castsi256_si128(u);
  const __m128i hi = _mm256_extracti128_si256(u, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int c = 0; c < 4; ++c) {
    const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[c]), eight);
    const __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(scales + 8 * c));
    const __m128i h = _mm256_cvtps_ph(product, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_store_ps(out + 8 * c, _mm256_cvtph_ps(h));
  }
}

}  // namespace

__attribute__((target("avx2,fma,f16c"))) void HalfToFloatAvx2(const uint16_t* in, int64_t count,
                                                              float* out) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < count; ++i) out[i] = HalfToFloat(in[i]);
}

__attribute__((target("avx2,fma,f16c"))) void PanelAvx2(const PanelArgs& a) {
  alignas(64) float buf[kBlockK * kPanelN];
  const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
  std::fill(a.acc, a.acc + a.m * kPanelN, 0.0f);
  for (int64_t k0 = 0; k0 < a.k; k0 += kBlockK) {
    const int64_t rows = std::min(kBlockK, a.k - k0);
    const float* scales = a.scales + (k0 / a.group_rows) * a.scale_stride;
    for (int64_t r = 0; r < rows; ++r) {
      const __m256i v = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(a.nibbles + (k0 + r) * kPanelRowBytes));
      Dequant32(_mm256_and_si256(v, low_nibbles), scales, buf + r * kPanelN);
      Dequant32(_mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles), scales + 32,
                buf + r * kPanelN + 32);
    }
    for (int64_t m = 0; m < a.m; ++m) {
      float* acc = a.acc + m * kPanelN;
      const float* x = a.x + m * a.k + k0;
      __m256 c[8];
      for (int i = 0; i < 8; ++i) c[i] = _mm256_loadu_ps(acc + 8 * i);
      for (int64_t r = 0; r < rows; ++r) {
        const __m256 xv = _mm256_broadcast_ss(x + r);
        const float* w = buf + r * kPanelN;
        for (int i = 0; i < 8; ++i) c[i] = _mm256_fmadd_ps(xv, _mm256_load_ps(w + 8 * i), c[i]);
      }
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(acc + 8 * i, c[i]);
    }
  }
  for (int64_t m = 0; m < a.m; ++m) {
    for (int i = 0; i < 8; ++i) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(a.acc + m * kPanelN + 8 * i),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a.y + m * a.y_stride + 8 * i), h);
    }
  }
}

#else  // not x86-64: only the portable path exists

bool Avx2Supported() { return false; }
void HalfToFloatAvx2(const uint16_t* in, int64_t count, float* out) {
  HalfToFloatPortable(in, count, out);
}
void PanelAvx2(const PanelArgs& args) { PanelPortable(args); }

#endif

}  // namespace marlin::cpu_internal
