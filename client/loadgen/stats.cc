#include "client/loadgen/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace marlin::loadgen {

double Quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  double rank = std::ceil(q * static_cast<double>(sorted.size()));
  size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return sorted[std::min(index, sorted.size() - 1)];
}

LatencySummary Summarize(std::vector<double>& latencies_ms) {
  LatencySummary s;
  s.count = latencies_ms.size();
  if (latencies_ms.empty()) return s;
  std::sort(latencies_ms.begin(), latencies_ms.end());
  s.mean_ms = std::accumulate(latencies_ms.begin(), latencies_ms.end(), 0.0) /
              static_cast<double>(latencies_ms.size());
  s.p50_ms = Quantile(latencies_ms, 0.50);
  s.p90_ms = Quantile(latencies_ms, 0.90);
  s.p99_ms = Quantile(latencies_ms, 0.99);
  s.p999_ms = Quantile(latencies_ms, 0.999);
  s.max_ms = latencies_ms.back();
  return s;
}

absl::StatusOr<std::vector<int64_t>> ParseIntList(absl::string_view text, int64_t min,
                                                  int64_t max) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &v) || v < min || v > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", part, "' is not an integer in [", min, ", ", max, "]"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("empty list '", text, "'"));
  return out;
}

absl::StatusOr<std::vector<double>> ParseDoubleList(absl::string_view text, double min) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    double v = 0;
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(part), &v) || !(v >= min) ||
        !std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("'", part, "' is not a number >= ", min));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("empty list '", text, "'"));
  return out;
}

absl::StatusOr<std::pair<int64_t, int64_t>> ParseRange(absl::string_view text, int64_t min,
                                                       int64_t max) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '-');
  int64_t lo = 0, hi = 0;
  bool ok = false;
  if (parts.size() == 1) {
    ok = absl::SimpleAtoi(absl::StripAsciiWhitespace(parts[0]), &lo);
    hi = lo;
  } else if (parts.size() == 2) {
    ok = absl::SimpleAtoi(absl::StripAsciiWhitespace(parts[0]), &lo) &&
         absl::SimpleAtoi(absl::StripAsciiWhitespace(parts[1]), &hi);
  }
  if (!ok || lo < min || hi > max || lo > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not N or A-B with ", min, " <= A <= B <= ", max));
  }
  return std::make_pair(lo, hi);
}

}  // namespace marlin::loadgen
