#include "server/service/matmul_request.h"

#include "absl/strings/str_cat.h"

namespace marlin {

absl::Status CheckMatmulRequest(const v1::MatmulRequest& request, const WeightShape& shape,
                                int64_t max_rows_per_request, uint64_t max_message_bytes) {
  if (request.rows() == 0) return absl::InvalidArgumentError("rows must be at least 1");
  if (request.rows() > max_rows_per_request) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rows = ", request.rows(), " is over --max-rows-per-request = ", max_rows_per_request));
  }
  const uint64_t expected = uint64_t{request.rows()} * static_cast<uint64_t>(shape.k) * 2;
  if (request.activations().size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "activations have ", request.activations().size(),
        " bytes; rows x K x 2 = ", request.rows(), " x ", shape.k, " x 2 = ", expected));
  }
  // The answer must fit in one message too (the request did, or gRPC would have refused it).
  const uint64_t answer = uint64_t{request.rows()} * static_cast<uint64_t>(shape.n) * 2;
  if (answer + kMessageOverheadBytes > max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the answer would have rows x N x 2 = ", request.rows(), " x ", shape.n, " x 2 = ", answer,
        " bytes, over --max-message-bytes = ", max_message_bytes, "; send fewer rows per request"));
  }
  return absl::OkStatus();
}

}  // namespace marlin
