// Tests of the .npy reader and writer: round trips, NumPy-written headers, refusals, mutations.
#include "kernels/io/npy.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/io/tensor.h"

namespace marlin::io {
namespace {

using ::testing::HasSubstr;

// A file as NumPy writes it: magic, version, LE header length, dict text padded to 64, data.
std::vector<uint8_t> NpyBytes(const std::string& dict, std::vector<uint8_t> data, int major = 1) {
  const size_t preamble = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((preamble + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  for (size_t i = 0; i < preamble - 8; ++i)
    out.push_back(static_cast<uint8_t>(header.size() >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

TEST(NpyTest, ParsesNumpyStyleHeaders) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  std::vector<uint8_t> data(24);
  std::memcpy(data.data(), values.data(), 24);
  for (int major : {1, 2, 3}) {
    absl::StatusOr<Tensor> t = ParseNpy(
        NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data, major));
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype, DType::kF32);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(t->ToVector<float>(), values);
  }
  // Other key orders, double quotes, no trailing comma, 1-D and scalar shapes.
  absl::StatusOr<Tensor> t =
      ParseNpy(NpyBytes("{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"<i4\"}",
                        {1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->ToVector<int32_t>(), (std::vector<int32_t>{1, 2, 3}));
  t = ParseNpy(NpyBytes("{'descr': '<f2', 'fortran_order': False, 'shape': (), }", {0x00, 0x3c}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->shape.empty());
  EXPECT_EQ(t->ToVector<uint16_t>(), (std::vector<uint16_t>{0x3c00}));
  t = ParseNpy(NpyBytes("{'descr': '|u1', 'fortran_order': False, 'shape': (0, 5), }", {}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->num_elements(), 0);
}

TEST(NpyTest, RoundTripsEveryDtypeThroughAFile) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const std::string path = ::testing::TempDir() + "/npy_test_roundtrip.npy";
  for (DType dtype : {DType::kF16, DType::kF32, DType::kI32, DType::kU8, DType::kI64, DType::kF64,
                      DType::kBool, DType::kI8, DType::kU16}) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{}, {7}, {3, 5}, {2, 3, 4}, {0}, {4, 0}}) {
      Tensor t;
      t.dtype = dtype;
      t.shape = shape;
      t.data.resize(t.num_elements() * DTypeSize(dtype));
      for (uint8_t& b : t.data) b = static_cast<uint8_t>(rng());
      ASSERT_TRUE(WriteNpy(path, t).ok());
      absl::StatusOr<Tensor> back = ReadNpy(path);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(back->dtype, dtype);
      EXPECT_EQ(back->shape, shape);
      EXPECT_EQ(back->data, t.data);
      absl::StatusOr<std::vector<uint8_t>> bytes = SerializeNpy(t);
      ASSERT_TRUE(bytes.ok());
      EXPECT_EQ((bytes->size() - t.data.size()) % 64, 0u);  // data 64-byte aligned
    }
  }
  // A header too long for version 1.0 switches to 2.0.
  Tensor big;
  big.dtype = DType::kU8;
  big.shape.assign(25000, 1);
  big.data = {42};
  absl::StatusOr<std::vector<uint8_t>> bytes = SerializeNpy(big);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ((*bytes)[6], 2);
  absl::StatusOr<Tensor> back = ParseNpy(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape.size(), 25000u);
}

TEST(NpyTest, RefusesMalformedFiles) {
  const std::vector<uint8_t> four(4, 0);
  const struct {
    std::vector<uint8_t> bytes;
    std::string error;
  } cases[] = {
      {{}, "magic"},
      {{'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0, 0}, "magic"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", four), "fortran_order"},
      {NpyBytes("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", four), "dtype '>f4'"},
      {NpyBytes("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", four), "dtype"},
      {NpyBytes("{'descr': '|f4', 'fortran_order': False, 'shape': (1,), }", four), "dtype"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", four), "needs 8"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", {0, 0, 0, 0, 0}),
       "needs 4"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", four), "shape"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
                four),
       "shape"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
                four),
       "bytes"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False}", four), "must have"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", four), "'x'"},
      {NpyBytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", four),
       "repeated"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", four), "True or False"},
      {NpyBytes("{'descr': '<f4' 'fortran_order': False, 'shape': (1,), }", four), "','"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk", four),
       "trailing"},
      {NpyBytes("['descr']", four), "dict"},
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", four, 4), "version"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.error);
    absl::StatusOr<Tensor> t = ParseNpy(c.bytes);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(c.error));
  }
  // Header length past the end of the file.
  std::vector<uint8_t> bytes =
      NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", four);
  bytes[8] = 0xff;
  bytes[9] = 0xff;
  EXPECT_THAT(ParseNpy(bytes).status().message(), HasSubstr("past the end"));
  EXPECT_EQ(ReadNpy(::testing::TempDir() + "/does/not/exist.npy").status().code(),
            absl::StatusCode::kNotFound);
  Tensor bf16;
  bf16.dtype = DType::kBF16;
  bf16.shape = {1};
  bf16.data = {0, 0};
  EXPECT_EQ(SerializeNpy(bf16).status().code(), absl::StatusCode::kInvalidArgument);
  bf16.dtype = DType::kF32;  // 2 bytes for one F32 element
  EXPECT_EQ(SerializeNpy(bf16).status().code(), absl::StatusCode::kInvalidArgument);
}

// Random byte mutations and truncations of a valid file: any result is fine but a crash.
TEST(NpyTest, SurvivesMutatedInput) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  Tensor t;
  t.dtype = DType::kF16;
  t.shape = {3, 4};
  t.data.assign(24, 7);
  const std::vector<uint8_t> good = *SerializeNpy(t);
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> bytes = good;
    const int edits = 1 + rng() % 4;
    for (int e = 0; e < edits; ++e) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    absl::StatusOr<Tensor> parsed = ParseNpy(bytes);
    if (parsed.ok()) {
      EXPECT_TRUE(parsed->Validate().ok());
    } else {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace marlin::io
