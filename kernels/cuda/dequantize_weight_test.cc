// Tests of the column-range dequantization (dequantize_weight.h) against the CPU reference, bit
// for bit: every value must be exactly DequantizeElement(q, s), the FP16 rounding of q * s. The
// kernel needs a CUDA device (skipped without one); argument checks run everywhere. Fresh random
// weights each run; the seed is printed on failure.
#include "kernels/cuda/dequantize_weight.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/format/weight_format.h"

namespace marlin::cuda {
namespace {

constexpr uint16_t kPoison = 0x7e00;  // FP16 NaN: a value the kernel fails to write shows up

// Random q in [-8, 7] and scales spanning FP16's range (subnormal to 2^10), signs included, so
// every rounding case of q * s occurs.
QuantizedWeight RandomWeight(const WeightShape& shape, std::mt19937_64& rng) {
  QuantizedWeight w;
  w.shape = shape;
  w.q.resize(shape.k * shape.n);
  for (auto& q : w.q) q = static_cast<int8_t>(static_cast<int>(rng() % 16) - 8);
  w.scales.resize(shape.num_groups() * shape.n);
  std::uniform_real_distribution<float> exponent(-25.f, 10.f);
  for (auto& s : w.scales) {
    const float magnitude = std::exp2(exponent(rng));
    s = FloatToHalf(rng() % 2 ? magnitude : -magnitude);
  }
  return w;
}

class DequantizeWeightTest : public ::testing::TestWithParam<DeviceLayout> {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    stream_ = Stream::Create().value();
  }

  // Uploads `w` packed in the test's layout, dequantizes columns [n0, n0 + cols) and checks every
  // value (and that nothing past the range was written).
  void CheckRange(const QuantizedWeight& w, int64_t n0, int64_t cols) {
    SCOPED_TRACE(absl::StrCat("K=", w.shape.k, " N=", w.shape.n, " group=", w.shape.group_size,
                              " columns [", n0, ", ", n0 + cols, ") seed=", seed_));
    const PackedWeight packed = Pack(w).value();
    DeviceBuffer q = DeviceBuffer::Create(packed.qweight.size()).value();
    DeviceBuffer s = DeviceBuffer::Create(packed.scales.size() * 2).value();
    ASSERT_EQ(
        cudaMemcpy(q.get(), packed.qweight.data(), packed.qweight.size(), cudaMemcpyHostToDevice),
        cudaSuccess);
    ASSERT_EQ(
        cudaMemcpy(s.get(), packed.scales.data(), packed.scales.size() * 2, cudaMemcpyHostToDevice),
        cudaSuccess);
    ASSERT_TRUE(
        ConvertDeviceLayout(q.get(), w.shape, DeviceLayout::kPacked, GetParam(), stream_.get())
            .ok());
    const int64_t k = w.shape.k;
    const int64_t slack = 64;  // halves past the range that must stay poisoned
    std::vector<uint16_t> out(k * cols + slack, kPoison);
    DeviceBuffer dout = DeviceBuffer::Create(out.size() * 2).value();
    ASSERT_EQ(cudaMemcpy(dout.get(), out.data(), out.size() * 2, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const DeviceWeight dw{q.get(), s.as<__half>(), w.shape, GetParam()};
    const absl::Status st = DequantizeColumns(dw, n0, cols, dout.as<__half>(), stream_.get());
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(stream_.Synchronize(), absl::OkStatus());
    ASSERT_EQ(cudaMemcpy(out.data(), dout.get(), out.size() * 2, cudaMemcpyDeviceToHost),
              cudaSuccess);
    int64_t wrong = 0;
    for (int64_t j = 0; j < cols; ++j) {
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t n = n0 + j;
        const float want = DequantizeElement(w.q[kk * w.shape.n + n],
                                             w.scales[kk / w.shape.group_rows() * w.shape.n + n]);
        const uint16_t got = out[kk * cols + j];
        if (got != FloatToHalf(want) && wrong++ < 5) {
          ADD_FAILURE() << "d[" << kk << "][" << n << "] = " << HalfToFloat(got) << ", want "
                        << want;
        }
      }
    }
    EXPECT_EQ(wrong, 0);
    for (int64_t i = k * cols; i < k * cols + slack; ++i) {
      EXPECT_EQ(out[i], kPoison) << "written past the range at " << i;
    }
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  Stream stream_;
};

TEST_P(DequantizeWeightTest, Int4ToFp16_Group128_WholeWeightAndInnerRanges) {
  const QuantizedWeight w = RandomWeight(WeightShape{512, 640, 128}, rng_);
  CheckRange(w, 0, 640);
  CheckRange(w, 64, 128);
  CheckRange(w, 576, 64);
}

TEST_P(DequantizeWeightTest, Int4ToFp16_PerChannel_KNotAMultipleOfTheGroup) {
  const QuantizedWeight w = RandomWeight(WeightShape{272, 192, kPerChannel}, rng_);
  CheckRange(w, 0, 192);
  CheckRange(w, 128, 64);
}

// More tiles than one grid's warps: the kernel strides over the rest.
TEST_P(DequantizeWeightTest, Int4ToFp16_Group128_MoreTilesThanTheGrid) {
  const QuantizedWeight w = RandomWeight(WeightShape{4096, 8448, 128}, rng_);
  CheckRange(w, 128, 8192);
}

INSTANTIATE_TEST_SUITE_P(Layouts, DequantizeWeightTest,
                         ::testing::Values(DeviceLayout::kPacked, DeviceLayout::kWordMajorTiles),
                         [](const ::testing::TestParamInfo<DeviceLayout>& info) {
                           return info.param == DeviceLayout::kPacked ? "PackedLayout"
                                                                      : "WordMajorTiles";
                         });

// Argument checks, which fail before anything is launched: no device needed.
TEST(DequantizeWeightArgumentsTest, RefusesRangesThatAreNotWholeTilesWithinN) {
  for (DeviceLayout layout : {DeviceLayout::kPacked, DeviceLayout::kWordMajorTiles}) {
    const DeviceWeight w{reinterpret_cast<const void*>(256), reinterpret_cast<const __half*>(256),
                         WeightShape{128, 256, 128}, layout};
    auto* out = reinterpret_cast<__half*>(256);
    const std::pair<int64_t, int64_t> ranges[] = {
        {0, 0}, {32, 64}, {0, 96}, {192, 128}, {-64, 128}};
    for (const auto& [n0, cols] : ranges) {
      const absl::Status s = DequantizeColumns(w, n0, cols, out, nullptr);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << n0 << " " << cols << ": " << s;
      EXPECT_NE(s.message().find("64-column tiles"), absl::string_view::npos) << s;
    }
    const absl::Status misaligned =
        DequantizeColumns(w, 0, 64, reinterpret_cast<__half*>(258), nullptr);
    EXPECT_EQ(misaligned.code(), absl::StatusCode::kInvalidArgument) << misaligned;
    const DeviceWeight bad_shape{w.qweight, w.scales, WeightShape{100, 256, 128}, layout};
    EXPECT_EQ(DequantizeColumns(bad_shape, 0, 64, out, nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace marlin::cuda
