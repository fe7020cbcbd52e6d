// The marlin-serve INT4 weight format: shapes, quantization, and the GPU tile packing.
//
// A weight W is a K x N matrix (y = x . W for activations x of M x K). It is stored as symmetric
// 4-bit integers q = clamp(round(w / s), -8, 7) with one FP16 scale s per (group of `group_size`
// consecutive K rows, output column); group_size == kPerChannel means one scale per column.
// The dequantized value of an element is the FP16 rounding of q * s (exactly what the GPU kernel
// computes). docs/weight-format.md specifies the packed byte layout.
//
//   marlin::WeightShape shape{.k = 4096, .n = 4096, .group_size = 128};
//   ASSIGN_OR_RETURN(marlin::QuantizedWeight q, marlin::QuantizeFp32(w, shape, DenseLayout::kKN));
//   ASSIGN_OR_RETURN(marlin::PackedWeight packed, marlin::Pack(q));
#ifndef MARLIN_KERNELS_FORMAT_WEIGHT_FORMAT_H_
#define MARLIN_KERNELS_FORMAT_WEIGHT_FORMAT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace marlin {

// One packed tile holds 16 (K) x 64 (N) nibbles: 512 bytes, 16 bytes for each of a warp's 32 lanes.
inline constexpr int64_t kTileK = 16;
inline constexpr int64_t kTileN = 64;
inline constexpr int64_t kTileBytes = kTileK * kTileN / 2;
// group_size value meaning one scale per output column (the group spans all of K).
inline constexpr int32_t kPerChannel = -1;
// The only grouped size supported today (32 and 64 are reserved, see docs/weight-format.md).
inline constexpr int32_t kDefaultGroupSize = 128;

// Memory order of a dense weight given to the quantizer.
enum class DenseLayout {
  kKN,  // K x N row-major: W itself.
  kNK,  // N x K row-major: PyTorch nn.Linear.weight.
};

struct WeightShape {
  int64_t k = 0;
  int64_t n = 0;
  int32_t group_size = kDefaultGroupSize;  // 128 or kPerChannel

  // K rows per scale (k itself when per-channel).
  int64_t group_rows() const { return group_size == kPerChannel ? k : group_size; }
  // Number of scale rows: K / group_rows().
  int64_t num_groups() const { return k / group_rows(); }
  friend bool operator==(const WeightShape&, const WeightShape&) = default;
};

// OK when the format can hold `shape`: k, n > 0; k % kTileK == 0; n % kTileN == 0; group_size is
// 128 or kPerChannel; k % group_size == 0. Otherwise InvalidArgument naming the shape and the rule.
absl::Status ValidateShape(const WeightShape& shape);

// The logical quantized weight: q[k * n_cols + n] in [-8, 7] (K x N row-major) and FP16 scale bits
// scales[g * N + n] for group g = k / group_rows().
struct QuantizedWeight {
  WeightShape shape;
  std::vector<int8_t> q;
  std::vector<uint16_t> scales;
};

// Round-to-nearest quantization of a dense weight given in `layout` (K*N values).
absl::StatusOr<QuantizedWeight> QuantizeFp32(absl::Span<const float> w, const WeightShape& shape,
                                             DenseLayout layout);
absl::StatusOr<QuantizedWeight> QuantizeFp16(absl::Span<const uint16_t> w, const WeightShape& shape,
                                             DenseLayout layout);

// The weight in the GPU kernel's layout (docs/weight-format.md): `qweight` holds K*N/2 bytes of
// tiles, `scales` num_groups()*N FP16 bits permuted per 64-column tile.
struct PackedWeight {
  WeightShape shape;
  std::vector<uint8_t> qweight;
  std::vector<uint16_t> scales;

  uint64_t bytes() const { return qweight.size() + scales.size() * sizeof(uint16_t); }
};

absl::StatusOr<PackedWeight> Pack(const QuantizedWeight& weight);
absl::StatusOr<QuantizedWeight> Unpack(const PackedWeight& packed);

// Where the packed layout keeps logical element (k, n) of a valid `shape`: the nibble
// (qweight[byte] >> shift) & 0xF holds q + 8. shift is 0 (low nibble) or 4 (high nibble).
struct NibblePosition {
  uint64_t byte = 0;
  int shift = 0;
  friend bool operator==(const NibblePosition&, const NibblePosition&) = default;
};
NibblePosition PackedNibblePosition(const WeightShape& shape, int64_t k, int64_t n);
// Index in PackedWeight::scales of logical scale (group g, column n) of a valid `shape`.
uint64_t PackedScaleIndex(const WeightShape& shape, int64_t g, int64_t n);

// The wire form of a PackedWeight (WEIGHT_SOURCE_PACKED): qweight bytes, then scale bytes (LE).
std::vector<uint8_t> SerializePacked(const PackedWeight& packed);
absl::StatusOr<PackedWeight> DeserializePacked(const WeightShape& shape,
                                               absl::Span<const uint8_t> bytes);
// Bytes SerializePacked produces for `shape` (shape must be valid).
uint64_t PackedBytes(const WeightShape& shape);

// GPTQ checkpoint tensors (AutoGPTQ / GPTQ-for-LLaMa): qweight int32 [K/8, N] with row i of each
// group of 8 K rows in bits 4*(i % 8); scales FP16 [K/G, N]; qzeros int32 [K/G, N/8] packed along
// N; g_idx int32 [K] or empty. Only symmetric checkpoints (every stored zero 7 under the "minus
// one" convention, or every one 8) and trivial g_idx (i / G) are accepted.
struct GptqTensors {
  absl::Span<const int32_t> qweight;
  absl::Span<const uint16_t> scales;
  absl::Span<const int32_t> qzeros;
  absl::Span<const int32_t> g_idx;
};
absl::StatusOr<QuantizedWeight> ImportGptq(const WeightShape& shape, const GptqTensors& tensors);

// FP16 <-> FP32 conversions on raw bits (round to nearest even; portable, no F16C needed).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
// The dequantized value of one element: the FP16 rounding of q * scale, as a float.
float DequantizeElement(int8_t q, uint16_t scale);

}  // namespace marlin

#endif  // MARLIN_KERNELS_FORMAT_WEIGHT_FORMAT_H_
