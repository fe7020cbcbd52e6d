// A tiny structured logger: one line per event, logfmt style, on stderr.
//
//   ts=2024-05-01T12:00:00.123456Z level=info msg="weight loaded" id=llama.q_proj bytes=8650752
//
// Abseil 20220623 has no absl/log, so the server uses this. Lines are written atomically (one
// write per line) and never per request at the default level (info).
//
//   MARLIN_LOG(kInfo, "weight loaded").Kv("id", id).Kv("bytes", bytes);
//   marlin::log::SetMinLevel(marlin::log::Level::kDebug);
#ifndef MARLIN_SERVER_LOGGING_LOG_H_
#define MARLIN_SERVER_LOGGING_LOG_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace marlin::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below `level` are dropped. Default kInfo.
void SetMinLevel(Level level);
bool Enabled(Level level);
// Parses "debug", "info", "warning", "error".
absl::Status ParseLevel(absl::string_view text, Level* level);

// Where lines go (stderr by default); tests may capture them. Not thread-safe against logging.
using Sink = void (*)(absl::string_view line);
void SetSink(Sink sink);

// Quotes a value when it contains spaces, quotes, '=' or is empty (logfmt rules).
std::string QuoteValue(absl::string_view value);

// One line under construction; written on destruction.
class Line {
 public:
  Line(Level level, absl::string_view msg);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;

  Line& Kv(absl::string_view key, absl::string_view value);
  Line& Kv(absl::string_view key, const std::string& value) {
    return Kv(key, absl::string_view(value));
  }
  Line& Kv(absl::string_view key, const char* value) { return Kv(key, absl::string_view(value)); }
  Line& Kv(absl::string_view key, const absl::Status& status);
  Line& Kv(absl::string_view key, bool value) { return Kv(key, value ? "true" : "false"); }
  template <typename T>
  Line& Kv(absl::string_view key, T value) requires std::is_arithmetic_v<T> {
    absl::StrAppend(&text_, " ", key, "=", value);
    return *this;
  }

 private:
  std::string text_;
};

}  // namespace marlin::log

// Usage: MARLIN_LOG(kInfo, "message").Kv("key", value); arguments are not evaluated when disabled.
#define MARLIN_LOG(level, msg)                                \
  if (!::marlin::log::Enabled(::marlin::log::Level::level)) { \
  } else                                                      \
    ::marlin::log::Line(::marlin::log::Level::level, msg)

#endif  // MARLIN_SERVER_LOGGING_LOG_H_
