// Decoding of uploaded weight bytes (every WeightSource of the API) into the packed INT4 format.
//
// Sizes are exact: SourceBytes says how many bytes a source of a given shape must have, so an
// upload is checked against it before any data arrives. All values are little-endian.
//
//   SourceSpec spec{.shape = {.k = 4096, .n = 4096}, .kind = SourceKind::kDenseFp16};
//   ASSIGN_OR_RETURN(uint64_t expected, SourceBytes(spec));
//   ASSIGN_OR_RETURN(PackedWeight packed, DecodeSource(spec, bytes));
#ifndef MARLIN_SERVER_WEIGHT_STORE_WEIGHT_SOURCE_H_
#define MARLIN_SERVER_WEIGHT_STORE_WEIGHT_SOURCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/format/weight_format.h"

namespace marlin {

enum class SourceKind {
  kDenseFp16,  // K*N FP16 in `layout`, quantized round-to-nearest on the server
  kDenseFp32,  // K*N FP32 in `layout`
  kGptq,       // qweight int32 [K/8,N], scales fp16 [K/G,N], qzeros int32 [K/G,N/8], g_idx [K]?
  kPacked,     // SerializePacked(): packed nibbles, then permuted scales
};

struct SourceSpec {
  WeightShape shape;
  SourceKind kind = SourceKind::kDenseFp16;
  DenseLayout layout = DenseLayout::kKN;  // dense kinds only
  bool has_g_idx = false;                 // GPTQ only
};

// The exact byte count of a source; INVALID_ARGUMENT when the shape is not one the format holds.
absl::StatusOr<uint64_t> SourceBytes(const SourceSpec& spec);
// Quantizes / imports / unpacks `bytes` (exactly SourceBytes(spec) of them).
absl::StatusOr<PackedWeight> DecodeSource(const SourceSpec& spec, absl::string_view bytes);

// GPTQ tensors that own their data.
struct OwnedGptq {
  std::vector<int32_t> qweight;  // [K/8, N]
  std::vector<uint16_t> scales;  // [K/G, N]
  std::vector<int32_t> qzeros;   // [K/G, N/8]
  std::vector<int32_t> g_idx;    // [K] (row / group_rows)
  GptqTensors view() const { return {qweight, scales, qzeros, g_idx}; }
};
// The inverse of ImportGptq: a symmetric checkpoint (every stored zero 8, or 7 with `minus_one`)
// holding `weight` exactly. For tests and tools that produce GPTQ inputs.
OwnedGptq ExportGptq(const QuantizedWeight& weight, bool minus_one = false);

}  // namespace marlin

#endif  // MARLIN_SERVER_WEIGHT_STORE_WEIGHT_SOURCE_H_
