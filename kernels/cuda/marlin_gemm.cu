// Host side of Gemm: validation, the path, the Ampere path's tile configurations, the workspace.
#include "kernels/cuda/marlin_gemm.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/dequant_cublas.h"
#include "kernels/cuda/gemm_dispatch.h"
#include "kernels/cuda/hopper_gemm.h"
#include "kernels/cuda/marlin_kernel.cuh"

namespace marlin::cuda {
namespace {

// Up to 32 rows: 256-column slices, 128 k-rows a stage, two warps per tile (4 k-tiles each).
// Up to 16 rows two blocks share an SM, so one's loads and barriers hide behind the other's math
// (the accumulators of one m-tile fit the 128 registers that allows).
template <int kMTiles>
using SmallBatchConfig = TileConfig<kMTiles, /*kBlockNTiles=*/4, /*kWarpSubtiles=*/8,
                                    /*kWarpsK=*/2, /*kStageKTiles=*/8, /*kStages=*/4,
                                    /*kBlocksPerSm=*/kMTiles == 1 ? 2 : 1>;
// 33 to 128 rows: 256-column slices, 128 k-rows a stage (one barrier per 8 k-tiles of math),
// each warp half a tile for all rows, so the accumulators stay in registers. Measured on the H100
// (L70B block): 128 k-row stages ran M=64 in 448 us against 531 us with 64 k-row stages.
template <int kMTiles>
using MediumBatchConfig = TileConfig<kMTiles, /*kBlockNTiles=*/4, /*kWarpSubtiles=*/4,
                                     /*kWarpsK=*/1, /*kStageKTiles=*/8, /*kStages=*/4>;
template <int kMTiles>
using LargeBatchConfig = TileConfig<kMTiles, /*kBlockNTiles=*/4, /*kWarpSubtiles=*/4,
                                    /*kWarpsK=*/1, /*kStageKTiles=*/8, /*kStages=*/3>;

// Rows one Ampere-path pass multiplies; larger batches run as several passes.
constexpr int64_t kMaxPassRows = 128;
// Counters live at the head of the workspace, partial slots after them.
constexpr size_t kCounterBytes = 4096;

// Partial sums per SM: two slots for each resident block (a block splits at most its first and its
// last slice); the tallest Ampere configuration, 128 rows x 256 columns with one block, needs the
// most, as many as the Hopper path's 256 x 128.
constexpr size_t kMaxSlotFloatsPerSm = 2 * 128 * 256;
static_assert(hopper::kSlotFloatsPerSm <= kMaxSlotFloatsPerSm, "workspace too small for Hopper");

// The workspace: kCounterBytes of counters, a region for the kernels' partial sums or the
// dequant-cublas path's chunks of dequantized columns, the cuBLAS workspace. A chunk of at least
// 64 MiB holds 2048 columns at K = 16384 (1152 at the deepest benchmark layer, K = 28672): chunks
// much narrower than that cost cuBLAS efficiency (H100, L70B.down at 4096 rows in 576-column
// chunks: 2958 us against 2591 for one product).
constexpr size_t kMinChunkBytes = size_t{64} << 20;
size_t ScratchBytes(int sm_count) {
  return std::max(kMinChunkBytes, size_t{1} * sm_count * kMaxSlotFloatsPerSm * sizeof(float));
}
size_t WorkspaceBytes(int sm_count, int sm) {
  return kCounterBytes + ScratchBytes(sm_count) + CublasWorkspaceBytes(sm);
}

// Device compute capability as major * 10 + minor.
absl::StatusOr<int> ComputeCapability(int device) {
  int major = 0, minor = 0;
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

// The path this call takes: the forced one (tests, benchmark) or the dispatch table's. The table's
// dequant-cublas choice gives way to the kernels where the workspace has no cuBLAS (libcublas
// missing) or a chunk cannot hold 64 columns of w (K > 2^18); forced, that path then fails.
absl::StatusOr<GemmPath> PathFor(const GemmWorkspace& workspace, int64_t m, int64_t k, int64_t n,
                                 DeviceLayout layout, size_t chunk_bytes) {
  const int sm = workspace.compute_capability();
  const GemmPath forced = ForcedGemmPath();
  if (!GemmPathAvailable(forced, sm)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Gemm: the ", GemmPathName(forced), " path does not run on sm_", sm, " in this build"));
  }
  GemmPath path = forced == GemmPath::kAuto ? ChooseGemmPath(sm, m, k, n) : forced;
  if (path == GemmPath::kDequantCublas && workspace.cublas() == nullptr) {
    if (forced != GemmPath::kAuto) return workspace.cublas_status();
    path = ChooseKernelPath(sm);
  }
  if (forced == GemmPath::kAuto && path == GemmPath::kDequantCublas &&
      ChunkColumns(k, n, chunk_bytes) == 0) {
    path = ChooseKernelPath(sm);
  }
  if (layout == DeviceLayout::kWordMajorTiles && path == GemmPath::kAmpere) {
    return absl::FailedPreconditionError(
        absl::StrCat("Gemm: a weight in DeviceLayout::kWordMajorTiles needs the hopper path; the ",
                     GemmPathName(path), " path runs this call on sm_", sm,
                     " (ConvertDeviceLayout back to kPacked)"));
  }
  return path;
}

template <typename C>
absl::Status LaunchPass(GemmParams p, int sm_count, cudaStream_t stream) {
  const int slices = static_cast<int>((p.n_tiles + C::kBlockNTiles - 1) / C::kBlockNTiles);
  p.stages_per_slice = (p.k_tiles + C::kStageKTiles - 1) / C::kStageKTiles;
  p.total_iters = slices * p.stages_per_slice;
  // A second block per SM pays only when each still streams a long run of stages; shorter runs
  // lose more to pipeline fill and split-slice reductions than they gain in latency hiding.
  constexpr int kMinItersPerBlock = 16;
  const int blocks_per_sm =
      p.total_iters >= kMinItersPerBlock * sm_count * C::kBlocksPerSm ? C::kBlocksPerSm : 1;
  p.grid = std::min(sm_count * blocks_per_sm, p.total_iters);
  static_assert(2 * C::kBlocksPerSm * C::kSlotFloats <= kMaxSlotFloatsPerSm, "workspace too small");
  MARLIN_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      MarlinGemmKernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
  MarlinGemmKernel<C><<<p.grid, kThreads, C::kSmemBytes, stream>>>(p);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchRows(const GemmParams& p, int sm_count, cudaStream_t stream) {
  switch ((p.m_rows + 15) / 16) {
    case 1:
      return LaunchPass<SmallBatchConfig<1>>(p, sm_count, stream);
    case 2:
      return LaunchPass<SmallBatchConfig<2>>(p, sm_count, stream);
    case 3:
      return LaunchPass<MediumBatchConfig<3>>(p, sm_count, stream);
    case 4:
      return LaunchPass<MediumBatchConfig<4>>(p, sm_count, stream);
    case 5:
    case 6:
      return LaunchPass<LargeBatchConfig<6>>(p, sm_count, stream);
    case 7:
    case 8:
      return LaunchPass<LargeBatchConfig<8>>(p, sm_count, stream);
  }
  return absl::InternalError(absl::StrCat("no tile configuration for ", p.m_rows, " rows"));
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

absl::StatusOr<size_t> GemmWorkspace::BytesFor(int device) {
  int sm_count = 0;
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  absl::StatusOr<int> sm = ComputeCapability(device);
  if (!sm.ok()) return sm.status();
  return WorkspaceBytes(sm_count, *sm);
}

GemmWorkspace::GemmWorkspace(DeviceBuffer buffer, std::unique_ptr<CublasHandle> cublas,
                             absl::Status cublas_status, int sm_count, int compute_capability)
    : buffer_(std::move(buffer)),
      cublas_(std::move(cublas)),
      cublas_status_(std::move(cublas_status)),
      sm_count_(sm_count),
      compute_capability_(compute_capability) {}
GemmWorkspace::GemmWorkspace(GemmWorkspace&&) noexcept = default;
GemmWorkspace& GemmWorkspace::operator=(GemmWorkspace&&) noexcept = default;
GemmWorkspace::~GemmWorkspace() = default;

absl::StatusOr<GemmWorkspace> GemmWorkspace::Create(int device) {
  int sm_count = 0;
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  absl::StatusOr<int> sm = ComputeCapability(device);
  if (!sm.ok()) return sm.status();
  if (*sm < 80) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", device, " is sm_", *sm, "; the kernels need sm_80 or later"));
  }
  if (sm_count * 2 * sizeof(int) > kCounterBytes) {
    return absl::InternalError(absl::StrCat("device has ", sm_count, " SMs; workspace holds ",
                                            kCounterBytes / sizeof(int), " counters"));
  }
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Create(WorkspaceBytes(sm_count, *sm));
  if (!buffer.ok()) return buffer.status();
  // Without libcublas the workspace still serves the kernel paths (PathFor).
  absl::StatusOr<CublasHandle> cublas = CublasHandle::Create();
  if (!cublas.ok() && cublas.status().code() != absl::StatusCode::kFailedPrecondition) {
    return cublas.status();
  }
  // Zeroed on a stream of its own and waited for: a cudaMemset runs on the legacy stream, which the
  // callers' non-blocking streams do not wait for.
  absl::StatusOr<Stream> zeroing = Stream::Create();
  if (!zeroing.ok()) return zeroing.status();
  MARLIN_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(buffer->get(), 0, kCounterBytes, zeroing->get()));
  if (absl::Status s = zeroing->Synchronize(); !s.ok()) return s;
  if (!cublas.ok()) {
    return GemmWorkspace(*std::move(buffer), nullptr, cublas.status(), sm_count, *sm);
  }
  return GemmWorkspace(*std::move(buffer), std::make_unique<CublasHandle>(*std::move(cublas)),
                       absl::OkStatus(), sm_count, *sm);
}

absl::Status Gemm(const __half* x, int64_t m, const DeviceWeight& w, __half* y,
                  const GemmWorkspace& workspace, cudaStream_t stream) {
  if (absl::Status valid = ValidateShape(w.shape); !valid.ok()) return valid;
  const int64_t k = w.shape.k;
  const int64_t n = w.shape.n;
  if (m < 1) return absl::InvalidArgumentError(absl::StrCat("Gemm: M=", m, " must be >= 1"));
  if (k > INT32_MAX / 2 || n > INT32_MAX / 2 || k / kTileK * (n / kTileN) > INT32_MAX / 32) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: K=", k, " N=", n, " too large"));
  }
  if (x == nullptr || y == nullptr || w.qweight == nullptr || w.scales == nullptr) {
    return absl::InvalidArgumentError("Gemm: null pointer argument");
  }
  if (!Aligned16(x) || !Aligned16(y) || !Aligned16(w.qweight) || !Aligned16(w.scales)) {
    return absl::InvalidArgumentError("Gemm: x, y, qweight and scales must be 16-byte aligned");
  }
  if (workspace.get() == nullptr ||
      workspace.size() < WorkspaceBytes(workspace.sm_count(), workspace.compute_capability())) {
    return absl::InvalidArgumentError("Gemm: workspace not created by GemmWorkspace::Create");
  }

  GemmParams p{};
  p.qweight = static_cast<const uint4*>(w.qweight);
  p.scales = w.scales;
  p.k = static_cast<int>(k);
  p.n = static_cast<int>(n);
  p.per_channel = w.shape.group_size == kPerChannel;
  if (!p.per_channel && w.shape.group_rows() != kGroupRows) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: group_size=", w.shape.group_size, " (the kernel takes 128 or -1)"));
  }
  p.k_tiles = static_cast<int>(k / kTileK);
  p.n_tiles = static_cast<int>(n / kTileN);
  p.counters = static_cast<int*>(workspace.get());
  p.partials = reinterpret_cast<float*>(static_cast<char*>(workspace.get()) + kCounterBytes);
  const size_t scratch_bytes = ScratchBytes(workspace.sm_count());
  absl::StatusOr<GemmPath> path = PathFor(workspace, m, k, n, w.layout, scratch_bytes);
  if (!path.ok()) return path.status();
  if (*path == GemmPath::kDequantCublas) {
    char* cublas_workspace = static_cast<char*>(workspace.get()) + kCounterBytes + scratch_bytes;
    return DequantCublasGemm(
        x, m, w, y,
        DequantCublasScratch{*workspace.cublas(), p.partials, scratch_bytes, cublas_workspace,
                             CublasWorkspaceBytes(workspace.compute_capability())},
        stream);
  }
  if (*path == GemmPath::kHopper) {
    return hopper::LaunchGemm(x, m, w, y, p.counters, p.partials, workspace.sm_count(), stream);
  }
  for (int64_t row0 = 0; row0 < m; row0 += kMaxPassRows) {
    p.x = x + row0 * k;
    p.y = y + row0 * n;
    p.m_rows = static_cast<int>(std::min(kMaxPassRows, m - row0));
    if (absl::Status s = LaunchRows(p, workspace.sm_count(), stream); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace marlin::cuda
