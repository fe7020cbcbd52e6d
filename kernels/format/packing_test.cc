// Tests of the GPU tile layout: exact positions, round trips, wire form.
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

QuantizedWeight RandomQuantized(std::mt19937& rng, const WeightShape& shape) {
  QuantizedWeight w;
  w.shape = shape;
  std::uniform_int_distribution<int> q(-8, 7);
  std::uniform_int_distribution<int> s(0, 0xffff);
  w.q.resize(shape.k * shape.n);
  for (int8_t& v : w.q) v = static_cast<int8_t>(q(rng));
  w.scales.resize(shape.num_groups() * shape.n);
  for (uint16_t& v : w.scales) v = static_cast<uint16_t>(s(rng));
  return w;
}

WeightShape RandomShape(std::mt19937& rng) {
  std::uniform_int_distribution<int> tiles(1, 6);
  WeightShape shape;
  shape.n = 64 * tiles(rng);
  if (rng() % 2) {
    shape.group_size = 128;
    shape.k = 128 * tiles(rng);
  } else {
    shape.group_size = kPerChannel;
    shape.k = 16 * tiles(rng);
  }
  return shape;
}

TEST(PackTest, PlacesHandComputedElements) {
  const WeightShape shape{32, 128, kPerChannel};
  struct Case {
    int64_t k, n;
    uint64_t byte;
    int shift;
  };
  // Tile (kt, nt) starts at (kt * 2 + nt) * 512; lane l = 4 * (n % 8) + (k % 8) / 2 at 16 l;
  // word (n % 64) / 16; nibble p = [sub-tile odd] + 2 [k % 16 >= 8] + 4 [k odd] at byte p / 2.
  const std::vector<Case> cases = {
      {0, 0, 0, 0},        // lane 0, word 0, p0
      {1, 0, 2, 0},        // p4
      {8, 0, 1, 0},        // p2
      {9, 0, 3, 0},        // p6
      {0, 8, 0, 4},        // sub-tile b of word 0: p1
      {9, 13, 323, 4},     // lane 20, p7
      {6, 63, 508, 4},     // lane 31, word 3, p1
      {31, 114, 1727, 0},  // tile (1, 1), lane 11, word 3, p6
      {16, 64, 1536, 0},   // first element of tile (1, 1)
      {0, 64, 512, 0},     // first element of tile (0, 1)
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "k=" << c.k << " n=" << c.n);
    const NibblePosition pos = PackedNibblePosition(shape, c.k, c.n);
    EXPECT_EQ(pos.byte, c.byte);
    EXPECT_EQ(pos.shift, c.shift);
    // And Pack really writes there: a weight that is -8 (u = 0) except 5 (u = 13) at (k, n).
    QuantizedWeight w;
    w.shape = shape;
    w.q.assign(32 * 128, -8);
    w.q[c.k * 128 + c.n] = 5;
    w.scales.assign(128, 0x3c00);
    absl::StatusOr<PackedWeight> p = Pack(w);
    ASSERT_TRUE(p.ok()) << p.status();
    for (size_t b = 0; b < p->qweight.size(); ++b) {
      const uint8_t expect = b == c.byte ? static_cast<uint8_t>(13 << c.shift) : 0;
      ASSERT_EQ(p->qweight[b], expect) << "byte " << b;
    }
  }
}

// Reads the packed weight exactly as the layout describes it, from the lane's point of view.
TEST(PackTest, EveryNibbleAndScaleFollowsTheLaneView) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const WeightShape shape{256, 192, 128};
  const QuantizedWeight w = RandomQuantized(rng, shape);
  absl::StatusOr<PackedWeight> p = Pack(w);
  ASSERT_TRUE(p.ok()) << p.status();
  const int64_t n_tiles = shape.n / 64;
  for (int64_t kt = 0; kt < shape.k / 16; ++kt) {
    for (int64_t nt = 0; nt < n_tiles; ++nt) {
      const uint64_t tile = (kt * n_tiles + nt) * 512;
      for (int lane = 0; lane < 32; ++lane) {
        const int t = lane % 4, c = lane / 4, r = 2 * t;
        for (int word = 0; word < 4; ++word) {
          const uint8_t* bytes = &p->qweight[tile + 16 * lane + 4 * word];
          const uint32_t v = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) |
                             (static_cast<uint32_t>(bytes[3]) << 24);
          const int na = 8 * (2 * word) + c, nb = 8 * (2 * word + 1) + c;
          const int rows[8] = {r, r, r + 8, r + 8, r + 1, r + 1, r + 9, r + 9};
          const int cols[8] = {na, nb, na, nb, na, nb, na, nb};
          for (int nib = 0; nib < 8; ++nib) {
            const int64_t k = kt * 16 + rows[nib], n = nt * 64 + cols[nib];
            ASSERT_EQ(static_cast<int>((v >> (4 * nib)) & 0xf), w.q[k * shape.n + n] + 8)
                << "kt=" << kt << " nt=" << nt << " lane=" << lane << " word=" << word;
          }
        }
      }
    }
  }
  for (int64_t g = 0; g < shape.num_groups(); ++g) {
    for (int64_t nt = 0; nt < n_tiles; ++nt) {
      for (int i = 0; i < 8; ++i) {
        for (int j = 0; j < 8; ++j) {
          ASSERT_EQ(p->scales[g * shape.n + nt * 64 + i * 8 + j],
                    w.scales[g * shape.n + nt * 64 + 8 * j + i]);
        }
      }
    }
  }
}

TEST(PackTest, RoundTripsOnRandomShapesAndSeeds) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int iter = 0; iter < 40; ++iter) {
    const WeightShape shape = RandomShape(rng);
    SCOPED_TRACE(testing::Message()
                 << "K=" << shape.k << " N=" << shape.n << " group_size=" << shape.group_size);
    const QuantizedWeight w = RandomQuantized(rng, shape);
    absl::StatusOr<PackedWeight> p = Pack(w);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->qweight.size(), static_cast<size_t>(shape.k * shape.n / 2));
    EXPECT_EQ(p->scales.size(), w.scales.size());
    EXPECT_EQ(p->bytes(), PackedBytes(shape));
    absl::StatusOr<QuantizedWeight> u = Unpack(*p);
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_EQ(u->shape, shape);
    EXPECT_EQ(u->q, w.q);
    EXPECT_EQ(u->scales, w.scales);

    const std::vector<uint8_t> wire = SerializePacked(*p);
    ASSERT_EQ(wire.size(), PackedBytes(shape));
    // Scales follow the qweight bytes, little-endian.
    EXPECT_EQ(wire[p->qweight.size()], p->scales[0] & 0xff);
    EXPECT_EQ(wire[p->qweight.size() + 1], p->scales[0] >> 8);
    absl::StatusOr<PackedWeight> back = DeserializePacked(shape, wire);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->qweight, p->qweight);
    EXPECT_EQ(back->scales, p->scales);
  }
}

TEST(PackTest, RefusesBadInput) {
  std::mt19937 rng(1);
  const WeightShape shape{256, 64, 128};
  QuantizedWeight w = RandomQuantized(rng, shape);
  w.q[100] = 8;
  EXPECT_THAT(Pack(w).status().message(), HasSubstr("outside [-8, 7]"));
  w.q[100] = -9;
  EXPECT_EQ(Pack(w).status().code(), absl::StatusCode::kInvalidArgument);
  w.q[100] = 0;
  w.scales.pop_back();
  EXPECT_THAT(Pack(w).status().message(), HasSubstr("scales"));
  w.scales.push_back(0);
  w.q.pop_back();
  EXPECT_EQ(Pack(w).status().code(), absl::StatusCode::kInvalidArgument);
  w.q.push_back(0);
  w.shape.k = 100;
  EXPECT_EQ(Pack(w).status().code(), absl::StatusCode::kInvalidArgument);
  w.shape = shape;
  absl::StatusOr<PackedWeight> p = Pack(w);
  ASSERT_TRUE(p.ok());
  PackedWeight bad = *p;
  bad.qweight.pop_back();
  EXPECT_EQ(Unpack(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = *p;
  bad.shape.group_size = kPerChannel;  // wrong number of scales for the shape
  EXPECT_EQ(Unpack(bad).status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<uint8_t> wire = SerializePacked(*p);
  wire.push_back(0);
  EXPECT_THAT(DeserializePacked(shape, wire).status().message(), HasSubstr("bytes"));
  wire.resize(10);
  EXPECT_EQ(DeserializePacked(shape, wire).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DeserializePacked(WeightShape{128, 65, 128}, wire).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace marlin
