// An opt-in timeline of the Hopper kernel's blocks, for finding where a call's time goes (how
// sessions 23 and 33 of docs/perf/kernel-h100.md found the epilogue's costs). Built with
// -DMARLIN_HOPPER_TRACE=ON, the first consumer thread of each block stores %globaltimer at each
// TraceSlot it passes (hopper_trace.cuh); the host clears and reads the stamps here, and
// `marlin-bench --profile-layer L --profile-m M --trace` prints them. Without the option the
// kernels carry no trace code and the functions below return FailedPrecondition. They are defined
// in hopper_gemm.cu, the one translation unit that holds the kernels and their stamps.
//
//   RETURN_IF_ERROR(hopper::ClearTrace());
//   ... launch calls on the stream, synchronize ...
//   ASSIGN_OR_RETURN(std::vector<uint64_t> ns, hopper::ReadTrace());
//   ns[block * kTraceSlots + slot];  // ns, 0 where the block did not pass the slot
//
// The stores cost a call 0.2-1.1 us (H100, session 23): compare a traced build's figures only
// with another traced build's.
#ifndef MARLIN_KERNELS_CUDA_HOPPER_TRACE_H_
#define MARLIN_KERNELS_CUDA_HOPPER_TRACE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace marlin::cuda::hopper {

// Segments (a block's stages of one slice) whose points are recorded; later ones are not.
inline constexpr int kTraceSegments = 3;

// A block's recorded points, in slot order. The last call that reached a slot wrote it; 0 where
// no call of the block did.
enum TraceSlot : int {
  kTraceConsumersStart = 0,  // the consumers past setmaxnreg, before the grid dependency
  kTraceDependencyMet,       // past GridDependencyWait: the previous call on the stream is done
  // Segment s < kTraceSegments: kTraceSegmentStart + 3 s its start, + 1 its main loop's end, + 2
  // its end (stored, partial written, or the cluster split's sums done).
  kTraceSegmentStart,
  // The cluster split's epilogue (FinishClusterSlice), inside its one segment's end.
  kTraceClusterRingsFree = kTraceSegmentStart + 3 * kTraceSegments,  // every rank past its ring
  kTraceClusterScattered,     // this rank's shares sent (ScatterPartials)
  kTraceClusterSharesLanded,  // every rank's shares of this rank's first float4s arrived
  kTraceHeldSumWaited,        // the other blocks of the held slice have signalled
  kTraceHeldSumDone,          // SumHeldSlice stored the slice
  kTraceSumWaited,            // the last other split slice signalled (WaitForSlice)
  kTraceSumDone,              // SumSlice stored it
  kTraceConsumersEnd,
  kTraceSlots,
};

// Blocks recorded (grid indices below it); a launch's later blocks are not.
inline constexpr int kTraceBlocks = 1024;

// The name of slot `slot` (for reports), e.g. "segment 1 loop end".
const char* TraceSlotName(int slot);

// Whether this build records the trace (MARLIN_HOPPER_TRACE).
bool TraceBuilt();

// Zeroes every stamp; ordered after the current device's earlier work (a blocking copy).
absl::Status ClearTrace();

// kTraceBlocks x kTraceSlots stamps in ns (%globaltimer), block-major.
absl::StatusOr<std::vector<uint64_t>> ReadTrace();

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_TRACE_H_
