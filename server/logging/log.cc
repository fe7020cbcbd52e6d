#include "server/logging/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace marlin::log {
namespace {

std::atomic<int> min_level{static_cast<int>(Level::kInfo)};

void StderrSink(absl::string_view line) {
  // One write(2) per line keeps concurrent lines from interleaving.
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

std::atomic<Sink> sink{&StderrSink};

const char* LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarning:
      return "warning";
    case Level::kError:
      return "error";
  }
  return "info";
}

}  // namespace

void SetMinLevel(Level level) { min_level.store(static_cast<int>(level)); }
bool Enabled(Level level) { return static_cast<int>(level) >= min_level.load(); }
void SetSink(Sink s) { sink.store(s == nullptr ? &StderrSink : s); }

absl::Status ParseLevel(absl::string_view text, Level* level) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "debug") {
    *level = Level::kDebug;
  } else if (t == "info") {
    *level = Level::kInfo;
  } else if (t == "warning" || t == "warn") {
    *level = Level::kWarning;
  } else if (t == "error") {
    *level = Level::kError;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log level '", text, "' (debug, info, warning, error)"));
  }
  return absl::OkStatus();
}

std::string QuoteValue(absl::string_view value) {
  bool needs_quotes = value.empty();
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
      needs_quotes = true;
      break;
    }
  }
  if (!needs_quotes) return std::string(value);
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

Line::Line(Level level, absl::string_view msg) {
  absl::StrAppend(&text_,
                  "ts=", absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()),
                  " level=", LevelName(level), " msg=", QuoteValue(msg.empty() ? "-" : msg));
  // msg is always quoted when it has spaces; single words stay bare, as logfmt allows.
}

Line::~Line() {
  text_ += '\n';
  sink.load()(text_);
}

Line& Line::Kv(absl::string_view key, absl::string_view value) {
  absl::StrAppend(&text_, " ", key, "=", QuoteValue(value));
  return *this;
}

Line& Line::Kv(absl::string_view key, const absl::Status& status) {
  if (status.ok()) return Kv(key, absl::string_view("OK"));
  return Kv(key, absl::string_view(status.ToString()));
}

}  // namespace marlin::log
