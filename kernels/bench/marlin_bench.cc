// marlin-bench: times the FP16 x INT4 kernel against cuBLAS FP16 on the layers of
// shared/reference/h100-baseline.md, by that file's method: weights rotate over enough copies to
// exceed 4x L2, each timing is a CUDA-graph replay of many back-to-back calls, median of the
// replays divided by the call count, cuBLAS measured in the same run.
//
//   marlin-bench [--m 1,4,16,32,64,128,256] [--layers L8B,L70B,big] [--json FILE]
//   marlin-bench --profile-layer L70B.qkv --profile-m 16 [--trace]  # one layer's launches only
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "kernels/bench/graph_timing.h"
#include "kernels/bench/power_monitor.h"
#include "kernels/bench/random_fill.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/dequant_cublas.h"
#include "kernels/cuda/gemm_dispatch.h"
#include "kernels/cuda/hopper_trace.h"
#include "kernels/cuda/marlin_gemm.h"
#include "nlohmann/json.hpp"

namespace marlin::bench {
namespace {

using cuda::DeviceBuffer;
using cuda::Stream;

struct Layer {
  std::string model;
  std::string name;
  int64_t k, n;
};
const std::vector<Layer> kLayers = {
    {"L8B", "L8B.qkv", 4096, 6144},       {"L8B", "L8B.o", 4096, 4096},
    {"L8B", "L8B.gateup", 4096, 28672},   {"L8B", "L8B.down", 14336, 4096},
    {"L70B", "L70B.qkv", 8192, 10240},    {"L70B", "L70B.o", 8192, 8192},
    {"L70B", "L70B.gateup", 8192, 57344}, {"L70B", "L70B.down", 28672, 8192},
    {"big", "big", 16384, 16384},
};

#define BENCH_CHECK(expr)                                                            \
  do {                                                                               \
    if (absl::Status s_ = (expr); !s_.ok()) {                                        \
      std::fprintf(stderr, "marlin-bench: %s\n", std::string(s_.message()).c_str()); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

template <typename T>
T Check(absl::StatusOr<T> v) {
  BENCH_CHECK(v.status());
  return *std::move(v);
}

// The FP16 baseline: a cuBLAS handle bound to one stream with a fixed workspace (so it can be
// graph-captured).
struct Cublas {
  cuda::CublasHandle handle;
  DeviceBuffer workspace;
  static absl::StatusOr<std::unique_ptr<Cublas>> Create(cudaStream_t stream) {
    auto c = std::make_unique<Cublas>();
    absl::StatusOr<cuda::CublasHandle> h = cuda::CublasHandle::Create();
    if (!h.ok()) return h.status();
    c->handle = *std::move(h);
    absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Create(size_t{64} << 20);
    if (!ws.ok()) return ws.status();
    c->workspace = *std::move(ws);
    if (absl::Status s = c->handle.Bind(stream, c->workspace.get(), c->workspace.size()); !s.ok()) {
      return s;
    }
    return c;
  }
};

// Warm-up of a timing in turns (GraphTimer::TimeInTurns), longer for a layer's first one, which
// follows the layer's weight fills and the previous layer's largest row count: after 50 ms there
// (H200, session 32), one row timed first for each layer read L70B.o 15.6-16.8 us and L70B.down
// 34.8-45.6, against 12.4 and 32.8 when timed after 4 rows. Three launches each were not enough
// where a layer's calls are short: the first row count timed for L8B read ~4% slower than the same
// kernels timed after it (H100, --m 1,4,2 against 4,1,2). In turns, not one variant after another:
// timed one after another, the same kernel read up to 25% slower in third place than in second at
// M >= 128 (the card heats and slows under the tall products).
constexpr float kWarmUpMs = 50.f;
constexpr float kLayerWarmUpMs = 500.f;
// Idle time before each sustained window (--sustain-ms): the clock recovers from the last one.
constexpr float kSustainRestMs = 300.f;

// Median over `replays` of a graph of `calls` back-to-back calls of `record(i)`, per call, in us.
double TimePerCallUs(cudaStream_t stream, int calls, int replays,
                     const std::function<absl::Status(int)>& record) {
  std::unique_ptr<GraphTimer> timer = Check(GraphTimer::Create(stream, {{calls, record}}, nullptr));
  return Check(timer->TimeInTurns(replays, kWarmUpMs)).front().us;
}

// Back-to-back calls whose last one --trace reports: the earlier ones set the scene that the
// benchmark's graphs give a call (the previous call still draining, the caches warm).
constexpr int kTraceCalls = 20;
// Back-to-back calls before those, so that the card runs at the clock it holds under load. An
// H200 idles at 345 MHz, and 20 calls end before its clock has come up: without this warm-up the
// median block ended a third later (session 41: L70B.o at one row 13.3 -> 10.0 us from the
// previous call's end, L8B.o at one row 5.1 -> 3.8, L8B.qkv at 64 rows 12.3 -> 9.2).
constexpr double kTraceWarmUpMs = 300.0;

// Launches `call` in batches on `stream` until `ms` have passed on the host clock.
void WarmUpForTrace(double ms, cudaStream_t stream, const std::function<absl::Status()>& call) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed_ms = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };
  while (elapsed_ms() < ms) {
    for (int i = 0; i < 100; ++i) BENCH_CHECK(call());
    BENCH_CHECK(cuda::CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize"));
  }
}

// Prints the Hopper kernel's timeline of the last traced call (hopper_trace.h): for each slot, how
// many blocks reached it and the earliest, median and latest stamp, in us from the moment the
// previous call ended (the earliest block past the grid dependency; blocks that found an idle SM
// start before it); then every block's stamps ("-": not reached).
void PrintTrace(const std::vector<uint64_t>& ns) {
  using cuda::hopper::kTraceSlots;
  auto stamp = [&](int block, int slot) { return ns[size_t{1} * block * kTraceSlots + slot]; };
  std::vector<int> blocks;
  uint64_t t0 = UINT64_MAX;
  for (int b = 0; b < cuda::hopper::kTraceBlocks; ++b) {
    if (stamp(b, cuda::hopper::kTraceDependencyMet) == 0) continue;
    blocks.push_back(b);
    t0 = std::min(t0, stamp(b, cuda::hopper::kTraceDependencyMet));
  }
  auto us = [&](uint64_t t) { return (static_cast<double>(t) - static_cast<double>(t0)) / 1e3; };
  std::printf("trace: the last of %d calls, %zu blocks, us from the previous call's end\n\n",
              kTraceCalls, blocks.size());
  std::printf("| point | blocks | earliest | median | latest |\n|---|---|---|---|---|\n");
  for (int slot = 0; slot < kTraceSlots; ++slot) {
    std::vector<double> t;
    for (int b : blocks) {
      if (stamp(b, slot) != 0) t.push_back(us(stamp(b, slot)));
    }
    if (t.empty()) continue;
    std::sort(t.begin(), t.end());
    std::printf("| %s | %zu | %.2f | %.2f | %.2f |\n", cuda::hopper::TraceSlotName(slot), t.size(),
                t.front(), t[t.size() / 2], t.back());
  }
  std::printf("\nblock");
  for (int slot = 0; slot < kTraceSlots; ++slot) std::printf(" %d", slot);
  std::printf("\n");
  for (int b : blocks) {
    std::printf("%d", b);
    for (int slot = 0; slot < kTraceSlots; ++slot) {
      if (stamp(b, slot) == 0) {
        std::printf(" -");
      } else {
        std::printf(" %.2f", us(stamp(b, slot)));
      }
    }
    std::printf("\n");
  }
}

struct Row {
  std::string model, layer;
  int64_t k, n, m;
  Timing cublas;              // in turns with the paths
  std::vector<Timing> paths;  // one per timed path, in --paths order
  // With --sustain-ms, each alone (GraphTimer::TimeSustained), cuBLAS last; else empty.
  std::vector<Timing> sustained;
  double ideal_us, compute_floor_us;
  double best_us() const {
    double best = paths.front().us;
    for (const Timing& t : paths) best = std::min(best, t.us);
    return best;
  }
};

// The rows of `model`'s layers at `m` rows (one block of the model), in layer order.
std::vector<const Row*> BlockRows(const std::vector<Row>& rows, const std::string& model,
                                  int64_t m) {
  std::vector<const Row*> block;
  for (const Row& r : rows) {
    if (r.model == model && r.m == m) block.push_back(&r);
  }
  return block;
}

// One timed variant of our kernel: a path and, for the Hopper path, a partition (each forced
// through the dispatch hooks while its graph is captured).
struct KernelPath {
  cuda::GemmPath path;
  cuda::HopperPartition partition;
  std::string name;  // as given to --paths
  void Force() const {
    cuda::ForceGemmPathForTesting(path);
    cuda::ForceHopperPartitionForTesting(partition);
  }
  // The weight layout this path is timed with, given the device's fastest one: what the service
  // gives it (the Ampere path reads only kPacked). The benchmark's weights are random bytes, a
  // weight of the same statistics in either layout, so they are not converted.
  cuda::DeviceLayout Layout(cuda::DeviceLayout fastest) const {
    return path == cuda::GemmPath::kAmpere ? cuda::DeviceLayout::kPacked : fastest;
  }
};

// Parses --paths: auto, ampere, hopper, hopper:striped, hopper:cluster, hopper:passes,
// dequant-cublas. Empty on a bad name.
std::vector<KernelPath> ParsePaths(const std::string& list) {
  std::vector<KernelPath> paths;
  for (absl::string_view name : absl::StrSplit(list, ',')) {
    const size_t before = paths.size();
    for (cuda::GemmPath p : {cuda::GemmPath::kAuto, cuda::GemmPath::kAmpere,
                             cuda::GemmPath::kHopper, cuda::GemmPath::kDequantCublas}) {
      for (cuda::HopperPartition q :
           {cuda::HopperPartition::kAuto, cuda::HopperPartition::kStriped,
            cuda::HopperPartition::kClusterSplit, cuda::HopperPartition::kPasses}) {
        std::string known = cuda::GemmPathName(p);
        if (q != cuda::HopperPartition::kAuto) {
          if (p != cuda::GemmPath::kHopper) continue;
          absl::StrAppend(&known, ":", cuda::HopperPartitionName(q));
        }
        if (name == known) paths.push_back({p, q, known});
      }
    }
    if (paths.size() == before) return {};
  }
  return paths;
}

void RestoreDispatch() {
  cuda::ForceGemmPathForTesting(cuda::GemmPath::kAuto);
  cuda::ForceHopperPartitionForTesting(cuda::HopperPartition::kAuto);
}

// The --sustain-ms tables: each path and cuBLAS timed alone, with the SM clock and power each
// settled at, per layer and per model (sums over a block's layers).
void PrintSustained(const std::vector<Row>& rows, const std::vector<KernelPath>& paths,
                    const std::vector<int64_t>& ms, float sustain_ms) {
  std::printf(
      "\n## Sustained: each alone, back-to-back for %.0f ms after %.0f ms idle, twice (in order, "
      "then reversed); the windows' second halves (speedup = cuBLAS FP16 / path)\n\n",
      sustain_ms, kSustainRestMs);
  std::printf("| layer | M | cuBLAS FP16 us | MHz | W |");
  for (const KernelPath& path : paths) {
    std::printf(" %s us | MHz | W | speedup |", path.name.c_str());
  }
  std::printf("\n|---|---|---|---|---|");
  for (size_t i = 0; i < paths.size(); ++i) std::printf("---|---|---|---|");
  std::printf("\n");
  for (const Row& r : rows) {
    // "-" where NVML gave no clock or power.
    auto figure = [](double v) { return v > 0 ? absl::StrFormat("%.0f", v) : std::string("-"); };
    const Timing& blas = r.sustained.back();
    std::printf("| %s | %ld | %.1f | %s | %s |", r.layer.c_str(), r.m, blas.us,
                figure(blas.sm_clock_mhz).c_str(), figure(blas.watts).c_str());
    for (size_t i = 0; i < paths.size(); ++i) {
      const Timing& t = r.sustained[i];
      std::printf(" %.1f | %s | %s | %.2f |", t.us, figure(t.sm_clock_mhz).c_str(),
                  figure(t.watts).c_str(), blas.us / t.us);
    }
    std::printf("\n");
  }
  std::printf("\n| model | M | cuBLAS FP16 us |");
  for (const KernelPath& path : paths) std::printf(" %s us | speedup |", path.name.c_str());
  std::printf("\n|---|---|---|");
  for (size_t i = 0; i < paths.size(); ++i) std::printf("---|---|");
  std::printf("\n");
  for (const std::string model : {"L8B", "L70B", "big"}) {
    for (int64_t m : ms) {
      const std::vector<const Row*> block = BlockRows(rows, model, m);
      if (block.empty()) continue;
      std::vector<double> sum(paths.size() + 1, 0.0);  // the paths', then cuBLAS's
      for (const Row* r : block) {
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += r->sustained[i].us;
      }
      std::printf("| %s | %ld | %.0f |", model.c_str(), m, sum.back());
      for (size_t i = 0; i < paths.size(); ++i) {
        std::printf(" %.0f | %.2f |", sum[i], sum.back() / sum[i]);
      }
      std::printf("\n");
    }
  }
}

int Main(int argc, char** argv) {
  CLI::App app{"marlin-bench: FP16 x INT4 kernel vs cuBLAS FP16"};
  std::string m_list = "1,4,16,32,64,128,256";
  std::string models = "L8B,L70B,big";
  std::string json_path;
  int replays = 7;
  int min_calls = 20;
  app.add_option("--m", m_list, "comma-separated row counts");
  app.add_option("--layers", models, "comma-separated models: L8B, L70B, big");
  app.add_option("--json", json_path, "also write every figure to this JSON file");
  app.add_option("--replays", replays, "graph replays per timing (median taken)");
  app.add_option("--calls", min_calls, "minimum calls per graph");
  std::string profile_layer;
  int64_t profile_m = 1;
  app.add_option("--profile-layer", profile_layer,
                 "only launch the kernel 3 times on this layer, outside graphs (for ncu)");
  app.add_option("--profile-m", profile_m, "rows for --profile-layer");
  bool trace = false;
  app.add_flag("--trace", trace,
               "with --profile-layer: print the Hopper kernel's per-block timeline of the last of "
               "20 back-to-back calls, after 300 ms of them to bring the clock up (a build with "
               "-DMARLIN_HOPPER_TRACE=ON)");
  std::string path_list = "auto";
  app.add_option("--paths", path_list,
                 "kernel paths to time side by side: auto (the dispatch table), ampere, hopper, "
                 "hopper:striped, hopper:cluster, hopper:passes (the Hopper path with its "
                 "partition forced), dequant-cublas");
  float sustain_ms = 0.f;
  app.add_option("--sustain-ms", sustain_ms,
                 "also time each path and cuBLAS alone, back-to-back for this long after an idle "
                 "rest, over the window's second half (the clock each settles at; 0: not)");
  int tall_part_rows = 0;
  app.add_option("--tall-part-rows", tall_part_rows,
                 "rows of the Hopper path's tall parts, 128 or 256, for every path it times "
                 "(default 0: the measured rule)");
  CLI11_PARSE(app, argc, argv);
  if (tall_part_rows != 0 && tall_part_rows != 128 && tall_part_rows != 256) {
    std::fprintf(stderr, "marlin-bench: --tall-part-rows takes 0, 128 or 256\n");
    return 2;
  }
  cuda::ForceTallPartRowsForTesting(tall_part_rows);
  const std::vector<KernelPath> paths = ParsePaths(path_list);
  if (paths.empty()) {
    std::fprintf(stderr,
                 "marlin-bench: --paths takes auto, ampere, hopper, hopper:striped, "
                 "hopper:cluster, hopper:passes, dequant-cublas\n");
    return 2;
  }
  std::vector<int64_t> ms;
  for (absl::string_view s : absl::StrSplit(m_list, ',')) ms.push_back(std::stoll(std::string(s)));
  std::vector<std::string> wanted = absl::StrSplit(models, ',');

  cudaDeviceProp prop{};
  BENCH_CHECK(cuda::CudaStatus(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"));
  Stream stream = Check(Stream::Create());
  auto cublas = Check(Cublas::Create(stream.get()));
  cuda::GemmWorkspace workspace = Check(cuda::GemmWorkspace::Create(0));
  absl::StatusOr<std::unique_ptr<PowerMonitor>> nvml = PowerMonitor::Create(0);
  const PowerMonitor* monitor = nvml.ok() ? nvml->get() : nullptr;
  const double power_limit_w = monitor == nullptr ? 0.0 : Check(monitor->PowerLimitWatts());
  const cuda::DeviceLayout fastest_layout =
      cuda::FastestDeviceLayout(workspace.compute_capability());
  const size_t rotate_bytes = size_t{4} * prop.l2CacheSize;

  // Ceilings measured here: device-to-device copy bandwidth (read + write) and FP16 GEMM rate.
  const size_t copy_bytes = size_t{1} << 30;
  DeviceBuffer copy_a = Check(DeviceBuffer::Create(copy_bytes));
  DeviceBuffer copy_b = Check(DeviceBuffer::Create(copy_bytes));
  BENCH_CHECK(FillRandomBytes(copy_a.get(), copy_bytes, 1, stream.get()));
  const double copy_us = TimePerCallUs(stream.get(), 5, replays, [&](int) {
    return CopyBytes(copy_b.get(), copy_a.get(), copy_bytes, stream.get());
  });
  const double bandwidth = 2.0 * copy_bytes / (copy_us * 1e-6);  // bytes/s
  double tflops = 0;
  {
    const int64_t s = 8192;
    __half* a = copy_a.as<__half>();
    __half* b = copy_a.as<__half>() + s * s;
    __half* c = copy_b.as<__half>();
    BENCH_CHECK(FillRandomNormal(a, 2 * s * s, 1.f, 2, stream.get()));
    const double us = TimePerCallUs(stream.get(), 5, replays, [&](int) {
      return cublas->handle.GemmRowMajor(a, b, s, c, s, s, s, s);
    });
    tflops = 2.0 * s * s * s / (us * 1e-6) / 1e12;
  }
  copy_a = DeviceBuffer();
  copy_b = DeviceBuffer();
  std::printf("# marlin-bench on %s (%d SMs, %d MiB L2)\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  std::printf("copy bandwidth (read + write): %.2f TB/s; cuBLAS FP16 GEMM 8192^3: %.0f TFLOP/s\n",
              bandwidth / 1e12, tflops);
  std::printf("weight layout: %s on the hopper and auto paths, packed on the ampere path\n",
              cuda::DeviceLayoutName(fastest_layout));
  if (tall_part_rows != 0) {
    std::printf("tall parts of the Hopper path: %d rows (forced)\n", tall_part_rows);
  }
  if (monitor == nullptr) {
    std::printf("SM clocks: unknown (%s)\n", nvml.status().ToString().c_str());
  } else {
    std::printf("SM clocks and power: NVML; enforced power limit %.0f W\n", power_limit_w);
  }
  std::printf("\n");

  if (!profile_layer.empty()) {
    for (const Layer& layer : kLayers) {
      if (layer.name != profile_layer) continue;
      const WeightShape shape{layer.k, layer.n, kDefaultGroupSize};
      DeviceBuffer q = Check(DeviceBuffer::Create(layer.k * layer.n / 2));
      DeviceBuffer sc = Check(DeviceBuffer::Create(shape.num_groups() * layer.n * 2));
      DeviceBuffer x = Check(DeviceBuffer::Create(profile_m * layer.k * 2));
      DeviceBuffer y = Check(DeviceBuffer::Create(profile_m * layer.n * 2));
      BENCH_CHECK(FillRandomBytes(q.get(), q.size(), 7, stream.get()));
      BENCH_CHECK(
          FillRandomUniform(sc.as<__half>(), sc.size() / 2, 0.001f, 0.01f, 8, stream.get()));
      BENCH_CHECK(FillRandomNormal(x.as<__half>(), x.size() / 2, 1.f, 9, stream.get()));
      paths.front().Force();
      const cuda::DeviceWeight w{q.get(), sc.as<__half>(), shape,
                                 paths.front().Layout(fastest_layout)};
      BENCH_CHECK(stream.Synchronize());
      auto call = [&] {
        return cuda::Gemm(x.as<__half>(), profile_m, w, y.as<__half>(), workspace, stream.get());
      };
      if (trace) {
        WarmUpForTrace(kTraceWarmUpMs, stream.get(), call);
        BENCH_CHECK(cuda::hopper::ClearTrace());
      }
      for (int i = 0; i < (trace ? kTraceCalls : 3); ++i) BENCH_CHECK(call());
      BENCH_CHECK(stream.Synchronize());
      if (trace) PrintTrace(Check(cuda::hopper::ReadTrace()));
      return 0;
    }
    std::fprintf(stderr, "marlin-bench: unknown layer %s\n", profile_layer.c_str());
    return 1;
  }

  std::vector<Row> rows;
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());
  uint64_t seed = 100;
  for (const Layer& layer : kLayers) {
    if (std::find(wanted.begin(), wanted.end(), layer.model) == wanted.end()) continue;
    const WeightShape shape{layer.k, layer.n, kDefaultGroupSize};
    const size_t q_bytes = layer.k * layer.n / 2;
    const size_t s_bytes = shape.num_groups() * layer.n * 2;
    const size_t f_bytes = layer.k * layer.n * 2;
    const int int4_copies =
        static_cast<int>(std::max<size_t>(1, rotate_bytes / (q_bytes + s_bytes) + 1));
    const int fp16_copies = static_cast<int>(std::max<size_t>(1, rotate_bytes / f_bytes + 1));
    std::vector<DeviceBuffer> qweights, scales, fweights;
    std::vector<cuda::DeviceWeight> weights;
    for (int i = 0; i < int4_copies; ++i) {
      qweights.push_back(Check(DeviceBuffer::Create(q_bytes)));
      scales.push_back(Check(DeviceBuffer::Create(s_bytes)));
      BENCH_CHECK(FillRandomBytes(qweights.back().get(), q_bytes, ++seed, stream.get()));
      const float scale = 1.f / std::sqrt(static_cast<float>(layer.k));
      BENCH_CHECK(FillRandomUniform(scales.back().as<__half>(), s_bytes / 2, 0.5f * scale,
                                    2.f * scale, ++seed, stream.get()));
      weights.push_back({qweights.back().get(), scales.back().as<__half>(), shape});
    }
    for (int i = 0; i < fp16_copies; ++i) {
      fweights.push_back(Check(DeviceBuffer::Create(f_bytes)));
      BENCH_CHECK(FillRandomNormal(fweights.back().as<__half>(), f_bytes / 2,
                                   1.f / std::sqrt(static_cast<float>(layer.k)), ++seed,
                                   stream.get()));
    }
    DeviceBuffer x = Check(DeviceBuffer::Create(max_m * layer.k * 2));
    DeviceBuffer y = Check(DeviceBuffer::Create(max_m * layer.n * 2));
    BENCH_CHECK(FillRandomNormal(x.as<__half>(), max_m * layer.k, 1.f, ++seed, stream.get()));
    BENCH_CHECK(stream.Synchronize());

    bool layer_first = true;  // the layer's first timing, right after its weight fills
    for (int64_t m : ms) {
      // Our paths (each forced while its graph is captured) and cuBLAS, timed side by side.
      const int marlin_calls = std::max(min_calls, int4_copies);
      std::vector<Variant> variants;
      for (const KernelPath& path : paths) {
        const cuda::DeviceLayout layout = path.Layout(fastest_layout);
        variants.push_back({marlin_calls, [&, path, layout](int i) {
                              path.Force();
                              cuda::DeviceWeight w = weights[i % int4_copies];
                              w.layout = layout;
                              return cuda::Gemm(x.as<__half>(), m, w, y.as<__half>(), workspace,
                                                stream.get());
                            }});
      }
      variants.push_back({std::max(min_calls, fp16_copies), [&](int i) {
                            return cublas->handle.GemmRowMajor(
                                x.as<__half>(), fweights[i % fp16_copies].as<__half>(), layer.n,
                                y.as<__half>(), layer.n, m, layer.k, layer.n);
                          }});
      std::unique_ptr<GraphTimer> timer =
          Check(GraphTimer::Create(stream.get(), variants, monitor));
      RestoreDispatch();
      std::vector<Timing> turns =
          Check(timer->TimeInTurns(replays, layer_first ? kLayerWarmUpMs : kWarmUpMs));
      layer_first = false;
      std::vector<Timing> sustained;
      if (sustain_ms > 0.f) sustained = Check(timer->TimeSustained(sustain_ms, kSustainRestMs));
      const Timing cublas_turns = turns.back();
      turns.pop_back();
      const double bytes = q_bytes + s_bytes + m * layer.k * 2.0 + m * layer.n * 2.0;
      const double ideal_us = bytes / bandwidth * 1e6;
      const double compute_us = 2.0 * m * layer.k * layer.n / (tflops * 1e12) * 1e6;
      rows.push_back({layer.model, layer.name, layer.k, layer.n, m, cublas_turns, turns, sustained,
                      ideal_us, compute_us});
    }
  }

  std::string path_heads, path_rule;
  for (const KernelPath& path : paths) {
    absl::StrAppend(&path_heads, " ", path.name, " us | ", path.name, " speedup |");
    path_rule += "---|---|";
  }
  std::printf("## Every layer (speedup = cuBLAS FP16 / path; floor = best path)\n\n");
  std::printf(
      "| layer | K | N | M | cuBLAS FP16 us | ideal INT4 us |%s %% of memory floor | SM MHz: "
      "paths, cuBLAS |\n"
      "|---|---|---|---|---|---|%s---|---|\n",
      path_heads.c_str(), path_rule.c_str());
  for (const Row& r : rows) {
    std::printf("| %s | %ld | %ld | %ld | %.1f | %.1f |", r.layer.c_str(), r.k, r.n, r.m,
                r.cublas.us, r.ideal_us);
    for (const Timing& t : r.paths) std::printf(" %.1f | %.2f |", t.us, r.cublas.us / t.us);
    std::printf(" %.0f%% |", 100.0 * r.ideal_us / r.best_us());
    for (const Timing& t : r.paths) std::printf(" %d,", t.sm_clock_mhz);
    std::printf(" %d |\n", r.cublas.sm_clock_mhz);
  }
  std::printf("\n## Per model (sum over the layers of one block)\n\n");
  std::printf("| model | M | cuBLAS FP16 us |%s ideal speedup |\n|---|---|---|%s---|\n",
              path_heads.c_str(), path_rule.c_str());
  nlohmann::json json;
  json["device"] = prop.name;
  if (monitor != nullptr) json["power_limit_w"] = power_limit_w;
  json["copy_bandwidth_tbps"] = bandwidth / 1e12;
  json["cublas_fp16_tflops"] = tflops;
  json["hopper_weight_layout"] = cuda::DeviceLayoutName(fastest_layout);
  json["tall_part_rows"] = tall_part_rows;  // 0: the measured rule
  for (const KernelPath& path : paths) json["paths"].push_back(path.name);
  for (const std::string model : {"L8B", "L70B", "big"}) {
    for (int64_t m : ms) {
      const std::vector<const Row*> block = BlockRows(rows, model, m);
      if (block.empty()) continue;
      double cub = 0, floor = 0;
      std::vector<double> sums(paths.size(), 0.0);
      for (const Row* r : block) {
        cub += r->cublas.us;
        for (size_t i = 0; i < paths.size(); ++i) sums[i] += r->paths[i].us;
        floor += std::max(r->ideal_us, r->compute_floor_us);
      }
      std::printf("| %s | %ld | %.0f |", model.c_str(), m, cub);
      nlohmann::json entry = {{"model", model}, {"m", m}, {"cublas_us", cub}};
      for (size_t i = 0; i < paths.size(); ++i) {
        std::printf(" %.0f | %.2f |", sums[i], cub / sums[i]);
        entry[paths[i].name + "_us"] = sums[i];
        entry[paths[i].name + "_speedup"] = cub / sums[i];
      }
      std::printf(" %.2f |\n", cub / floor);
      entry["ideal_speedup"] = cub / floor;
      json["models"].push_back(entry);
    }
  }
  for (const Row& r : rows) {
    nlohmann::json entry = {{"layer", r.layer},
                            {"k", r.k},
                            {"n", r.n},
                            {"m", r.m},
                            {"cublas_us", r.cublas.us},
                            {"cublas_mhz", r.cublas.sm_clock_mhz},
                            {"ideal_us", r.ideal_us},
                            {"compute_floor_us", r.compute_floor_us},
                            {"memory_floor_fraction", r.ideal_us / r.best_us()}};
    for (size_t i = 0; i < paths.size(); ++i) {
      entry[paths[i].name + "_us"] = r.paths[i].us;
      entry[paths[i].name + "_mhz"] = r.paths[i].sm_clock_mhz;
    }
    if (!r.sustained.empty()) {
      for (size_t i = 0; i <= paths.size(); ++i) {
        const std::string name = i < paths.size() ? paths[i].name : "cublas";
        entry[name + "_sustained_us"] = r.sustained[i].us;
        entry[name + "_sustained_mhz"] = r.sustained[i].sm_clock_mhz;
        entry[name + "_sustained_w"] = r.sustained[i].watts;
      }
    }
    json["layers"].push_back(entry);
  }
  if (sustain_ms > 0.f) PrintSustained(rows, paths, ms, sustain_ms);
  json["sustain_ms"] = sustain_ms;
  if (!json_path.empty()) std::ofstream(json_path) << json.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace marlin::bench

int main(int argc, char** argv) { return marlin::bench::Main(argc, argv); }
