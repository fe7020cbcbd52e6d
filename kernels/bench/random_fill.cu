#include "kernels/bench/random_fill.h"

#include "kernels/cuda/cuda_resources.h"

namespace marlin::bench {
namespace {

// SplitMix64 finalizer: a well-mixed 64-bit hash of (seed, index).
__device__ __forceinline__ uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ float UnitFloat(uint32_t bits) {  // [0, 1)
  return (bits >> 8) * (1.0f / 16777216.0f);
}

__global__ void FillBytesKernel(uint64_t* dst, size_t words, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < words;
       i += size_t{gridDim.x} * blockDim.x) {
    dst[i] = Mix(seed * 0x9e3779b97f4a7c15ull + i);
  }
}

__global__ void FillNormalKernel(__half* dst, size_t count, float stddev, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    const uint64_t h = Mix(seed * 0x9e3779b97f4a7c15ull + i);
    const float u1 = UnitFloat(static_cast<uint32_t>(h)) + 1e-7f;
    const float u2 = UnitFloat(static_cast<uint32_t>(h >> 32));
    dst[i] = __float2half(stddev * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

__global__ void FillUniformKernel(__half* dst, size_t count, float lo, float hi, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    const uint64_t h = Mix(seed * 0x9e3779b97f4a7c15ull + i);
    dst[i] = __float2half(lo + (hi - lo) * UnitFloat(static_cast<uint32_t>(h)));
  }
}

__global__ void CopyKernel(uint4* dst, const uint4* src, size_t count) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

constexpr int kBlocks = 1024;
constexpr int kThreadsPerBlock = 256;

}  // namespace

absl::Status FillRandomBytes(void* dst, size_t bytes, uint64_t seed, cudaStream_t stream) {
  if (bytes % 8 != 0) return absl::InvalidArgumentError("FillRandomBytes: bytes % 8 != 0");
  FillBytesKernel<<<kBlocks, kThreadsPerBlock, 0, stream>>>(static_cast<uint64_t*>(dst), bytes / 8,
                                                            seed);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status FillRandomNormal(__half* dst, size_t count, float stddev, uint64_t seed,
                              cudaStream_t stream) {
  FillNormalKernel<<<kBlocks, kThreadsPerBlock, 0, stream>>>(dst, count, stddev, seed);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status FillRandomUniform(__half* dst, size_t count, float lo, float hi, uint64_t seed,
                               cudaStream_t stream) {
  FillUniformKernel<<<kBlocks, kThreadsPerBlock, 0, stream>>>(dst, count, lo, hi, seed);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CopyBytes(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes % 16 != 0) return absl::InvalidArgumentError("CopyBytes: bytes % 16 != 0");
  int sms = 0;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CopyKernel<<<sms * 8, 256, 0, stream>>>(static_cast<uint4*>(dst), static_cast<const uint4*>(src),
                                          bytes / 16);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace marlin::bench
