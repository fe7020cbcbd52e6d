#include "server/weight_store/weight_source.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace marlin {
namespace {

template <typename T>
std::vector<T> Copy(absl::string_view bytes, uint64_t offset, uint64_t count) {
  std::vector<T> out(count);
  std::memcpy(out.data(), bytes.data() + offset, count * sizeof(T));
  return out;
}

struct GptqSizes {
  uint64_t qweight, scales, qzeros, g_idx;  // element counts
};

GptqSizes GptqCounts(const SourceSpec& spec) {
  const auto k = static_cast<uint64_t>(spec.shape.k);
  const auto n = static_cast<uint64_t>(spec.shape.n);
  const auto g = static_cast<uint64_t>(spec.shape.num_groups());
  return {k / 8 * n, g * n, g * (n / 8), spec.has_g_idx ? k : 0};
}

}  // namespace

absl::StatusOr<uint64_t> SourceBytes(const SourceSpec& spec) {
  if (absl::Status st = ValidateShape(spec.shape); !st.ok()) return st;
  const auto kn = static_cast<uint64_t>(spec.shape.k) * static_cast<uint64_t>(spec.shape.n);
  switch (spec.kind) {
    case SourceKind::kDenseFp16:
      return kn * 2;
    case SourceKind::kDenseFp32:
      return kn * 4;
    case SourceKind::kGptq: {
      const GptqSizes c = GptqCounts(spec);
      return c.qweight * 4 + c.scales * 2 + c.qzeros * 4 + c.g_idx * 4;
    }
    case SourceKind::kPacked:
      return PackedBytes(spec.shape);
  }
  return absl::InvalidArgumentError("unknown weight source");
}

absl::StatusOr<PackedWeight> DecodeSource(const SourceSpec& spec, absl::string_view bytes) {
  absl::StatusOr<uint64_t> expected = SourceBytes(spec);
  if (!expected.ok()) return expected.status();
  if (bytes.size() != *expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight data has ", bytes.size(), " bytes, expected ", *expected));
  }
  const auto kn = static_cast<uint64_t>(spec.shape.k) * static_cast<uint64_t>(spec.shape.n);
  absl::StatusOr<QuantizedWeight> q;
  switch (spec.kind) {
    case SourceKind::kDenseFp16:
      q = QuantizeFp16(Copy<uint16_t>(bytes, 0, kn), spec.shape, spec.layout);
      break;
    case SourceKind::kDenseFp32:
      q = QuantizeFp32(Copy<float>(bytes, 0, kn), spec.shape, spec.layout);
      break;
    case SourceKind::kGptq: {
      const GptqSizes c = GptqCounts(spec);
      uint64_t at = 0;
      auto qweight = Copy<int32_t>(bytes, at, c.qweight);
      at += c.qweight * 4;
      auto scales = Copy<uint16_t>(bytes, at, c.scales);
      at += c.scales * 2;
      auto qzeros = Copy<int32_t>(bytes, at, c.qzeros);
      at += c.qzeros * 4;
      auto g_idx = Copy<int32_t>(bytes, at, c.g_idx);
      q = ImportGptq(spec.shape, {qweight, scales, qzeros, g_idx});
      break;
    }
    case SourceKind::kPacked:
      return DeserializePacked(
          spec.shape,
          absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  }
  if (!q.ok()) return q.status();
  return Pack(*q);
}

}  // namespace marlin
