// The FP16 x INT4 GPU matrix product of marlin-serve: y = x . dequant(W) on the caller's stream.
//
// x is M x K FP16 (row-major), W a packed INT4 weight (kernels/format, docs/weight-format.md) in
// device memory, y M x N FP16; accumulation in FP32. Each call needs a GemmWorkspace that no other
// call uses at the same time: one per stream. Calls are safe under CUDA-graph capture. Tall
// products may run as W dequantized to FP16 chunk by chunk and multiplied by cuBLAS
// (dequant_cublas.h), where the measured dispatch (gemm_dispatch.h) says that is faster.
//
//   ASSIGN_OR_RETURN(auto ws, marlin::cuda::GemmWorkspace::Create(device));
//   marlin::cuda::DeviceWeight w{qweight_dev, scales_dev, shape};
//   RETURN_IF_ERROR(marlin::cuda::Gemm(x_dev, m, w, y_dev, ws, stream));
#ifndef MARLIN_KERNELS_CUDA_MARLIN_GEMM_H_
#define MARLIN_KERNELS_CUDA_MARLIN_GEMM_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/device_layout.h"
#include "kernels/format/weight_format.h"

namespace marlin::cuda {

// A packed weight in device memory: PackedWeight::qweight and PackedWeight::scales copied as is
// (kPacked), or with the qweight bytes rearranged by ConvertDeviceLayout.
struct DeviceWeight {
  const void* qweight = nullptr;   // K*N/2 bytes, 16-byte aligned
  const __half* scales = nullptr;  // num_groups()*N halves, 16-byte aligned
  WeightShape shape;
  DeviceLayout layout = DeviceLayout::kPacked;
};

class CublasHandle;  // dequant_cublas.h

// Scratch memory for one device: the kernels' cross-block reduction (counters, partial sums), which
// the large-batch path reuses for its dequantized chunks, and that path's cuBLAS handle and
// workspace. It must not be shared by calls that may run concurrently; every call leaves it ready
// for the next. Create it on the device it serves (the current device).
class GemmWorkspace {
 public:
  static absl::StatusOr<GemmWorkspace> Create(int device);
  // Device bytes a workspace for `device` needs (what Create allocates).
  static absl::StatusOr<size_t> BytesFor(int device);
  GemmWorkspace(GemmWorkspace&&) noexcept;
  GemmWorkspace& operator=(GemmWorkspace&&) noexcept;
  ~GemmWorkspace();

  void* get() const { return buffer_.get(); }
  size_t size() const { return buffer_.size(); }
  int sm_count() const { return sm_count_; }
  int compute_capability() const { return compute_capability_; }
  // The dequant-cublas path's handle; null where libcublas could not be loaded, and then
  // cublas_status() says why (the kernel paths serve every product).
  const CublasHandle* cublas() const { return cublas_.get(); }
  const absl::Status& cublas_status() const { return cublas_status_; }

 private:
  GemmWorkspace(DeviceBuffer buffer, std::unique_ptr<CublasHandle> cublas,
                absl::Status cublas_status, int sm_count, int compute_capability);
  DeviceBuffer buffer_;  // counters, partial sums (or chunks), cuBLAS workspace
  std::unique_ptr<CublasHandle> cublas_;
  absl::Status cublas_status_;  // why cublas_ is null
  int sm_count_ = 0;            // the blocks one launch spreads over
  int compute_capability_ = 0;  // major * 10 + minor: picks the kernel path
};

// Enqueues y = x . dequant(w) on `stream`. Fails (without launching) with InvalidArgument when the
// shape is not one the format accepts or m < 1, with FailedPrecondition when w.layout is one the
// chosen path cannot read (kWordMajorTiles on the Ampere path), and with an InternalError on a
// launch failure.
// gemm_dispatch.h's measured table picks the path: on sm_90 the Hopper path (TMA + wgmma), on
// sm_80-89 the Ampere path (mma.sync), and for tall products on both the dequant-cublas path.
absl::Status Gemm(const __half* x, int64_t m, const DeviceWeight& w, __half* y,
                  const GemmWorkspace& workspace, cudaStream_t stream);

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_MARLIN_GEMM_H_
