// Shape rules, FP16 conversions and the round-to-nearest quantizer of weight_format.h.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/format/weight_format.h"

namespace marlin {
namespace {

// Largest K or N accepted, so that every size and byte offset fits comfortably in 64 bits.
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr uint16_t kHalfOne = 0x3c00;
constexpr uint16_t kHalfInf = 0x7c00;
constexpr uint16_t kHalfMinSubnormal = 0x0001;
constexpr float kHalfOverflow = 65520.0f;  // the smallest magnitude fp16() rounds to infinity

absl::Status ShapeError(const WeightShape& shape, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat("unsupported weight shape K=", shape.k,
                                                 " N=", shape.n, " group_size=", shape.group_size,
                                                 ": ", rule));
}

// The FP16 scale of one (group, column) whose largest magnitude is `max_abs` (< 65520).
uint16_t ScaleFor(float max_abs) {
  if (max_abs == 0.0f) return kHalfOne;  // every q is 0; any scale dequantizes to exactly 0
  uint16_t s = FloatToHalf(max_abs / 7.0f);
  // max_abs / 7 below half the smallest FP16 subnormal: use that subnormal (2^-24).
  if (s == 0) return kHalfMinSubnormal;
  // Near the top of the FP16 range fp16(7 s) can round to infinity (65504 / 7 rounds up to 9360):
  // step s down until 7 s is finite (a couple of ulps at most, far below half a step).
  while (FloatToHalf(7.0f * HalfToFloat(s)) == kHalfInf) --s;
  return s;
}

// Quantizes K*N values; load(k, n) returns element (k, n) of W as a float.
template <typename Load>
absl::StatusOr<QuantizedWeight> QuantizeImpl(size_t size, const WeightShape& shape, Load load) {
  if (absl::Status st = ValidateShape(shape); !st.ok()) return st;
  const int64_t k_dim = shape.k;
  const int64_t n_dim = shape.n;
  if (size != static_cast<uint64_t>(k_dim * n_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight has ", size, " values, expected K*N = ", k_dim, "*", n_dim, " = ", k_dim * n_dim));
  }
  QuantizedWeight out;
  out.shape = shape;
  out.q.resize(static_cast<size_t>(k_dim * n_dim));
  out.scales.resize(static_cast<size_t>(shape.num_groups() * n_dim));
  const int64_t rows = shape.group_rows();
  std::vector<float> max_abs(static_cast<size_t>(n_dim));
  std::vector<float> scale(static_cast<size_t>(n_dim));
  for (int64_t g = 0; g < shape.num_groups(); ++g) {
    std::fill(max_abs.begin(), max_abs.end(), 0.0f);
    for (int64_t k = g * rows; k < (g + 1) * rows; ++k) {
      for (int64_t n = 0; n < n_dim; ++n) {
        const float v = load(k, n);
        if (!std::isfinite(v)) {
          return absl::InvalidArgumentError(absl::StrCat("weight element (k=", k, ", n=", n,
                                                         ") is ", v, "; weights must be finite"));
        }
        if (std::fabs(v) >= kHalfOverflow) {
          return absl::InvalidArgumentError(
              absl::StrCat("weight element (k=", k, ", n=", n, ") = ", v,
                           " is outside the FP16 range (|w| must be below 65520)"));
        }
        max_abs[n] = std::max(max_abs[n], std::fabs(v));
      }
    }
    for (int64_t n = 0; n < n_dim; ++n) {
      out.scales[g * n_dim + n] = ScaleFor(max_abs[n]);
      scale[n] = HalfToFloat(out.scales[g * n_dim + n]);
    }
    for (int64_t k = g * rows; k < (g + 1) * rows; ++k) {
      for (int64_t n = 0; n < n_dim; ++n) {
        // float32 division, then round half to even (std::nearbyint in the default mode).
        const float r = std::nearbyint(load(k, n) / scale[n]);
        out.q[k * n_dim + n] = static_cast<int8_t>(std::clamp(r, -8.0f, 7.0f));
      }
    }
  }
  return out;
}

}  // namespace

absl::Status ValidateShape(const WeightShape& shape) {
  if (shape.k <= 0 || shape.n <= 0) return ShapeError(shape, "K and N must be positive");
  if (shape.k > kMaxDim || shape.n > kMaxDim) {
    return ShapeError(shape, absl::StrCat("K and N must be at most ", kMaxDim));
  }
  if (shape.group_size != kDefaultGroupSize && shape.group_size != kPerChannel) {
    return ShapeError(shape, "group_size must be 128 or -1 (per-channel)");
  }
  if (shape.k % kTileK != 0) return ShapeError(shape, "K must be a multiple of 16");
  if (shape.n % kTileN != 0) return ShapeError(shape, "N must be a multiple of 64");
  if (shape.k % shape.group_rows() != 0) {
    return ShapeError(shape, "K must be a multiple of group_size");
  }
  return absl::OkStatus();
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    // Infinity, or NaN with its payload made quiet (as F16C's vcvtph2ps does).
    bits = sign | 0x7f800000 | (mant << 13) | (mant != 0 ? 0x400000u : 0u);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal mant * 2^-24: normalize so the leading one becomes the implicit bit.
    const int shift = std::countl_zero(mant) - 21;  // places to move the leading one to bit 10
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (((mant << shift) & 0x3ff) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t FloatToHalf(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) {  // NaN: keep the top payload bits and make it quiet (as F16C does)
    return static_cast<uint16_t>(sign | 0x7e00 | ((abs >> 13) & 0x3ff));
  }
  if (abs >= 0x477ff000) return sign | kHalfInf;  // >= 65520 rounds to infinity
  if (abs >= 0x38800000) {                        // normal FP16 result (>= 2^-14)
    uint32_t h = (abs >> 13) - (112u << 10);
    const uint32_t rest = abs & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // may carry into the exponent: fine
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal FP16 result: the value in units of 2^-24, rounded half to even.
  const uint32_t exp = abs >> 23;
  if (exp < 102) return sign;  // below 2^-25: rounds to zero
  const uint32_t mant = (abs & 0x7fffff) | 0x800000;
  const uint32_t shift = 126 - exp;  // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float DequantizeElement(int8_t q, uint16_t scale) {
  // q * s is exact in float32 (4-bit times 11-bit significand), so one rounding to FP16.
  return HalfToFloat(FloatToHalf(static_cast<float>(q) * HalfToFloat(scale)));
}

absl::StatusOr<QuantizedWeight> QuantizeFp32(absl::Span<const float> w, const WeightShape& shape,
                                             DenseLayout layout) {
  const int64_t k_dim = shape.k;
  const int64_t n_dim = shape.n;
  if (layout == DenseLayout::kKN) {
    return QuantizeImpl(w.size(), shape, [&](int64_t k, int64_t n) { return w[k * n_dim + n]; });
  }
  return QuantizeImpl(w.size(), shape, [&](int64_t k, int64_t n) { return w[n * k_dim + k]; });
}

absl::StatusOr<QuantizedWeight> QuantizeFp16(absl::Span<const uint16_t> w, const WeightShape& shape,
                                             DenseLayout layout) {
  const int64_t k_dim = shape.k;
  const int64_t n_dim = shape.n;
  if (layout == DenseLayout::kKN) {
    return QuantizeImpl(w.size(), shape,
                        [&](int64_t k, int64_t n) { return HalfToFloat(w[k * n_dim + n]); });
  }
  return QuantizeImpl(w.size(), shape,
                      [&](int64_t k, int64_t n) { return HalfToFloat(w[n * k_dim + k]); });
}

}  // namespace marlin
