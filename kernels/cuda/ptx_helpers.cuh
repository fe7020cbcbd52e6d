// Named wrappers for the inline PTX the FP16 x INT4 kernel uses (sm_80 and later).
//
// Each helper does one thing and says which instruction it emits; the kernel never writes asm
// itself. Shared-memory addresses are 32-bit `.shared` window addresses (SharedAddress()).
#ifndef MARLIN_KERNELS_CUDA_PTX_HELPERS_CUH_
#define MARLIN_KERNELS_CUDA_PTX_HELPERS_CUH_

#include <cuda_fp16.h>

#include <cstdint>

namespace marlin::cuda::ptx {

// Converts a generic pointer to shared memory into its 32-bit .shared address.
__device__ __forceinline__ uint32_t SharedAddress(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// cp.async.cg: copies 16 bytes global -> shared asynchronously, through L2 only, when `pred`
// holds (a predicated instruction, no branch); `gmem` need not be valid otherwise.
__device__ __forceinline__ void CopyAsync16If(bool pred, uint32_t smem, const void* gmem) {
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %0, 0;\n"
      "  @p cp.async.cg.shared.global [%1], [%2], 16;\n"
      "}\n" ::"r"(static_cast<int>(pred)),
      "r"(smem), "l"(gmem));
}

// cp.async.commit_group: closes the group of copies issued so far by this thread.
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

// cp.async.wait_group N: waits until at most `kPending` of this thread's groups are in flight.
template <int kPending>
__device__ __forceinline__ void CopyAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// ldmatrix.x4: loads four 8x8 b16 matrices; lane i supplies the row address for matrix i / 8.
__device__ __forceinline__ void LoadMatrixX4(uint32_t (&frag)[4], uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(frag[0]), "=r"(frag[1]), "=r"(frag[2]), "=r"(frag[3])
               : "r"(smem));
}

// ld.shared.v4: a 16-byte shared-memory load.
__device__ __forceinline__ uint4 LoadShared16(uint32_t smem) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smem));
  return v;
}

// ld.shared.v2: an 8-byte shared-memory load.
__device__ __forceinline__ uint2 LoadShared8(uint32_t smem) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(smem));
  return v;
}

// movmatrix.m8n8.trans.b16: transposes an 8x8 matrix of 16-bit values held across the warp, lane l
// holding row l / 4, columns 2 (l % 4) (low half) and 2 (l % 4) + 1. Warp-collective.
__device__ __forceinline__ uint32_t TransposeMatrix8x8(uint32_t v) {
  uint32_t t;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(t) : "r"(v));
  return t;
}

// mma.sync m16n8k16: d += a (16x16 FP16, row) * b (16x8 FP16, col), FP32 accumulators.
__device__ __forceinline__ void MmaF16F32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// lop3.b32 with LUT 0xEA: (a & b) | c in one instruction.
__device__ __forceinline__ uint32_t AndOr(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

}  // namespace marlin::cuda::ptx

#endif  // MARLIN_KERNELS_CUDA_PTX_HELPERS_CUH_
