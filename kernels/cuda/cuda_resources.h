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

// Device memory, freed on destruction.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Create(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

 private:
  DeviceBuffer(void* ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaHostAlloc), freed on destruction.
class PinnedBuffer {
 public:
  static absl::StatusOr<PinnedBuffer> Create(size_t bytes);
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

 private:
  PinnedBuffer(void* ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A non-blocking stream, destroyed on destruction.
class Stream {
 public:
  static absl::StatusOr<Stream> Create();
  Stream() = default;
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  cudaStream_t get() const { return stream_; }
  absl::Status Synchronize() const;

 private:
  explicit Stream(cudaStream_t s) : stream_(s) {}
  cudaStream_t stream_ = nullptr;
};

// An event (timing enabled unless `disable_timing`), destroyed on destruction.
class Event {
 public:
  static absl::StatusOr<Event> Create(bool disable_timing = false);
  Event() = default;
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();

  cudaEvent_t get() const { return event_; }

 private:
  explicit Event(cudaEvent_t e) : event_(e) {}
  cudaEvent_t event_ = nullptr;
};

// An instantiated CUDA graph captured from a stream; destroyed on destruction.
class GraphExec {
 public:
  // Captures everything `record` enqueues on `stream` and instantiates it.
  template <typename Fn>
  static absl::StatusOr<GraphExec> Capture(cudaStream_t stream, Fn&& record);
  GraphExec() = default;
  GraphExec(GraphExec&& other) noexcept;
  GraphExec& operator=(GraphExec&& other) noexcept;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec();

  absl::Status Launch(cudaStream_t stream) const;

 private:
  static absl::StatusOr<GraphExec> Instantiate(cudaGraph_t graph);
  explicit GraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  cudaGraphExec_t exec_ = nullptr;
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
