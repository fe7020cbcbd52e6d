// The protocol of UploadWeight without gRPC: a header, then chunks, then the end of the stream.
// The reactor in matmul_service.cc feeds messages to an UploadAssembler and adds what needs the
// server (drain, id ownership, memory reservation); the fuzz target tests/fuzz/upload_fuzz.cc
// drives it with arbitrary message sequences.
//
//   UploadAssembler a;
//   RETURN_IF_ERROR(a.OnHeader(header));      // checks shape, source, layout and total_bytes
//   RETURN_IF_ERROR(a.OnChunk(bytes));         // per chunk: size limits
//   RETURN_IF_ERROR(a.CheckComplete());        // all bytes, CRC-32 matches
//   ASSIGN_OR_RETURN(PackedWeight w, a.Decode());
//
// Every refusal is INVALID_ARGUMENT naming the problem, except a checksum mismatch (DATA_LOSS).
#ifndef MARLIN_SERVER_SERVICE_UPLOAD_ASSEMBLER_H_
#define MARLIN_SERVER_SERVICE_UPLOAD_ASSEMBLER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/format/weight_format.h"
#include "marlin/v1/matmul_service.pb.h"
#include "server/weight_store/weight_source.h"

namespace marlin {

// Largest data chunk of an upload.
inline constexpr size_t kMaxUploadChunkBytes = size_t{1} << 20;

class UploadAssembler {
 public:
  // The first message. Refuses a second header, and any header whose source, layout, shape or
  // total_bytes is not what the source implies. Does not look at weight_id.
  absl::Status OnHeader(const v1::UploadHeader& header);
  // A data message: refused before the header, over kMaxUploadChunkBytes, or past total_bytes.
  absl::Status OnChunk(absl::string_view chunk);
  // The stream ended: refused without a header, truncated, or with a CRC-32 mismatch.
  absl::Status CheckComplete() const;
  // Decodes the complete data into the packed format and frees it.
  absl::StatusOr<PackedWeight> Decode();
  // Frees the received data.
  void Clear();

  bool have_header() const { return have_header_; }
  const v1::UploadHeader& header() const { return header_; }
  const SourceSpec& spec() const { return spec_; }
  uint64_t received() const { return data_.size(); }

 private:
  bool have_header_ = false;
  v1::UploadHeader header_;
  SourceSpec spec_;
  std::string data_;
  uint32_t crc_ = 0;
};

}  // namespace marlin

#endif  // MARLIN_SERVER_SERVICE_UPLOAD_ASSEMBLER_H_
