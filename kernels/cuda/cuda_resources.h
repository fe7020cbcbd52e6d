// RAII owners for CUDA resources and a status bridge for CUDA calls.
//
// Every resource the project creates goes through one of these: a device buffer, pinned host
// memory, a stream, an event, an instantiated graph. Factories return absl::StatusOr and never
// throw; destructors release and ignore errors (there is nobody to report them to).
//
//   ASSIGN_OR_RETURN(auto buf, marlin::cuda::DeviceBuffer::Create(bytes));
//   MARLIN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf.get(), src, bytes, cudaMemcpyHostToDevice, s));
#ifndef MARLIN_KERNELS_CUDA_CUDA_RESOURCES_H_
#define MARLIN_KERNELS_CUDA_CUDA_RESOURCES_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace marlin::cuda {

// Converts a CUDA error into a status: InternalError naming the call and the CUDA error, or
// ResourceExhausted for cudaErrorMemoryAllocation.
absl::Status CudaStatus(cudaError_t err, const char* what);

#define MARLIN_CUDA_RETURN_IF_ERROR(expr)                                       \
  do {                                                                          \
    if (cudaError_t marlin_cuda_err_ = (expr); marlin_cuda_err_ != cudaSuccess) \
      return ::marlin::cuda::CudaStatus(marlin_cuda_err_, #expr);               \
  } while (0)

// Number of CUDA devices visible, 0 when there is no driver or no device (never fails).
int DeviceCount();

// A move-only owner of one CUDA handle, released by `Release` on destruction (errors ignored).
template <typename Handle, cudaError_t (*Release)(Handle)>
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(Handle handle) : handle_(handle) {}
  UniqueHandle(UniqueHandle&& other) noexcept : handle_(std::exchange(other.handle_, Handle{})) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      handle_ = std::exchange(other.handle_, Handle{});
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  ~UniqueHandle() { Reset(); }

  Handle get() const { return handle_; }

 private:
  void Reset() {
    if (handle_ != Handle{}) Release(handle_);
    handle_ = Handle{};
  }
  Handle handle_{};
};

// Memory released by `Free` (device or pinned host memory), with its size.
template <cudaError_t (*Free)(void*)>
class OwnedMemory {
 public:
  OwnedMemory() = default;
  OwnedMemory(OwnedMemory&& other) noexcept
      : memory_(std::move(other.memory_)), bytes_(std::exchange(other.bytes_, 0)) {}
  OwnedMemory& operator=(OwnedMemory&& other) noexcept {
    if (this != &other) {
      memory_ = std::move(other.memory_);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }

  void* get() const { return memory_.get(); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(memory_.get());
  }
  size_t size() const { return bytes_; }

 protected:
  OwnedMemory(void* ptr, size_t bytes) : memory_(ptr), bytes_(bytes) {}

 private:
  UniqueHandle<void*, Free> memory_;
  size_t bytes_ = 0;
};

// Device memory (cudaMalloc), freed on destruction.
class DeviceBuffer : public OwnedMemory<&cudaFree> {
 public:
  static absl::StatusOr<DeviceBuffer> Create(size_t bytes);
  DeviceBuffer() = default;

 private:
  using OwnedMemory::OwnedMemory;
};

// Page-locked host memory (cudaHostAlloc), freed on destruction.
class PinnedBuffer : public OwnedMemory<&cudaFreeHost> {
 public:
  static absl::StatusOr<PinnedBuffer> Create(size_t bytes);
  PinnedBuffer() = default;

 private:
  using OwnedMemory::OwnedMemory;
};

// A non-blocking stream, destroyed on destruction.
class Stream {
 public:
  static absl::StatusOr<Stream> Create();
  Stream() = default;

  cudaStream_t get() const { return stream_.get(); }
  absl::Status Synchronize() const;

 private:
  explicit Stream(cudaStream_t s) : stream_(s) {}
  UniqueHandle<cudaStream_t, &cudaStreamDestroy> stream_;
};

// An event (timing enabled unless `disable_timing`), destroyed on destruction.
class Event {
 public:
  static absl::StatusOr<Event> Create(bool disable_timing = false);
  Event() = default;

  cudaEvent_t get() const { return event_.get(); }

 private:
  explicit Event(cudaEvent_t e) : event_(e) {}
  UniqueHandle<cudaEvent_t, &cudaEventDestroy> event_;
};

// An instantiated CUDA graph captured from a stream; destroyed on destruction.
class GraphExec {
 public:
  // Captures everything `record` enqueues on `stream` and instantiates it.
  template <typename Fn>
  static absl::StatusOr<GraphExec> Capture(cudaStream_t stream, Fn&& record);
  GraphExec() = default;

  absl::Status Launch(cudaStream_t stream) const;

 private:
  static absl::StatusOr<GraphExec> Instantiate(cudaGraph_t graph);
  explicit GraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  UniqueHandle<cudaGraphExec_t, &cudaGraphExecDestroy> exec_;
};

template <typename Fn>
absl::StatusOr<GraphExec> GraphExec::Capture(cudaStream_t stream, Fn&& record) {
  MARLIN_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  absl::Status recorded = record();
  cudaGraph_t graph = nullptr;
  cudaError_t end = cudaStreamEndCapture(stream, &graph);
  if (!recorded.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return recorded;
  }
  MARLIN_CUDA_RETURN_IF_ERROR(end);
  absl::StatusOr<GraphExec> exec = Instantiate(graph);
  cudaGraphDestroy(graph);
  return exec;
}

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_CUDA_RESOURCES_H_
