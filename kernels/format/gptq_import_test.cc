// Tests of ImportGptq: equals direct packing, both symmetric zero conventions, refusals.
#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/format/weight_format.h"

namespace marlin {
namespace {

using ::testing::HasSubstr;

// A GPTQ checkpoint built from known integers q and scales, stored zero `zero` everywhere.
struct Checkpoint {
  QuantizedWeight expect;
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales;
  GptqTensors tensors() const { return {qweight, scales, qzeros, g_idx}; }
};

Checkpoint MakeCheckpoint(std::mt19937& rng, const WeightShape& shape, int zero) {
  Checkpoint c;
  c.expect.shape = shape;
  std::uniform_int_distribution<int> q(-8, 7);
  std::uniform_real_distribution<float> s(1e-3f, 1e-1f);
  c.expect.q.resize(shape.k * shape.n);
  for (int8_t& v : c.expect.q) v = static_cast<int8_t>(q(rng));
  c.expect.scales.resize(shape.num_groups() * shape.n);
  for (uint16_t& v : c.expect.scales) v = FloatToHalf(s(rng));
  c.scales = c.expect.scales;
  c.qweight.assign(shape.k / 8 * shape.n, 0);
  for (int64_t k = 0; k < shape.k; ++k) {
    for (int64_t n = 0; n < shape.n; ++n) {
      const uint32_t u = static_cast<uint32_t>(c.expect.q[k * shape.n + n] + 8);
      uint32_t& word = reinterpret_cast<uint32_t&>(c.qweight[(k / 8) * shape.n + n]);
      word |= u << (4 * (k % 8));
    }
  }
  c.qzeros.assign(shape.num_groups() * shape.n / 8, 0);
  for (int32_t& word : c.qzeros) {
    uint32_t v = 0;
    for (int j = 0; j < 8; ++j) v |= static_cast<uint32_t>(zero) << (4 * j);
    word = static_cast<int32_t>(v);
  }
  for (int64_t i = 0; i < shape.k; ++i)
    c.g_idx.push_back(static_cast<int32_t>(i / shape.group_rows()));
  return c;
}

void SetZero(Checkpoint& c, int64_t g, int64_t n, int zero) {
  uint32_t& word = reinterpret_cast<uint32_t&>(c.qzeros[g * (c.expect.shape.n / 8) + n / 8]);
  word = (word & ~(0xfu << (4 * (n % 8)))) | (static_cast<uint32_t>(zero) << (4 * (n % 8)));
}

TEST(ImportGptqTest, EqualsDirectPackingForBothZeroConventions) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const WeightShape shape :
       {WeightShape{256, 128, 128}, WeightShape{128, 64, 128}, WeightShape{64, 192, kPerChannel}}) {
    for (int zero : {7, 8}) {
      for (bool with_g_idx : {true, false}) {
        SCOPED_TRACE(testing::Message() << "K=" << shape.k << " N=" << shape.n << " zero=" << zero
                                        << " g_idx=" << with_g_idx);
        Checkpoint c = MakeCheckpoint(rng, shape, zero);
        if (!with_g_idx) c.g_idx.clear();
        absl::StatusOr<QuantizedWeight> w = ImportGptq(shape, c.tensors());
        ASSERT_TRUE(w.ok()) << w.status();
        EXPECT_EQ(w->shape, shape);
        EXPECT_EQ(w->q, c.expect.q);
        EXPECT_EQ(w->scales, c.expect.scales);
        absl::StatusOr<PackedWeight> imported = Pack(*w);
        absl::StatusOr<PackedWeight> direct = Pack(c.expect);
        ASSERT_TRUE(imported.ok() && direct.ok());
        EXPECT_EQ(imported->qweight, direct->qweight);
        EXPECT_EQ(imported->scales, direct->scales);
      }
    }
  }
}

TEST(ImportGptqTest, RefusesAsymmetricZeros) {
  std::mt19937 rng(7);
  const WeightShape shape{256, 128, 128};
  Checkpoint c = MakeCheckpoint(rng, shape, 7);
  SetZero(c, 1, 77, 8);  // a mix of 7 and 8 is not one convention
  absl::StatusOr<QuantizedWeight> w = ImportGptq(shape, c.tensors());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("asymmetric"));
  EXPECT_THAT(w.status().message(), HasSubstr("group 1, column 77 is 8"));

  c = MakeCheckpoint(rng, shape, 8);
  SetZero(c, 0, 5, 3);
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(),
              HasSubstr("group 0, column 5 is 3"));

  c = MakeCheckpoint(rng, shape, 4);
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(),
              HasSubstr("group 0, column 0 is 4"));
}

TEST(ImportGptqTest, RefusesActOrderGIdx) {
  std::mt19937 rng(8);
  const WeightShape shape{256, 64, 128};
  Checkpoint c = MakeCheckpoint(rng, shape, 8);
  std::swap(c.g_idx[3], c.g_idx[200]);
  absl::StatusOr<QuantizedWeight> w = ImportGptq(shape, c.tensors());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("act-order g_idx not supported"));
  c.g_idx.pop_back();
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(), HasSubstr("g_idx"));
}

TEST(ImportGptqTest, RefusesWrongSizesAndShapes) {
  std::mt19937 rng(9);
  const WeightShape shape{256, 128, 128};
  const Checkpoint good = MakeCheckpoint(rng, shape, 7);
  Checkpoint c = good;
  c.qweight.pop_back();
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(), HasSubstr("qweight"));
  c = good;
  c.scales.push_back(0);
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(), HasSubstr("scales"));
  c = good;
  c.qzeros.resize(3);
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(), HasSubstr("qzeros"));
  c = good;
  c.scales[17] = 0x7c00;  // infinity
  EXPECT_THAT(ImportGptq(shape, c.tensors()).status().message(), HasSubstr("not finite"));
  // Per-channel expects one scale row; a grouped checkpoint does not fit.
  EXPECT_EQ(ImportGptq(WeightShape{256, 128, kPerChannel}, good.tensors()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ImportGptq(WeightShape{200, 128, 128}, good.tensors()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ImportGptq(shape, GptqTensors{}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace marlin
