// The GPU tile layout of weight_format.h: Pack, Unpack and the wire form.
//
// Tile (kt, nt) of 16 x 64 nibbles starts at byte (kt * N/64 + nt) * 512. Lane l = 4c + t of the
// warp owns bytes 16l..16l+15 of the tile: four little-endian words w = 0..3. Word w holds the
// 8-column sub-tiles a = 2w and b = 2w + 1 (columns 8a + c and 8b + c); with r = 2t its nibble
// p = 0..7 is element (r + (p & 4 ? 1 : 0) + (p & 2 ? 8 : 0), (p & 1 ? b : a)).
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/format/weight_format.h"

namespace marlin {
namespace {

absl::Status CheckSizes(const WeightShape& shape, size_t q_values, size_t scale_values,
                        uint64_t expected_q, absl::string_view what) {
  if (absl::Status st = ValidateShape(shape); !st.ok()) return st;
  const uint64_t expected_scales = static_cast<uint64_t>(shape.num_groups() * shape.n);
  if (q_values != expected_q) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", q_values, " weight entries, expected ", expected_q));
  }
  if (scale_values != expected_scales) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", scale_values, " scales, expected ", expected_scales));
  }
  return absl::OkStatus();
}

}  // namespace

NibblePosition PackedNibblePosition(const WeightShape& shape, int64_t k, int64_t n) {
  const int64_t tile = (k / kTileK) * (shape.n / kTileN) + n / kTileN;
  const int64_t kk = k % kTileK;  // row inside the tile
  const int64_t nn = n % kTileN;  // column inside the tile
  const int64_t sub = nn / 8;     // 8-column sub-tile
  const int64_t c = nn % 8;       // column inside the sub-tile = lane / 4
  const int64_t word = sub / 2;
  const int64_t row8 = kk % 8;
  const int64_t t = row8 / 2;  // lane % 4
  const int64_t p = (sub % 2) + 2 * (kk / 8) + 4 * (row8 % 2);
  const int64_t lane = 4 * c + t;
  NibblePosition pos;
  pos.byte = static_cast<uint64_t>(tile * kTileBytes + 16 * lane + 4 * word + p / 2);
  pos.shift = static_cast<int>(4 * (p % 2));
  return pos;
}

uint64_t PackedScaleIndex(const WeightShape& shape, int64_t g, int64_t n) {
  const int64_t nt = n / kTileN;
  const int64_t nn = n % kTileN;  // = 8 * j + i: stored at i * 8 + j
  return static_cast<uint64_t>(g * shape.n + nt * kTileN + (nn % 8) * 8 + nn / 8);
}

absl::StatusOr<PackedWeight> Pack(const QuantizedWeight& weight) {
  const WeightShape& shape = weight.shape;
  if (absl::Status st = ValidateShape(shape); !st.ok()) return st;
  const uint64_t elements = static_cast<uint64_t>(shape.k * shape.n);
  if (absl::Status st =
          CheckSizes(shape, weight.q.size(), weight.scales.size(), elements, "QuantizedWeight");
      !st.ok()) {
    return st;
  }
  PackedWeight out;
  out.shape = shape;
  out.qweight.assign(elements / 2, 0);
  out.scales.resize(weight.scales.size());
  for (int64_t k = 0; k < shape.k; ++k) {
    for (int64_t n = 0; n < shape.n; ++n) {
      const int q = weight.q[k * shape.n + n];
      if (q < -8 || q > 7) {
        return absl::InvalidArgumentError(
            absl::StrCat("q(k=", k, ", n=", n, ") = ", q, " is outside [-8, 7]"));
      }
      const NibblePosition pos = PackedNibblePosition(shape, k, n);
      out.qweight[pos.byte] |= static_cast<uint8_t>((q + 8) << pos.shift);
    }
  }
  for (int64_t g = 0; g < shape.num_groups(); ++g) {
    for (int64_t n = 0; n < shape.n; ++n) {
      out.scales[PackedScaleIndex(shape, g, n)] = weight.scales[g * shape.n + n];
    }
  }
  return out;
}

absl::StatusOr<QuantizedWeight> Unpack(const PackedWeight& packed) {
  const WeightShape& shape = packed.shape;
  if (absl::Status st = ValidateShape(shape); !st.ok()) return st;
  const uint64_t bytes = static_cast<uint64_t>(shape.k * shape.n / 2);
  if (absl::Status st =
          CheckSizes(shape, packed.qweight.size(), packed.scales.size(), bytes, "PackedWeight");
      !st.ok()) {
    return st;
  }
  QuantizedWeight out;
  out.shape = shape;
  out.q.resize(static_cast<size_t>(shape.k * shape.n));
  out.scales.resize(packed.scales.size());
  for (int64_t k = 0; k < shape.k; ++k) {
    for (int64_t n = 0; n < shape.n; ++n) {
      const NibblePosition pos = PackedNibblePosition(shape, k, n);
      out.q[k * shape.n + n] =
          static_cast<int8_t>(((packed.qweight[pos.byte] >> pos.shift) & 0xf) - 8);
    }
  }
  for (int64_t g = 0; g < shape.num_groups(); ++g) {
    for (int64_t n = 0; n < shape.n; ++n) {
      out.scales[g * shape.n + n] = packed.scales[PackedScaleIndex(shape, g, n)];
    }
  }
  return out;
}

uint64_t PackedBytes(const WeightShape& shape) {
  return static_cast<uint64_t>(shape.k * shape.n / 2 + shape.num_groups() * shape.n * 2);
}

std::vector<uint8_t> SerializePacked(const PackedWeight& packed) {
  std::vector<uint8_t> out;
  out.reserve(packed.bytes());
  out.insert(out.end(), packed.qweight.begin(), packed.qweight.end());
  for (uint16_t s : packed.scales) {
    out.push_back(static_cast<uint8_t>(s & 0xff));
    out.push_back(static_cast<uint8_t>(s >> 8));
  }
  return out;
}

absl::StatusOr<PackedWeight> DeserializePacked(const WeightShape& shape,
                                               absl::Span<const uint8_t> bytes) {
  if (absl::Status st = ValidateShape(shape); !st.ok()) return st;
  if (bytes.size() != PackedBytes(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "packed weight for K=", shape.k, " N=", shape.n, " group_size=", shape.group_size,
        " must be ", PackedBytes(shape), " bytes, got ", bytes.size()));
  }
  PackedWeight out;
  out.shape = shape;
  const size_t q_bytes = static_cast<size_t>(shape.k * shape.n / 2);
  out.qweight.assign(bytes.begin(), bytes.begin() + q_bytes);
  out.scales.resize((bytes.size() - q_bytes) / 2);
  for (size_t i = 0; i < out.scales.size(); ++i) {
    out.scales[i] =
        static_cast<uint16_t>(bytes[q_bytes + 2 * i] | (bytes[q_bytes + 2 * i + 1] << 8));
  }
  return out;
}

}  // namespace marlin
