// Unit tests of the logging sink (lib/src/log, shmbus/log.hpp): what a sink receives, the two
// level filters, the stderr default and a sink that throws.
#include "log/log.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace shmbus;
using namespace shmbus::detail;

namespace {

/// A record copied out of the sink call (the views die with the call).
struct Captured {
  LogLevel level;
  std::string component, bus, text;
};

/// Installs a capturing sink; restores the stderr default and the Debug ceiling on exit, so one
/// test's settings never leak into the next.
struct CaptureSink {
  std::mutex mu;
  std::vector<Captured> records;

  CaptureSink() {
    setLogSink([this](const LogRecord& r) {
      std::lock_guard lk(mu);
      records.push_back({r.level, std::string(r.component), std::string(r.bus), std::string(r.text)});
    });
  }
  ~CaptureSink() {
    setLogSink({});
    setLogLevel(LogLevel::Debug);
  }
  std::vector<std::string> texts() {
    std::lock_guard lk(mu);
    std::vector<std::string> out;
    for (const auto& r : records) out.push_back(r.text);
    return out;
  }
};

/// Redirects file descriptor 2 into a temporary file until text() is called.
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    file_ = std::tmpfile();
    REQUIRE(file_ != nullptr);
    saved_ = ::dup(2);
    REQUIRE(::dup2(::fileno(file_), 2) == 2);
  }
  ~StderrCapture() { restore(); }
  /// Restores stderr and returns everything written to it meanwhile.
  std::string text() {
    restore();
    std::string out;
    std::rewind(file_);
    char buf[512];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, file_)) > 0;) out.append(buf, n);
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::FILE* file_ = nullptr;
  int saved_ = -1;
};

/// An argument that counts how often it is formatted: a filtered record must not format.
struct Counted {
  int* formatted;
};

}  // namespace

template <>
struct fmt::formatter<Counted> : fmt::formatter<int> {
  template <typename Ctx>
  auto format(const Counted& c, Ctx& ctx) const {
    ++*c.formatted;
    return fmt::formatter<int>::format(42, ctx);
  }
};

TEST_CASE("a sink receives each record's level, component, bus and formatted text") {
  CaptureSink sink;
  const Logger log{"router", "busA", LogLevel::Debug};
  log(LogLevel::Warn, "window {} closed: {}", 3, "exit");
  emitLog(LogLevel::Error, "lane", "", "direct");
  REQUIRE(sink.records.size() == 2);
  CHECK(sink.records[0].level == LogLevel::Warn);
  CHECK(sink.records[0].component == "router");
  CHECK(sink.records[0].bus == "busA");
  CHECK(sink.records[0].text == "window 3 closed: exit");
  CHECK(sink.records[1].level == LogLevel::Error);
  CHECK(sink.records[1].component == "lane");
  CHECK(sink.records[1].bus.empty());
  CHECK(sink.records[1].text == "direct");
}

TEST_CASE("the process-wide level drops records above it before they are formatted") {
  CaptureSink sink;
  setLogLevel(LogLevel::Warn);
  CHECK(logLevel() == LogLevel::Warn);
  int formatted = 0;
  const Logger log{"window", "b", LogLevel::Debug};
  log(LogLevel::Debug, "debug {}", Counted{&formatted});
  log(LogLevel::Info, "info {}", Counted{&formatted});
  CHECK(formatted == 0);
  log(LogLevel::Warn, "warn {}", Counted{&formatted});
  log(LogLevel::Error, "error {}", Counted{&formatted});
  CHECK(formatted == 2);
  CHECK(sink.texts() == std::vector<std::string>{"warn 42", "error 42"});
  CHECK_FALSE(logEnabled(LogLevel::Info));
  CHECK(logEnabled(LogLevel::Warn));
}

TEST_CASE("a logger's own ceiling filters below the process-wide level") {
  CaptureSink sink;
  const Logger quiet{"supervisor", "b", LogLevel::Error};
  quiet(LogLevel::Warn, "dropped by the logger");
  quiet(LogLevel::Error, "kept");
  const Logger silent{"supervisor", "b", LogLevel::Silent};
  silent(LogLevel::Error, "dropped: the logger is silent");
  // Silent is not a level to log at: it never reaches a sink, whatever the ceilings.
  const Logger loud{"supervisor", "b", LogLevel::Debug};
  loud(LogLevel::Silent, "dropped: not a level");
  // The stricter of the two filters wins, either way round.
  setLogLevel(LogLevel::Error);
  loud(LogLevel::Warn, "dropped by the process");
  loud(LogLevel::Error, "kept too");
  CHECK(sink.texts() == std::vector<std::string>{"kept", "kept too"});
}

TEST_CASE("setting an empty sink restores the stderr line") {
  CaptureSink sink;
  setLogSink({});
  StderrCapture err;
  emitLog(LogLevel::Warn, "lane", "busB", "a callback ran long");
  const std::string text = err.text();
  CHECK(sink.records.empty());
  CHECK(text == "shmbus[busB] lane warn: a callback ran long\n");
}

TEST_CASE("a throwing sink does not propagate and the record falls back to stderr") {
  int calls = 0;
  CaptureSink restore;
  setLogSink([&](const LogRecord&) {
    ++calls;
    throw std::runtime_error("sink failed");
  });
  StderrCapture err;
  const Logger log{"router", "busC", LogLevel::Debug};
  CHECK_NOTHROW(log(LogLevel::Error, "window {} sent garbage", 4));
  setLogSink([&](const LogRecord&) {
    ++calls;
    throw 7;  // not even a std::exception
  });
  CHECK_NOTHROW(log(LogLevel::Info, "second"));
  const std::string text = err.text();
  CHECK(calls == 2);
  CHECK(text == "shmbus[busC] router error: window 4 sent garbage\nshmbus[busC] router info: second\n");
}

TEST_CASE("records logged while the sink is replaced each reach exactly one sink") {
  std::atomic<int> first{0}, second{0};  // declared before the guard: they outlive the sinks
  CaptureSink restore;
  setLogSink([&](const LogRecord&) { first.fetch_add(1, std::memory_order_relaxed); });
  constexpr int kRecords = 20000;
  std::atomic<bool> done{false};
  std::thread logger([&] {
    const Logger log{"window", "b", LogLevel::Debug};
    for (int i = 0; i < kRecords; ++i) log(LogLevel::Info, "record {}", i);
    done.store(true);
  });
  int swaps = 0;
  do {
    setLogSink([&](const LogRecord&) { second.fetch_add(1, std::memory_order_relaxed); });
    setLogSink([&](const LogRecord&) { first.fetch_add(1, std::memory_order_relaxed); });
    ++swaps;
  } while (!done.load());
  logger.join();
  CHECK(swaps > 0);
  CHECK(first.load() + second.load() == kRecords);
}

TEST_CASE("level names are stable lower-case words") {
  CHECK(std::string(logLevelName(LogLevel::Silent)) == "silent");
  CHECK(std::string(logLevelName(LogLevel::Error)) == "error");
  CHECK(std::string(logLevelName(LogLevel::Warn)) == "warn");
  CHECK(std::string(logLevelName(LogLevel::Info)) == "info");
  CHECK(std::string(logLevelName(LogLevel::Debug)) == "debug");
  CHECK(std::string(logLevelName(static_cast<LogLevel>(9))) == "?");
}
