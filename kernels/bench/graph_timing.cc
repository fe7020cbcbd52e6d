#include "kernels/bench/graph_timing.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>
#include <utility>

namespace marlin::bench {
namespace {

// A sustained window's launches last at least this long, so that the host's wait between them
// is a negligible gap in the card's load.
constexpr float kSustainedLaunchMs = 2.f;
// Launches timed in a sustained window's second half at least: a window goes on past its length
// until it has them (where a launch is long against the window).
constexpr size_t kMinSustainedLaunches = 3;
// The shortest second half whose mean power is reported: NVML's energy counter moves every 20-100
// ms.
constexpr int64_t kMinPowerWindowNs = 200'000'000;

template <typename T>
T Median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double NowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GraphTimer>> GraphTimer::Create(cudaStream_t stream,
                                                               const std::vector<Variant>& variants,
                                                               const PowerMonitor* nvml) {
  if (variants.empty()) return absl::InvalidArgumentError("no variants to time");
  std::vector<int> calls;
  std::vector<cuda::GraphExec> graphs;
  for (const Variant& v : variants) {
    if (v.calls < 1) return absl::InvalidArgumentError("a variant's graph needs a call");
    absl::StatusOr<cuda::GraphExec> graph = cuda::GraphExec::Capture(stream, [&]() -> absl::Status {
      for (int i = 0; i < v.calls; ++i) {
        if (absl::Status s = v.record(i); !s.ok()) return s;
      }
      return absl::OkStatus();
    });
    if (!graph.ok()) return graph.status();
    calls.push_back(v.calls);
    graphs.push_back(*std::move(graph));
  }
  absl::StatusOr<cuda::Event> start = cuda::Event::Create();
  if (!start.ok()) return start.status();
  absl::StatusOr<cuda::Event> stop = cuda::Event::Create();
  if (!stop.ok()) return stop.status();
  return std::unique_ptr<GraphTimer>(new GraphTimer(stream, std::move(calls), std::move(graphs),
                                                    *std::move(start), *std::move(stop), nvml));
}

GraphTimer::GraphTimer(cudaStream_t stream, std::vector<int> calls,
                       std::vector<cuda::GraphExec> graphs, cuda::Event start, cuda::Event stop,
                       const PowerMonitor* nvml)
    : stream_(stream),
      calls_(std::move(calls)),
      graphs_(std::move(graphs)),
      start_(std::move(start)),
      stop_(std::move(stop)),
      nvml_(nvml) {}

absl::StatusOr<float> GraphTimer::LaunchTimed(size_t v, int repeats) {
  MARLIN_CUDA_RETURN_IF_ERROR(cudaEventRecord(start_.get(), stream_));
  for (int r = 0; r < repeats; ++r) {
    if (absl::Status s = graphs_[v].Launch(stream_); !s.ok()) return s;
  }
  MARLIN_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop_.get(), stream_));
  MARLIN_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop_.get()));
  float ms = 0.f;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start_.get(), stop_.get()));
  return ms;
}

absl::StatusOr<int> GraphTimer::ClockMhz() const {
  if (nvml_ == nullptr) return 0;
  absl::StatusOr<PowerSample> s = nvml_->Sample();
  if (!s.ok()) return s.status();
  return s->sm_clock_mhz;
}

absl::StatusOr<std::vector<Timing>> GraphTimer::TimeInTurns(int replays, float warm_up_ms) {
  if (replays < 1) return absl::InvalidArgumentError("replays must be at least 1");
  float warm_ms = 0.f;
  for (int round = 0; round < 3 || warm_ms < warm_up_ms; ++round) {
    for (size_t v = 0; v < graphs_.size(); ++v) {
      absl::StatusOr<float> ms = LaunchTimed(v, 1);
      if (!ms.ok()) return ms.status();
      warm_ms += *ms;
    }
  }
  std::vector<std::vector<float>> ms(graphs_.size());
  std::vector<std::vector<int>> mhz(graphs_.size());
  for (int r = 0; r < replays; ++r) {
    for (size_t v = 0; v < graphs_.size(); ++v) {
      absl::StatusOr<float> replay_ms = LaunchTimed(v, 1);
      if (!replay_ms.ok()) return replay_ms.status();
      absl::StatusOr<int> clock = ClockMhz();
      if (!clock.ok()) return clock.status();
      ms[v].push_back(*replay_ms);
      mhz[v].push_back(*clock);
    }
  }
  std::vector<Timing> out;
  for (size_t v = 0; v < graphs_.size(); ++v) {
    out.push_back({.us = Median(ms[v]) * 1000.0 / calls_[v], .sm_clock_mhz = Median(mhz[v])});
  }
  return out;
}

absl::StatusOr<Timing> GraphTimer::SustainOne(size_t v, float sustain_ms, float rest_ms) {
  std::this_thread::sleep_for(std::chrono::duration<float, std::milli>(rest_ms));
  absl::StatusOr<float> probe_ms = LaunchTimed(v, 1);
  if (!probe_ms.ok()) return probe_ms.status();
  const int repeats = std::max(1, static_cast<int>(std::ceil(kSustainedLaunchMs / *probe_ms)));
  const double begin_ms = NowMs();
  std::vector<double> us;
  std::vector<int> mhz;
  // The window's second half starts where the first launch that ends in it ends; NVML is read
  // there and after every launch that follows.
  PowerSample first{}, last{};
  bool started = false;
  while (NowMs() - begin_ms < sustain_ms || us.size() < kMinSustainedLaunches) {
    absl::StatusOr<float> ms = LaunchTimed(v, repeats);
    if (!ms.ok()) return ms.status();
    if (NowMs() - begin_ms < sustain_ms / 2) continue;
    PowerSample now{};
    if (nvml_ != nullptr) {
      absl::StatusOr<PowerSample> s = nvml_->Sample();
      if (!s.ok()) return s.status();
      now = *s;
    }
    if (!started) {
      first = now;
      started = true;
      continue;
    }
    us.push_back(*ms * 1000.0 / (repeats * calls_[v]));
    mhz.push_back(now.sm_clock_mhz);
    last = now;
  }
  const bool powered =
      nvml_ != nullptr && last.steady_clock_ns - first.steady_clock_ns >= kMinPowerWindowNs;
  return Timing{.us = Median(us),
                .sm_clock_mhz = Median(mhz),
                .watts = powered ? AveragePowerWatts(first, last) : 0.0};
}

absl::StatusOr<std::vector<Timing>> GraphTimer::TimeSustained(float sustain_ms, float rest_ms) {
  const size_t n = graphs_.size();
  std::vector<Timing> mean(n);
  std::vector<int> powered(n, 0);  // windows of variant v with a power figure
  for (size_t pass = 0; pass < 2 * n; ++pass) {
    const size_t v = pass < n ? pass : 2 * n - 1 - pass;
    absl::StatusOr<Timing> t = SustainOne(v, sustain_ms, rest_ms);
    if (!t.ok()) return t.status();
    mean[v].us += t->us / 2;
    mean[v].sm_clock_mhz += t->sm_clock_mhz;  // halved below, once both windows are in
    mean[v].watts += t->watts;
    powered[v] += t->watts > 0 ? 1 : 0;
  }
  for (size_t v = 0; v < n; ++v) {
    mean[v].sm_clock_mhz /= 2;
    mean[v].watts = powered[v] > 0 ? mean[v].watts / powered[v] : 0.0;
  }
  return mean;
}

}  // namespace marlin::bench
