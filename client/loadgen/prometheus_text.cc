#include "client/loadgen/prometheus_text.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace marlin::loadgen {
namespace {

std::optional<double> ParseValue(absl::string_view s) {
  if (s == "+Inf" || s == "Inf") return HUGE_VAL;
  if (s == "-Inf") return -HUGE_VAL;
  if (s == "NaN") return std::nan("");
  double v = 0;
  if (!absl::SimpleAtod(s, &v)) return std::nullopt;
  return v;
}

// Scales a time family's mean to microseconds by its unit suffix.
double ToMicros(absl::string_view family, double value) {
  if (absl::EndsWith(family, "_seconds") || absl::StrContains(family, "_seconds_")) {
    return value * 1e6;
  }
  if (absl::EndsWith(family, "_ms") || absl::EndsWith(family, "_milliseconds")) return value * 1e3;
  if (absl::EndsWith(family, "_ns") || absl::EndsWith(family, "_nanoseconds")) return value / 1e3;
  return value;  // _us, _microseconds, or unit-less: taken as microseconds
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<MetricSamples> ParsePrometheusText(absl::string_view text) {
  MetricSamples out;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line.front() == '#') continue;
    // name[{labels}] value [timestamp]
    size_t name_end = line.find_first_of("{ \t");
    if (name_end == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line ", line_no, ": no value"));
    }
    absl::string_view name = line.substr(0, name_end);
    absl::string_view rest = line.substr(name_end);
    if (!rest.empty() && rest.front() == '{') {
      // Label values may contain '}' inside quotes.
      bool quoted = false;
      size_t i = 1;
      for (; i < rest.size(); ++i) {
        char c = rest[i];
        if (quoted && c == '\\') {
          ++i;
        } else if (c == '"') {
          quoted = !quoted;
        } else if (!quoted && c == '}') {
          break;
        }
      }
      if (i >= rest.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("metrics line ", line_no, ": unterminated labels"));
      }
      rest = rest.substr(i + 1);
    }
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::StripAsciiWhitespace(rest), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line ", line_no, ": no value"));
    }
    std::optional<double> value = ParseValue(fields[0]);
    if (!value.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line ", line_no, ": bad value '", fields[0], "'"));
    }
    if (absl::EndsWith(name, "_bucket")) continue;
    out[std::string(name)] += *value;
  }
  return out;
}

absl::StatusOr<std::string> HttpGet(absl::string_view address, absl::string_view path,
                                    absl::Duration timeout) {
  absl::ConsumePrefix(&address, "http://");
  size_t slash = address.find('/');
  if (slash != absl::string_view::npos) address = address.substr(0, slash);
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' has no port"));
  }
  std::string host(address.substr(0, colon));
  std::string port(address.substr(colon + 1));
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot resolve ", address, ": ", gai_strerror(rc)));
  }
  absl::Time deadline = absl::Now() + timeout;
  std::string last_error = "no address";
  std::string response;
  bool done = false;
  for (addrinfo* ai = res; ai != nullptr && !done; ai = ai->ai_next) {
    Fd fd(socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol));
    if (fd.get() < 0) continue;
    timeval tv{};
    int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout));
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last_error = strerror(errno);
      continue;
    }
    std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address,
                                       "\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
    if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(request.size())) {
      last_error = strerror(errno);
      continue;
    }
    char buf[16384];
    while (true) {
      if (absl::Now() > deadline) {
        freeaddrinfo(res);
        return absl::DeadlineExceededError(absl::StrCat("metrics: GET ", address, " timed out"));
      }
      ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
      if (n > 0) {
        response.append(buf, n);
      } else if (n == 0) {
        done = true;
        break;
      } else if (errno != EINTR) {
        last_error = strerror(errno);
        break;
      }
    }
  }
  freeaddrinfo(res);
  if (!done) {
    return absl::UnavailableError(absl::StrCat("metrics: GET ", address, ": ", last_error));
  }
  size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos || !absl::StartsWith(response, "HTTP/")) {
    return absl::InternalError(absl::StrCat("metrics: ", address, " sent no HTTP response"));
  }
  absl::string_view status_line = absl::string_view(response).substr(0, response.find("\r\n"));
  std::vector<absl::string_view> parts = absl::StrSplit(status_line, ' ');
  if (parts.size() < 2 || parts[1] != "200") {
    return absl::UnavailableError(
        absl::StrCat("metrics: ", address, path, " answered '", status_line, "'"));
  }
  return response.substr(header_end + 4);
}

ServerView DiffHistograms(const MetricSamples& before, const MetricSamples& after) {
  ServerView view;
  for (const auto& [name, count_after] : after) {
    absl::string_view family = name;
    if (!absl::ConsumeSuffix(&family, "_count")) continue;
    auto sum_after = after.find(absl::StrCat(family, "_sum"));
    if (sum_after == after.end()) continue;
    double count_before = 0, sum_before = 0;
    if (auto it = before.find(name); it != before.end()) count_before = it->second;
    if (auto it = before.find(absl::StrCat(family, "_sum")); it != before.end()) {
      sum_before = it->second;
    }
    double dcount = count_after - count_before;
    if (dcount <= 0) continue;
    double mean = (sum_after->second - sum_before) / dcount;
    std::string key(family);
    view.family_means[key] = mean;
    view.family_counts[key] = dcount;
    std::string lower = absl::AsciiStrToLower(family);
    if (absl::StrContains(lower, "batch") && absl::StrContains(lower, "rows")) {
      view.mean_batch_rows = mean;
    } else if (absl::StrContains(lower, "queue") && !absl::StrContains(lower, "rows")) {
      view.mean_queue_us = ToMicros(lower, mean);
    } else if (absl::StrContains(lower, "compute")) {
      view.mean_compute_us = ToMicros(lower, mean);
    }
  }
  return view;
}

}  // namespace marlin::loadgen
