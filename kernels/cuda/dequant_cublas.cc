// The large-batch path: chunked dequantization into scratch, cuBLAS on each chunk.
#include "kernels/cuda/dequant_cublas.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/dequantize_weight.h"

namespace marlin::cuda {

// The cuBLAS functions this file calls, from the libcublas of the toolkit's major version.
struct CublasApi {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetWorkspace_v2) set_workspace;
  // cublasGemmEx's C entry point (C++ builds also see a static inline overload).
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t);
  decltype(&cublasGetStatusName) status_name;
  decltype(&cublasGetStatusString) status_string;
};

namespace {

// The library LoadCublas opens: the toolkit's major version, or a test's name.
std::string& CublasLibraryName() {
  static std::string* name = new std::string(absl::StrCat("libcublas.so.", CUBLAS_VER_MAJOR));
  return *name;
}

// Loads libcublas once per process (never unloaded); the error, if any, is kept for every later
// call.
absl::StatusOr<const CublasApi*> LoadCublas() {
  static const absl::StatusOr<const CublasApi*> api = []() -> absl::StatusOr<const CublasApi*> {
    const std::string name = CublasLibraryName();
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot load ", name, " (the dequant-cublas path needs it): ", dlerror()));
    }
    auto* loaded = new CublasApi;
    bool missing = false;
    auto bind = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      missing |= fn == nullptr;
    };
    bind(loaded->create, "cublasCreate_v2");
    bind(loaded->destroy, "cublasDestroy_v2");
    bind(loaded->set_stream, "cublasSetStream_v2");
    bind(loaded->set_workspace, "cublasSetWorkspace_v2");
    bind(loaded->gemm_ex, "cublasGemmEx");
    bind(loaded->status_name, "cublasGetStatusName");
    bind(loaded->status_string, "cublasGetStatusString");
    if (missing) {
      delete loaded;
      return absl::FailedPreconditionError(absl::StrCat(name, " lacks a cuBLAS entry point"));
    }
    return loaded;
  }();
  return api;
}

}  // namespace

void SetCublasLibraryForTesting(const std::string& name) { CublasLibraryName() = name; }

absl::StatusOr<CublasHandle> CublasHandle::Create() {
  absl::StatusOr<const CublasApi*> api = LoadCublas();
  if (!api.ok()) return api.status();
  cublasHandle_t h = nullptr;
  const cublasStatus_t status = (*api)->create(&h);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cublasCreate: ", (*api)->status_name(status)));
  }
  return CublasHandle(*api, h);
}

CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : api_(std::exchange(other.api_, nullptr)), handle_(std::exchange(other.handle_, nullptr)) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    if (api_ != nullptr) api_->destroy(handle_);
    api_ = std::exchange(other.api_, nullptr);
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

CublasHandle::~CublasHandle() {
  if (api_ != nullptr) api_->destroy(handle_);
}

absl::Status CublasHandle::Status(cublasStatus_t status, const char* what) const {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, ": ", api_->status_name(status), " (", api_->status_string(status), ")");
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

absl::Status CublasHandle::Bind(cudaStream_t stream, void* workspace,
                                size_t workspace_bytes) const {
  if (api_ == nullptr) return absl::FailedPreconditionError("CublasHandle: not created");
  if (absl::Status s = Status(api_->set_stream(handle_, stream), "cublasSetStream"); !s.ok()) {
    return s;
  }
  return Status(api_->set_workspace(handle_, workspace, workspace_bytes), "cublasSetWorkspace");
}

absl::Status CublasHandle::GemmRowMajor(const __half* x, const __half* w, int64_t ldw, __half* y,
                                        int64_t ldy, int64_t m, int64_t k, int64_t n) const {
  if (api_ == nullptr) return absl::FailedPreconditionError("CublasHandle: not created");
  // Column-major view: y^T (n x m, ld ldy) = w^T (n x k, ld ldw) . x^T (k x m, ld k).
  const float alpha = 1.f, beta = 0.f;
  return Status(
      api_->gemm_ex(handle_, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                    static_cast<int>(k), &alpha, w, CUDA_R_16F, static_cast<int>(ldw), x,
                    CUDA_R_16F, static_cast<int>(k), &beta, y, CUDA_R_16F, static_cast<int>(ldy),
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
