#include "client/loadgen/prometheus_text.h"

#include "gtest/gtest.h"

namespace marlin::loadgen {
namespace {

constexpr char kBefore[] = R"(# HELP marlin_batch_rows Rows per batch.
# TYPE marlin_batch_rows histogram
marlin_batch_rows_bucket{weight="a",le="1"} 2
marlin_batch_rows_bucket{weight="a",le="+Inf"} 10
marlin_batch_rows_sum{weight="a"} 40
marlin_batch_rows_count{weight="a"} 10
marlin_batch_rows_sum{weight="b"} 10
marlin_batch_rows_count{weight="b"} 5
marlin_queue_seconds_sum 0.5
marlin_queue_seconds_count 10
marlin_compute_seconds_sum{label="x}y"} 1.0
marlin_compute_seconds_count{label="x}y"} 10
marlin_requests_total{code="OK"} 15 1700000000000
)";

constexpr char kAfter[] = R"(marlin_batch_rows_sum{weight="a"} 140
marlin_batch_rows_count{weight="a"} 20
marlin_batch_rows_sum{weight="b"} 10
marlin_batch_rows_count{weight="b"} 5
marlin_queue_seconds_sum 0.7
marlin_queue_seconds_count 20
marlin_compute_seconds_sum{label="x}y"} 1.5
marlin_compute_seconds_count{label="x}y"} 20
marlin_idle_sum 3
marlin_idle_count 1
marlin_requests_total{code="OK"} 35
)";

TEST(PrometheusTextTest, SumsLabelSetsAndSkipsBuckets) {
  absl::StatusOr<MetricSamples> s = ParsePrometheusText(kBefore);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->at("marlin_batch_rows_sum"), 50);
  EXPECT_DOUBLE_EQ(s->at("marlin_batch_rows_count"), 15);
  EXPECT_DOUBLE_EQ(s->at("marlin_requests_total"), 15);
  EXPECT_EQ(s->count("marlin_batch_rows_bucket"), 0u);
  EXPECT_DOUBLE_EQ(s->at("marlin_compute_seconds_sum"), 1.0);
}

TEST(PrometheusTextTest, RejectsGarbage) {
  EXPECT_FALSE(ParsePrometheusText("metric_without_value\n").ok());
  EXPECT_FALSE(ParsePrometheusText("m{a=\"b\" 1\n").ok());
  EXPECT_FALSE(ParsePrometheusText("m abc\n").ok());
  EXPECT_TRUE(ParsePrometheusText("m +Inf\nn NaN\n").ok());
}

TEST(PrometheusTextTest, DiffGivesMeansOfWhatChanged) {
  MetricSamples before = *ParsePrometheusText(kBefore);
  MetricSamples after = *ParsePrometheusText(kAfter);
  ServerView view = DiffHistograms(before, after);
  ASSERT_TRUE(view.mean_batch_rows.has_value());
  EXPECT_DOUBLE_EQ(*view.mean_batch_rows, 10);  // (150 - 50) / (25 - 15)
  ASSERT_TRUE(view.mean_queue_us.has_value());
  EXPECT_NEAR(*view.mean_queue_us, 20000, 1e-6);  // 0.2 s / 10
  ASSERT_TRUE(view.mean_compute_us.has_value());
  EXPECT_NEAR(*view.mean_compute_us, 50000, 1e-6);
  EXPECT_DOUBLE_EQ(view.family_means.at("marlin_idle"), 3);  // new family: all of it
  EXPECT_EQ(view.family_counts.count("marlin_requests_total"), 0u);
}

TEST(PrometheusTextTest, HttpGetToNobodyFails) {
  EXPECT_FALSE(HttpGet("127.0.0.1:1", "/metrics", absl::Seconds(1)).ok());
  EXPECT_FALSE(HttpGet("no-port", "/metrics").ok());
}

}  // namespace
}  // namespace marlin::loadgen
