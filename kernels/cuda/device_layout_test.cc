// Tests of the device layouts' conversion (device_layout.h). The conversion itself needs a CUDA
// device (skipped without one); argument checks run everywhere. Fresh random bytes each run.
#include "kernels/cuda/device_layout.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/gemm_dispatch.h"

namespace marlin::cuda {
namespace {

// Tile t's word j of lane l: at 32-bit index 128 t + 4 l + j when packed, 128 t + 32 j + l when
// word-major.
std::vector<uint32_t> HostWordMajor(const std::vector<uint32_t>& packed) {
  std::vector<uint32_t> out(packed.size());
  for (size_t t = 0; t < packed.size() / 128; ++t) {
    for (int l = 0; l < 32; ++l) {
      for (int j = 0; j < 4; ++j) out[128 * t + 32 * j + l] = packed[128 * t + 4 * l + j];
    }
  }
  return out;
}

// Converts the weight at `dev` in place and reads its words back.
std::vector<uint32_t> ConvertAndRead(void* dev, const WeightShape& shape, DeviceLayout from,
                                     DeviceLayout to, cudaStream_t stream) {
  EXPECT_TRUE(ConvertDeviceLayout(dev, shape, from, to, stream).ok());
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<uint32_t> out(shape.k * shape.n / 8);
  EXPECT_EQ(cudaMemcpy(out.data(), dev, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

TEST(DeviceLayoutTest, WordMajorTilesRearrangeEveryTileAndConvertBack) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  Stream stream = Stream::Create().value();
  // 15 tiles; 65536 tiles, more than one grid's warps (the kernel strides over the rest).
  for (const WeightShape& shape : {WeightShape{48, 320, kPerChannel}, WeightShape{8192, 8192}}) {
    SCOPED_TRACE(absl::StrCat("K=", shape.k, " N=", shape.n, " seed=", seed));
    std::vector<uint32_t> packed(shape.k * shape.n / 8);
    for (auto& w : packed) w = static_cast<uint32_t>(rng());
    DeviceBuffer dev = DeviceBuffer::Create(packed.size() * 4).value();
    ASSERT_EQ(cudaMemcpy(dev.get(), packed.data(), packed.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(ConvertAndRead(dev.get(), shape, DeviceLayout::kPacked, DeviceLayout::kWordMajorTiles,
                             stream.get()),
              HostWordMajor(packed));
    EXPECT_EQ(ConvertAndRead(dev.get(), shape, DeviceLayout::kWordMajorTiles,
                             DeviceLayout::kWordMajorTiles, stream.get()),
              HostWordMajor(packed))
        << "a conversion into the same layout must leave the words alone";
    EXPECT_EQ(ConvertAndRead(dev.get(), shape, DeviceLayout::kWordMajorTiles, DeviceLayout::kPacked,
                             stream.get()),
              packed);
  }
}

TEST(DeviceLayoutTest, RefusesBadShapesAndMisalignedPointers) {
  alignas(16) static uint32_t words[64];
  const absl::Status bad_shape = ConvertDeviceLayout(
      words, WeightShape{100, 64}, DeviceLayout::kPacked, DeviceLayout::kWordMajorTiles, nullptr);
  EXPECT_EQ(bad_shape.code(), absl::StatusCode::kInvalidArgument) << bad_shape;
  const absl::Status misaligned =
      ConvertDeviceLayout(reinterpret_cast<char*>(words) + 4, WeightShape{128, 64},
                          DeviceLayout::kPacked, DeviceLayout::kWordMajorTiles, nullptr);
  EXPECT_EQ(misaligned.code(), absl::StatusCode::kInvalidArgument) << misaligned;
  EXPECT_NE(misaligned.message().find("aligned"), absl::string_view::npos) << misaligned;
}

TEST(DeviceLayoutTest, FastestLayoutIsWordMajorExactlyWhereTheHopperPathRuns) {
  for (int sm : {75, 80, 86, 89, 90, 100}) {
    EXPECT_EQ(FastestDeviceLayout(sm) == DeviceLayout::kWordMajorTiles,
              GemmPathAvailable(GemmPath::kHopper, sm))
        << "sm_" << sm;
  }
  EXPECT_STREQ(DeviceLayoutName(DeviceLayout::kWordMajorTiles), "word-major tiles");
}

}  // namespace
}  // namespace marlin::cuda
