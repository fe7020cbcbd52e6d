// Reading the server's own view for marlin-loadgen: an HTTP/1.0 GET of a Prometheus /metrics page
// and a parser of the text exposition format, plus the means of the _sum/_count families that
// changed between two scrapes (histograms and summaries, summed over their label sets).
//
//   ASSIGN_OR_RETURN(std::string page, marlin::loadgen::HttpGet("127.0.0.1:9090", "/metrics"));
//   ASSIGN_OR_RETURN(marlin::loadgen::MetricSamples before,
//   marlin::loadgen::ParsePrometheusText(page));
//   ... run a point, scrape `after` ...
//   marlin::loadgen::ServerView view = marlin::loadgen::DiffHistograms(before, after);
#ifndef MARLIN_CLIENT_LOADGEN_PROMETHEUS_TEXT_H_
#define MARLIN_CLIENT_LOADGEN_PROMETHEUS_TEXT_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace marlin::loadgen {

// Sample values by metric name with labels dropped and summed ("a_count{w="x"} 3" and
// "a_count{w="y"} 4" give "a_count" = 7). Buckets (_bucket) are skipped.
using MetricSamples = std::map<std::string, double>;

absl::StatusOr<MetricSamples> ParsePrometheusText(absl::string_view text);

// GET http://host:port/path; the body when the status is 200. host:port may be "http://..." too.
absl::StatusOr<std::string> HttpGet(absl::string_view address, absl::string_view path,
                                    absl::Duration timeout = absl::Seconds(5));

struct ServerView {
  // Mean of each family with a _sum and a _count that grew between the scrapes, in the family's
  // own unit; keys are family names (without _sum/_count).
  std::map<std::string, double> family_means;
  std::map<std::string, double> family_counts;  // observations in between
  // The families that look like batch rows, queue time and compute time (by name), with times
  // converted to microseconds (families ending in _seconds or _ms are scaled).
  std::optional<double> mean_batch_rows;
  std::optional<double> mean_queue_us;
  std::optional<double> mean_compute_us;
};

ServerView DiffHistograms(const MetricSamples& before, const MetricSamples& after);

}  // namespace marlin::loadgen

#endif  // MARLIN_CLIENT_LOADGEN_PROMETHEUS_TEXT_H_
