// cuTensorMapEncodeTiled through the runtime's driver entry point (no libcuda link).
#include "kernels/cuda/tensor_map.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"

namespace marlin::cuda {
namespace {

// The encoder, looked up once; null when the driver does not provide it.
PFN_cuTensorMapEncodeTiled_v12000 Encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // the failed lookup is reported through the status, not left pending
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encoder;
}

}  // namespace

absl::StatusOr<CUtensorMap> EncodeTiledMap(const TiledMapSpec& spec) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = Encoder();
  if (encode == nullptr) {
    return absl::UnavailableError("the CUDA driver has no cuTensorMapEncodeTiled (needs >= 12.0)");
  }
  if (spec.rank < 2 || spec.rank > 3) {
    return absl::InvalidArgumentError(absl::StrCat("tensor map rank ", spec.rank, " (2 or 3)"));
  }
  const cuuint32_t element_strides[3] = {1, 1, 1};
  CUtensorMap map;
  const CUresult r =
      encode(&map, spec.type, static_cast<cuuint32_t>(spec.rank), const_cast<void*>(spec.base),
             spec.dims.data(), spec.strides.data(), spec.box.data(), element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, spec.swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuTensorMapEncodeTiled failed (CUresult ", static_cast<int>(r), ") for dims {",
        absl::StrJoin(absl::MakeConstSpan(spec.dims.data(), spec.rank), ", "), "} box {",
        absl::StrJoin(absl::MakeConstSpan(spec.box.data(), spec.rank), ", "), "}"));
  }
  return map;
}

}  // namespace marlin::cuda
