// Churn: many windows connecting, calling each other and disconnecting at once. Every window is a
// real process; nothing may leak (registry entries, segment names, descriptors, pending calls).
#include <doctest/doctest.h>

#include <atomic>
#include <random>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {
constexpr int kProcesses = 64;
constexpr int kRounds = 20;
constexpr int kRoles = 8;
}  // namespace

TEST_CASE("64 processes connecting, calling and disconnecting windows at once leave nothing behind") {
  // Sends to roles with no window right now are expected here: the supervisor logs only errors.
  // Every child is forked before the dispatch thread starts: a child forked while another thread
  // of this process holds an allocator lock can hang (so it is with ASan's allocator); the
  // children's first connects wait in the listen backlog meanwhile.
  TestBus tb("churn", {.inboxBytes = 1u << 16, .outboxBytes = 1u << 16, .logLevel = LogLevel::Error},
             /*dispatch=*/false);
  std::atomic<int> opened{0}, closed{0}, pings{0};
  auto lo = tb->on("window-opened", [&](const Message&, const CallContext&) { ++opened; });
  auto lc = tb->on("window-closed", [&](const Message&, const CallContext&) { ++closed; });
  auto ping = tb->handle("ping", textHandler([&](const std::string& s, const CallContext&) {
    ++pings;
    return s;
  }));
  const std::size_t fds = openFdCount();
  const std::int64_t t0 = nowNs();
  std::vector<Child> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(Child::fork([&tb, p] {
      std::mt19937 rng(static_cast<unsigned>(p));
      for (int round = 0; round < kRounds; ++round) {
        const std::string role = "r" + std::to_string((p + round) % kRoles);
        auto w = connectWindow(tb.bus, role);
        auto h = w->handle("echo", echoHandler());
        auto l = w->on("note", [](const Message&, const CallContext&) {});
        w->startDispatchThread();
        childCheck(replyText(w->invoke("ping", text(role)), "ping main") == role, "ping");
        const std::string other = "r" + std::to_string(rng() % kRoles);
        (void)w->sendTo(other, "note", text("hi"));
        // Windows of that role come and go meanwhile: any of these answers is right, a timeout
        // or a corrupt ring is not.
        auto r = w->invokeIn(other, "echo", text("x"), {.timeout = 5000ms}).get();
        const ErrorCode c = r.code();
        childCheck(c == ErrorCode::Ok || c == ErrorCode::NoTarget || c == ErrorCode::NoHandler ||
                       c == ErrorCode::TargetGone,
                   "invokeIn " + other + ": " + r.error().toString());
        if (c == ErrorCode::Ok) childCheck(textOf(*r) == "x", "echo reply");
      }
    }));
  }
  tb->startDispatchThread();
  int failed = 0;
  for (auto& c : children) failed += c.join(60s) != 0;
  CHECK(failed == 0);
  const double seconds = msSince(t0) / 1000;
  // Every window's close has been handled once the registry is empty.
  REQUIRE(awaitCondition([&] { return tb->windows().empty() && closed.load() == kProcesses * kRounds; }, 10s));
  MESSAGE((kProcesses * kRounds) << " windows from " << kProcesses << " processes connected, called and closed in "
                                 << seconds << " s");
  CHECK(opened.load() == kProcesses * kRounds);
  CHECK(pings.load() == kProcesses * kRounds);
  CHECK(segmentsHeld(tb.bus) == SegmentsHeld{});
  CHECK(openFdCount() == fds);
  const RouterStats s = tb->stats();
  CHECK(s.pending.empty());
  CHECK(s.badMessages == 0);
}
