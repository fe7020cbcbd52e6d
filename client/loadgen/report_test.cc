#include "client/loadgen/report.h"

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace marlin::loadgen {
namespace {

std::vector<PointResult> SamplePoints() {
  std::vector<PointResult> points;
  for (int c : {1, 4, 16}) {
    PointResult p;
    p.label = "c=" + std::to_string(c);
    p.loop = "closed";
    p.mode = "unary";
    p.concurrency = c;
    p.sent = 100 * c;
    p.answers = 100 * c - 1;
    p.errors = 1;
    p.errors_by_code["UNAVAILABLE"] = 1;
    p.req_per_s = 50.0 * c;
    p.latency.p50_ms = c;
    p.latency.p99_ms = 2 * c;
    p.latency.p999_ms = 3 * c;
    p.verified = 5;
    points.push_back(p);
  }
  ServerView view;
  view.mean_batch_rows = 7;
  points[1].metrics = view;
  return points;
}

TEST(ReportTest, JsonParsesAndHoldsThePoints) {
  RunInfo info;
  info.server = "localhost:1";
  nlohmann::json j = nlohmann::json::parse(ToJson(info, SamplePoints()));
  ASSERT_EQ(j["points"].size(), 3u);
  EXPECT_EQ(j["points"][2]["sent"], 1600);
  EXPECT_EQ(j["points"][2]["errors_by_code"]["UNAVAILABLE"], 1);
  EXPECT_EQ(j["points"][1]["server_metrics"]["mean_batch_rows"], 7.0);
  EXPECT_TRUE(j["points"][0]["server_metrics"].is_null());
  EXPECT_EQ(j["run"]["server"], "localhost:1");
}

TEST(ReportTest, CsvHasAHeaderAndOneRowPerPoint) {
  std::string csv = ToCsv(SamplePoints());
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u);
  size_t columns = std::count(lines[0].begin(), lines[0].end(), ',');
  for (const std::string& line : lines) {
    EXPECT_EQ(std::count(line.begin(), line.end(), ','), static_cast<long>(columns)) << line;
  }
  EXPECT_TRUE(absl::StartsWith(lines[1], "c=1,closed,unary,1,"));
}

TEST(ReportTest, HtmlIsSelfContainedWithAnSvgChart) {
  RunInfo info;
  info.command_line = "marlin-loadgen --x <y>";
  std::string html = ToHtml(info, SamplePoints());
  EXPECT_TRUE(absl::StartsWith(html, "<!DOCTYPE html>"));
  EXPECT_TRUE(absl::StrContains(html, "<svg"));
  EXPECT_TRUE(absl::StrContains(html, "<polyline"));
  EXPECT_TRUE(absl::StrContains(html, "&lt;y&gt;"));
  EXPECT_FALSE(absl::StrContains(html, "<script"));
  EXPECT_FALSE(absl::StrContains(html, "src="));
  EXPECT_TRUE(absl::StrContains(html, "</html>"));
}

TEST(ReportTest, TableHasOneLinePerPoint) {
  std::string table = FormatTable(SamplePoints());
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 4u);
  EXPECT_TRUE(absl::StrContains(lines[0], "p99.9ms"));
  EXPECT_TRUE(absl::StrContains(lines[3], "UNAVAILABLE:1"));
}

}  // namespace
}  // namespace marlin::loadgen
