// Deadline accuracy: the supervisor answers Timeout itself at the deadline. Timing-sensitive: the
// program runs alone (meson is_parallel: false).
#include <doctest/doctest.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {
constexpr int kRounds = 20;
constexpr double kTimeoutMs = 50;

/// Never early; on time as a rule. On an idle machine every answer comes within 50.1-50.5 ms; on
/// a shared, loaded 2-core machine the supervisor's timer wake-up and the caller's can each wait
/// for a scheduler slice, so the median is held to [50, 60] ms, every answer to well below the
/// caller's own fallback, and the count past 60 ms is reported.
void checkWindow(const std::vector<double>& ms, const std::string& what) {
  const Spread s = spreadOf(ms);
  const auto late = std::count_if(ms.begin(), ms.end(), [](double m) { return m > kTimeoutMs + 10; });
  MESSAGE(what << ": a 50 ms timeout answered after min " << s.min << " ms, median " << s.median << " ms, max "
               << s.max << " ms (" << ms.size() << " calls, " << late << " after 60 ms)");
  CHECK(s.min >= kTimeoutMs);
  CHECK(s.median <= kTimeoutMs + 10);
  CHECK(s.max < kTimeoutMs + 200);
}
}  // namespace

TEST_CASE("a 50 ms timeout answers between 50 and 60 ms, routed and from main") {
  TestBus tb("deadline", {}, /*dispatch=*/false);
  // The target's first call holds its dispatch thread until the end, so every call times out.
  Link holdB;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [&](Window& w, auto& regs) {
    regs.push_back(w.handle("GetDashboardData", [&holdB, first = true](const Message&, Builder&,
                                                                      const CallContext&) mutable {
      if (std::exchange(first, false)) holdB.hearParent(60s);
    }));
  });
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    std::string out;
    for (int i = 0; i < kRounds; ++i) {
      const std::int64_t t0 = nowNs();
      auto r = w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 50ms}).get();
      const double ms = msSince(t0);
      childCheck(r.code() == ErrorCode::Timeout, r.error().toString());
      out += std::to_string(ms) + " ";
    }
    toA.tellParent(out);
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go();
  std::vector<double> routed;
  for (const auto& w : words(toA.hearChild(30s))) routed.push_back(std::stod(w));
  CHECK(a.join(10s) == 0);
  REQUIRE(routed.size() == kRounds);
  checkWindow(routed, "window → window");

  std::vector<double> fromMain;
  for (int i = 0; i < kRounds; ++i) {
    const std::int64_t t0 = nowNs();
    auto r = tb->invoke("dashboard", "GetDashboardData", {}, {.timeout = 50ms}).get();
    fromMain.push_back(msSince(t0));
    CHECK(r.code() == ErrorCode::Timeout);
  }
  checkWindow(fromMain, "main → window");
  holdB.tellChild("go");
  CHECK(dashboard.finish() == 0);
}
