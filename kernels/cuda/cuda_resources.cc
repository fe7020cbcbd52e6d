#include "kernels/cuda/cuda_resources.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace marlin::cuda {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  std::string msg =
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Create(size_t bytes) {
  void* ptr = nullptr;
  if (bytes > 0) MARLIN_CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr, bytes));
  return DeviceBuffer(ptr, bytes);
}

absl::StatusOr<PinnedBuffer> PinnedBuffer::Create(size_t bytes) {
  void* ptr = nullptr;
  if (bytes > 0) MARLIN_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault));
  return PinnedBuffer(ptr, bytes);
}

absl::StatusOr<Stream> Stream::Create() {
  cudaStream_t s = nullptr;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return Stream(s);
}

absl::Status Stream::Synchronize() const {
  MARLIN_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
  return absl::OkStatus();
}

absl::StatusOr<Event> Event::Create(bool disable_timing) {
  cudaEvent_t e = nullptr;
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&e, disable_timing ? cudaEventDisableTiming : cudaEventDefault));
  return Event(e);
}

absl::StatusOr<GraphExec> GraphExec::Instantiate(cudaGraph_t graph) {
  cudaGraphExec_t exec = nullptr;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&exec, graph, 0));
  return GraphExec(exec);
}

absl::Status GraphExec::Launch(cudaStream_t stream) const {
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec_.get(), stream));
  return absl::OkStatus();
}

}  // namespace marlin::cuda
