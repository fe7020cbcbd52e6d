// The compute backends of marlin-server: where weights live and where batches run.
//
// A Backend turns a PackedWeight into a PreparedWeight (uploaded to the device, or re-laid out for
// the CPU) and multiplies batches of FP16 rows by it. Batches arrive as slices that point straight
// into request and response buffers; the backend gathers and scatters them.
//
//   ASSIGN_OR_RETURN(auto backend, CreateBackend({.kind = "auto"}));
//   ASSIGN_OR_RETURN(auto w, backend->Prepare(packed));
//   BatchSlice slice{x_bytes, rows, y_bytes};
//   RETURN_IF_ERROR(backend->Run(/*lane=*/0, *w, {&slice, 1}, rows));
//
// Backends: "cuda" (the Marlin kernel on several streams; only when built with CUDA), "cpu"
// (CpuGemm), "null" (answers zeros without computing: a tool to measure the transport ceiling).
#ifndef MARLIN_SERVER_BACKEND_BACKEND_H_
#define MARLIN_SERVER_BACKEND_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/format/weight_format.h"

namespace marlin::backend {

// What a backend made of a weight (device buffers, a CpuGemm...). Freed when its last user lets go:
// batches hold it, so a replaced or deleted weight lives until its running batches finish.
class PreparedWeight {
 public:
  virtual ~PreparedWeight() = default;
  const WeightShape& shape() const { return shape_; }
  // Bytes it holds on the device (host bytes for the CPU backend).
  uint64_t device_bytes() const { return device_bytes_; }

 protected:
  PreparedWeight(const WeightShape& shape, uint64_t device_bytes)
      : shape_(shape), device_bytes_(device_bytes) {}

 private:
  WeightShape shape_;
  uint64_t device_bytes_;
};

// One request's part of a batch: `rows` rows of K FP16 values in, `rows` rows of N out (LE bytes,
// row-major, no alignment required).
struct BatchSlice {
  const void* x = nullptr;
  int64_t rows = 0;
  void* y = nullptr;
};

struct DeviceMemory {
  uint64_t total = 0;
  uint64_t free = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;         // "cuda", "cpu" or "null"
  virtual std::string device_name() const = 0;  // e.g. "NVIDIA H100 80GB HBM3"
  virtual DeviceMemory memory() const = 0;
  // Device bytes Prepare() will hold for a weight of `shape`; used to refuse before allocating.
  virtual uint64_t BytesFor(const WeightShape& shape) const = 0;
  virtual absl::StatusOr<std::shared_ptr<const PreparedWeight>> Prepare(
      const PackedWeight& weight) = 0;

  // Independent execution lanes: Run calls on different lanes may overlap; one lane is used by one
  // thread at a time.
  virtual int lanes() const = 0;
  // y = x . W for the concatenation of `slices` (`rows` rows in total). `weight` comes from this
  // backend's Prepare.
  virtual absl::Status Run(int lane, const PreparedWeight& weight,
                           absl::Span<const BatchSlice> slices, int64_t rows) = 0;
  // False once the device hit an unrecoverable error; the server then reports NOT_SERVING.
  virtual bool healthy() const { return true; }
};

struct BackendOptions {
  std::string kind = "auto";  // auto | cuda | cpu | null
  int lanes = 2;              // CUDA streams / CPU worker lanes
  int cpu_threads = 0;        // CpuGemm threads per lane; 0 = hardware threads / lanes
  int cuda_device = 0;
  int64_t max_batch_rows = 64;  // staging buffers are sized for max(max_batch_rows, max_rows)
  int64_t max_rows_per_request = 1024;
};

// Creates the backend `options.kind` names. "auto" takes CUDA when this build has it and a device
// is visible, the CPU otherwise. UNAVAILABLE for "cuda" without a device or without CUDA support.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

// Whether this binary was built with the CUDA backend.
bool HaveCudaBackend();

// Total and available host memory (from /proc/meminfo; sysconf as fallback).
DeviceMemory HostMemory();

}  // namespace marlin::backend

#endif  // MARLIN_SERVER_BACKEND_BACKEND_H_
