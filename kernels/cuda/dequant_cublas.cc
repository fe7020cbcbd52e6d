// The large-batch path: chunked dequantization into scratch, cuBLAS on each chunk.
#include "kernels/cuda/dequant_cublas.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/dequantize_weight.h"

namespace marlin::cuda {

absl::Status CublasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", cublasGetStatusName(status), " (",
                                           cublasGetStatusString(status), ")");
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

absl::StatusOr<CublasHandle> CublasHandle::Create() {
  cublasHandle_t h = nullptr;
  if (absl::Status s = CublasStatus(cublasCreate(&h), "cublasCreate"); !s.ok()) return s;
  return CublasHandle(h);
}

absl::Status CublasHandle::Bind(cudaStream_t stream, void* workspace,
                                size_t workspace_bytes) const {
  if (absl::Status s = CublasStatus(cublasSetStream(get(), stream), "cublasSetStream"); !s.ok()) {
    return s;
  }
  return CublasStatus(cublasSetWorkspace(get(), workspace, workspace_bytes), "cublasSetWorkspace");
}

absl::Status CublasHandle::GemmRowMajor(const __half* x, const __half* w, int64_t ldw, __half* y,
                                        int64_t ldy, int64_t m, int64_t k, int64_t n) const {
  // Column-major view: y^T (n x m, ld ldy) = w^T (n x k, ld ldw) . x^T (k x m, ld k).
  const float alpha = 1.f, beta = 0.f;
  return CublasStatus(
      cublasGemmEx(get(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, w, CUDA_R_16F, static_cast<int>(ldw), x, CUDA_R_16F,
                   static_cast<int>(k), &beta, y, CUDA_R_16F, static_cast<int>(ldy),
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT_TENSOR_OP),
      "cublasGemmEx");
}

size_t CublasWorkspaceBytes(int sm) { return sm >= 90 ? size_t{32} << 20 : size_t{4} << 20; }

int64_t ChunkColumns(int64_t k, int64_t n, size_t chunk_bytes) {
  const int64_t fit = static_cast<int64_t>(chunk_bytes / (2 * k)) / kTileN * kTileN;
  if (fit == 0) return 0;
  const int64_t chunks = (n + fit - 1) / fit;
  return ((n + chunks - 1) / chunks + kTileN - 1) / kTileN * kTileN;
}

absl::Status DequantCublasGemm(const __half* x, int64_t m, const DeviceWeight& w, __half* y,
                               const DequantCublasScratch& scratch, cudaStream_t stream) {
  const int64_t k = w.shape.k, n = w.shape.n;
  const int64_t chunk_cols = ChunkColumns(k, n, scratch.chunk_bytes);
  if (chunk_cols == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Gemm: the dequant-cublas path's ", scratch.chunk_bytes,
        "-byte chunk cannot hold 64 columns of a K=", k, " weight (", 2 * k * kTileN, " bytes)"));
  }
  if (m > INT32_MAX || k > INT32_MAX || n > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: M=", m, " K=", k, " N=", n, " exceeds cuBLAS's 32-bit dimensions"));
  }
  if (absl::Status s =
          scratch.cublas.Bind(stream, scratch.cublas_workspace, scratch.cublas_workspace_bytes);
      !s.ok()) {
    return s;
  }
  auto* chunk = static_cast<__half*>(scratch.chunk);
  for (int64_t n0 = 0; n0 < n; n0 += chunk_cols) {
    const int64_t cols = std::min(chunk_cols, n - n0);
    if (absl::Status s = DequantizeColumns(w, n0, cols, chunk, stream); !s.ok()) return s;
    if (absl::Status s = scratch.cublas.GemmRowMajor(x, chunk, cols, y + n0, n, m, k, cols);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace marlin::cuda
