// The large-batch path of marlin::cuda::Gemm: W dequantized to FP16 one column chunk at a time
// into scratch memory (dequantize_weight.h), each chunk multiplied by cuBLAS (FP16 tensor cores,
// FP32 accumulation). From a few hundred rows on, a product is compute-bound and cuBLAS's FP16 GEMM
// outruns passes of our kernel; the dequantization adds one read of the INT4 weight and the chunks'
// writes, which the measured dispatch (gemm_dispatch.h) weighs against the kernel paths.
//
//   ASSIGN_OR_RETURN(CublasHandle h, CublasHandle::Create());
//   RETURN_IF_ERROR(DequantCublasGemm(x, m, w, y, {h, chunk, chunk_bytes, ws, ws_bytes}, stream));
#ifndef MARLIN_KERNELS_CUDA_DEQUANT_CUBLAS_H_
#define MARLIN_KERNELS_CUDA_DEQUANT_CUBLAS_H_

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/marlin_gemm.h"

namespace marlin::cuda {

struct CublasApi;  // the cuBLAS entry points, loaded at run time (dequant_cublas.cc)

// A cuBLAS handle on the current device, destroyed on destruction. Move-only. cuBLAS is loaded
// with dlopen on the first Create, not linked: libcublasLt's ~94 KB of static TLS would otherwise
// sit on every thread's stack, and threads created with small stacks (civetweb's, under the
// metrics exposer) then fail to start.
class CublasHandle {
 public:
  // FailedPrecondition when libcublas cannot be loaded, InternalError when cuBLAS fails.
  static absl::StatusOr<CublasHandle> Create();
  CublasHandle() = default;
  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle();

  // Binds the handle's next calls to `stream` and to the caller-owned `workspace` (cublasSetStream
  // resets the workspace to cuBLAS's own pool, which may allocate under graph capture, so both
  // are set together).
  absl::Status Bind(cudaStream_t stream, void* workspace, size_t workspace_bytes) const;

  // y (m x n, row stride ldy) = x (m x k, row-major) . w (k x n, row stride ldw), all FP16,
  // accumulated in FP32 on the tensor cores.
  absl::Status GemmRowMajor(const __half* x, const __half* w, int64_t ldw, __half* y, int64_t ldy,
                            int64_t m, int64_t k, int64_t n) const;

 private:
  CublasHandle(const CublasApi* api, cublasHandle_t handle) : api_(api), handle_(handle) {}
  // Converts a cuBLAS status into InternalError naming the call (ResourceExhausted for
  // CUBLAS_STATUS_ALLOC_FAILED).
  absl::Status Status(cublasStatus_t status, const char* what) const;
  const CublasApi* api_ = nullptr;  // null in a moved-from or default handle
  cublasHandle_t handle_ = nullptr;
};

// Test hook: the library the first CublasHandle::Create in this process loads instead of
// libcublas.so.<major> (a missing one makes every Create fail with FailedPrecondition).
void SetCublasLibraryForTesting(const std::string& name);

// Recommended cuBLAS workspace bytes on compute capability `sm` (major * 10 + minor): 32 MiB on
// Hopper and later, 4 MiB before (cuBLAS documentation, cublasSetWorkspace).
size_t CublasWorkspaceBytes(int sm);

// What the large-batch path borrows from a GemmWorkspace.
struct DequantCublasScratch {
  const CublasHandle& cublas;
  void* chunk;  // dequantized columns, chunk_bytes long
  size_t chunk_bytes;
  void* cublas_workspace;
  size_t cublas_workspace_bytes;
};

// Columns of W (a multiple of 64, balanced over the chunks) one chunk of `chunk_bytes` holds at
// depth k; 0 when not even 64 columns fit.
int64_t ChunkColumns(int64_t k, int64_t n, size_t chunk_bytes);

// Enqueues y = x . dequant(w) on `stream`, chunk by chunk. The caller validated the shapes and
// pointers (Gemm does). FailedPrecondition when the chunk cannot hold 64 columns of w.
absl::Status DequantCublasGemm(const __half* x, int64_t m, const DeviceWeight& w, __half* y,
                               const DequantCublasScratch& scratch, cudaStream_t stream);

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_DEQUANT_CUBLAS_H_
