// An idle bus uses no CPU: a supervisor and 8 windows, all parked, measured over 10 s from /proc.
// Reported, with only a generous sanity bound asserted. Runs alone (meson is_parallel: false).
#include <doctest/doctest.h>

#include <dirent.h>

#include <thread>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {
constexpr int kWindows = 8;
constexpr auto kSpan = 10s;

/// CPU time of every thread of `pid` in ns (/proc/<pid>/task/*/schedstat, first field): finer than
/// the clock ticks of /proc/<pid>/stat.
std::int64_t cpuNs(pid_t pid) {
  std::int64_t total = 0;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream f(dir + "/" + e->d_name + "/schedstat");
      std::int64_t ns = 0;
      if (f >> ns) total += ns;
    }
    ::closedir(d);
  }
  return total;
}
}  // namespace

TEST_CASE("an idle bus of a supervisor and 8 windows uses almost no CPU") {
  TestBus tb("idle", {}, /*dispatch=*/false);
  // Each window: a dispatch thread parked in its inbox wait, a watchdog thread in poll().
  const ServedWindow::Setup setup = [](Window& w, auto& regs) {
    regs.push_back(w.handle("echo", echoHandler()));
    regs.push_back(w.on("window-closed", [](const Message&, const CallContext&) {}));
  };
  std::vector<std::unique_ptr<ServedWindow>> windows;
  for (int i = 0; i < kWindows; ++i) {
    windows.push_back(std::make_unique<ServedWindow>(ServedWindow::deferred, tb, "w" + std::to_string(i), setup));
  }
  tb->startDispatchThread();
  for (auto& w : windows) w->start();
  // One round trip each, so every window has been through a full wake and park cycle.
  for (int i = 0; i < kWindows; ++i) {
    auto r = tb->invoke("w" + std::to_string(i), "echo", text("x")).get();
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
  }
  std::vector<pid_t> pids{::getpid()};
  for (auto& w : windows) pids.push_back(w->pid());
  auto ticks = [&] {
    long long t = 0;
    for (pid_t p : pids) t += cpuTicks(p);
    return t;
  };
  auto ns = [&] {
    std::int64_t t = 0;
    for (pid_t p : pids) t += cpuNs(p);
    return t;
  };
  const long long ticks0 = ticks();
  const std::int64_t ns0 = ns();
  const std::int64_t t0 = nowNs();
  std::this_thread::sleep_for(kSpan);  // allowed: the measurement span itself (nothing to wait for)
  const double wallNs = static_cast<double>(nowNs() - t0);
  const double statPercent = static_cast<double>(ticks() - ticks0) / static_cast<double>(::sysconf(_SC_CLK_TCK)) /
                             (wallNs / 1e9) * 100;
  const double schedPercent = static_cast<double>(ns() - ns0) / wallNs * 100;
  MESSAGE("idle supervisor + " << kWindows << " windows over " << wallNs / 1e9 << " s: " << statPercent
                               << " % of one core by /proc/<pid>/stat utime+stime, " << schedPercent
                               << " % by schedstat (the test thread included)");
  CHECK(statPercent < 5);
  CHECK(schedPercent < 5);
  for (auto& w : windows) CHECK(w->finish() == 0);
}
