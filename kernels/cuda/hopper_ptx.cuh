// Named wrappers for the sm_90 / sm_90a PTX the Hopper kernel uses: mbarriers, the bulk tensor
// copy engine (TMA), warpgroup MMA bookkeeping, register reallocation, named barriers and the
// release / acquire pair of the striped partition's slice counters.
//
// Each helper emits one instruction (or one wait loop) and says which; the kernel never writes asm
// itself. Addresses of shared memory are 32-bit `.shared` window addresses (ptx::SharedAddress).
// The wgmma shapes themselves are in wgmma_ops.cuh.
#ifndef MARLIN_KERNELS_CUDA_HOPPER_PTX_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_PTX_CUH_

#include <cuda.h>

#include <cstdint>

namespace marlin::cuda::ptx {

// mbarrier.init: a barrier whose phase completes after `arrivals` arrivals (and their bytes).
__device__ __forceinline__ void BarrierInit(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals));
}

// fence.mbarrier_init: makes barrier initializations visible to the async proxy (the TMA unit)
// and, once the cluster barrier after it completes, to the cluster's other blocks.
__device__ __forceinline__ void FenceBarrierInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// mbarrier.arrive.expect_tx: arrives and announces `bytes` of copies that will complete on `bar`.
__device__ __forceinline__ void BarrierArriveExpectBytes(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

// mbarrier.arrive: one plain arrival.
__device__ __forceinline__ void BarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// mbarrier.try_wait.parity in a loop: returns once the phase of parity `parity` has completed.
__device__ __forceinline__ void BarrierWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      "  .reg .pred done;\n"
      "wait_%=:\n"
      "  mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "  @!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// cp.async.bulk.tensor.2d: TMA copy of the box at (c0, c1) of `map` into shared memory,
// completing its bytes on `bar`.
__device__ __forceinline__ void TensorLoad2d(uint32_t smem, const CUtensorMap* map, int c0, int c1,
                                             uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%2, %3}], [%4];\n" ::"r"(smem),
      "l"(map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

// cp.async.bulk.tensor.3d: as TensorLoad2d for a rank-3 map.
__device__ __forceinline__ void TensorLoad3d(uint32_t smem, const CUtensorMap* map, int c0, int c1,
                                             int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%2, %3, %4}], [%5];\n" ::"r"(smem),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// prefetch.tensormap: pulls a tensor map (a __grid_constant__ parameter) into the cache early.
__device__ __forceinline__ void PrefetchTensorMap(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}

// griddepcontrol.wait: waits until the grids this one depends on (programmatic dependent launch)
// have completed and their memory is visible; returns at once without such a dependency.
__device__ __forceinline__ void GridDependencyWait() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

// griddepcontrol.launch_dependents: lets a dependent grid be scheduled before this one ends.
__device__ __forceinline__ void LaunchDependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// wgmma.fence: orders earlier register writes (A fragments, accumulators) before the next wgmma.
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

// wgmma.commit_group: closes the group of wgmma operations issued so far.
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// wgmma.wait_group N: waits until at most `kPending` committed wgmma groups are in flight.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Tells the compiler `v` is read and written here, so it keeps a wgmma accumulator's uses on the
// right side of WgmmaFence / WgmmaWait (it does not see the asynchronous proxy).
__device__ __forceinline__ void PinRegister(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void PinRegister(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }

// Lane 0's `v` in every lane (shfl.sync.idx): for a value the same across the warp that the
// compiler cannot prove so (one derived from threadIdx), so that ptxas keeps it, and what is
// derived from it, in uniform registers. Every lane of the warp must call it.
__device__ __forceinline__ uint32_t WarpUniform(uint32_t v) {
  return __shfl_sync(0xffffffffu, v, 0);
}

// Hides `v`'s value from the compiler (an empty asm that may change it) without ordering anything:
// what it knew of the bits, it can no longer fold into the arithmetic that follows.
__device__ __forceinline__ void HideValue(uint64_t& v) { asm volatile("" : "+l"(v)); }

// setmaxnreg.inc: raises this warpgroup's per-thread register budget to kRegs.
template <int kRegs>
__device__ __forceinline__ void RaiseRegisterBudget() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// setmaxnreg.dec: lowers this warpgroup's per-thread register budget to kRegs.
template <int kRegs>
__device__ __forceinline__ void LowerRegisterBudget() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// bar.sync id, count: a barrier among `count` threads (a subset of the block) on barrier `id`.
__device__ __forceinline__ void NamedBarrier(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// red.release.gpu.global.add.s32: adds `v` to a global counter, ordered after every write this
// thread has made or observed (a CTA barrier before it makes the block's writes count), GPU-wide.
// The thread does not wait for the addition.
__device__ __forceinline__ void ReleaseAdd(int* counter, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(counter), "r"(v) : "memory");
}

// ld.acquire.gpu.global.s32: reads a global counter; whatever the threads that released it
// (ReleaseAdd) wrote before is visible to this thread, and through a CTA barrier to its block.
__device__ __forceinline__ int LoadAcquire(const int* counter) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(counter) : "memory");
  return v;
}

// ld.shared.b32: a 4-byte shared-memory load.
__device__ __forceinline__ uint32_t LoadShared4(uint32_t smem) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(smem));
  return v;
}

// st.shared.v4.f32: a 16-byte shared-memory store of `v` at `smem` (16-byte aligned).
__device__ __forceinline__ void StoreShared16(uint32_t smem, float4 v) {
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem), "f"(v.x), "f"(v.y),
               "f"(v.z), "f"(v.w)
               : "memory");
}

// st.global.v2.b32 of (lo, hi) at `gmem` where `pred` holds, predicated instead of branched
// around: a branch per store kept ptxas from overlapping one store's transposes with another's.
__device__ __forceinline__ void StoreGlobal8If(bool pred, void* gmem, uint32_t lo, uint32_t hi) {
  asm volatile(
      "{\n"
      " .reg .pred p;\n"
      " setp.ne.b32 p, %0, 0;\n"
      " @p st.global.v2.b32 [%1], {%2, %3};\n"
      "}\n" ::"r"(static_cast<uint32_t>(pred)),
      "l"(gmem), "r"(lo), "r"(hi)
      : "memory");
}

// %cluster_ctarank: this block's rank within its thread-block cluster.
__device__ __forceinline__ uint32_t ClusterRank() {
  uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  return rank;
}

// mapa.shared::cluster: the address of this block's shared-memory location `smem` (data or an
// mbarrier) in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ uint32_t MapToClusterRank(uint32_t smem, uint32_t rank) {
  uint32_t mapped;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(mapped) : "r"(smem), "r"(rank));
  return mapped;
}

// mbarrier.expect_tx on a cluster block's barrier (an address from MapToClusterRank): announces
// `bytes` more of asynchronous stores that will complete on it (StoreClusterSharedAsync16).
__device__ __forceinline__ void ClusterBarrierExpectBytes(uint32_t cluster_bar, uint32_t bytes) {
  asm volatile(
      "mbarrier.expect_tx.relaxed.cluster.shared::cluster.b64 [%0], %1;\n" ::"r"(cluster_bar),
      "r"(bytes)
      : "memory");
}

// st.async.v4.f32: a 16-byte store of `v` into a cluster block's shared memory (distributed
// shared memory) that completes its 16 bytes on that block's barrier `cluster_bar`; a thread that
// sees the barrier's phase complete sees the data. Both addresses come from MapToClusterRank.
__device__ __forceinline__ void StoreClusterSharedAsync16(uint32_t cluster_smem, float4 v,
                                                          uint32_t cluster_bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, "
      "[%5];\n" ::"r"(cluster_smem),
      "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(cluster_bar)
      : "memory");
}

// mbarrier.arrive.relaxed on a cluster block's barrier (an address from MapToClusterRank): one
// plain arrival, ordering nothing (the data it accompanies completes on the barrier itself).
__device__ __forceinline__ void ClusterBarrierArrive(uint32_t cluster_bar) {
  asm volatile("mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_bar)
               : "memory");
}

// mbarrier.try_wait.parity.acquire.cluster in a loop: BarrierWait for a barrier that blocks of
// the cluster complete (ClusterBarrierArrive, StoreClusterSharedAsync16); their stores are then
// visible to this thread.
__device__ __forceinline__ void ClusterBarrierWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      "  .reg .pred done;\n"
      "wait_%=:\n"
      "  mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
      "  @!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// barrier.cluster.arrive.relaxed: this thread's arrival at the cluster-wide barrier, which
// completes once every thread of the cluster has arrived or exited; a thread waits (ClusterWait)
// before it arrives again, or exits. It orders no memory access: on the H100 a release arrival
// held the barrier ~0.8 us longer (docs/perf/kernel-h100.md, "Session 23"). Barrier
// initializations are published by FenceBarrierInit, data by the barriers it completes on.
__device__ __forceinline__ void ClusterArriveRelaxed() {
  asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
}

// barrier.cluster.wait.acquire: waits until every thread of the cluster has arrived.
__device__ __forceinline__ void ClusterWait() {
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
}

// The wgmma shared-memory descriptor of a K-major FP16 operand stored by TMA with the 128-byte
// swizzle: rows of 128 bytes (64 k values), 8-row atoms 1024 bytes apart. `smem` must lie in a
// 1024-byte-aligned atom; adding 32 bytes steps 16 k values along the row.
__device__ __forceinline__ uint64_t Swizzle128KMajorDescriptor(uint32_t smem) {
  constexpr uint64_t kAtomStride = 1024 >> 4;  // stride-dimension byte offset, in 16 B units
  constexpr uint64_t kLeadingUnused = 1;       // ignored for swizzled K-major layouts
  constexpr uint64_t kSwizzle128 = uint64_t{1} << 62;
  return ((smem & 0x3ffff) >> 4) | (kLeadingUnused << 16) | (kAtomStride << 32) | kSwizzle128;
}

// `desc` (Swizzle128KMajorDescriptor) of the operand `bytes` (a multiple of 16) further on: only
// the 14-bit start-address field grows, by bytes / 16 (shared-memory addresses stay below 2^18,
// so it never carries into the next field), so one 64-bit add does it.
// Where the descriptor is warp-uniform, ptxas steps the uniform register pair it passes to each
// wgmma with one UIADD3.64; from an add on the low word alone it rebuilt the pair, high word
// included, for every wgmma (two uniform instructions).
__device__ __forceinline__ uint64_t DescriptorPlusBytes64(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

}  // namespace marlin::cuda::ptx

#endif  // MARLIN_KERNELS_CUDA_HOPPER_PTX_CUH_
