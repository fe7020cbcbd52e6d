// The CUDA backend: the Marlin FP16 x INT4 kernel on `lanes` CUDA streams.
//
// Each lane owns a stream, a GemmWorkspace, pinned host staging buffers and device buffers for
// activations and outputs. A batch is gathered into the lane's pinned buffer, copied in
// asynchronously, multiplied, copied out, and scattered into the responses. Lanes run on different
// executor threads, so one batch's copies overlap another's kernel. Staging buffers grow to the
// largest batch seen and are then reused: no allocation per batch in steady state.
//
// A CUDA error other than a refused argument marks the backend unhealthy for good (the server then
// reports NOT_SERVING): after a sticky error the context cannot be trusted.
//
//   ASSIGN_OR_RETURN(auto cuda, CudaBackend::Create({.lanes = 2, .cuda_device = 0}));
#ifndef MARLIN_SERVER_BACKEND_CUDA_BACKEND_H_
#define MARLIN_SERVER_BACKEND_CUDA_BACKEND_H_

#include <atomic>
#include <memory>
#include <vector>

#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/marlin_gemm.h"
#include "server/backend/backend.h"

namespace marlin::backend {

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const BackendOptions& options);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }
  DeviceMemory memory() const override;
  uint64_t BytesFor(const WeightShape& shape) const override;
  absl::StatusOr<std::shared_ptr<const PreparedWeight>> Prepare(
      const PackedWeight& weight) override;
  int lanes() const override { return static_cast<int>(lanes_.size()); }
  absl::Status Run(int lane, const PreparedWeight& weight, absl::Span<const BatchSlice> slices,
                   int64_t rows) override;
  bool healthy() const override { return healthy_.load(); }

 private:
  struct Lane {
    cuda::Stream stream;
    cuda::GemmWorkspace workspace;
    cuda::PinnedBuffer x_host, y_host;  // staging: gathered rows in, results out
    cuda::DeviceBuffer x_dev, y_dev;
  };
  CudaBackend(int device, std::string device_name, std::vector<std::unique_ptr<Lane>> lanes)
      : device_(device), device_name_(std::move(device_name)), lanes_(std::move(lanes)) {}
  // Grows the lane's buffers to hold x_bytes / y_bytes (no-op when they already do).
  static absl::Status Reserve(Lane& lane, size_t x_bytes, size_t y_bytes);
  // Marks the backend unhealthy on a device error and passes `status` through.
  absl::Status Fail(absl::Status status);

  const int device_;
  const std::string device_name_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::atomic<bool> healthy_{true};
};

}  // namespace marlin::backend

#endif  // MARLIN_SERVER_BACKEND_CUDA_BACKEND_H_
