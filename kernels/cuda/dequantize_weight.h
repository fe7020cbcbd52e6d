// Dequantizes a packed INT4 weight in device memory to FP16, a range of columns at a time: the
// first half of the large-batch path (dequant_cublas.h), where cuBLAS multiplies the result.
// Every value is fp16(q * s), bit for bit what the kernels and the CPU reference use. The output is
// the range as a K x cols row-major matrix.
//
//   // out: K x 1024 FP16, out[k * 1024 + j] = d[k][n0 + j]
//   RETURN_IF_ERROR(DequantizeColumns(w, /*n0=*/0, /*cols=*/1024, out, stream));
#ifndef MARLIN_KERNELS_CUDA_DEQUANTIZE_WEIGHT_H_
#define MARLIN_KERNELS_CUDA_DEQUANTIZE_WEIGHT_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/marlin_gemm.h"

namespace marlin::cuda {

// Enqueues the dequantization of columns [n0, n0 + cols) of `w` (either device layout) into `out`
// on `stream`. InvalidArgument (nothing launched) for a shape the format rejects, a range that is
// empty, not whole 64-column tiles or past N, or a null or misaligned pointer.
absl::Status DequantizeColumns(const DeviceWeight& w, int64_t n0, int64_t cols, __half* out,
                               cudaStream_t stream);

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_DEQUANTIZE_WEIGHT_H_
