// Tests of the dequant-cublas path's host side that need no GPU: how a weight is cut into chunks,
// and a missing libcublas (a clear FailedPrecondition, not a crash). The path's products are
// tested against the reference in marlin_gemm_test.cc (on a GPU).
#include "kernels/cuda/dequant_cublas.h"

#include <utility>

#include "gtest/gtest.h"

namespace marlin::cuda {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(ChunkColumnsTest, BalancedWholeTilesThatFitTheChunk) {
  // L70B.gate/up: 4096 columns of K = 8192 fill 64 MiB exactly: 14 chunks.
  EXPECT_EQ(ChunkColumns(8192, 57344, 64 * kMiB), 4096);
  // L70B.down: 1152 columns fit; 8192 in 8 balanced chunks of 1024.
  EXPECT_EQ(ChunkColumns(28672, 8192, 64 * kMiB), 1024);
  // A weight that fits whole is one chunk.
  EXPECT_EQ(ChunkColumns(4096, 4096, 64 * kMiB), 4096);
  // Balanced to whole tiles: 3 chunks of 320 columns hold 960.
  EXPECT_EQ(ChunkColumns(1024, 960, 2 * 1024 * 448), 320);
  for (const auto& [k, n] : {std::pair<int64_t, int64_t>{8192, 57344}, {28672, 8192}, {16, 64}}) {
    const int64_t cols = ChunkColumns(k, n, 64 * kMiB);
    EXPECT_EQ(cols % 64, 0);
    EXPECT_LE(static_cast<size_t>(2 * k * cols), 64 * kMiB);
    EXPECT_GE(cols * ((n + cols - 1) / cols), n);
  }
}

TEST(ChunkColumnsTest, ZeroWhereNotEvenOneTileFits) {
  EXPECT_EQ(ChunkColumns(int64_t{1} << 20, 64, 64 * kMiB), 0);  // 64 columns: 128 MiB
  EXPECT_EQ(ChunkColumns(int64_t{1} << 19, 64, 64 * kMiB), 64);
}

// The hook takes effect before the first load only: this binary loads nothing else.
TEST(CublasHandleTest, MissingLibraryIsAFailedPreconditionNamingIt) {
  SetCublasLibraryForTesting("libcublas-not-installed.so.0");
  for (int attempt = 0; attempt < 2; ++attempt) {  // the failure is kept, not retried
    const absl::StatusOr<CublasHandle> h = CublasHandle::Create();
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), absl::StatusCode::kFailedPrecondition) << h.status();
    EXPECT_NE(h.status().message().find("libcublas-not-installed.so.0"), absl::string_view::npos)
        << h.status();
  }
  const CublasHandle empty;
  EXPECT_EQ(empty.Bind(nullptr, nullptr, 0).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace marlin::cuda
