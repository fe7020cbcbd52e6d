// GPU tests of Gemm's paths against a float64 reference (ctest label `gpu`). Every test runs once
// per path, forced through gemm_dispatch.h's test hook: the Ampere path (sm_80 and later), the
// Hopper path (sm_90a only; skipped elsewhere) with the weights in both device layouts
// (device_layout.h), and the dequant-cublas path (sm_80 and later). Without a CUDA device
// every test skips. Fresh random data each run; the seed is printed on failure. Tolerance: every
// path rounds each dequantized weight to FP16 exactly as the reference does, accumulates in FP32
// (error ~ sqrt(K) * 2^-24 relative, negligible) and rounds the output to FP16 (at most 2^-11
// relative per element, about 2^-11 / sqrt(3) in RMS), so a relative Frobenius error of 1e-3
// leaves a margin of ~3x over the output rounding alone.
#include "kernels/cuda/marlin_gemm.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/gemm_dispatch.h"
#include "kernels/format/weight_format.h"

namespace marlin::cuda {
namespace {

constexpr double kMaxRelativeError = 1e-3;
constexpr uint16_t kPoison = 0x7e00;  // FP16 NaN: any output the kernel fails to write shows up

#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status s_ = (expr);              \
    ASSERT_TRUE(s_.ok()) << #expr << ": " << s_; \
  } while (0)

template <typename T>
T ValueOrDie(absl::StatusOr<T> v) {
  if (!v.ok()) {
    ADD_FAILURE() << v.status();
    std::abort();
  }
  return *std::move(v);
}

// A random quantized weight: q uniform in [-8, 7], scales in [0.5, 2) / sqrt(K).
QuantizedWeight RandomWeight(const WeightShape& shape, std::mt19937_64& rng) {
  QuantizedWeight w;
  w.shape = shape;
  w.q.resize(shape.k * shape.n);
  for (size_t i = 0; i < w.q.size(); i += 16) {  // 16 nibbles per draw: layers hold ~10^9
    uint64_t bits = rng();
    for (size_t j = i; j < std::min(i + 16, w.q.size()); ++j, bits >>= 4) {
      w.q[j] = static_cast<int8_t>(static_cast<int>(bits & 15) - 8);
    }
  }
  w.scales.resize(shape.num_groups() * shape.n);
  std::uniform_real_distribution<float> sdist(0.5f, 2.0f);
  const float norm = 1.0f / std::sqrt(static_cast<float>(shape.k));
  for (auto& s : w.scales) s = FloatToHalf(sdist(rng) * norm);
  return w;
}

std::vector<uint16_t> RandomActivations(int64_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<uint16_t> x(count);
  for (auto& v : x) v = FloatToHalf(dist(rng));
  return x;
}

// One packed weight resident on the device.
struct DeviceWeightCopy {
  DeviceBuffer qweight;
  DeviceBuffer scales;
  DeviceWeight view;
};

// Copies host bytes to the device and waits until they have landed. A plain cudaMemcpy from
// pageable memory may return before its DMA completes, and the tests' non-blocking streams do not
// wait for the legacy stream it runs on.
void CopyToDeviceAndWait(void* device, const void* host, size_t bytes) {
  EXPECT_EQ(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// Uploads `packed` and rearranges its words into `layout` (device_layout.h).
DeviceWeightCopy Upload(const PackedWeight& packed, DeviceLayout layout) {
  DeviceWeightCopy d;
  d.qweight = ValueOrDie(DeviceBuffer::Create(packed.qweight.size()));
  d.scales = ValueOrDie(DeviceBuffer::Create(packed.scales.size() * 2));
  CopyToDeviceAndWait(d.qweight.get(), packed.qweight.data(), packed.qweight.size());
  CopyToDeviceAndWait(d.scales.get(), packed.scales.data(), packed.scales.size() * 2);
  Stream stream = ValueOrDie(Stream::Create());
  EXPECT_TRUE(ConvertDeviceLayout(d.qweight.get(), packed.shape, DeviceLayout::kPacked, layout,
                                  stream.get())
                  .ok());
  EXPECT_TRUE(stream.Synchronize().ok());
  d.view = DeviceWeight{d.qweight.get(), d.scales.as<__half>(), packed.shape, layout};
  return d;
}

// A kernel path, for the Hopper path its partition, and the weights' device layout: every test
// runs once per variant.
struct KernelVariant {
  GemmPath path;
  HopperPartition partition;
  DeviceLayout layout;
  const char* name;
};
void PrintTo(const KernelVariant& variant, std::ostream* os) { *os << variant.name; }

class MarlinGemmTest : public ::testing::TestWithParam<KernelVariant> {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    workspace_ = std::make_unique<GemmWorkspace>(ValueOrDie(GemmWorkspace::Create(0)));
    const GemmPath path = GetParam().path;
    if (!GemmPathAvailable(path, workspace_->compute_capability())) {
      GTEST_SKIP() << GemmPathName(path) << " path not available on sm_"
                   << workspace_->compute_capability();
    }
    ForceGemmPathForTesting(path);
    ForceHopperPartitionForTesting(GetParam().partition);
    stream_ = ValueOrDie(Stream::Create());
  }
  void TearDown() override {
    ForceGemmPathForTesting(GemmPath::kAuto);
    ForceHopperPartitionForTesting(HopperPartition::kAuto);
    ForceTallPartRowsForTesting(0);
  }

  // Runs the kernel on fresh x (m rows) and returns the FP16 output bits (poisoned beforehand).
  std::vector<uint16_t> RunOnDevice(const DeviceWeight& w, const std::vector<uint16_t>& x,
                                    int64_t m, const GemmWorkspace& ws, cudaStream_t stream) {
    const int64_t n = w.shape.n;
    DeviceBuffer dx = ValueOrDie(DeviceBuffer::Create(x.size() * 2));
    DeviceBuffer dy = ValueOrDie(DeviceBuffer::Create(m * n * 2));
    std::vector<uint16_t> y(m * n, kPoison);
    CopyToDeviceAndWait(dx.get(), x.data(), x.size() * 2);
    CopyToDeviceAndWait(dy.get(), y.data(), y.size() * 2);
    absl::Status s = Gemm(dx.as<__half>(), m, w, dy.as<__half>(), ws, stream);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(y.data(), dy.get(), y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    return y;
  }

  // Checks y against the float64 reference on `columns` (all when empty). The columns are dealt
  // out to the host's threads, each summing its own errors: on one thread the reference took most
  // of the suite's ~570 s on the H200's host (MediumShapes_SplitSlices ~40 s a path).
  void ExpectMatchesReference(const std::vector<uint16_t>& x, int64_t m, const QuantizedWeight& w,
                              const std::vector<uint16_t>& y, const std::vector<int64_t>& columns) {
    const int64_t k = w.shape.k, n = w.shape.n;
    std::vector<int64_t> cols = columns;
    if (cols.empty()) {
      for (int64_t j = 0; j < n; ++j) cols.push_back(j);
    }
    std::vector<double> xf(x.size());
    for (size_t i = 0; i < x.size(); ++i) xf[i] = HalfToFloat(x[i]);
    const int64_t gr = w.shape.group_rows();
    struct ErrorSums {
      double err2 = 0, ref2 = 0;
      int64_t non_finite = 0;
    };
    const int threads = static_cast<int>(std::clamp<size_t>(std::thread::hardware_concurrency(), 1,
                                                            std::min<size_t>(cols.size(), 64)));
    std::vector<ErrorSums> sums(threads);
    auto check_columns = [&](int t) {
      std::vector<double> wcol(k);
      ErrorSums s;  // summed here, stored once: no cache line shared between threads
      for (size_t c = t; c < cols.size(); c += threads) {
        const int64_t col = cols[c];
        for (int64_t kk = 0; kk < k; ++kk) {
          wcol[kk] = DequantizeElement(w.q[kk * n + col], w.scales[(kk / gr) * n + col]);
        }
        for (int64_t i = 0; i < m; ++i) {
          double ref = 0;
          for (int64_t kk = 0; kk < k; ++kk) ref += xf[i * k + kk] * wcol[kk];
          const float got = HalfToFloat(y[i * n + col]);
          if (!std::isfinite(got)) ++s.non_finite;
          s.err2 += (got - ref) * (got - ref);
          s.ref2 += ref * ref;
        }
      }
      sums[t] = s;
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(check_columns, t);
    check_columns(0);
    for (std::thread& thread : pool) thread.join();
    ErrorSums total;
    for (const ErrorSums& s : sums) {
      total.err2 += s.err2;
      total.ref2 += s.ref2;
      total.non_finite += s.non_finite;
    }
    EXPECT_EQ(total.non_finite, 0) << "outputs not written or not finite";
    const double rel = std::sqrt(total.err2 / total.ref2);
    EXPECT_LE(rel, kMaxRelativeError) << "relative Frobenius error";
  }

  // Checks `samples` random columns of y against the reference, and that every output was
  // written (none left poisoned).
  void ExpectSampledColumnsMatch(const std::vector<uint16_t>& x, int64_t m,
                                 const QuantizedWeight& w, const std::vector<uint16_t>& y,
                                 int samples) {
    std::vector<int64_t> columns;
    std::uniform_int_distribution<int64_t> col(0, w.shape.n - 1);
    for (int i = 0; i < samples; ++i) columns.push_back(col(rng_));
    ExpectMatchesReference(x, m, w, y, columns);
    int64_t unwritten = 0;
    for (uint16_t v : y) unwritten += v == kPoison;
    EXPECT_EQ(unwritten, 0);
  }

  // Multiplies fresh activations of each row count in `ms` by w (uploaded as `dw`) and checks 48
  // sampled columns of each product.
  void CheckSampledRowCounts(const QuantizedWeight& w, const DeviceWeightCopy& dw,
                             std::initializer_list<int64_t> ms) {
    for (int64_t m : ms) {
      SCOPED_TRACE(absl::StrCat("M=", m, " seed=", seed_));
      const std::vector<uint16_t> x = RandomActivations(m * w.shape.k, rng_);
      const std::vector<uint16_t> y = RunOnDevice(dw.view, x, m, *workspace_, stream_.get());
      ExpectSampledColumnsMatch(x, m, w, y, /*samples=*/48);
    }
  }

  void CheckShape(int64_t m, int64_t k, int64_t n, int32_t group, int sampled_columns = 0) {
    SCOPED_TRACE(absl::StrCat("M=", m, " K=", k, " N=", n, " group=", group, " seed=", seed_));
    const QuantizedWeight w = RandomWeight(WeightShape{k, n, group}, rng_);
    const PackedWeight packed = ValueOrDie(Pack(w));
    DeviceWeightCopy dw = Upload(packed, GetParam().layout);
    const std::vector<uint16_t> x = RandomActivations(m * k, rng_);
    const std::vector<uint16_t> y = RunOnDevice(dw.view, x, m, *workspace_, stream_.get());
    std::vector<int64_t> columns;
    if (sampled_columns > 0) {
      std::uniform_int_distribution<int64_t> col(0, n - 1);
      for (int i = 0; i < sampled_columns; ++i) columns.push_back(col(rng_));
    }
    ExpectMatchesReference(x, m, w, y, columns);
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::unique_ptr<GemmWorkspace> workspace_;
  Stream stream_;
};

const std::vector<int64_t> kAllRowCounts = {1,  2,  3,  4,   5,   6,   7,   8,   9,   10, 11,
                                            12, 13, 14, 15,  16,  17,  31,  32,  33,  48, 63,
                                            64, 65, 96, 100, 127, 128, 129, 256, 1000};

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_SmallShape_Group128_AllRowCounts) {
  for (int64_t m : kAllRowCounts) CheckShape(m, 128, 256, 128);
}

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_SmallShape_PerChannel_AllRowCounts) {
  for (int64_t m : kAllRowCounts) CheckShape(m, 128, 256, kPerChannel);
}

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_OddTileCounts) {
  // K not a multiple of a pipeline stage (per-channel), N not a multiple of a block's slice.
  for (int64_t m : {1, 17, 40, 64}) {
    CheckShape(m, 80, 64, kPerChannel);
    CheckShape(m, 1040, 192, kPerChannel);
    CheckShape(m, 384, 320, 128);
    CheckShape(m, 2048, 960, 128);
  }
}

// Small enough for compute-sanitizer memcheck/racecheck (scripts/device-kernel-check.sh runs it).
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_SanitizerShape) {
  for (int64_t m : {5, 20, 40, 64, 100, 200}) {  // 100 and 200: the Hopper path's two row parts
    CheckShape(m, 512, 192, 128);
    CheckShape(m, 272, 128, kPerChannel);
    CheckShape(m, 2048, 128, 128);  // deep enough for the Hopper path's two-block cluster split
  }
  // 100 slices of 256 columns: the Hopper path's four consumer warpgroups (TakesFourConsumers).
  CheckShape(40, 256, 25600, 128);
  // 80 narrow slices, striped: the Hopper path's three consumer warpgroups at 9-32 rows
  // (TakesThreeConsumers).
  CheckShape(20, 256, 10240, 128);
  // The Hopper path's tall launches (under the forced partitions) of four 136-row parts and of
  // three 176-row parts, the last one short (112 and 168 rows).
  CheckShape(520, 512, 192, 128);
  ForceTallPartRowsForTesting(256);
  CheckShape(520, 512, 192, 128);
  ForceTallPartRowsForTesting(0);
  // Dispatched on 132 SMs: two 128-row parts of three consumer warpgroups on two-block clusters
  // (ClusteredThreeConsumersPay).
  CheckShape(256, 512, 6144, 128);
}

// Tall launches on the Hopper path (hopper_gemm.h: all rows in one grid, in parts of 128-256 rows
// fitted to them, the last one short): parts on a cluster split, in waves of one block per (part,
// slice), or striped over every part's slices, K not a multiple of a stage; each height class
// forced, then the measured rules (which add one wave of fitted parts, waves of the three-consumer
// configuration and runs of whole units: gemm_dispatch.h). At 256 and 512 rows the parts are whole
// ones of 128 or 256.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_TallLaunches_RowPartsAndRemainder) {
  for (int part_rows : {128, 256, 0}) {
    if (part_rows != 0 && GetParam().path != GemmPath::kHopper) continue;  // Hopper-only hook
    SCOPED_TRACE(absl::StrCat("tall parts of ", part_rows, " rows (0: the measured rule)"));
    ForceTallPartRowsForTesting(part_rows);
    for (int64_t m : {256, 393, 512, 777}) {
      CheckShape(m, 2048, 256, 128);
      CheckShape(m, 1040, 192, kPerChannel);
    }
    CheckShape(1300, 4096, 4096, 128, /*sampled_columns=*/24);  // 5 or 10 parts x 32 slices
    CheckShape(2304, 1024, 8192, 128, /*sampled_columns=*/24);  // 9 or 18 parts x 64 slices
    CheckShape(768, 1024, 4096, 128, /*sampled_columns=*/24);   // measured: 4 parts of 192 rows
    CheckShape(2048, 1024, 4096, 128, /*sampled_columns=*/24);  // measured: runs of two units
    // Measured on 132 SMs: three 136-row parts (one wave of four 128-row ones pads too many rows).
    CheckShape(400, 4096, 4096, 128, /*sampled_columns=*/24);
    // Measured on 132 SMs: two waves of 12 x 22 units of the three-consumer configuration (192
    // columns, the last slice one tile), per channel with K not a multiple of a stage too.
    CheckShape(1536, 1024, 4096, 128, /*sampled_columns=*/24);
    CheckShape(1536, 1040, 4096, kPerChannel, /*sampled_columns=*/24);
    // Measured on 132 SMs: two 128-row parts of the three-consumer configuration, 2 x 32 units on
    // two-block clusters, where the narrow plan's 96 blocks leave a quarter of the SMs idle.
    CheckShape(256, 1024, 6144, 128, /*sampled_columns=*/24);
    CheckShape(256, 1040, 6144, kPerChannel, /*sampled_columns=*/24);
  }
}

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_MediumShapes_SplitSlices) {
  for (int64_t m : {1, 16, 24, 33, 64, 80, 100}) {
    CheckShape(m, 4096, 512, 128);
    CheckShape(m, 1024, 4096, kPerChannel);
    CheckShape(m, 1024, 8192, 128);   // the Hopper path's split-k at 8192 columns, 128 slices
    CheckShape(m, 1024, 10240, 128);  // striped slices of its wide or narrow configurations
    // The same per channel, K not a multiple of a stage (each slice's last one partial).
    CheckShape(m, 1040, 10240, kPerChannel);
    // 100 256-column slices, one block each on an H100: the Hopper path's four consumer
    // warpgroups at 33-64 rows (TakesFourConsumers).
    CheckShape(m, 1024, 25600, 128, /*sampled_columns=*/48);
    CheckShape(m, 1040, 25600, kPerChannel, /*sampled_columns=*/48);
  }
}

// Up to 32 rows the Hopper path's narrow and three-consumer configurations multiply each stage's
// scale group into one of two products in turn, four stages a loop trip, then two, then one
// (hopper_kernel.cuh, ConsumeStages): segments of one to five stages (K = 128-640), whole under
// the cluster split (one block a slice) and cut anywhere by the striped partition. Over 10240
// columns the measured rule stripes the 80 narrow slices, so 9-32 rows take three consumer
// warpgroups (TakesThreeConsumers); over 16384 columns the 128 narrow slices run one block each.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_SegmentsOfOneToFiveStages_1To32Rows) {
  for (int64_t m : {1, 8, 9, 16, 17, 32}) {
    for (int64_t k = 128; k <= 640; k += 128) {
      CheckShape(m, k, 10240, 128);
      CheckShape(m, k, 16384, 128);
    }
  }
}

// The Hopper path's split-k configurations (weights of at most 6144 columns: both consumer
// warpgroups multiply one 64-column tile, each half of every 256-k stage) on segments of half a
// stage to five stages, striped or cluster-split: the 1-32-row ones take two or four stages a loop
// trip, the 64-row one two.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_SplitKSegmentsOfHalfToFiveStages_1To64Rows) {
  for (int64_t m : {1, 9, 17, 33, 64}) {
    for (int64_t k : {128, 256, 384, 512, 768, 1024, 1280}) {
      CheckShape(m, k, 4096, 128);
      CheckShape(m, k, 6144, 128);
    }
  }
}

struct Layer {
  const char* name;
  int64_t k, n;
};
const Layer kBenchmarkLayers[] = {
    {"L8B.qkv", 4096, 6144},      {"L8B.o", 4096, 4096},      {"L8B.gateup", 4096, 28672},
    {"L8B.down", 14336, 4096},    {"L70B.qkv", 8192, 10240},  {"L70B.o", 8192, 8192},
    {"L70B.gateup", 8192, 57344}, {"L70B.down", 28672, 8192}, {"big", 16384, 16384},
};

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_BenchmarkLayers_Group128_SampledColumns) {
  for (const Layer& layer : kBenchmarkLayers) {
    SCOPED_TRACE(layer.name);
    const QuantizedWeight w = RandomWeight(WeightShape{layer.k, layer.n, 128}, rng_);
    DeviceWeightCopy dw = Upload(ValueOrDie(Pack(w)), GetParam().layout);
    // 24 rows: L8B.gateup keeps the Hopper path's 32-row wide configuration (TakesNarrow).
    CheckSampledRowCounts(w, dw, {1, 16, 24, 37, 64, 129});
  }
}

// Passes of 129-256 rows over a weight of more than 2^26 elements, which run in one row part of a
// configuration fitted to the rows (136, 144, 160, 176, 192, 208, 224, 240 or 256), and tall
// launches of 257-383 rows in two fitted parts (the second one short), striped or in waves; per
// channel with K not a multiple of a stage.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_FittedRowParts_129To383Rows_SampledColumns) {
  for (const int32_t group : {128, kPerChannel}) {
    const int64_t k = group == kPerChannel ? 4160 : 4096;
    SCOPED_TRACE(absl::StrCat("K=", k, " group=", group));
    const QuantizedWeight w = RandomWeight(WeightShape{k, 16896, group}, rng_);
    CheckSampledRowCounts(w, Upload(ValueOrDie(Pack(w)), GetParam().layout),
                          {129, 140, 150, 161, 180, 200, 215, 235, 250, 257, 280, 300, 340, 383});
  }
}

// A weight wider and larger than the benchmark's 8B ones (over 2^27 elements, more 256-column
// slices than an H100's SMs): the Hopper path's three consumer warpgroups at 33-64 rows
// (Rows64Trio: 192 slices of 192 columns, striped); per channel with K not a multiple of a stage.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_WideWeight_33To64Rows_SampledColumns) {
  for (const int32_t group : {128, kPerChannel}) {
    const int64_t k = group == kPerChannel ? 4160 : 4096;
    SCOPED_TRACE(absl::StrCat("K=", k, " group=", group));
    const QuantizedWeight w = RandomWeight(WeightShape{k, 36864, group}, rng_);
    CheckSampledRowCounts(w, Upload(ValueOrDie(Pack(w)), GetParam().layout), {33, 64});
  }
}

// Scales from 2^-10 to 2^10 times RandomWeight's, of either sign or zero, changing from group to
// group down a column. From 33 rows on the Hopper path fuses a scale into the dequantizing FMA
// only below 4 times its segment's first scale and takes the exact unfused form above that
// (hopper_dequant.cuh): here many stages take the unfused one. Split-k (512 and 6144 columns),
// narrow or three consumer warpgroups (10240 and 36864), the 96- and 128-row configurations, two
// row parts (200) and a tall launch (600), per channel.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_ScalesSpanningBinades_33RowsAndUp) {
  const WeightShape shapes[] = {{2048, 512, 128},
                                {4096, 6144, 128},
                                {1024, 10240, 128},
                                {1024, 36864, 128},
                                {1040, 10240, kPerChannel}};
  for (const WeightShape& shape : shapes) {
    SCOPED_TRACE(absl::StrCat("K=", shape.k, " N=", shape.n, " group=", shape.group_size));
    QuantizedWeight w = RandomWeight(shape, rng_);
    std::uniform_int_distribution<int> binade(-10, 10), draw(0, 15);
    for (uint16_t& s : w.scales) {
      const int d = draw(rng_);
      const float sign = d % 2 ? -1.f : 1.f;
      s = FloatToHalf(d == 0 ? 0.f : std::ldexp(sign * HalfToFloat(s), binade(rng_)));
    }
    CheckSampledRowCounts(w, Upload(ValueOrDie(Pack(w)), GetParam().layout),
                          {40, 64, 96, 128, 200, 600});
  }
}

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_BenchmarkLayers_PerChannel_SampledColumns) {
  for (const Layer& layer : {kBenchmarkLayers[1], kBenchmarkLayers[3]}) {
    SCOPED_TRACE(layer.name);
    CheckShape(16, layer.k, layer.n, kPerChannel, /*sampled_columns=*/48);
    CheckShape(64, layer.k, layer.n, kPerChannel, /*sampled_columns=*/48);
  }
}

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_BitIdenticalAcrossRuns) {
  // (M, N) at K = 4096; N = 6144 is the L8B qkv shape, split along k at 16 rows; 128 and 256 rows
  // run as two row parts on the Hopper path, 600 as a tall launch of whole parts and a pass.
  const std::pair<int64_t, int64_t> cases[] = {{1, 4096},   {33, 4096},  {64, 4096}, {16, 6144},
                                               {128, 4096}, {256, 4096}, {600, 4096}};
  for (const auto& [m, n] : cases) {
    const QuantizedWeight w = RandomWeight(WeightShape{4096, n, 128}, rng_);
    DeviceWeightCopy dw = Upload(ValueOrDie(Pack(w)), GetParam().layout);
    const std::vector<uint16_t> x = RandomActivations(m * 4096, rng_);
    const std::vector<uint16_t> first = RunOnDevice(dw.view, x, m, *workspace_, stream_.get());
    for (int run = 0; run < 2; ++run) {
      EXPECT_EQ(RunOnDevice(dw.view, x, m, *workspace_, stream_.get()), first)
          << "M=" << m << " N=" << n << " run " << run + 2 << " differs: a race";
    }
  }
}

TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_GraphReplayAndTwoStreams) {
  const int64_t m = 24, k = 4096, n = 2048;
  const QuantizedWeight w = RandomWeight(WeightShape{k, n, 128}, rng_);
  DeviceWeightCopy dw = Upload(ValueOrDie(Pack(w)), GetParam().layout);
  const std::vector<uint16_t> x = RandomActivations(m * k, rng_);
  const std::vector<uint16_t> expected = RunOnDevice(dw.view, x, m, *workspace_, stream_.get());

  DeviceBuffer dx = ValueOrDie(DeviceBuffer::Create(x.size() * 2));
  CopyToDeviceAndWait(dx.get(), x.data(), x.size() * 2);
  DeviceBuffer dy = ValueOrDie(DeviceBuffer::Create(m * n * 2));
  const std::vector<uint16_t> poison(m * n, kPoison);
  CopyToDeviceAndWait(dy.get(), poison.data(), poison.size() * 2);
  GraphExec graph = ValueOrDie(GraphExec::Capture(stream_.get(), [&] {
    return Gemm(dx.as<__half>(), m, dw.view, dy.as<__half>(), *workspace_, stream_.get());
  }));
  std::vector<uint16_t> y(m * n);
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_OK(graph.Launch(stream_.get()));
    ASSERT_OK(stream_.Synchronize());
    ASSERT_EQ(cudaMemcpy(y.data(), dy.get(), y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(y, expected) << "graph replay " << replay;
  }

  // Two streams, each with its own workspace and output, many launches interleaved.
  GemmWorkspace ws2 = ValueOrDie(GemmWorkspace::Create(0));
  Stream s2 = ValueOrDie(Stream::Create());
  DeviceBuffer dy2 = ValueOrDie(DeviceBuffer::Create(m * n * 2));
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK(Gemm(dx.as<__half>(), m, dw.view, dy.as<__half>(), *workspace_, stream_.get()));
    ASSERT_OK(Gemm(dx.as<__half>(), m, dw.view, dy2.as<__half>(), ws2, s2.get()));
  }
  ASSERT_OK(stream_.Synchronize());
  ASSERT_OK(s2.Synchronize());
  std::vector<uint16_t> y2(m * n);
  ASSERT_EQ(cudaMemcpy(y.data(), dy.get(), y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(y2.data(), dy2.get(), y2.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(y, expected);
  EXPECT_EQ(y2, expected);
}

// Word-major tiles are for the Hopper and dequant-cublas paths: they multiply them like packed
// ones, and the Ampere path refuses them before launching anything instead of misreading them.
TEST_P(MarlinGemmTest, WordMajorTilesNotOnTheAmperePath) {
  const int64_t m = 4, k = 256, n = 128;
  const QuantizedWeight w = RandomWeight(WeightShape{k, n, 128}, rng_);
  DeviceWeightCopy dw = Upload(ValueOrDie(Pack(w)), DeviceLayout::kWordMajorTiles);
  const std::vector<uint16_t> x = RandomActivations(m * k, rng_);
  if (GetParam().path != GemmPath::kAmpere) {
    ExpectMatchesReference(x, m, w, RunOnDevice(dw.view, x, m, *workspace_, stream_.get()), {});
    return;
  }
  DeviceBuffer dx = ValueOrDie(DeviceBuffer::Create(x.size() * 2));
  DeviceBuffer dy = ValueOrDie(DeviceBuffer::Create(m * n * 2));
  const std::vector<uint16_t> poison(m * n, kPoison);
  CopyToDeviceAndWait(dx.get(), x.data(), x.size() * 2);
  CopyToDeviceAndWait(dy.get(), poison.data(), poison.size() * 2);
  const absl::Status s =
      Gemm(dx.as<__half>(), m, dw.view, dy.as<__half>(), *workspace_, stream_.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("kWordMajorTiles"), absl::string_view::npos) << s;
  ASSERT_EQ(cudaStreamSynchronize(stream_.get()), cudaSuccess);
  std::vector<uint16_t> y(m * n);
  ASSERT_EQ(cudaMemcpy(y.data(), dy.get(), y.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(y, poison) << "a refused call must not write y";
}

TEST_P(MarlinGemmTest, RefusesShapesTheFormatRejects) {
  DeviceWeight w{reinterpret_cast<const void*>(256), reinterpret_cast<const __half*>(256),
                 WeightShape{100, 256, 128}};
  auto x = reinterpret_cast<const __half*>(256);
  auto y = reinterpret_cast<__half*>(256);
  EXPECT_EQ(Gemm(x, 4, w, y, *workspace_, stream_.get()).code(),
            absl::StatusCode::kInvalidArgument);
  w.shape = WeightShape{128, 100, 128};
  EXPECT_EQ(Gemm(x, 4, w, y, *workspace_, stream_.get()).code(),
            absl::StatusCode::kInvalidArgument);
  w.shape = WeightShape{128, 256, 128};
  EXPECT_EQ(Gemm(x, 0, w, y, *workspace_, stream_.get()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Gemm(reinterpret_cast<const __half*>(258), 4, w, y, *workspace_, stream_.get()).code(),
            absl::StatusCode::kInvalidArgument);
}

// The dispatch (no path forced) on tall products, where it takes the dequant-cublas path from 4096
// rows on small weights (from 1024 rows before sm_90; gemm_dispatch.cc), with the layout the
// service holds weights in. Runs once, under the dequant-cublas variant.
TEST_P(MarlinGemmTest, Fp16Int4_RowMajor_TallProducts_AsDispatched) {
  if (GetParam().path != GemmPath::kDequantCublas) {
    GTEST_SKIP() << "runs under DequantCublas_PackedLayout_Sm80Plus only";
  }
  ForceGemmPathForTesting(GemmPath::kAuto);
  const DeviceLayout layout = FastestDeviceLayout(workspace_->compute_capability());
  for (const auto& [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{4096, 4096, 4096},
                                {4200, 1024, 8192},
                                {4100, 2048, 6144}}) {
    SCOPED_TRACE(absl::StrCat("M=", m, " K=", k, " N=", n, " seed=", seed_));
    EXPECT_EQ(ChooseGemmPath(workspace_->compute_capability(), m, k, n), GemmPath::kDequantCublas);
    const QuantizedWeight w = RandomWeight(WeightShape{k, n, 128}, rng_);
    DeviceWeightCopy dw = Upload(ValueOrDie(Pack(w)), layout);
    const std::vector<uint16_t> x = RandomActivations(m * k, rng_);
    const std::vector<uint16_t> y = RunOnDevice(dw.view, x, m, *workspace_, stream_.get());
    ExpectSampledColumnsMatch(x, m, w, y, /*samples=*/16);
  }
}

// The dequant-cublas path dequantizes into the workspace's scratch region (64 MiB or more), 64
// columns at least: a weight too deep for that is refused when the path is forced (the dispatch
// then takes a kernel).
TEST_P(MarlinGemmTest, DequantCublasRefusesWeightsTooDeepForItsChunk) {
  if (GetParam().path != GemmPath::kDequantCublas) GTEST_SKIP() << "dequant-cublas only";
  const int64_t k = int64_t{1} << 20;  // 64 columns of FP16: 128 MiB
  DeviceWeight w{reinterpret_cast<const void*>(256), reinterpret_cast<const __half*>(256),
                 WeightShape{k, 64, 128}};
  const absl::Status s = Gemm(reinterpret_cast<const __half*>(256), 512, w,
                              reinterpret_cast<__half*>(256), *workspace_, stream_.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("chunk"), absl::string_view::npos) << s;
}

// The cluster split takes every shape whose slices fit the co-resident clusters (all but the
// widest benchmark layers, which stay striped under it). The Hopper path runs with the layout the
// service gives it (word-major tiles) under both partitions, and with packed words as dispatched;
// the dequant-cublas path with packed words (its dequantization reads word-major tiles bit for bit
// alike, dequantize_weight_test.cc, and the tall dispatched test runs it on the service's layout).
INSTANTIATE_TEST_SUITE_P(
    Paths, MarlinGemmTest,
    ::testing::Values(KernelVariant{GemmPath::kAmpere, HopperPartition::kAuto,
                                    DeviceLayout::kPacked, "AmpereMmaSync_PackedLayout_Sm80Plus"},
                      KernelVariant{GemmPath::kHopper, HopperPartition::kStriped,
                                    DeviceLayout::kWordMajorTiles,
                                    "HopperTmaWgmma_StripedPartition_WordMajorTiles_Sm90a"},
                      KernelVariant{GemmPath::kHopper, HopperPartition::kClusterSplit,
                                    DeviceLayout::kWordMajorTiles,
                                    "HopperTmaWgmma_ClusterSplit_WordMajorTiles_Sm90a"},
                      KernelVariant{GemmPath::kHopper, HopperPartition::kAuto,
                                    DeviceLayout::kPacked,
                                    "HopperTmaWgmma_Dispatched_PackedLayout_Sm90a"},
                      KernelVariant{GemmPath::kDequantCublas, HopperPartition::kAuto,
                                    DeviceLayout::kPacked, "DequantCublas_PackedLayout_Sm80Plus"}),
    [](const ::testing::TestParamInfo<KernelVariant>& info) { return info.param.name; });

}  // namespace
}  // namespace marlin::cuda
