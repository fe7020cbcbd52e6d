#include "client/loadgen/stats.h"

#include <vector>

#include "gtest/gtest.h"

namespace marlin::loadgen {
namespace {

TEST(StatsTest, NearestRankPercentiles) {
  std::vector<double> v;
  for (int i = 1000; i >= 1; --i) v.push_back(i);
  LatencySummary s = Summarize(v);
  EXPECT_EQ(s.count, 1000u);
  EXPECT_DOUBLE_EQ(s.p50_ms, 500);
  EXPECT_DOUBLE_EQ(s.p90_ms, 900);
  EXPECT_DOUBLE_EQ(s.p99_ms, 990);
  EXPECT_DOUBLE_EQ(s.p999_ms, 999);
  EXPECT_DOUBLE_EQ(s.max_ms, 1000);
  EXPECT_DOUBLE_EQ(s.mean_ms, 500.5);
  std::vector<double> one = {3};
  EXPECT_DOUBLE_EQ(Summarize(one).p999_ms, 3);
  std::vector<double> none;
  EXPECT_EQ(Summarize(none).count, 0u);
}

TEST(StatsTest, ParsesListsAndRanges) {
  EXPECT_EQ(*ParseIntList("1, 4,16", 1, 100), (std::vector<int64_t>{1, 4, 16}));
  EXPECT_FALSE(ParseIntList("1,x", 1, 100).ok());
  EXPECT_FALSE(ParseIntList("0", 1, 100).ok());
  EXPECT_FALSE(ParseIntList("", 1, 100).ok());
  EXPECT_EQ(*ParseDoubleList("2.5,10", 0), (std::vector<double>{2.5, 10}));
  EXPECT_EQ(*ParseRange("8", 1, 64), (std::pair<int64_t, int64_t>(8, 8)));
  EXPECT_EQ(*ParseRange("1-64", 1, 64), (std::pair<int64_t, int64_t>(1, 64)));
  EXPECT_FALSE(ParseRange("9-3", 1, 64).ok());
  EXPECT_FALSE(ParseRange("0-3", 1, 64).ok());
  EXPECT_FALSE(ParseRange("a-b", 1, 64).ok());
}

}  // namespace
}  // namespace marlin::loadgen
