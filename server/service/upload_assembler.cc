#include "server/service/upload_assembler.h"

#include <zlib.h>

#include "absl/strings/str_cat.h"

namespace marlin {
namespace {

absl::StatusOr<SourceKind> KindOf(v1::WeightSource source) {
  switch (source) {
    case v1::WEIGHT_SOURCE_DENSE_FP16:
      return SourceKind::kDenseFp16;
    case v1::WEIGHT_SOURCE_DENSE_FP32:
      return SourceKind::kDenseFp32;
    case v1::WEIGHT_SOURCE_GPTQ:
      return SourceKind::kGptq;
    case v1::WEIGHT_SOURCE_PACKED:
      return SourceKind::kPacked;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("header.source must be DENSE_FP16, DENSE_FP32, GPTQ or PACKED, got ",
                       v1::WeightSource_Name(source).empty() ? std::to_string(source)
                                                             : v1::WeightSource_Name(source)));
  }
}

}  // namespace

absl::Status UploadAssembler::OnHeader(const v1::UploadHeader& h) {
  if (have_header_) return absl::InvalidArgumentError("upload sent a second header");
  absl::StatusOr<SourceKind> kind = KindOf(h.source());
  if (!kind.ok()) return kind.status();
  SourceSpec spec;
  spec.kind = *kind;
  spec.shape = WeightShape{.k = h.k(),
                           .n = h.n(),
                           .group_size = h.group_size() == 0 ? kDefaultGroupSize : h.group_size()};
  const bool dense = *kind == SourceKind::kDenseFp16 || *kind == SourceKind::kDenseFp32;
  if (!dense && h.layout() != v1::DENSE_LAYOUT_UNSPECIFIED) {
    return absl::InvalidArgumentError("header.layout applies to dense sources only");
  }
  if (h.layout() == v1::DENSE_LAYOUT_NK) {
    spec.layout = DenseLayout::kNK;
  } else if (h.layout() == v1::DENSE_LAYOUT_KN || h.layout() == v1::DENSE_LAYOUT_UNSPECIFIED) {
    spec.layout = DenseLayout::kKN;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown header.layout ", h.layout()));
  }
  if (h.has_g_idx() && *kind != SourceKind::kGptq) {
    return absl::InvalidArgumentError("header.has_g_idx applies to GPTQ sources only");
  }
  spec.has_g_idx = h.has_g_idx();
  absl::StatusOr<uint64_t> expected = SourceBytes(spec);
  if (!expected.ok()) return expected.status();
  if (h.total_bytes() != *expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.total_bytes is ", h.total_bytes(), " but a ", v1::WeightSource_Name(h.source()),
        " weight of K=", h.k(), " N=", h.n(), " group_size=", spec.shape.group_size,
        spec.has_g_idx ? " with g_idx" : "", " has ", *expected, " bytes"));
  }
  spec_ = spec;
  header_ = h;
  have_header_ = true;
  data_.clear();
  crc_ = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  return absl::OkStatus();
}

absl::Status UploadAssembler::OnChunk(absl::string_view chunk) {
  if (!have_header_) return absl::InvalidArgumentError("the first upload message must be a header");
  if (chunk.size() > kMaxUploadChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat("upload chunk of ", chunk.size(),
                                                   " bytes is larger than the 1 MiB limit (",
                                                   kMaxUploadChunkBytes, " bytes)"));
  }
  if (data_.size() + chunk.size() > header_.total_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload sent more than header.total_bytes = ", header_.total_bytes(),
                     " bytes (", data_.size() + chunk.size(), " so far)"));
  }
  // Reserve on the first chunk, not at the header: an upload that never sends data costs nothing.
  if (data_.empty()) data_.reserve(header_.total_bytes());
  data_.append(chunk.data(), chunk.size());
  crc_ = static_cast<uint32_t>(
      crc32(crc_, reinterpret_cast<const Bytef*>(chunk.data()), static_cast<uInt>(chunk.size())));
  return absl::OkStatus();
}

absl::Status UploadAssembler::CheckComplete() const {
  if (!have_header_) return absl::InvalidArgumentError("upload ended without a header");
  if (data_.size() != header_.total_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload truncated: received ", data_.size(),
                     " of header.total_bytes = ", header_.total_bytes(), " bytes"));
  }
  if (crc_ != header_.crc32()) {
    return absl::DataLossError(absl::StrCat("upload checksum mismatch: CRC-32 of the data is ",
                                            crc_, ", header.crc32 is ", header_.crc32()));
  }
  return absl::OkStatus();
}

absl::StatusOr<PackedWeight> UploadAssembler::Decode() {
  absl::StatusOr<PackedWeight> packed = DecodeSource(spec_, data_);
  Clear();
  return packed;
}

void UploadAssembler::Clear() { std::string().swap(data_); }

}  // namespace marlin
