// How marlin-bench times a kernel: each variant (a path of ours, or cuBLAS) is a CUDA graph of
// back-to-back calls, timed two ways.
//  - In turns: the variants' graphs replay A B A B ..., median per variant, so slow drift of the
//    clock and temperature falls on all alike.
//  - Sustained: each variant alone, back-to-back for a while after an idle rest, its figures
//    taken over the window's second half: the clock it settles at under its own draw, as in a
//    server that runs only it. A card at its power limit sets its clock from its recent draw, so
//    in turns the variants share clocks that their mixed draw sets.
// On H200s (docs/perf/kernel-h100.md, session 40) the two agreed on some cards; on others our
// kernel read up to 16% slower in turns than alone at 64-256 rows, cuBLAS up to 6%.
// With a PowerMonitor, every timing carries the SM clock read after its launches, and sustained
// ones the mean power.
//
//   ASSIGN_OR_RETURN(auto timer, GraphTimer::Create(stream, {{20, record_ours}, {20, record_blas}},
//                                                   nvml));
//   ASSIGN_OR_RETURN(std::vector<Timing> turns, timer->TimeInTurns(/*replays=*/7, 50.f));
//   ASSIGN_OR_RETURN(std::vector<Timing> alone, timer->TimeSustained(1000.f, 300.f));
#ifndef MARLIN_KERNELS_BENCH_GRAPH_TIMING_H_
#define MARLIN_KERNELS_BENCH_GRAPH_TIMING_H_

#include <cuda_runtime_api.h>

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/bench/power_monitor.h"
#include "kernels/cuda/cuda_resources.h"

namespace marlin::bench {

// One timed variant: a graph of `calls` back-to-back calls of `record(i)`.
struct Variant {
  int calls;
  std::function<absl::Status(int)> record;
};

// A variant's time and the conditions it ran in.
struct Timing {
  double us = 0;         // per call: the median over the timed launches
  int sm_clock_mhz = 0;  // the median of the SM clock read after each timed launch; 0 without NVML
  // The mean power over a sustained window's second half; 0 in turns, without NVML, or where
  // that half was under 200 ms (the energy counter moves every 20-100 ms).
  double watts = 0;
};

class GraphTimer {
 public:
  // Captures each variant's graph on `stream`. `nvml` may be null (no clocks or power then); it
  // must outlive the timer.
  static absl::StatusOr<std::unique_ptr<GraphTimer>> Create(cudaStream_t stream,
                                                            const std::vector<Variant>& variants,
                                                            const PowerMonitor* nvml);

  // Rounds of every graph until `warm_up_ms` have passed (at least three), then `replays` rounds,
  // the variants in turn within each; per variant the median replay.
  absl::StatusOr<std::vector<Timing>> TimeInTurns(int replays, float warm_up_ms);

  // Each variant alone, twice (in order, then in reverse, so that the card's slow heating falls on
  // all alike): `rest_ms` idle, then its graph back-to-back for `sustain_ms`, timed in launches of
  // at least 2 ms. The figures cover the launches in the window's second half (at least three: a
  // window lasts longer where it must), the two windows averaged.
  absl::StatusOr<std::vector<Timing>> TimeSustained(float sustain_ms, float rest_ms);

 private:
  GraphTimer(cudaStream_t stream, std::vector<int> calls, std::vector<cuda::GraphExec> graphs,
             cuda::Event start, cuda::Event stop, const PowerMonitor* nvml);
  // Launches graph v `repeats` times between the two events and waits: ms elapsed.
  absl::StatusOr<float> LaunchTimed(size_t v, int repeats);
  // The SM clock now, or 0 without NVML.
  absl::StatusOr<int> ClockMhz() const;
  // One sustained window of variant v: its median us, clock and power.
  absl::StatusOr<Timing> SustainOne(size_t v, float sustain_ms, float rest_ms);

  cudaStream_t stream_;
  std::vector<int> calls_;  // calls per graph, per variant
  std::vector<cuda::GraphExec> graphs_;
  cuda::Event start_, stop_;
  const PowerMonitor* nvml_;  // null: no clocks or power
};

}  // namespace marlin::bench

#endif  // MARLIN_KERNELS_BENCH_GRAPH_TIMING_H_
