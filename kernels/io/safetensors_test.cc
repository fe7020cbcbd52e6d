// Tests of the .safetensors reader and writer: round trips, a hand-built file, refusals, mutations.
#include "kernels/io/safetensors.h"

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/io/tensor.h"

namespace marlin::io {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<uint8_t> FileBytes(const std::string& header, std::vector<uint8_t> data) {
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

TEST(SafetensorsTest, ParsesAHandBuiltFile) {
  const std::string header = R"({"__metadata__": {"format": "pt"},)"
                             R"( "b": {"dtype": "I32", "shape": [2], "data_offsets": [4, 12]},)"
                             R"( "a": {"dtype": "F16", "shape": [1, 2], "data_offsets": [0, 4]}})";
  absl::StatusOr<SafetensorsFile> f = ParseSafetensors(
      FileBytes(header, {0x00, 0x3c, 0x00, 0xc0, 5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(f->names(), ElementsAre("a", "b"));
  EXPECT_EQ(f->metadata().at("format"), "pt");
  absl::StatusOr<Tensor> a = f->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dtype, DType::kF16);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(a->ToVector<uint16_t>(), (std::vector<uint16_t>{0x3c00, 0xc000}));
  absl::StatusOr<TensorView> b = f->View("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype, DType::kI32);
  ASSERT_EQ(b->data.size(), 8u);
  EXPECT_EQ(b->data[0], 5);
  EXPECT_TRUE(f->contains("b"));
  EXPECT_FALSE(f->contains("c"));
  EXPECT_EQ(f->Get("c").status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, RoundTripsThroughAFile) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::map<std::string, Tensor> tensors;
  const DType dtypes[] = {DType::kF16,  DType::kF32, DType::kI32,
                          DType::kBF16, DType::kU8,  DType::kI64};
  for (int i = 0; i < 12; ++i) {
    Tensor t;
    t.dtype = dtypes[i % 6];
    for (int d = 0; d < static_cast<int>(rng() % 4); ++d) t.shape.push_back(rng() % 5);
    t.data.resize(t.num_elements() * DTypeSize(t.dtype));
    for (uint8_t& b : t.data) b = static_cast<uint8_t>(rng());
    tensors["layer." + std::to_string(i) + ".w"] = t;
  }
  const std::string path = ::testing::TempDir() + "/safetensors_test.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"quant", "int4"}}).ok());
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->names().size(), tensors.size());
  EXPECT_EQ(f->metadata().at("quant"), "int4");
  for (const auto& [name, t] : tensors) {
    absl::StatusOr<Tensor> back = f->Get(name);
    ASSERT_TRUE(back.ok()) << name;
    EXPECT_EQ(back->dtype, t.dtype) << name;
    EXPECT_EQ(back->shape, t.shape) << name;
    EXPECT_EQ(back->data, t.data) << name;
  }
  absl::StatusOr<std::vector<uint8_t>> bytes = SerializeSafetensors(tensors);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ((*bytes)[0] % 8, 0);  // header padded to 8 bytes
}

TEST(SafetensorsTest, RefusesMalformedFiles) {
  const std::vector<uint8_t> eight(8, 0);
  const struct {
    std::string header;
    std::string error;
  } cases[] = {
      {"not json", "valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {R"({"a": {"dtype": "F16", "shape": [2]}})", "data_offsets"},
      {R"({"a": 3})", "needs"},
      {R"({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}})", "unsupported"},
      {R"({"a": {"dtype": 5, "shape": [8], "data_offsets": [0, 8]}})", "not a string"},
      {R"({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 16]}})", "outside"},
      {R"({"a": {"dtype": "F16", "shape": [4], "data_offsets": [6, 2]}})", "outside"},
      {R"({"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}})", "need 6"},
      {R"({"a": {"dtype": "F16", "shape": [-4], "data_offsets": [0, 8]}})", "non-negative"},
      {R"({"a": {"dtype": "F16", "shape": [4.0], "data_offsets": [0, 8]}})", "non-negative"},
      {R"({"a": {"dtype": "F16", "shape": 4, "data_offsets": [0, 8]}})", "not a list"},
      {R"({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8, 9]}})", "[b, e]"},
      {R"({"a": {"dtype": "F16", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}})",
       "bytes"},
      {R"({"a": {"dtype": "F16", "shape": [18446744073709551615], "data_offsets": [0, 8]}})",
       "dimension"},
      {R"({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},)"
       R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [6, 8]}})",
       "overlap"},
      {R"({"__metadata__": {"k": 1}})", "metadata"},
      {R"({"__metadata__": []})", "__metadata__"},
      {std::string(100, '[') + std::string(100, ']'), "deeply"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    absl::StatusOr<SafetensorsFile> f = ParseSafetensors(FileBytes(c.header, eight));
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(f.status().message(), HasSubstr(c.error));
  }
  EXPECT_THAT(ParseSafetensors(std::vector<uint8_t>{1, 2, 3}).status().message(),
              HasSubstr("8-byte"));
  std::vector<uint8_t> bytes = FileBytes("{}", {});
  bytes[0] = 200;
  EXPECT_THAT(ParseSafetensors(bytes).status().message(), HasSubstr("past the end"));
  bytes[0] = 0;
  bytes[7] = 0xff;
  EXPECT_EQ(ParseSafetensors(bytes).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadSafetensors(::testing::TempDir() + "/no/such.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  Tensor wrong;
  wrong.dtype = DType::kF32;
  wrong.shape = {3};
  wrong.data.resize(8);
  EXPECT_EQ(SerializeSafetensors({{"w", wrong}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseSafetensors(FileBytes("{}", {})).ok());  // an empty file is valid
  EXPECT_THAT(SerializeSafetensors({{"bad\xff", Tensor{DType::kU8, {0}, {}}}}).status().message(),
              HasSubstr("UTF-8"));
}

// Random byte mutations and truncations of a valid file: any result is fine but a crash.
TEST(SafetensorsTest, SurvivesMutatedInput) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  Tensor a = Tensor::FromValues<uint16_t>(DType::kF16, {2, 2}, std::vector<uint16_t>{1, 2, 3, 4});
  Tensor b = Tensor::FromValues<int32_t>(DType::kI32, {3}, std::vector<int32_t>{5, 6, 7});
  const std::vector<uint8_t> good = *SerializeSafetensors({{"a", a}, {"b", b}}, {{"k", "v"}});
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> bytes = good;
    const int edits = 1 + rng() % 4;
    for (int e = 0; e < edits; ++e) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    absl::StatusOr<SafetensorsFile> f = ParseSafetensors(bytes);
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    for (const std::string& name : f->names()) {
      absl::StatusOr<Tensor> t = f->Get(name);
      ASSERT_TRUE(t.ok());
      EXPECT_TRUE(t->Validate().ok());
    }
  }
}

}  // namespace
}  // namespace marlin::io
