// libFuzzer target: matmul request decoding. The input is a serialized marlin.v1.MatmulRequest
// (as it arrives off the wire); a request that passes CheckMatmulRequest against a small weight
// has its activations read as the backends read them (FP16 rows, NaN and Inf included).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "server/service/matmul_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const marlin::WeightShape shape{.k = 128, .n = 64, .group_size = 128};
  marlin::v1::MatmulRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!marlin::CheckMatmulRequest(request, shape, /*max_rows_per_request=*/16,
                                  /*max_message_bytes=*/1 << 20)
           .ok()) {
    return 0;
  }
  if (request.rows() < 1 || request.rows() > 16) std::abort();
  std::vector<uint16_t> x(static_cast<size_t>(request.rows()) * shape.k);
  if (request.activations().size() != x.size() * 2) std::abort();
  std::memcpy(x.data(), request.activations().data(), x.size() * 2);
  float sum = 0;
  for (uint16_t h : x) sum += marlin::HalfToFloat(h);
  (void)sum;
  return 0;
}
