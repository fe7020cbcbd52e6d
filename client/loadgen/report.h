// marlin-loadgen's outputs: the end table, JSON, CSV and a self-contained HTML report whose
// throughput-latency curve is an inline SVG drawn here.
//
//   std::cout << marlin::loadgen::FormatTable(points);
//   RETURN_IF_ERROR(marlin::loadgen::WriteTextFile("run.html", marlin::loadgen::ToHtml(info,
//   points)));
#ifndef MARLIN_CLIENT_LOADGEN_REPORT_H_
#define MARLIN_CLIENT_LOADGEN_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/loadgen/stats.h"

namespace marlin::loadgen {

// What the run was, for the report headers.
struct RunInfo {
  std::string server;
  std::string server_version;
  std::string backend;
  std::string mode;
  std::string loop;  // "closed" or "open"
  std::vector<std::string> weight_ids;
  std::string rows;  // "8" or "1-64"
  double duration_s = 0;
  double warmup_s = 0;
  double verify_fraction = 0;
  std::string verify_rule;  // "bit-exact" or "relative Frobenius <= 1e-3"
  std::string started;      // RFC 3339
  std::string command_line;
};

std::string FormatTable(const std::vector<PointResult>& points);
std::string ToJson(const RunInfo& info, const std::vector<PointResult>& points);
std::string ToCsv(const std::vector<PointResult>& points);
std::string ToHtml(const RunInfo& info, const std::vector<PointResult>& points);
// The throughput (x) - latency (y) chart alone: p50, p99 and p99.9 against req/s.
std::string ThroughputLatencySvg(const std::vector<PointResult>& points);

absl::Status WriteTextFile(const std::string& path, const std::string& contents);

}  // namespace marlin::loadgen

#endif  // MARLIN_CLIENT_LOADGEN_REPORT_H_
