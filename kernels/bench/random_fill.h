// Device-side random fills for the benchmark: data is generated on the GPU (a counter-based
// hash), so preparing gigabytes of weights costs milliseconds, and nothing is timed on zeros.
#ifndef MARLIN_KERNELS_BENCH_RANDOM_FILL_H_
#define MARLIN_KERNELS_BENCH_RANDOM_FILL_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace marlin::bench {

// Uniformly random bytes (so every INT4 value -8..7 is equally likely).
absl::Status FillRandomBytes(void* dst, size_t bytes, uint64_t seed, cudaStream_t stream);
// Normally distributed FP16 values with the given standard deviation.
absl::Status FillRandomNormal(__half* dst, size_t count, float stddev, uint64_t seed,
                              cudaStream_t stream);
// FP16 values uniform in [lo, hi).
absl::Status FillRandomUniform(__half* dst, size_t count, float lo, float hi, uint64_t seed,
                               cudaStream_t stream);

// dst = src, 16 bytes per thread and access: the device-to-device copy ceiling.
absl::Status CopyBytes(void* dst, const void* src, size_t bytes, cudaStream_t stream);

}  // namespace marlin::bench

#endif  // MARLIN_KERNELS_BENCH_RANDOM_FILL_H_
