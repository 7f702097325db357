// Window-to-window calls routed by the supervisor (issue 4): replies only from the window a call
// was routed to, late replies counted, cycles that complete or time out, stuck targets that delay
// nobody else, and the router's stats.
#include <doctest/doctest.h>

#include <mutex>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// Setup of a window whose first call on `channel` tells the parent it started, then waits for
/// the parent's word on `hold` before it replies `answer`: a target the test holds mid-call.
ServedWindow::Setup heldHandler(const char* channel, const Link& hold, const char* answer = "real") {
  return [channel, &hold, answer](Window& w, std::vector<Registration>& regs) {
    regs.push_back(w.handle(channel, textHandler([&hold, answer, first = true](const std::string&,
                                                                               const CallContext&) mutable {
      if (std::exchange(first, false)) {
        hold.tellParent("in-handler");
        hold.hearParent(30s);
      }
      return std::string(answer);
    })));
  };
}

const RouterStats::ChannelStats* channelStats(const RouterStats& s, const std::string& name) {
  auto it = std::find_if(s.channels.begin(), s.channels.end(), [&](auto& c) { return c.channel == name; });
  return it == s.channels.end() ? nullptr : &*it;
}

}  // namespace

TEST_CASE("reply frames with guessed request ids from another window never complete a call") {
  TestBus tb("spoof", {}, /*dispatch=*/false);
  Link holdB;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", heldHandler("GetDashboardData", holdB));
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    toA.tellParent(replyText(w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 20000ms}), "invokeIn"));
  });
  Link toH;
  GatedChild h([&] {
    auto w = connectWindow(tb.bus, "intruder", {.inboxBytes = 65536, .outboxBytes = 65536});
    RawOutbox out(tb.bus, w->id(), 65536, 65536, 32768);
    detail::FrameHeader f{};
    f.kind = static_cast<std::uint16_t>(detail::FrameKind::Reply);
    f.channel = nameId("GetDashboardData");
    for (std::uint64_t guess = 1; guess <= 256; ++guess) {
      f.requestId = guess;  // route ids are small sequential numbers: the real one is among them
      out.frame(f);
    }
    RawOutbox::ringDoorbell();
    toH.hearParent(20s);
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go();
  CHECK(holdB.hearChild() == "in-handler");
  h.go();  // the intruder connects while the real call is pending
  // The supervisor reads an outbox in batches: wait until all 256 forged replies were judged.
  REQUIRE(awaitCondition([&] {
    const RouterStats st = tb->stats();
    return st.spoofedReplies + st.lateReplies >= 256;
  }, 10s));
  const RouterStats s = tb->stats();
  CHECK(s.spoofedReplies == 1);
  CHECK(s.lateReplies == 255);  // the other guesses matched no pending call
  CHECK(s.badMessages == 0);    // wrong replies are dropped, not a reason to disconnect
  holdB.tellChild("reply");
  CHECK(toA.hearChild() == "real");
  CHECK(a.join(10s) == 0);
  toH.tellChild("done");
  CHECK(h.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("a reply that comes after the call timed out is dropped and counted as late") {
  TestBus tb("late", {}, /*dispatch=*/false);
  Link holdB;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", heldHandler("GetDashboardData", holdB));
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    auto r = w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 100ms}).get();
    childCheck(r.code() == ErrorCode::Timeout, r.error().toString());
    toA.tellParent("timed-out");
    toA.hearParent();
    // The late reply never surfaces: the next call gets its own answer.
    childCheck(replyText(w->invokeIn("dashboard", "GetDashboardData"), "next") == "real", "next reply");
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go();
  CHECK(holdB.hearChild() == "in-handler");
  CHECK(toA.hearChild() == "timed-out");
  holdB.tellChild("reply");
  REQUIRE(awaitCondition([&] { return tb->stats().lateReplies >= 1; }, 10s));
  const RouterStats s = tb->stats();
  CHECK(s.lateReplies == 1);
  CHECK(s.spoofedReplies == 0);
  const auto* ch = channelStats(s, "GetDashboardData");
  REQUIRE(ch != nullptr);
  CHECK(ch->lateReplies == 1);
  CHECK(ch->errors.at("Timeout") == 1);
  toA.tellChild("go");
  CHECK(a.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("a call cycle A→B→A→... completes by re-entrant dispatch, with or without a dispatch thread") {
  TestBus tb("cycle", {}, /*dispatch=*/false);
  auto bouncer = [](Window& w, const char* other) {
    // bounce(n): 0 ends the cycle; otherwise the other window is asked for n - 1 (from inside
    // this handler, so each hop waits on its dispatch thread), and the answer grows by one.
    return w.handle("bounce", textHandler([&w, other](const std::string& n, const CallContext&) {
      if (n == "0") return std::string("0");
      const std::string inner = replyText(w.invokeIn(other, "bounce", text(std::to_string(std::stoi(n) - 1))),
                                          "bounce to " + std::string(other));
      return std::to_string(std::stoi(inner) + 1);
    }));
  };
  ServedWindow beta(ServedWindow::deferred, tb, "beta",
                    [&](Window& w, auto& regs) { regs.push_back(bouncer(w, "alpha")); });
  // One alpha per mode, forked before the dispatch thread runs; each connects once released.
  auto alpha = [&](bool dispatchThread) {
    return std::make_unique<GatedChild>([&, dispatchThread] {
      auto w = connectWindow(tb.bus, "alpha");
      auto h = bouncer(*w, "beta");
      // Without a dispatch thread, the blocked get() below is what dispatches the inner hops.
      if (dispatchThread) w->startDispatchThread();
      childCheck(replyText(w->invokeIn("beta", "bounce", text("9"), {.timeout = 5000ms}), "cycle") == "9",
                 "ten hops");
    });
  };
  std::vector<std::pair<bool, std::unique_ptr<GatedChild>>> alphas;
  for (const bool dispatchThread : {true, false}) alphas.emplace_back(dispatchThread, alpha(dispatchThread));
  tb->startDispatchThread();
  beta.start();
  for (auto& [dispatchThread, a] : alphas) {
    CAPTURE(dispatchThread);
    a->go();
    CHECK(a->join(20s) == 0);
  }
  CHECK(beta.finish() == 0);
}

TEST_CASE("a cycle whose return leg cannot be dispatched ends in Timeout, never a deadlock") {
  TestBus tb("cycle-timeout", {}, /*dispatch=*/false);
  ServedWindow beta(ServedWindow::deferred, tb, "beta", [](Window& w, auto& regs) {
    regs.push_back(w.handle("ping", textHandler([&w](const std::string&, const CallContext&) {
      auto r = w.invokeIn("alpha", "pong", {}, {.timeout = 150ms}).get();
      return r.ok() ? std::string("pong") : std::string(errorCodeName(r.code()));
    })));
  });
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "alpha");
    // The dispatch thread runs "pong", which needs the lock the calling thread holds while it
    // waits for "ping": the return leg can never run until the caller gives up.
    std::mutex m;
    std::unique_lock held(m);
    auto h = w->handle("pong", textHandler([&](const std::string&, const CallContext&) {
      std::lock_guard lk(m);
      return std::string("pong");
    }));
    w->startDispatchThread();
    const std::int64_t t0 = nowNs();
    auto r = w->invokeIn("beta", "ping", {}, {.timeout = 300ms}).get();
    const double ms = msSince(t0);
    held.unlock();
    childCheck(r.code() == ErrorCode::Timeout, "ping: " + r.error().toString());
    childCheck(ms >= 300 && ms < 1000, "timed out after " + std::to_string(ms) + " ms");
    toA.tellParent(std::to_string(ms));
    // Once the lock is free everything flows again.
    childCheck(replyText(w->invokeIn("beta", "ping", {}, {.timeout = 2000ms}), "ping again") == "pong", "pong");
  });
  tb->startDispatchThread();
  beta.start();
  a.go();
  MESSAGE("the blocked caller gave up after " << toA.hearChild() << " ms");
  CHECK(a.join(20s) == 0);
  CHECK(beta.finish() == 0);
}

TEST_CASE("a main → window → main cycle whose main handler is stuck ends in Timeout at the inner deadline") {
  TestBus tb("cycle-main", {}, /*dispatch=*/false);
  // main's "pong" handler needs the lock the test thread holds while it waits for "ping". Main
  // handlers run off the router, so the router still enforces the inner call's 150 ms deadline:
  // beta's call to "pong" times out there and beta answers "ping" with what it got, long before
  // the outer 300 ms deadline. (Before handlers ran off the router, the stuck handler held up
  // routing and the outer call timed out instead.)
  std::mutex m;
  auto pong = tb->handle("pong", textHandler([&](const std::string&, const CallContext&) {
    std::lock_guard lk(m);
    return std::string("pong");
  }));
  ServedWindow beta(ServedWindow::deferred, tb, "beta", [](Window& w, auto& regs) {
    regs.push_back(w.handle("ping", textHandler([&w](const std::string&, const CallContext&) {
      auto r = w.invoke("pong", {}, {.timeout = 150ms}).get();
      return r.ok() ? textOf(*r) : std::string(errorCodeName(r.code()));
    })));
  });
  tb->startDispatchThread();
  beta.start();
  {
    std::unique_lock held(m);
    const std::int64_t t0 = nowNs();
    auto r = tb->invoke("beta", "ping", {}, {.timeout = 300ms}).get();
    const double ms = msSince(t0);
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    CHECK(textOf(*r) == "Timeout");
    MESSAGE("beta's call to the stuck main handler timed out; main heard back after " << ms << " ms");
    CHECK(ms >= 150);
    CHECK(ms < 300);
  }
  auto r = tb->invoke("beta", "ping", {}, {.timeout = 2000ms}).get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "pong");
  CHECK(beta.finish() == 0);
}

TEST_CASE("a stuck target delays no calls between other windows; stats show the pending call and counters") {
  TestBus tb("stuck", {}, /*dispatch=*/false);
  Link holdB;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", heldHandler("GetDashboardData", holdB));
  ServedWindow settings(ServedWindow::deferred, tb, "settings", [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetWindowState", replyWith("state")));
  });
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    auto round = [&] {
      std::vector<double> ms;
      for (int i = 0; i < 200; ++i) {
        const std::int64_t t0 = nowNs();
        childCheck(replyText(w->invokeIn("settings", "GetWindowState"), "call") == "state", "state");
        ms.push_back(msSince(t0));
      }
      return spreadOf(ms);
    };
    const Spread before = round();
    Call stuck = w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 20000ms});
    toA.tellParent(std::to_string(w->id()));
    toA.hearParent();  // the target is stuck in its handler now
    const Spread during = round();
    toA.tellParent(std::to_string(before.median) + " " + std::to_string(during.median) + " " +
                   std::to_string(during.max));
    toA.hearParent();
    childCheck(replyText(stuck, "the stuck call") == "real", "answered once free");
  });
  tb->startDispatchThread();
  dashboard.start();
  const std::uint32_t bId = dashboard.id();
  settings.start();
  a.go();
  const std::uint32_t aId = static_cast<std::uint32_t>(std::stoul(toA.hearChild()));
  CHECK(holdB.hearChild() == "in-handler");
  // The router's view of the stuck call.
  const RouterStats s = tb->stats();
  REQUIRE(s.pending.size() == 1);
  CHECK(s.pending[0].channel == "GetDashboardData");
  CHECK(s.pending[0].sourceId == aId);
  CHECK(s.pending[0].sourceRole == "editor");
  CHECK(s.pending[0].targetId == bId);
  CHECK(s.pending[0].targetRole == "dashboard");
  CHECK(s.pending[0].waitingMs >= 0);
  toA.tellChild("go");
  const auto report = words(toA.hearChild(30s));
  REQUIRE(report.size() == 3);
  MESSAGE("calls to another window: median " << report[0] << " ms before, " << report[1]
                                             << " ms while a target is stuck (max " << report[2] << " ms)");
  CHECK(std::stod(report[2]) < 500);
  holdB.tellChild("reply");
  toA.tellChild("finish");
  CHECK(a.join(10s) == 0);
  const RouterStats after = tb->stats();
  CHECK(after.pending.empty());
  const auto* state = channelStats(after, "GetWindowState");
  REQUIRE(state != nullptr);
  CHECK(state->calls == 400);
  CHECK(state->errors.empty());
  CHECK(state->p50Ms > 0);
  CHECK(state->p99Ms >= state->p50Ms);
  const auto* dash = channelStats(after, "GetDashboardData");
  REQUIRE(dash != nullptr);
  CHECK(dash->calls == 1);
  CHECK(dash->p50Ms >= 0);
  CHECK(dashboard.finish() == 0);
  CHECK(settings.finish() == 0);
}
