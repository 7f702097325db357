// One-way messages that cannot be delivered come back to their sender (Window::onSendFailed):
// a send to a role or id with no window (NoTarget), one denied by policy (Denied), one into a
// target's full inbox (Full). No one-way message is lost silently: every send is either heard by
// its target or reported to its sender, and a sender without a listener logs it.
#include <doctest/doctest.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// "<channel> <CodeName> <message>" of a failure.
std::string describe(const SendFailure& f) {
  return f.channel + " " + errorCodeName(f.error.code) + " " + f.error.message;
}

/// In a child: a round trip the supervisor handles after everything this window sent before it
/// (one ordered outbox), and whose reply follows any failure report in the inbox: when it
/// returns, the reports of earlier sends have reached the listeners.
void roundTrip(Window& w) {
  childCheck(w.invoke("sync").get().code() == ErrorCode::NoHandler, "round trip to main");
}

}  // namespace

TEST_CASE("a send to no live window or denied by policy is reported to the sender with NoTarget or Denied") {
  TestBus tb("oneway-fail", {}, /*dispatch=*/false);
  tb->setPolicy("set-title", {.callers = {"main-window"}});
  Link link;
  Child a = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    Inbox failures;
    auto reg = w->onSendFailed([&](const SendFailure& f) { failures.add(describe(f)); });
    w->startDispatchThread();
    expectOk(w->sendTo("dashboard", "UpdateChart", text("by role")), "sendTo by role is written");
    expectOk(w->sendTo(Target(4242u), "UpdateChart", text("by id")), "sendTo by id is written");
    expectOk(w->send("set-title", text("t")), "a denied send is written; the supervisor reports it");
    roundTrip(*w);
    link.tellParent(failures.await(3));
  });
  tb->startDispatchThread();
  const std::string got = link.hearChild();
  CHECK(a.join(10s) == 0);
  INFO(got);
  CHECK(got.find("UpdateChart NoTarget send 'UpdateChart' from role 'editor'") != std::string::npos);
  CHECK(got.find("no live window with role 'dashboard'") != std::string::npos);
  CHECK(got.find("no live window with window 4242") != std::string::npos);
  CHECK(got.find("set-title Denied send 'set-title' from role 'editor'") != std::string::npos);
  CHECK(got.find("denied by policy") != std::string::npos);
  CHECK(tb->stats().undeliverable == 3);
}

TEST_CASE("sends into a full inbox are reported Full, and every other send is heard: none is lost") {
  TestBus tb("oneway-full", {}, /*dispatch=*/false);
  // The dashboard connects with a 4 KiB inbox and does not read it until the parent says so.
  Link dash;
  GatedChild dashboard([&] {
    auto w = connectWindow(tb.bus, "dashboard", {.inboxBytes = 4096});
    Inbox heard;
    // The number of each message, checked for its 600-byte pad (the report must fit one Link
    // message: with direct routes the route's ring buffers as much again as the inbox).
    auto reg = w->on("UpdateChart", [&](const Message& m, const CallContext&) {
      const std::string t = textOf(m);
      const auto pad = t.find('x');
      const bool padded = pad != std::string::npos && t.size() - pad == 600 &&
                          t.find_first_not_of('x', pad) == std::string::npos;
      heard.add(pad == std::string::npos ? t : padded ? t.substr(0, pad) : "BAD PAD " + t.substr(0, pad));
    });
    dash.tellParent("connected");
    const std::size_t expected = std::stoul(dash.hearParent(30s));
    w->startDispatchThread();
    dash.tellParent(heard.await(expected));
  });
  Link link;
  Child editor = Child::fork([&] {
    link.hearParent(30s);
    auto w = connectWindow(tb.bus, "editor");
    Inbox failures;
    auto reg = w->onSendFailed([&](const SendFailure& f) { failures.add(describe(f)); });
    w->startDispatchThread();
    const std::string pad(600, 'x');
    int sent = 0;
    while (failures.size() == 0 && sent < 64) {
      expectOk(w->sendTo("dashboard", "UpdateChart", text(std::to_string(sent) + pad)), "sendTo");
      ++sent;
      roundTrip(*w);
    }
    childCheck(failures.size() == 1, "64 sends of 600 bytes into a 4 KiB inbox never came back Full");
    link.tellParent(std::to_string(sent) + " " + failures.await(1));
  });
  tb->startDispatchThread();
  dashboard.go();
  CHECK(dash.hearChild() == "connected");
  link.tellChild("go");
  const auto report = words(link.hearChild(30s));
  CHECK(editor.join(10s) == 0);
  REQUIRE(report.size() > 4);
  const int sent = std::stoi(report[0]);
  CHECK(report[1] == "UpdateChart");
  CHECK(report[2] == "Full");
  MESSAGE("the dashboard (its inbox, and the route from the editor) took " << sent - 1 << " sends of 600 B; send "
                                                                           << sent << " was reported Full");
  // Every send but the reported one reaches the dashboard, in order, and nothing else: a push
  // from main written after all of them (the router handled every send before the editor's last
  // round trip returned) must come right after them. The main push is not reported to anyone:
  // Supervisor::send returns Full itself.
  dash.tellChild(std::to_string(sent));
  Result<void> pushed = tb->send("dashboard", "UpdateChart", text("end"));
  while (pushed.code() == ErrorCode::Full) {  // until the dashboard, now reading, makes room
    std::this_thread::yield();
    pushed = tb->send("dashboard", "UpdateChart", text("end"));
  }
  REQUIRE(pushed.ok());
  const std::string all = dash.hearChild(30s);
  std::string expected;
  for (int i = 0; i + 1 < sent; ++i) expected += std::to_string(i) + ",";
  CHECK(all == expected + "end");
  CHECK(dashboard.join(10s) == 0);
  CHECK(tb->stats().undeliverable == 1);
}

TEST_CASE("a sender without an onSendFailed listener logs the undelivered message at Warn") {
  TestBus tb("oneway-log", {}, /*dispatch=*/false);
  Link link;
  Child a = Child::fork([&] {
    Inbox logged;
    setLogSink([&](const LogRecord& r) {
      if (r.level == LogLevel::Warn && r.component == "window") logged.add(std::string(r.text));
    });
    auto w = connectWindow(tb.bus, "editor");
    w->startDispatchThread();
    expectOk(w->sendTo("nobody", "UpdateChart", text("x")), "sendTo");
    roundTrip(*w);
    link.tellParent(logged.await(1));
    w.reset();
    setLogSink({});
  });
  tb->startDispatchThread();
  const std::string got = link.hearChild();
  CHECK(a.join(10s) == 0);
  CHECK(got.find("a one-way message was not delivered: NoTarget: send 'UpdateChart'") == 0);
  CHECK(got.find("role 'nobody'") != std::string::npos);
}
