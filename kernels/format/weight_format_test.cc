// Tests of shape rules, FP16 conversions and the quantizer.
#include "kernels/format/weight_format.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace marlin {
namespace {

using ::testing::HasSubstr;

struct ShapeCase {
  WeightShape shape;
  std::string error;  // empty: valid
};

TEST(ValidateShapeTest, AcceptsAndRefusesEachRule) {
  const std::vector<ShapeCase> cases = {
      {{16, 64, kPerChannel}, ""},
      {{128, 64, 128}, ""},
      {{4096, 11008, 128}, ""},
      {{16, 64, 128}, "K must be a multiple of group_size"},
      {{100, 256, 128}, "K must be a multiple of 16"},
      {{100, 256, kPerChannel}, "K must be a multiple of 16"},
      {{128, 96, 128}, "N must be a multiple of 64"},
      {{0, 64, 128}, "K and N must be positive"},
      {{128, 0, 128}, "K and N must be positive"},
      {{-128, 64, 128}, "K and N must be positive"},
      {{128, 64, 64}, "group_size must be 128 or -1"},
      {{128, 64, 32}, "group_size must be 128 or -1"},
      {{128, 64, 0}, "group_size must be 128 or -1"},
      {{128, 64, -2}, "group_size must be 128 or -1"},
      {{int64_t{1} << 21, 64, 128}, "at most"},
      {{384, 64, 128}, ""},
      {{400, 64, 128}, "K must be a multiple of group_size"},
  };
  for (const ShapeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "K=" << c.shape.k << " N=" << c.shape.n
                                    << " group_size=" << c.shape.group_size);
    const absl::Status st = ValidateShape(c.shape);
    if (c.error.empty()) {
      EXPECT_TRUE(st.ok()) << st;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(st.message(), HasSubstr(c.error));
      EXPECT_THAT(st.message(), HasSubstr(std::string("K=") + std::to_string(c.shape.k) +
                                          " N=" + std::to_string(c.shape.n)));
    }
  }
}

TEST(Fp16Test, HalfToFloatMatchesDefinitionForAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (exp == 31) {
      EXPECT_EQ(std::isnan(f), mant != 0) << h;
      if (mant == 0) {
        EXPECT_EQ(f, sign * std::numeric_limits<float>::infinity());
      }
      continue;
    }
    const double expect =
        exp == 0 ? sign * std::ldexp(mant, -24) : sign * std::ldexp(1024 + mant, exp - 25);
    EXPECT_EQ(static_cast<double>(f), expect) << h;
    EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    // Every FP16 value survives the round trip bit for bit.
    EXPECT_EQ(FloatToHalf(f), h) << h;
  }
}

TEST(Fp16Test, FloatToHalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // tie between 65504 and 2^16 -> infinity
  EXPECT_EQ(FloatToHalf(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);     // 1.5 units: tie -> 2
  EXPECT_EQ(FloatToHalf(std::ldexp(5.0f, -25)), 0x0002);     // 2.5 units: tie -> 2
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::quiet_NaN()) & 0x7e00, 0x7e00);
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) uint16_t HardwareFloatToHalf(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

__attribute__((target("f16c"))) uint32_t HardwareHalfToFloatBits(uint16_t h) {
  return std::bit_cast<uint32_t>(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))));
}

TEST(Fp16Test, HalfToFloatMatchesF16cForAllBitPatterns) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C";
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(std::bit_cast<uint32_t>(HalfToFloat(static_cast<uint16_t>(h))),
              HardwareHalfToFloatBits(static_cast<uint16_t>(h)))
        << std::hex << h;
  }
}

TEST(Fp16Test, FloatToHalfMatchesF16cOnRandomBitPatterns) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C";
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  // Uniform bit patterns, plus floats near the FP16 range where rounding matters most.
  std::uniform_int_distribution<uint32_t> bits;
  std::uniform_int_distribution<uint32_t> near(0x33000000, 0x47800000);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t b = (i % 2) ? bits(rng) : (near(rng) | (bits(rng) & 0x80000000));
    const float f = std::bit_cast<float>(b);
    ASSERT_EQ(FloatToHalf(f), HardwareFloatToHalf(f)) << std::hex << b;
  }
}
#endif

TEST(DequantizeElementTest, IsTheFp16RoundingOfTheProduct) {
  EXPECT_EQ(DequantizeElement(3, FloatToHalf(0.5f)), 1.5f);
  EXPECT_EQ(DequantizeElement(-8, FloatToHalf(2.0f)), -16.0f);
  EXPECT_EQ(DequantizeElement(0, 0x7bff), 0.0f);
  // 7 * 65504 overflows FP16.
  EXPECT_EQ(DequantizeElement(7, 0x7bff), std::numeric_limits<float>::infinity());
  // 3 * (1 + 2^-10) = 3 + 3 * 2^-10 is not an FP16 value (ulp at 2..4 is 2^-9): rounds to even.
  EXPECT_EQ(DequantizeElement(3, 0x3c01), HalfToFloat(FloatToHalf(3.0f + 3.0f / 1024)));
}

std::vector<float> RandomWeights(std::mt19937& rng, int64_t count) {
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> w(count);
  for (float& v : w) v = dist(rng);
  return w;
}

// Error bound per element, with s the group's scale and d = fp16(q * s) its dequant value:
//   |w - q*s| <= s/2 for elements that are not clamped (|w/s| <= max|w|/s <= 7 (1 + 2^-11) < 7.5,
//   so nothing is clamped when s is a normal FP16 number), plus the float32 rounding of w / s
//   before rounding to an integer, at most 2^-24 * 8 steps, i.e. s * 2^-21;
//   |q*s - d| <= |q*s| * 2^-11 (FP16 round to nearest: half an ulp, relative 2^-11).
// So |w - d| <= s * (1/2 + 2^-21) + |q*s| * 2^-11.
void ExpectWithinBound(absl::Span<const float> w_kn, const QuantizedWeight& q) {
  const int64_t n_dim = q.shape.n;
  for (int64_t k = 0; k < q.shape.k; ++k) {
    for (int64_t n = 0; n < n_dim; ++n) {
      const uint16_t s_bits = q.scales[(k / q.shape.group_rows()) * n_dim + n];
      const double s = HalfToFloat(s_bits);
      const int8_t qv = q.q[k * n_dim + n];
      ASSERT_GE(qv, -8);
      ASSERT_LE(qv, 7);
      const double d = DequantizeElement(qv, s_bits);
      const double bound =
          s * (0.5 + std::ldexp(1.0, -21)) + std::fabs(qv * s) * std::ldexp(1.0, -11);
      ASSERT_LE(std::fabs(w_kn[k * n_dim + n] - d), bound) << "k=" << k << " n=" << n;
    }
  }
}

TEST(QuantizeTest, ErrorIsWithinHalfAStepAndLayoutsAgree) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const WeightShape shape :
       {WeightShape{128, 64, 128}, WeightShape{256, 192, 128}, WeightShape{48, 128, kPerChannel},
        WeightShape{512, 64, kPerChannel}}) {
    SCOPED_TRACE(testing::Message() << "K=" << shape.k << " N=" << shape.n);
    const std::vector<float> w = RandomWeights(rng, shape.k * shape.n);
    absl::StatusOr<QuantizedWeight> q = QuantizeFp32(w, shape, DenseLayout::kKN);
    ASSERT_TRUE(q.ok()) << q.status();
    ExpectWithinBound(w, *q);
    // The scale is the FP16 rounding of max|w| / 7 per (group, column).
    for (int64_t g = 0; g < shape.num_groups(); ++g) {
      for (int64_t n = 0; n < shape.n; ++n) {
        float max_abs = 0;
        for (int64_t k = g * shape.group_rows(); k < (g + 1) * shape.group_rows(); ++k) {
          max_abs = std::max(max_abs, std::fabs(w[k * shape.n + n]));
        }
        ASSERT_EQ(q->scales[g * shape.n + n], FloatToHalf(max_abs / 7.0f));
      }
    }
    std::vector<float> w_nk(w.size());
    std::vector<uint16_t> h_kn(w.size()), h_nk(w.size());
    for (int64_t k = 0; k < shape.k; ++k) {
      for (int64_t n = 0; n < shape.n; ++n) {
        w_nk[n * shape.k + k] = w[k * shape.n + n];
        h_kn[k * shape.n + n] = FloatToHalf(w[k * shape.n + n]);
        h_nk[n * shape.k + k] = h_kn[k * shape.n + n];
      }
    }
    absl::StatusOr<QuantizedWeight> q_nk = QuantizeFp32(w_nk, shape, DenseLayout::kNK);
    ASSERT_TRUE(q_nk.ok()) << q_nk.status();
    EXPECT_EQ(q_nk->q, q->q);
    EXPECT_EQ(q_nk->scales, q->scales);
    // FP16 input quantizes exactly like the same values given as FP32.
    std::vector<float> w_rounded(w.size());
    for (size_t i = 0; i < w.size(); ++i) w_rounded[i] = HalfToFloat(h_kn[i]);
    absl::StatusOr<QuantizedWeight> f32 = QuantizeFp32(w_rounded, shape, DenseLayout::kKN);
    absl::StatusOr<QuantizedWeight> f16_kn = QuantizeFp16(h_kn, shape, DenseLayout::kKN);
    absl::StatusOr<QuantizedWeight> f16_nk = QuantizeFp16(h_nk, shape, DenseLayout::kNK);
    ASSERT_TRUE(f32.ok() && f16_kn.ok() && f16_nk.ok());
    EXPECT_EQ(f16_kn->q, f32->q);
    EXPECT_EQ(f16_kn->scales, f32->scales);
    EXPECT_EQ(f16_nk->q, f32->q);
    EXPECT_EQ(f16_nk->scales, f32->scales);
    ExpectWithinBound(w_rounded, *f16_kn);
  }
}

TEST(QuantizeTest, ExtremesOfAGroupMapToSevenSteps) {
  const WeightShape shape{16, 64, kPerChannel};
  std::vector<float> w(16 * 64, 0.0f);
  w[0 * 64 + 0] = 7.0f;
  w[1 * 64 + 0] = -7.0f;
  w[2 * 64 + 0] = 3.5f;  // exactly half a step above 3: ties to even -> 4
  w[3 * 64 + 0] = 2.5f;  // ties to even -> 2
  absl::StatusOr<QuantizedWeight> q = QuantizeFp32(w, shape, DenseLayout::kKN);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->scales[0], FloatToHalf(1.0f));
  EXPECT_EQ(q->q[0], 7);
  EXPECT_EQ(q->q[64], -7);
  EXPECT_EQ(q->q[128], 4);
  EXPECT_EQ(q->q[192], 2);
  // An all-zero column gets scale 1.0 and q = 0.
  EXPECT_EQ(q->scales[1], 0x3c00);
  EXPECT_EQ(q->q[1], 0);
}

TEST(QuantizeTest, RefusesNonFiniteWeightsAndWrongSizes) {
  const WeightShape shape{128, 64, 128};
  std::vector<float> w(128 * 64, 0.5f);
  w[77] = std::numeric_limits<float>::quiet_NaN();
  absl::StatusOr<QuantizedWeight> q = QuantizeFp32(w, shape, DenseLayout::kKN);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(q.status().message(), HasSubstr("k=1, n=13"));
  w[77] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(QuantizeFp32(w, shape, DenseLayout::kNK).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> h(128 * 64, 0x3c00);
  h[5] = 0x7e00;
  EXPECT_EQ(QuantizeFp16(h, shape, DenseLayout::kKN).status().code(),
            absl::StatusCode::kInvalidArgument);
  h[5] = 0xfc00;
  EXPECT_EQ(QuantizeFp16(h, shape, DenseLayout::kKN).status().code(),
            absl::StatusCode::kInvalidArgument);
  w.pop_back();
  EXPECT_THAT(QuantizeFp32(w, shape, DenseLayout::kKN).status().message(), HasSubstr("K*N"));
  EXPECT_EQ(QuantizeFp32(w, WeightShape{100, 64, 128}, DenseLayout::kKN).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> big(128 * 64, 0.0f);
  big[300] = 65520.0f;  // rounds to infinity in FP16
  EXPECT_THAT(QuantizeFp32(big, shape, DenseLayout::kKN).status().message(),
              HasSubstr("outside the FP16 range"));
  // The largest FP16 magnitude still quantizes, with a finite dequantized value: fp16(65504 / 7)
  // = 9360 would give fp16(7 * 9360) = inf, so the scale steps down to 9352.
  big[300] = -65504.0f;
  absl::StatusOr<QuantizedWeight> q_edge = QuantizeFp32(big, shape, DenseLayout::kKN);
  ASSERT_TRUE(q_edge.ok()) << q_edge.status();
  const uint16_t s = q_edge->scales[300 % 64];
  EXPECT_EQ(HalfToFloat(s), 9352.0f);
  EXPECT_EQ(q_edge->q[300], -7);
  EXPECT_EQ(DequantizeElement(-7, s), -65472.0f);  // fp16(-65464)
}

}  // namespace
}  // namespace marlin
