// Tiled TMA descriptors (CUtensorMap) for the Hopper kernel, encoded on the host.
//
// The encoder is the driver's cuTensorMapEncodeTiled, looked up through the runtime at first use,
// so nothing links against libcuda and binaries still load on machines without a driver.
//
//   ASSIGN_OR_RETURN(CUtensorMap map,
//                    EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16, .rank = 2,
//                                    .base = x, .dims = {k, m}, .strides = {k * 2},
//                                    .box = {64, 64}, .swizzle = CU_TENSOR_MAP_SWIZZLE_128B}));
#ifndef MARLIN_KERNELS_CUDA_TENSOR_MAP_H_
#define MARLIN_KERNELS_CUDA_TENSOR_MAP_H_

#include <cuda.h>

#include <array>
#include <cstdint>

#include "absl/status/statusor.h"

namespace marlin::cuda {

struct TiledMapSpec {
  CUtensorMapDataType type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  int rank = 2;                       // 2 or 3
  const void* base = nullptr;         // 16-byte aligned global memory
  std::array<uint64_t, 3> dims{};     // elements per dimension, innermost first
  std::array<uint64_t, 2> strides{};  // bytes between consecutive indices of dims 1.. (rank-1)
  std::array<uint32_t, 3> box{};      // elements one copy moves per dimension
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE;
};

// Encodes `spec` (elements outside the tensor read as zero). InvalidArgument names a spec the
// driver rejects; Unavailable when the driver has no encoder (no driver, or one older than 12.0).
absl::StatusOr<CUtensorMap> EncodeTiledMap(const TiledMapSpec& spec);

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_TENSOR_MAP_H_
