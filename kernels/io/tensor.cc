// DType tables, shape arithmetic and file helpers of tensor.h.
#include "kernels/io/tensor.h"

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace marlin::io {
namespace {

static_assert(std::endian::native == std::endian::little, "the tensor readers assume a LE host");

struct DTypeInfo {
  DType dtype;
  int64_t size;
  absl::string_view safetensors;
  absl::string_view npy;  // empty: no NumPy equivalent
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, 1, "BOOL", "|b1"}, {DType::kU8, 1, "U8", "|u1"},
    {DType::kI8, 1, "I8", "|i1"},     {DType::kI16, 2, "I16", "<i2"},
    {DType::kU16, 2, "U16", "<u2"},   {DType::kF16, 2, "F16", "<f2"},
    {DType::kBF16, 2, "BF16", ""},    {DType::kI32, 4, "I32", "<i4"},
    {DType::kU32, 4, "U32", "<u4"},   {DType::kF32, 4, "F32", "<f4"},
    {DType::kI64, 8, "I64", "<i8"},   {DType::kU64, 8, "U64", "<u8"},
    {DType::kF64, 8, "F64", "<f8"},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

}  // namespace

int64_t DTypeSize(DType dtype) { return Info(dtype).size; }

absl::string_view SafetensorsDTypeName(DType dtype) { return Info(dtype).safetensors; }

std::optional<DType> DTypeFromSafetensorsName(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.safetensors == name) return info.dtype;
  }
  return std::nullopt;
}

std::optional<std::string> NpyDescr(DType dtype) {
  if (Info(dtype).npy.empty()) return std::nullopt;
  return std::string(Info(dtype).npy);
}

std::optional<DType> DTypeFromNpyDescr(absl::string_view descr) {
  // Single-byte types may also be written with '<' or '='; multi-byte ones need '<' (or '=',
  // native, which is little-endian here).
  if (descr.size() < 2) return std::nullopt;
  const char order = descr[0];
  for (const DTypeInfo& info : kDTypes) {
    if (info.npy.empty() || info.npy.substr(1) != descr.substr(1)) continue;
    if (order == '<' || order == '=' || (order == '|' && info.size == 1)) return info.dtype;
  }
  return std::nullopt;
}

absl::StatusOr<int64_t> CheckedNumElements(absl::Span<const int64_t> shape, int64_t element_size,
                                           uint64_t max_bytes) {
  uint64_t count = 1;
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension in shape [", absl::StrJoin(shape, ", "), "]"));
    }
    if (d == 0) zero = true;
  }
  if (zero) return 0;
  const uint64_t limit = max_bytes / static_cast<uint64_t>(element_size);
  for (int64_t d : shape) {
    if (static_cast<uint64_t>(d) > limit / count) {
      return absl::InvalidArgumentError(absl::StrCat("shape [", absl::StrJoin(shape, ", "),
                                                     "] needs more than ", max_bytes, " bytes"));
    }
    count *= static_cast<uint64_t>(d);
  }
  return static_cast<int64_t>(count);
}

int64_t Tensor::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status Tensor::Validate() const {
  absl::StatusOr<int64_t> n =
      CheckedNumElements(shape, DTypeSize(dtype), std::numeric_limits<int64_t>::max());
  if (!n.ok()) return n.status();
  const uint64_t want = static_cast<uint64_t>(*n) * DTypeSize(dtype);
  if (data.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("tensor of shape [", absl::StrJoin(shape, ", "),
                                                   "] and dtype ", SafetensorsDTypeName(dtype),
                                                   " needs ", want, " bytes, has ", data.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (size < 0 || !in) return absl::InternalError(absl::StrCat("cannot size ", path));
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.read(reinterpret_cast<char*>(bytes.data()), size);
  if (!in) return absl::InternalError(absl::StrCat("error reading ", path));
  return bytes;
}

absl::Status WriteFileBytes(const std::string& path, absl::Span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

}  // namespace marlin::io
