// libshmbus — the one logging sink of the library.
//
// Every module logs through detail::log() (lib/src/log/log.hpp): a level, the component that
// speaks ("supervisor", "router", "window", ...), the bus, and a formatted line. By default the
// line goes to stderr as `shmbus[<bus>] <component> <level>: <text>`; an application replaces the
// sink with setLogSink() to route it into its own logger (spdlog, syslog, a test's capture).
#pragma once

#include <functional>
#include <string_view>

namespace shmbus {

/// Verbosity of a log record; a sink receives records at or below the configured level.
enum class LogLevel { Silent = 0, Error = 1, Warn = 2, Info = 3, Debug = 4 };

/// Stable lower-case name of a level ("error", "warn", ...). Never null.
const char* logLevelName(LogLevel level) noexcept;

/// One log record. The views are valid only during the sink call; copy what you keep.
struct LogRecord {
  LogLevel level = LogLevel::Info;  ///< severity
  std::string_view component;  ///< module that logged: "supervisor", "router", "window", "lane", ...
  std::string_view bus;        ///< bus name ("" when not known yet)
  std::string_view text;       ///< the message, one line, no trailing newline
};

/// A log sink. Called from whichever library thread logs (dispatch, lane, watchdog, a caller's
/// thread); it must be thread-safe and must not call back into the bus (no send/invoke).
using LogSink = std::function<void(const LogRecord&)>;

/// Replaces the process-wide sink (an empty function restores the stderr default). Thread-safe;
/// records being emitted concurrently go to the old or the new sink.
void setLogSink(LogSink sink);

/// Process-wide ceiling on the levels that reach the sink (default Debug: the endpoints' own
/// levels decide, SupervisorOptions::logLevel and WindowOptions::logLevel, both Warn by default).
/// Thread-safe.
void setLogLevel(LogLevel level) noexcept;

/// The process-wide ceiling set by setLogLevel().
LogLevel logLevel() noexcept;

}  // namespace shmbus
