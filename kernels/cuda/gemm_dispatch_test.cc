// The dispatch table and the test hook (no GPU needed).
#include "kernels/cuda/gemm_dispatch.h"

#include "gtest/gtest.h"

namespace marlin::cuda {
namespace {

TEST(GemmDispatchTest, AmperePathBelowSm90UpToATallProduct) {
  for (int sm : {80, 86, 89}) {
    EXPECT_FALSE(GemmPathAvailable(GemmPath::kHopper, sm)) << sm;
    EXPECT_TRUE(GemmPathAvailable(GemmPath::kAmpere, sm)) << sm;
    EXPECT_TRUE(GemmPathAvailable(GemmPath::kDequantCublas, sm)) << sm;
    for (int64_t m : {1, 16, 64, 256, 1023}) {
      EXPECT_EQ(ChooseGemmPath(sm, m, 8192, 8192), GemmPath::kAmpere) << sm << " " << m;
    }
    for (int64_t m : {1024, 4096}) {
      EXPECT_EQ(ChooseGemmPath(sm, m, 8192, 8192), GemmPath::kDequantCublas) << sm << " " << m;
      EXPECT_EQ(ChooseGemmPath(sm, m, 16384, 16384), GemmPath::kDequantCublas) << sm << " " << m;
    }
  }
  EXPECT_FALSE(GemmPathAvailable(GemmPath::kAmpere, 75));
  EXPECT_FALSE(GemmPathAvailable(GemmPath::kDequantCublas, 75));
  EXPECT_STREQ(GemmPathName(GemmPath::kDequantCublas), "dequant-cublas");
}

TEST(GemmDispatchTest, NeverChoosesAutoOrAnUnavailablePath) {
  for (int sm : {80, 90}) {
    for (int64_t m = 1; m <= 1024; m = m * 2 + 1) {
      const GemmPath path = ChooseGemmPath(sm, m, 4096, 4096);
      EXPECT_NE(path, GemmPath::kAuto);
      EXPECT_TRUE(GemmPathAvailable(path, sm)) << GemmPathName(path) << " sm_" << sm << " m=" << m;
    }
  }
}

#ifdef MARLIN_HAS_SM90A
TEST(GemmDispatchTest, HopperPathAvailableOnSm90WhenBuilt) {
  EXPECT_TRUE(GemmPathAvailable(GemmPath::kHopper, 90));
  EXPECT_FALSE(GemmPathAvailable(GemmPath::kHopper, 100));  // sm_90a code runs on sm_90 only
}

// The measured H100 table (gemm_dispatch.cc): the Hopper path for every shape on sm_90.
TEST(GemmDispatchTest, Sm90TableFollowsTheH100Measurements) {
  struct Case {
    int64_t m, k, n;
  };
  const Case cases[] = {{1, 8192, 8192},  {16, 4096, 28672}, {1, 14336, 4096}, {256, 4096, 4096},
                        {65, 4096, 6144}, {64, 4096, 6144},  {1, 4096, 4096},  {32, 128, 256}};
  for (const Case& c : cases) {
    EXPECT_EQ(ChooseGemmPath(90, c.m, c.k, c.n), GemmPath::kHopper)
        << c.m << "x" << c.k << "x" << c.n;
  }
}

// Tall products (gemm_dispatch.cc): the dequant-cublas path from 4096 rows on weights of at most
// 2^25 elements, 8192 below 2^26; the Hopper path on larger weights.
TEST(GemmDispatchTest, Sm90TallProductsFollowTheH100Measurements) {
  struct Case {
    int64_t m, k, n;
    GemmPath path;
  };
  const Case cases[] = {
      {4095, 4096, 4096, GemmPath::kHopper},         {4096, 4096, 4096, GemmPath::kDequantCublas},
      {4096, 4096, 6144, GemmPath::kDequantCublas},  {4096, 14336, 4096, GemmPath::kHopper},
      {8192, 14336, 4096, GemmPath::kDequantCublas}, {8192, 8192, 8192, GemmPath::kHopper},
      {8192, 8192, 10240, GemmPath::kHopper},        {8192, 4096, 28672, GemmPath::kHopper},
      {8192, 28672, 8192, GemmPath::kHopper},        {100000, 8192, 57344, GemmPath::kHopper},
      {8192, 16384, 16384, GemmPath::kHopper},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ChooseGemmPath(90, c.m, c.k, c.n), c.path) << c.m << "x" << c.k << "x" << c.n;
  }
}
#endif

// The tall launches' rule (gemm_dispatch.cc) on the H100's 132 SMs and 50 MiB of L2, at the
// benchmark's shapes: 256-row parts from session 17's measurements, 128-row parts (the 128-row
// configuration's 128-k stages, counted in 64 k) from session 18's where its rule chose them,
// and a striped launch of them that the L2 guard stops at 8192 rows.
TEST(GemmDispatchTest, TallLaunchesFollowTheH100Measurements) {
  constexpr int kSms = 132;
  constexpr int64_t kL2Bytes = int64_t{50} << 20;
  struct Case {
    const char* product;
    int part_rows;
    int64_t m, k, n;
    int ranks;
    TallLaunch launch;
  };
  const Case cases[] = {
      {"L8B.qkv, 96 units, 73% busy in waves", 256, 512, 4096, 6144, 1, TallLaunch::kWaves},
      {"L8B.qkv, 144 units, 55% busy", 256, 768, 4096, 6144, 1, TallLaunch::kStriped},
      {"L8B.o, 64 units on two-block clusters", 256, 512, 4096, 4096, 2, TallLaunch::kWaves},
      {"L8B.o, 128 units, 97% busy", 256, 1024, 4096, 4096, 1, TallLaunch::kWaves},
      {"L8B.down, 96 units of 224 stages", 256, 768, 14336, 4096, 1, TallLaunch::kStriped},
      {"L70B.qkv, 160 units, 61% busy", 256, 512, 8192, 10240, 1, TallLaunch::kStriped},
      {"L70B.o, 384 units, 97% busy", 256, 1536, 8192, 8192, 1, TallLaunch::kWaves},
      {"L70B.down, 512 units: 3.9 per SM", 256, 2048, 28672, 8192, 1, TallLaunch::kStriped},
      {"L8B.gate/up, 32 parts, 64 MiB of x", 256, 8192, 4096, 28672, 1, TallLaunch::kStriped},
      {"L70B.gate/up, 32 parts, 128 MiB of x", 256, 8192, 8192, 57344, 1, TallLaunch::kWaves},
      {"L70B.down, 32 parts, 448 MiB of x", 256, 8192, 28672, 8192, 1, TallLaunch::kWaves},
      {"80 units of 64 stages, 61% busy", 256, 512, 4096, 5120, 1, TallLaunch::kPasses},
      {"L8B.o at 512 rows, 128 units, 97% busy", 128, 512, 4096, 4096, 1, TallLaunch::kWaves},
      {"L8B.qkv at 512 rows, 192 units, 73% busy", 128, 512, 4096, 6144, 1, TallLaunch::kStriped},
      {"L8B.qkv at 1024 rows, 384 units", 128, 1024, 4096, 6144, 1, TallLaunch::kWaves},
      {"L8B.o at 384 rows, 96 units of 64 stages", 128, 384, 4096, 4096, 1, TallLaunch::kWaves},
      {"L8B.down at 384 rows, 96 units of 224 stages", 128, 384, 14336, 4096, 1,
       TallLaunch::kStriped},
      {"L70B.qkv at 256 rows, 160 units", 128, 256, 8192, 10240, 1, TallLaunch::kStriped},
      {"L8B.gate/up at 384 rows, 672 units", 128, 384, 4096, 28672, 1, TallLaunch::kStriped},
      {"L70B.gate/up, 64 parts, 128 MiB of x", 128, 8192, 8192, 57344, 1, TallLaunch::kWaves},
  };
  for (const Case& c : cases) {
    const TallLaunchShape shape{.parts = static_cast<int>(c.m / c.part_rows),
                                .part_rows = c.part_rows,
                                .slices = static_cast<int>(c.n / 128),
                                .stages_per_slice = static_cast<int>(c.k / 64),
                                .ranks = c.ranks,
                                .x_bytes = c.m * c.k * 2};
    EXPECT_EQ(MeasuredTallLaunch(shape, kSms, kL2Bytes), c.launch)
        << c.product << ", " << c.part_rows << "-row parts";
  }
}

// The tall parts' rule (gemm_dispatch.cc) at session 18's measured shapes on the H100's 132 SMs,
// `ranks` the cluster split that 256-row parts in waves would take there.
TEST(GemmDispatchTest, TallPartRowsFollowTheH100Measurements) {
  constexpr int kSms = 132;
  struct Case {
    const char* product;
    int64_t m, k, n;
    int ranks;
    int part_rows;
  };
  const Case cases[] = {
      {"L8B.o at 512 rows: 64 units on clusters of 32 stages a rank", 512, 4096, 4096, 2, 128},
      {"L8B.down at 512 rows: clusters of 112 stages a rank", 512, 14336, 4096, 2, 128},
      {"L8B.qkv at 1024 rows: 192 units, 73% busy", 1024, 4096, 6144, 1, 128},
      {"L8B.qkv at 1536 rows: 288 units", 1536, 4096, 6144, 1, 256},
      {"L8B.o at 1024 rows: 128 units, 97% busy", 1024, 4096, 4096, 1, 256},
      {"L70B.qkv at 256 rows: 80 units", 256, 8192, 10240, 1, 128},
      {"L70B.o at 768 rows: 192 units", 768, 8192, 8192, 1, 128},
      {"L70B.down at 256 rows: clusters of 224 stages a rank", 256, 28672, 8192, 2, 256},
      {"L70B.gate/up at 256 rows: 448 units", 256, 8192, 57344, 1, 256},
      {"L8B.gate/up at 384 rows: 224 units, an odd part", 384, 4096, 28672, 1, 128},
      {"16384^2 at 384 rows: 128 units, 97% busy", 384, 16384, 16384, 1, 256},
      {"L8B.gate/up at 512 rows: 448 units", 512, 4096, 28672, 1, 256},
  };
  for (const Case& c : cases) {
    const TallProductShape product{.rows = c.m,
                                   .slices = static_cast<int>(c.n / 128),
                                   .stages_per_slice = static_cast<int>(c.k / 64),
                                   .ranks = c.ranks};
    EXPECT_EQ(MeasuredTallPartRows(product, kSms), c.part_rows) << c.product;
  }
}

// The one-wave rule (gemm_dispatch.cc) at session 21's measured shapes on the H100's 132 SMs: the
// launch the rules above chose, and the units of the fewest fitted parts that fill one wave.
TEST(GemmDispatchTest, OneWaveFollowsTheH100Measurements) {
  constexpr int kSms = 132;
  struct Case {
    const char* product;
    ChosenTallLaunch chosen;
    int64_t one_wave_units;
    bool pays;
  };
  const Case cases[] = {
      {"L8B.o at 768 rows: 192 striped units of 128 rows, or 4 x 32",
       {TallLaunch::kStriped, 192, 1},
       128,
       true},
      {"L8B.o at 448 rows: 96 units of 160 rows in waves, or 4 x 32",
       {TallLaunch::kWaves, 96, 1},
       128,
       true},
      {"L70B.o at 384 rows: 192 striped units of 128 rows, or 2 x 64",
       {TallLaunch::kStriped, 192, 1},
       128,
       true},
      {"L70B.down at 384 rows: a 256-row pass and a 128-row one, or 2 x 64",
       {TallLaunch::kPasses, 0, 1},
       128,
       false},
      {"L8B.o at 1024 rows: 4 x 256 rows in waves, 128 units",
       {TallLaunch::kWaves, 128, 1},
       128,
       false},
      {"L8B.qkv at 1024 rows: 8 x 128 rows in waves, 384 units",
       {TallLaunch::kWaves, 384, 1},
       240,
       false},
      {"L8B.gate/up at 384 rows: 672 striped units", {TallLaunch::kStriped, 672, 1}, 448, false},
      {"L70B.qkv at 512 rows: two waves of 240 units", {TallLaunch::kStriped, 320, 1}, 240, false},
      {"L8B.qkv at 512 rows: 96 units, 73% busy", {TallLaunch::kStriped, 192, 1}, 96, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(FillsOneWave(c.one_wave_units, kSms) && OneWavePays(c.chosen, kSms), c.pays)
        << c.product;
  }
}

// The one-wave padding rule (gemm_dispatch.cc) at the shapes measured on the H200 in session 37 and
// the H100 in session 21: the rows the plan and the one wave multiply.
TEST(GemmDispatchTest, OneWavePaddingFollowsTheMeasurements) {
  struct Case {
    const char* product;
    int64_t plan_rows, one_wave_rows;
    bool pays;
  };
  const Case cases[] = {
      {"L8B.down at 385-408 rows: 3 x 136 rows striped, or 4 x 128", 408, 512, false},
      {"L8B.down at 385 rows, before 136-row parts: 3 x 144 rows, or 4 x 128", 432, 512, false},
      {"L8B.o at 448 rows: 3 x 160 rows in waves, or 4 x 128", 480, 512, true},
      {"L70B.o at 384 rows: 3 x 128 rows striped, or 2 x 192", 384, 384, true},
      {"L8B.o at 768 rows: 6 x 128 rows striped, or 4 x 192", 768, 768, true},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(OneWavePadsLittle(c.plan_rows, c.one_wave_rows), c.pays) << c.product;
  }
}

// The runs rule (gemm_dispatch.cc) at session 21's measured shapes on the H100's 132 SMs and 50 MiB
// of L2: the launch the rules above chose and the product's activations.
TEST(GemmDispatchTest, RunsFollowTheH100Measurements) {
  constexpr int kSms = 132;
  constexpr int64_t kL2Bytes = int64_t{50} << 20;
  struct Case {
    const char* product;
    ChosenTallLaunch chosen;
    int64_t m, k;
    bool pays;
  };
  const Case cases[] = {
      {"L8B.qkv at 1024 rows: 8 x 128 rows, 384 units in three waves",
       {TallLaunch::kWaves, 384, 1},
       1024,
       4096,
       true},
      {"L8B.o at 2048 rows: 8 x 256 rows, 256 units in two waves",
       {TallLaunch::kWaves, 256, 1},
       2048,
       4096,
       true},
      {"L70B.down at 1536 rows: 384 units, 88 MB of activations",
       {TallLaunch::kWaves, 384, 1},
       1536,
       28672,
       true},
      {"L8B.o at 1024 rows: one wave of 128 units",
       {TallLaunch::kWaves, 128, 1},
       1024,
       4096,
       false},
      {"L70B.qkv at 1536 rows: striped over 480 units",
       {TallLaunch::kStriped, 480, 1},
       1536,
       8192,
       false},
      {"L70B.o at 8192 rows: 2048 units, 128 MiB of activations",
       {TallLaunch::kWaves, 2048, 1},
       8192,
       8192,
       false},
      {"320 units in three waves: no whole runs", {TallLaunch::kWaves, 320, 1}, 1280, 4096, false},
      {"240 units in two waves of two-block clusters",
       {TallLaunch::kWaves, 240, 2},
       768,
       8192,
       false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(RunsPay(c.chosen, c.m * c.k * 2, kSms, kL2Bytes), c.pays) << c.product;
  }
}

// The three-consumer rule (gemm_dispatch.cc) at session 26's measured shapes on 132 SMs: the launch
// the rules above chose, and the product's 192-column slices.
TEST(GemmDispatchTest, ThreeConsumerWavesFollowTheMeasurements) {
  constexpr int kSms = 132;
  struct Case {
    const char* product;
    ChosenTallLaunch chosen;
    int64_t rows;
    int trio_slices;
    bool pays;
  };
  const Case cases[] = {
      {"L8B.qkv at 512 rows: striped over 192 units, or 4 x 32 in one wave",
       {TallLaunch::kStriped, 192, 1},
       512,
       32,
       true},
      {"L8B.down at 1536 rows: 384 units in three waves, or 12 x 22 in two",
       {TallLaunch::kWaves, 384, 1},
       1536,
       22,
       true},
      {"L70B.down at 384 rows: two passes, or 3 x 43 in one wave",
       {TallLaunch::kPasses, 0, 1, 256},
       384,
       43,
       true},
      {"L8B.qkv at 1536 rows: striped over 288 units of 256 rows, or 12 x 32 in three waves",
       {TallLaunch::kStriped, 288, 1, 256},
       1536,
       32,
       true},
      {"three waves of runs, or 12 x 32 in three", {TallLaunch::kWaves, 576, 1}, 1536, 32, false},
      {"waves of 256-row parts, or 17 x 22 in three",
       {TallLaunch::kWaves, 288, 1, 256},
       2176,
       22,
       false},
      {"16384^2 at 384 rows: two passes, or 3 x 86 in two waves",
       {TallLaunch::kPasses, 0, 1, 256},
       384,
       86,
       false},
      {"L70B.o at 1536 rows: 12 x 43 take four waves",
       {TallLaunch::kStriped, 768, 1},
       1536,
       43,
       false},
      {"L8B.gate/up at 512 rows: 4 x 150 take five waves",
       {TallLaunch::kStriped, 896, 1},
       512,
       150,
       false},
      {"L8B.qkv at 448 rows: a short part", {TallLaunch::kStriped, 192, 1}, 448, 32, false},
      {"L8B.qkv at 768 rows: 6 x 32 keep 73% busy", {TallLaunch::kStriped, 288, 1}, 768, 32, false},
      {"two waves either way", {TallLaunch::kWaves, 256, 1}, 1536, 22, false},
      {"one wave of 256-row parts, as long as two of 128",
       {TallLaunch::kWaves, 128, 1, 256},
       1536,
       22,
       false},
      {"two waves of 256-row parts, or 12 x 22 in two",
       {TallLaunch::kWaves, 192, 1, 256},
       1536,
       22,
       true},
      {"two-block clusters in three waves, or 12 x 22 in two",
       {TallLaunch::kWaves, 192, 2},
       1536,
       22,
       true},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ThreeConsumerWavesPay(c.chosen, c.rows, c.trio_slices, kSms), c.pays) << c.product;
  }
}

// The clustered three-consumer rule (gemm_dispatch.cc) on 132 SMs: the blocks of the tall plan it
// would replace, the three-consumer configuration's units and its cluster ranks.
TEST(GemmDispatchTest, ClusteredThreeConsumersFillOneWave) {
  constexpr int kSms = 132;
  struct Case {
    const char* product;
    int64_t chosen_blocks, trio_units;
    int trio_ranks;
    bool pays;
  };
  const Case cases[] = {
      {"L8B.qkv at 256 rows: 96 blocks, or 2 x 32 units on two-block clusters", 96, 64, 2, true},
      {"L8B.o at 384 rows: 96 blocks, or 3 x 22 units on two-block clusters", 96, 66, 2, true},
      {"L8B.o at 256 rows: 128 blocks already", 128, 44, 3, false},
      {"96 blocks, or 32 units on three-block clusters", 96, 32, 3, false},
      {"one block per unit", 100, 120, 1, false},
      {"clusters over one wave", 96, 68, 2, false},
      {"a plan of two waves", 200, 64, 2, false},
      {"118 blocks, or 120 in clusters: too little to gain", 118, 60, 2, false},
      {"92 blocks, or 120 in clusters", 92, 60, 2, true},
      {"93 blocks, or 120 in clusters: too little to gain", 93, 60, 2, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ClusteredThreeConsumersPay(c.chosen_blocks, c.trio_units, c.trio_ranks, kSms), c.pays)
        << c.product;
  }
}

TEST(GemmDispatchTest, ForcedTallPartRowsRoundTrip) {
  EXPECT_EQ(ForcedTallPartRows(), 0);
  ForceTallPartRowsForTesting(128);
  EXPECT_EQ(ForcedTallPartRows(), 128);
  ForceTallPartRowsForTesting(0);
  EXPECT_EQ(ForcedTallPartRows(), 0);
}

TEST(GemmDispatchTest, ForcedPathRoundTrips) {
  EXPECT_EQ(ForcedGemmPath(), GemmPath::kAuto);
  ForceGemmPathForTesting(GemmPath::kHopper);
  EXPECT_EQ(ForcedGemmPath(), GemmPath::kHopper);
  ForceGemmPathForTesting(GemmPath::kAuto);
  EXPECT_EQ(ForcedGemmPath(), GemmPath::kAuto);
}

TEST(GemmDispatchTest, ForcedHopperPartitionRoundTripsAndNamesTheBenchmarkVariants) {
  EXPECT_EQ(ForcedHopperPartition(), HopperPartition::kAuto);
  ForceHopperPartitionForTesting(HopperPartition::kClusterSplit);
  EXPECT_EQ(ForcedHopperPartition(), HopperPartition::kClusterSplit);
  ForceHopperPartitionForTesting(HopperPartition::kAuto);
  EXPECT_EQ(ForcedHopperPartition(), HopperPartition::kAuto);
  // marlin-bench's --paths spells the forced partitions hopper:striped and hopper:cluster.
  EXPECT_STREQ(HopperPartitionName(HopperPartition::kStriped), "striped");
  EXPECT_STREQ(HopperPartitionName(HopperPartition::kClusterSplit), "cluster");
  EXPECT_STREQ(HopperPartitionName(HopperPartition::kAuto), "auto");
}

}  // namespace
}  // namespace marlin::cuda
