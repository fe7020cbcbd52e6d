#include "server/weight_store/weight_source.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace marlin {
namespace {

template <typename T>
std::vector<T> Copy(absl::string_view bytes, uint64_t offset, uint64_t count) {
  std::vector<T> out(count);
  if (count > 0)
    std::memcpy(out.data(), bytes.data() + offset, count * sizeof(T));  // data() may be null
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

OwnedGptq ExportGptq(const QuantizedWeight& weight, bool minus_one) {
  const int64_t k_dim = weight.shape.k, n_dim = weight.shape.n;
  const int64_t groups = weight.shape.num_groups();
  OwnedGptq out;
  out.qweight.assign(static_cast<size_t>(k_dim / 8 * n_dim), 0);
  for (int64_t k = 0; k < k_dim; ++k) {
    for (int64_t n = 0; n < n_dim; ++n) {
      const auto u = static_cast<uint32_t>(weight.q[k * n_dim + n] + 8);
      auto& word = reinterpret_cast<uint32_t&>(out.qweight[(k / 8) * n_dim + n]);
      word |= u << (4 * (k % 8));
    }
  }
  out.scales = weight.scales;
  const uint32_t zero = minus_one ? 7 : 8;
  uint32_t word = 0;
  for (int i = 0; i < 8; ++i) word |= zero << (4 * i);
  out.qzeros.assign(static_cast<size_t>(groups * (n_dim / 8)), static_cast<int32_t>(word));
  out.g_idx.resize(static_cast<size_t>(k_dim));
  for (int64_t k = 0; k < k_dim; ++k) {
    out.g_idx[k] = static_cast<int32_t>(k / weight.shape.group_rows());
  }
  return out;
}

}  // namespace marlin
