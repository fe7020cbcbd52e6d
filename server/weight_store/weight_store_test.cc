#include "server/weight_store/weight_store.h"

#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_gemm.h"
#include "server/backend/null_backend.h"
#include "server/weight_store/weight_source.h"

namespace marlin {
namespace {

using ::testing::HasSubstr;

// A prepared weight that counts its live instances (to see old versions die).
class FakePrepared : public backend::PreparedWeight {
 public:
  FakePrepared(const WeightShape& shape, uint64_t bytes, std::atomic<int>* live)
      : PreparedWeight(shape, bytes), live_(live) {
    ++*live_;
  }
  ~FakePrepared() override { --*live_; }

 private:
  std::atomic<int>* live_;
};

class WeightStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<WeightStore> Make(WeightStore::Options options) {
    auto s = WeightStore::Create(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  }
  std::shared_ptr<const backend::PreparedWeight> Prepared(uint64_t bytes) {
    return std::make_shared<FakePrepared>(shape_, bytes, &live_);
  }
  absl::StatusOr<std::shared_ptr<const Weight>> Put(WeightStore& store, const std::string& id,
                                                    uint64_t bytes, bool replace = false) {
    auto r = store.Reserve(id, bytes, replace);
    if (!r.ok()) return r.status();
    return store.Publish(id, Prepared(bytes), *std::move(r), replace);
  }
  WeightShape shape_{.k = 128, .n = 64, .group_size = 128};
  std::atomic<int> live_{0};
};

TEST_F(WeightStoreTest, ValidatesIds) {
  EXPECT_TRUE(ValidateWeightId("llama-7b/layers.0.q_proj:v2").ok());
  EXPECT_EQ(ValidateWeightId("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateWeightId(std::string(129, 'a')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateWeightId("a b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateWeightId("w\n").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WeightStoreTest, PublishGetListDelete) {
  auto store = Make({});
  auto w = Put(*store, "a", 100);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->version(), 1u);
  EXPECT_EQ((*w)->device_bytes(), 100u);
  EXPECT_EQ((*w)->shape(), shape_);
  EXPECT_EQ(store->Get("a"), *w);
  EXPECT_EQ(store->Get("b"), nullptr);
  ASSERT_TRUE(Put(*store, "b", 50).ok());
  EXPECT_EQ(store->List().size(), 2u);
  EXPECT_EQ(store->accounted_bytes(), 150u);
  EXPECT_TRUE(store->Delete("a").ok());
  EXPECT_EQ(store->Delete("a").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Get("a"), nullptr);
  EXPECT_EQ(store->accounted_bytes(), 150u) << "still held by `w`";
  w->reset();
  EXPECT_EQ(store->accounted_bytes(), 50u);
}

TEST_F(WeightStoreTest, DuplicateNeedsReplaceAndOldVersionLivesWhileUsed) {
  auto store = Make({});
  auto v1 = Put(*store, "w", 10);
  ASSERT_TRUE(v1.ok());
  auto dup = Put(*store, "w", 10);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(dup.status().message()), HasSubstr("replace"));
  std::shared_ptr<const Weight> in_flight = store->Get("w");  // a running batch
  auto v2 = Put(*store, "w", 20, /*replace=*/true);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ((*v2)->version(), 2u);
  EXPECT_EQ(store->Get("w")->version(), 2u);
  EXPECT_EQ(in_flight->version(), 1u);
  EXPECT_EQ(live_.load(), 2);
  EXPECT_EQ(store->accounted_bytes(), 30u);
  in_flight.reset();
  v1->reset();
  EXPECT_EQ(live_.load(), 1) << "v1 freed once its last user let go";
  EXPECT_EQ(store->accounted_bytes(), 20u);
}

TEST_F(WeightStoreTest, LimitsAreResourceExhaustedBeforeAllocating) {
  auto store = Make(
      {.max_weights = 2, .max_weight_bytes = 1000, .capacity_bytes = 1500, .headroom_bytes = 200});
  EXPECT_EQ(store->Reserve("big", 1001, false).status().code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(Put(*store, "a", 1000).ok());
  auto over = store->Reserve("b", 301, false);  // 1000 + 301 > 1500 - 200
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.status().message()), HasSubstr("headroom"));
  ASSERT_TRUE(Put(*store, "b", 300).ok());
  EXPECT_EQ(store->Reserve("c", 0, false).status().code(), absl::StatusCode::kResourceExhausted)
      << "max_weights";
  EXPECT_TRUE(store->Reserve("a", 0, true).ok()) << "replacing does not add a weight";
}

TEST_F(WeightStoreTest, DroppedReservationLeavesNothingBehind) {
  auto store = Make({.capacity_bytes = 1000});
  {
    auto r = store->Reserve("x", 900, false);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(store->accounted_bytes(), 900u);
    EXPECT_EQ(store->Reserve("y", 200, false).status().code(),
              absl::StatusCode::kResourceExhausted);
  }  // upload failed or was cancelled
  EXPECT_EQ(store->accounted_bytes(), 0u);
  EXPECT_EQ(store->Get("x"), nullptr);
  EXPECT_TRUE(store->Reserve("y", 200, false).ok());
}

TEST_F(WeightStoreTest, LiveFreeMemoryIsChecked) {
  auto store = Make({.headroom_bytes = 100, .device_free = [] { return uint64_t{500}; }});
  EXPECT_TRUE(store->Reserve("a", 400, false).ok());
  EXPECT_EQ(store->Reserve("a", 401, false).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(WeightStoreTest, ConcurrentUploadsOfOneIdPublishOnce) {
  auto store = Make({});
  std::atomic<int> ok{0}, exists{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto w = Put(*store, "same", 1);
      if (w.ok()) ++ok;
      if (w.status().code() == absl::StatusCode::kAlreadyExists) ++exists;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(exists.load(), 7);
  EXPECT_EQ(store->accounted_bytes(), 1u);
}

// ---- weight_source -------------------------------------------------------------------------

std::string Bytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

TEST(WeightSourceTest, SizesPerSource) {
  WeightShape s{.k = 256, .n = 128, .group_size = 128};
  EXPECT_EQ(*SourceBytes({.shape = s, .kind = SourceKind::kDenseFp16}), 256u * 128 * 2);
  EXPECT_EQ(*SourceBytes({.shape = s, .kind = SourceKind::kDenseFp32}), 256u * 128 * 4);
  EXPECT_EQ(*SourceBytes({.shape = s, .kind = SourceKind::kGptq}),
            32u * 128 * 4 + 2u * 128 * 2 + 2u * 16 * 4);
  EXPECT_EQ(*SourceBytes({.shape = s, .kind = SourceKind::kGptq, .has_g_idx = true}),
            32u * 128 * 4 + 2u * 128 * 2 + 2u * 16 * 4 + 256 * 4);
  EXPECT_EQ(*SourceBytes({.shape = s, .kind = SourceKind::kPacked}), PackedBytes(s));
  EXPECT_EQ(SourceBytes({.shape = {.k = 100, .n = 128}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WeightSourceTest, DenseFp16AndFp32InBothLayoutsMatchTheQuantizer) {
  WeightShape s{.k = 128, .n = 64, .group_size = -1};
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0, 0.1f);
  std::vector<float> kn(s.k * s.n), nk(s.k * s.n);
  for (float& v : kn) v = HalfToFloat(FloatToHalf(dist(rng)));  // exact in FP16 too
  for (int64_t k = 0; k < s.k; ++k) {
    for (int64_t n = 0; n < s.n; ++n) nk[n * s.k + k] = kn[k * s.n + n];
  }
  std::vector<uint16_t> kn16(kn.size());
  for (size_t i = 0; i < kn.size(); ++i) kn16[i] = FloatToHalf(kn[i]);
  PackedWeight want = *Pack(*QuantizeFp32(kn, s, DenseLayout::kKN));

  auto fp32 =
      DecodeSource({.shape = s, .kind = SourceKind::kDenseFp32}, Bytes(kn.data(), kn.size() * 4));
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ(fp32->qweight, want.qweight);
  EXPECT_EQ(fp32->scales, want.scales);
  auto fp32_nk =
      DecodeSource({.shape = s, .kind = SourceKind::kDenseFp32, .layout = DenseLayout::kNK},
                   Bytes(nk.data(), nk.size() * 4));
  ASSERT_TRUE(fp32_nk.ok());
  EXPECT_EQ(fp32_nk->qweight, want.qweight);
  auto fp16 = DecodeSource({.shape = s, .kind = SourceKind::kDenseFp16},
                           Bytes(kn16.data(), kn16.size() * 2));
  ASSERT_TRUE(fp16.ok());
  EXPECT_EQ(fp16->qweight, want.qweight);
  EXPECT_EQ(fp16->scales, want.scales);
  auto packed = DecodeSource({.shape = s, .kind = SourceKind::kPacked},
                             Bytes(SerializePacked(want).data(), PackedBytes(s)));
  ASSERT_TRUE(packed.ok());
  EXPECT_EQ(packed->qweight, want.qweight);
  EXPECT_EQ(DecodeSource({.shape = s, .kind = SourceKind::kDenseFp16}, "abc").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace marlin
