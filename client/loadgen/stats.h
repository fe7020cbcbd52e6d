// Small pieces of marlin-loadgen: latency percentiles, the per-point result record, and parsers
// of its list/range flags ("1,4,16", "1-64").
#ifndef MARLIN_CLIENT_LOADGEN_STATS_H_
#define MARLIN_CLIENT_LOADGEN_STATS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/loadgen/prometheus_text.h"

namespace marlin::loadgen {

struct LatencySummary {
  uint64_t count = 0;
  double mean_ms = 0;
  double p50_ms = 0;
  double p90_ms = 0;
  double p99_ms = 0;
  double p999_ms = 0;
  double max_ms = 0;
};

// Nearest-rank percentiles of `latencies_ms` (sorted in place).
LatencySummary Summarize(std::vector<double>& latencies_ms);
// The q-quantile (0..1) of sorted values by nearest rank; 0 for none.
double Quantile(const std::vector<double>& sorted, double q);

// One measured point of a sweep.
struct PointResult {
  std::string label;  // "c=16" or "rate=500"
  std::string loop;   // "closed" or "open"
  std::string mode;   // "unary" or "stream"
  int concurrency = 0;
  double target_rate = 0;
  double elapsed_s = 0;
  // Measured requests: sent == answers + errors always.
  uint64_t sent = 0;
  uint64_t answers = 0;
  uint64_t errors = 0;
  std::map<std::string, uint64_t> errors_by_code;
  uint64_t rows_answered = 0;
  double req_per_s = 0;
  double rows_per_s = 0;
  LatencySummary latency;
  // Open loop only (count 0 otherwise): scheduled send time to the moment the request was handed
  // to the client library. A large tail here means the load generator could not keep its
  // schedule, and that much of `latency` is its own delay.
  LatencySummary send_lag;
  // The server's view, from the timing in its answers.
  double mean_batch_rows = 0;
  double mean_queue_us = 0;
  double mean_compute_us = 0;
  // ... and from its /metrics page (when --metrics was given and the scrape worked).
  std::optional<ServerView> metrics;
  std::string metrics_error;
  // Verification against the local CPU reference (--verify-fraction).
  uint64_t verified = 0;
  uint64_t mismatches = 0;
  double max_rel_error = 0;
  // Warmup requests (not measured; also all answered).
  uint64_t warmup_sent = 0;
  uint64_t warmup_answers = 0;
  uint64_t warmup_errors = 0;
};

// "1,4,16" -> {1, 4, 16}; every value in [min, max].
absl::StatusOr<std::vector<int64_t>> ParseIntList(absl::string_view text, int64_t min, int64_t max);
absl::StatusOr<std::vector<double>> ParseDoubleList(absl::string_view text, double min);
// "8" -> {8, 8}; "1-64" -> {1, 64}.
absl::StatusOr<std::pair<int64_t, int64_t>> ParseRange(absl::string_view text, int64_t min,
                                                       int64_t max);

}  // namespace marlin::loadgen

#endif  // MARLIN_CLIENT_LOADGEN_STATS_H_
