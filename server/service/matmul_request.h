// The checks of a matmul request that need no server state besides its weight's shape and the
// limits; used by the service and by the fuzz target tests/fuzz/matmul_request_fuzz.cc.
//
//   RETURN_IF_ERROR(CheckMatmulRequest(request, weight->shape(), max_rows, max_message_bytes));
#ifndef MARLIN_SERVER_SERVICE_MATMUL_REQUEST_H_
#define MARLIN_SERVER_SERVICE_MATMUL_REQUEST_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/format/weight_format.h"
#include "marlin/v1/matmul_service.pb.h"

namespace marlin {

// Room for a message's fields besides its payload (ids, shape, status, timing) when sizing
// messages against --max-message-bytes.
inline constexpr uint64_t kMessageOverheadBytes = 64 << 10;

// The request against its weight's shape and the limits (the id is checked before):
// INVALID_ARGUMENT for rows 0 or over --max-rows-per-request and for activations of the wrong
// size, RESOURCE_EXHAUSTED when the answer could not be sent in one message.
absl::Status CheckMatmulRequest(const v1::MatmulRequest& request, const WeightShape& shape,
                                int64_t max_rows_per_request, uint64_t max_message_bytes);

}  // namespace marlin

#endif  // MARLIN_SERVER_SERVICE_MATMUL_REQUEST_H_
