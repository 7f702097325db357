// Main-process callbacks run off the router (docs/architecture.md, "Main lane"): a main handler or
// listener that blocks delays no routed call, no deadline and no registration. Each test proves
// it by the order of events: the blocked callback is released only after what it must not delay
// has completed, so a router that waited for it would deadlock the test (and fail it by timeout).
#include <condition_variable>
#include <mutex>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

/// A gate a main callback blocks on until the test opens it (at most `limit`).
class Gate {
 public:
  void enter() {
    std::unique_lock lk(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait_for(lk, 20s, [&] { return open_; });
  }
  void awaitEntered() {
    std::unique_lock lk(mu_);
    REQUIRE(cv_.wait_for(lk, 10s, [&] { return entered_; }));
  }
  void open() {
    std::lock_guard lk(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool isOpen() {
    std::lock_guard lk(mu_);
    return open_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false, open_ = false;
};

}  // namespace

TEST_CASE("a busy main handler delays no routed call, and a window→main call past its deadline times out at it") {
  TestBus tb("lane-busy", {}, /*dispatch=*/false);
  Gate gate;
  auto slow = tb->handle("slow", [&](const Message&, Builder&, const CallContext&) { gate.enter(); });
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    regs.push_back(w.handle("echo", echoHandler()));
  });
  Link toA, toB;
  // A calls the slow main handler (it stays busy until the test opens the gate), then a second
  // call with a 50 ms deadline that must time out at its deadline, not when the handler returns.
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    Call first = w->invoke("slow", {}, {.timeout = 30000ms});
    toA.hearParent(20s);  // the handler is busy now
    const std::int64_t t0 = nowNs();
    auto r = w->invoke("slow", {}, {.timeout = 50ms}).get();
    toA.tellParent(std::string(errorCodeName(r.code())) + " " + std::to_string(msSince(t0)));
    childCheck(first.get().ok(), "the first call completes once the handler returns");
  });
  // B calls the dashboard through the router while main's handler is busy.
  GatedChild b([&] {
    auto w = connectWindow(tb.bus, "settings");
    toB.hearParent(20s);
    std::vector<double> ms;
    for (int i = 0; i < 100; ++i) {
      const std::int64_t t0 = nowNs();
      childCheck(replyText(w->invokeIn("dashboard", "echo", text("x"), {.timeout = 5000ms}), "routed") == "x", "echo");
      ms.push_back(msSince(t0));
    }
    const Spread s = spreadOf(ms);
    toB.tellParent(std::to_string(s.median) + " " + std::to_string(s.max));
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go();
  gate.awaitEntered();
  b.go();
  toB.tellChild("go");
  // The handler is still blocked: every one of B's 100 routed calls completed meanwhile.
  const auto routed = words(toB.hearChild(20s));
  CHECK_FALSE(gate.isOpen());
  MESSAGE("routed window→window calls while a main handler was busy: median " << routed.at(0) << " ms, max "
                                                                               << routed.at(1) << " ms");
  toA.tellChild("go");
  const auto timed = words(toA.hearChild(20s));
  CHECK_FALSE(gate.isOpen());  // the Timeout came while the handler still ran
  CHECK(timed.at(0) == "Timeout");
  MESSAGE("a window→main call with a 50 ms deadline failed after " << timed.at(1) << " ms while the handler ran");
  CHECK(std::stod(timed.at(1)) >= 50);
  gate.open();
  CHECK(a.join(20s) == 0);
  CHECK(b.join(20s) == 0);
  CHECK(dashboard.finish() == 0);
  const RouterStats s = tb->stats();
  CHECK(s.lateReplies >= 1);  // the handler's answer to the timed-out call came late and was dropped
}

TEST_CASE("a blocked window-closed listener stops no registration and no routed call while windows churn") {
  TestBus tb("lane-churn", {}, /*dispatch=*/false);
  Gate gate;
  std::atomic<int> closes{0};
  auto closed = tb->on("window-closed", [&](const Message&, const CallContext&) {
    if (closes.fetch_add(1) == 0) gate.enter();  // the first close blocks (an application's full stdout)
  });
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    regs.push_back(w.handle("echo", echoHandler()));
  });
  Link toCaller, toChurn;
  GatedChild caller([&] {
    auto w = connectWindow(tb.bus, "editor");
    long calls = 0, failed = 0;
    std::string first;
    while (!toCaller.parentSpoke()) {
      auto r = w->invokeIn("dashboard", "echo", text("x"), {.timeout = 1000ms}).get();
      ++calls;
      if (!r) {
        ++failed;
        if (first.empty()) first = r.error().toString();
      }
    }
    toCaller.tellParent(std::to_string(calls) + " " + std::to_string(failed) + " " + first);
  });
  constexpr int kChurn = 50;
  GatedChild churn([&] {
    for (int i = 0; i < kChurn; ++i) {
      auto w = connectWindow(tb.bus, "worker");  // a Welcome needs the router, not the listener
      childCheck(w->invoke("missing").get().code() == ErrorCode::NoHandler, "a call from a fresh window");
    }
    toChurn.tellParent("done");
  });
  tb->startDispatchThread();
  dashboard.start();
  caller.go();
  churn.go();
  gate.awaitEntered();
  CHECK(toChurn.hearChild(30s) == "done");  // 50 windows opened and closed while the listener blocked
  CHECK_FALSE(gate.isOpen());
  toCaller.tellChild("stop");
  const std::string report = toCaller.hearChild(20s);
  const auto r = words(report);
  MESSAGE("routed calls while the listener blocked: " << report);
  CHECK(std::stol(r.at(0)) > 0);
  CHECK(r.at(1) == "0");
  gate.open();
  CHECK(churn.join(10s) == 0);
  CHECK(caller.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
  CHECK(awaitCondition([&] { return closes.load() >= kChurn; }, 10s));  // every close was heard, late
}
