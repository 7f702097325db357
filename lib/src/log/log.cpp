#include "log/log.hpp"

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>

namespace shmbus {

namespace {
std::atomic<int> gLevel{static_cast<int>(LogLevel::Debug)};
std::mutex gSinkMu;
std::shared_ptr<const LogSink> gSink;  // guarded by gSinkMu; null = stderr

void stderrSink(const LogRecord& r) {
  // One fprintf per record: stdio locks the stream, so concurrent lines do not interleave.
  std::fprintf(stderr, "shmbus[%.*s] %.*s %s: %.*s\n", static_cast<int>(r.bus.size()), r.bus.data(),
               static_cast<int>(r.component.size()), r.component.data(), logLevelName(r.level),
               static_cast<int>(r.text.size()), r.text.data());
}
}  // namespace

const char* logLevelName(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::Silent: return "silent";
    case LogLevel::Error: return "error";
    case LogLevel::Warn: return "warn";
    case LogLevel::Info: return "info";
    case LogLevel::Debug: return "debug";
  }
  return "?";
}

void setLogSink(LogSink sink) {
  auto next = sink ? std::make_shared<const LogSink>(std::move(sink)) : nullptr;
  std::lock_guard lk(gSinkMu);
  gSink = std::move(next);
}

// relaxed: the level is a filter; a record racing a change may use either value.
void setLogLevel(LogLevel level) noexcept { gLevel.store(static_cast<int>(level), std::memory_order_relaxed); }
LogLevel logLevel() noexcept { return static_cast<LogLevel>(gLevel.load(std::memory_order_relaxed)); }

namespace detail {

bool logEnabled(LogLevel level, LogLevel ceiling) noexcept {
  const int l = static_cast<int>(level);
  // relaxed: a filter (see setLogLevel).
  return l != 0 && l <= gLevel.load(std::memory_order_relaxed) && l <= static_cast<int>(ceiling);
}

void emitLog(LogLevel level, std::string_view component, std::string_view bus, std::string_view text) {
  std::shared_ptr<const LogSink> sink;
  {
    std::lock_guard lk(gSinkMu);
    sink = gSink;
  }
  const LogRecord r{level, component, bus, text};
  if (sink) {
    try {
      (*sink)(r);
    } catch (...) {
      stderrSink(r);  // a throwing sink must not take a dispatch thread down
    }
  } else {
    stderrSink(r);
  }
}

}  // namespace detail
}  // namespace shmbus
