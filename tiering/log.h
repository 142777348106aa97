// Structured logging: one line per event, grep-able key=value tokens, to stderr.
//   KVTIER_LOG(kInfo, "page_out") << "blocks=" << n << " bytes=" << b;
// -> 2026-11-23T13:50:01.123Z I page_out blocks=12 bytes=1048576
// Level is process-wide (SetLogLevel); lines are written whole under a lock so threads do not interleave.
#pragma once

#include <sstream>
#include <string_view>

namespace kvtier {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

class LogLine {
 public:
  LogLine(LogLevel level, std::string_view event);
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;

  template <class T>
  LogLine& operator<<(const T& v) {
    stream_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace kvtier

namespace kvtier {
// Turns the streamed LogLine into void so the macro is one expression (safe inside if/else).
struct LogVoidify {
  void operator&(const LogLine&) {}
};
}  // namespace kvtier

#define KVTIER_LOG(level, event)                                              \
  (::kvtier::LogLevel::level < ::kvtier::GetLogLevel())                       \
      ? (void)0                                                               \
      : ::kvtier::LogVoidify() & ::kvtier::LogLine(::kvtier::LogLevel::level, event)
