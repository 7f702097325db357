// Internal logging front end: every module formats with fmt and hands the line to the one sink
// of shmbus/log.hpp. Formatting happens only when the record passes the level filters, so a
// disabled Debug line costs one relaxed load.
#pragma once

#include <fmt/format.h>

#include <string_view>
#include <utility>

#include "shmbus/log.hpp"

namespace shmbus::detail {

/// True when a record of `level` would reach the sink under both the process-wide ceiling and
/// the endpoint's own `ceiling`.
bool logEnabled(LogLevel level, LogLevel ceiling = LogLevel::Debug) noexcept;

/// Hands one formatted record to the sink (no filtering here).
void emitLog(LogLevel level, std::string_view component, std::string_view bus, std::string_view text);

/// A module's logger: its component name, its bus and its own level ceiling. Cheap to copy.
/// Thread contract: const methods from any thread.
struct Logger {
  std::string_view component;
  std::string bus;
  LogLevel ceiling = LogLevel::Debug;

  template <typename... A>
  void operator()(LogLevel level, fmt::format_string<A...> f, A&&... a) const {
    if (!logEnabled(level, ceiling)) return;
    emitLog(level, component, bus, fmt::format(f, std::forward<A>(a)...));
  }
};

}  // namespace shmbus::detail
