#include "server/weight_store/weights_dir.h"

#include <filesystem>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/io/safetensors.h"
#include "server/weight_store/weight_source.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class WeightsDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("weights_dir_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "model");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<float> Random(int64_t count, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0, 0.05f);
    std::vector<float> v(count);
    for (float& x : v) x = d(rng);
    return v;
  }
  std::map<std::string, DirWeight> LoadAll(absl::Status* status) {
    std::map<std::string, DirWeight> out;
    *status = ForEachDirWeight(dir_.string(), [&](const DirWeight& w) {
      out[w.id] = w;
      return absl::OkStatus();
    });
    return out;
  }
  fs::path dir_;
};

TEST_F(WeightsDirTest, LoadsDenseAndGptqUnderTheDocumentedIds) {
  const WeightShape s1{.k = 128, .n = 64, .group_size = 128};
  std::vector<float> w1 = Random(s1.k * s1.n, 1);
  ASSERT_TRUE(io::WriteSafetensors(
                  (dir_ / "single.safetensors").string(),
                  {{"weight", io::Tensor::FromValues<float>(io::DType::kF32, {128, 64}, w1)}})
                  .ok());
  // A PyTorch-style file: [N, K] F16 under "<p>.weight", per-channel scales, plus a bias.
  const WeightShape s2{.k = 256, .n = 128, .group_size = -1};
  std::vector<float> w2 = Random(s2.k * s2.n, 2);
  std::vector<uint16_t> w2_nk(w2.size());
  for (int64_t k = 0; k < s2.k; ++k) {
    for (int64_t n = 0; n < s2.n; ++n) w2_nk[n * s2.k + k] = FloatToHalf(w2[k * s2.n + n]);
  }
  // GPTQ tensors for layer "mlp" in the same file.
  const WeightShape s3{.k = 256, .n = 64, .group_size = 128};
  QuantizedWeight q3 = *QuantizeFp32(Random(s3.k * s3.n, 3), s3, DenseLayout::kKN);
  OwnedGptq g = ExportGptq(q3, /*minus_one=*/true);
  ASSERT_TRUE(
      io::WriteSafetensors(
          (dir_ / "model" / "layers.safetensors").string(),
          {{"attn.q.weight", io::Tensor::FromValues<uint16_t>(io::DType::kF16, {128, 256}, w2_nk)},
           {"attn.q.bias",
            io::Tensor::FromValues<uint16_t>(io::DType::kF16, {128}, std::vector<uint16_t>(128))},
           {"mlp.qweight", io::Tensor::FromValues<int32_t>(io::DType::kI32, {32, 64}, g.qweight)},
           {"mlp.scales", io::Tensor::FromValues<uint16_t>(io::DType::kF16, {2, 64}, g.scales)},
           {"mlp.qzeros", io::Tensor::FromValues<int32_t>(io::DType::kI32, {2, 8}, g.qzeros)},
           {"mlp.g_idx", io::Tensor::FromValues<int32_t>(io::DType::kI32, {256}, g.g_idx)}},
          {{"marlin.layout", "nk"}, {"marlin.group_size", "-1"}})
          .ok());

  absl::Status status;
  std::map<std::string, DirWeight> got = LoadAll(&status);
  ASSERT_TRUE(status.ok()) << status;
  std::vector<std::string> ids;
  for (const auto& [id, w] : got) ids.push_back(id);
  EXPECT_THAT(ids, ElementsAre("model/layers/attn.q", "model/layers/mlp", "single"));

  PackedWeight want1 = *Pack(*QuantizeFp32(w1, s1, DenseLayout::kKN));
  EXPECT_EQ(got["single"].kind, "dense-f32");
  EXPECT_EQ(got["single"].packed.qweight, want1.qweight);
  EXPECT_EQ(got["single"].packed.scales, want1.scales);

  PackedWeight want2 = *Pack(*QuantizeFp16(w2_nk, s2, DenseLayout::kNK));
  EXPECT_EQ(got["model/layers/attn.q"].kind, "dense-f16");
  EXPECT_EQ(got["model/layers/attn.q"].packed.shape, s2);
  EXPECT_EQ(got["model/layers/attn.q"].packed.qweight, want2.qweight);

  PackedWeight want3 = *Pack(q3);
  EXPECT_EQ(got["model/layers/mlp"].kind, "gptq");
  EXPECT_EQ(got["model/layers/mlp"].packed.shape, s3);
  EXPECT_EQ(got["model/layers/mlp"].packed.qweight, want3.qweight);
  EXPECT_EQ(got["model/layers/mlp"].packed.scales, want3.scales);
}

TEST_F(WeightsDirTest, MalformedFilesNameTheProblem) {
  ASSERT_TRUE(io::WriteSafetensors(
                  (dir_ / "bad.safetensors").string(),
                  {{"weight", io::Tensor::FromValues<int32_t>(io::DType::kI32, {128, 64},
                                                              std::vector<int32_t>(128 * 64))}})
                  .ok());
  absl::Status status;
  LoadAll(&status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("bad.safetensors"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("F16 or F32"));

  EXPECT_EQ(
      ForEachDirWeight((dir_ / "nope").string(), [](const DirWeight&) { return absl::OkStatus(); })
          .code(),
      absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace marlin
