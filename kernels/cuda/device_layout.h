// How a packed INT4 weight's words lie in device memory, and the in-place conversion between
// layouts. A 512-byte tile of the packed format (docs/weight-format.md) holds four 4-byte words
// for each of 32 lanes; the Hopper path's consumer warp j dequantizes word j of every lane, which
// in the packed layout sits in one of only 8 shared-memory banks (a 4-way conflict on every load).
// kWordMajorTiles stores each tile's words grouped by word index instead, so that warp reads 32
// consecutive words. Gemm takes either on the Hopper path and only kPacked on the Ampere path.
//
//   DeviceWeight w{qweight_dev, scales_dev, shape};
//   w.layout = FastestDeviceLayout(compute_capability);
//   RETURN_IF_ERROR(ConvertDeviceLayout(qweight_dev, shape, DeviceLayout::kPacked, w.layout, s));
#ifndef MARLIN_KERNELS_CUDA_DEVICE_LAYOUT_H_
#define MARLIN_KERNELS_CUDA_DEVICE_LAYOUT_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/format/weight_format.h"

namespace marlin::cuda {

enum class DeviceLayout {
  kPacked,          // as packed (PackedWeight::qweight): lane l's words at bytes 16 l .. 16 l + 15
  kWordMajorTiles,  // word j of lane l at byte 128 j + 4 l of its tile (Hopper path only)
};

const char* DeviceLayoutName(DeviceLayout layout);

// The layout Gemm multiplies fastest on a device of compute capability `compute_capability`
// (major * 10 + minor) in this build: kWordMajorTiles where the Hopper path runs, else kPacked.
DeviceLayout FastestDeviceLayout(int compute_capability);

// Rearranges the K*N/2 bytes of packed words at `qweight` (device memory, 16-byte aligned) in place
// from layout `from` into layout `to`, enqueued on `stream`. InvalidArgument for a shape the format
// rejects or a misaligned pointer.
absl::Status ConvertDeviceLayout(void* qweight, const WeightShape& shape, DeviceLayout from,
                                 DeviceLayout to, cudaStream_t stream);

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_DEVICE_LAYOUT_H_
