// Tensor: a dense little-endian, C-order array as read from or written to a tensor file (.npy,
// .safetensors), plus whole-file helpers. The io readers return these; convert with ToVector.
//
//   ASSIGN_OR_RETURN(marlin::io::Tensor t, marlin::io::ReadNpy("w.npy"));
//   if (t.dtype != marlin::io::DType::kF16) return absl::InvalidArgumentError("want F16");
//   std::vector<uint16_t> bits = t.ToVector<uint16_t>();
#ifndef MARLIN_KERNELS_IO_TENSOR_H_
#define MARLIN_KERNELS_IO_TENSOR_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace marlin::io {

enum class DType { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kI64, kU64, kF64 };

// Bytes per element.
int64_t DTypeSize(DType dtype);
// The safetensors name ("F16", "I32", ...) and its inverse.
absl::string_view SafetensorsDTypeName(DType dtype);
std::optional<DType> DTypeFromSafetensorsName(absl::string_view name);
// The .npy descr ("<f2", "|u1", ...); nullopt for types NumPy lacks (BF16), and the inverse.
std::optional<std::string> NpyDescr(DType dtype);
std::optional<DType> DTypeFromNpyDescr(absl::string_view descr);

// Elements of `shape` (1 for a scalar), when all dims are >= 0 and shape product times
// `element_size` is at most `max_bytes`; InvalidArgument otherwise.
absl::StatusOr<int64_t> CheckedNumElements(absl::Span<const int64_t> shape, int64_t element_size,
                                           uint64_t max_bytes);

struct Tensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // little-endian, C order; size == num_elements() * DTypeSize(dtype)

  int64_t num_elements() const;
  // OK when the shape is valid and data has exactly the size it implies.
  absl::Status Validate() const;

  // A tensor holding `values` (T must have the dtype's size, e.g. uint16_t for kF16).
  template <typename T>
  static Tensor FromValues(DType dtype, std::vector<int64_t> shape, absl::Span<const T> values) {
    Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.data.resize(values.size() * sizeof(T));
    if (!values.empty()) std::memcpy(t.data.data(), values.data(), t.data.size());
    return t;
  }
  // The data as T values (sizeof(T) should equal DTypeSize(dtype); trailing bytes are dropped).
  template <typename T>
  std::vector<T> ToVector() const {
    std::vector<T> out(data.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), data.data(), out.size() * sizeof(T));
    return out;
  }
};

// Whole-file helpers: NotFound / Internal errors name the path.
absl::StatusOr<std::vector<uint8_t>> ReadFileBytes(const std::string& path);
absl::Status WriteFileBytes(const std::string& path, absl::Span<const uint8_t> bytes);

}  // namespace marlin::io

#endif  // MARLIN_KERNELS_IO_TENSOR_H_
