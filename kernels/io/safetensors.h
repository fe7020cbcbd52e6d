// .safetensors files: an 8-byte little-endian header length, a JSON header mapping tensor names
// to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data after the
// header) plus an optional "__metadata__" string map, then the tensor bytes.
//
// ParseSafetensors checks every size and offset against the file and refuses malformed input with
// InvalidArgument (unknown dtypes, offsets out of range or overlapping, sizes that disagree with
// shapes, bad JSON); it never reads outside the buffer.
//
//   ASSIGN_OR_RETURN(marlin::io::SafetensorsFile f,
//   marlin::io::ReadSafetensors("model.safetensors")); for (const std::string& name : f.names()) {
//   ... } ASSIGN_OR_RETURN(marlin::io::Tensor qweight, f.Get("layers.0.mlp.qweight"));
//   RETURN_IF_ERROR(marlin::io::WriteSafetensors("out.safetensors", {{"w", tensor}}));
#ifndef MARLIN_KERNELS_IO_SAFETENSORS_H_
#define MARLIN_KERNELS_IO_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/io/tensor.h"

namespace marlin::io {

// A tensor inside a SafetensorsFile, without copying its bytes (valid while the file lives).
struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> data;
};

class SafetensorsFile {
 public:
  // Copies `bytes`; see ParseSafetensors.
  static absl::StatusOr<SafetensorsFile> Parse(absl::Span<const uint8_t> bytes);
  static absl::StatusOr<SafetensorsFile> Parse(std::vector<uint8_t> bytes);

  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(absl::string_view name) const;
  // NotFound when there is no tensor `name`.
  absl::StatusOr<Tensor> Get(absl::string_view name) const;
  absl::StatusOr<TensorView> View(absl::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin;  // absolute offsets into bytes_
    uint64_t end;
  };
  SafetensorsFile() = default;

  std::vector<uint8_t> bytes_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::map<std::string, std::string> metadata_;
};

absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::Span<const uint8_t> bytes);
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// Tensors in name order, header padded with spaces to a multiple of 8 bytes.
absl::StatusOr<std::vector<uint8_t>> SerializeSafetensors(
    const std::map<std::string, Tensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});
absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace marlin::io

#endif  // MARLIN_KERNELS_IO_SAFETENSORS_H_
