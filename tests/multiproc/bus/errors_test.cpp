// Every error of docs/architecture.md §3 across real processes, with its code, a message naming the channel
// and the target, and its timing: fail-fast errors arrive in well under the call's timeout.
#include <doctest/doctest.h>

#include <future>
#include <optional>

#include <kj/debug.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = 4000ms;

/// A call's result and how long it took, measured in the process that made it.
struct Timed {
  Result<Message> result;
  double ms;
};
Timed timed(const std::function<Call()>& start) {
  const std::int64_t t0 = nowNs();
  auto r = start().get();
  return {std::move(r), msSince(t0)};
}

/// In a child: checks the code, that the message names every part in `names`, and that a
/// fail-fast error came before the call's timeout would have fired (not a time budget: a
/// sanitizer build on a loaded 2-vCPU machine once took over half of it). Returns "code ms" for
/// the parent's report.
std::string expectError(const Timed& t, ErrorCode code, const std::vector<std::string>& names, bool fast) {
  childCheck(!t.result.ok(), "expected " + std::string(errorCodeName(code)) + ", the call succeeded");
  const Error& e = t.result.error();
  childCheck(e.code == code, "expected " + std::string(errorCodeName(code)) + ", got " + e.toString());
  for (const auto& n : names) childCheck(e.message.find(n) != std::string::npos, "'" + e.message + "' lacks " + n);
  if (fast) {
    childCheck(t.ms < std::chrono::duration<double, std::milli>(kTimeout).count(),
               e.toString() + " took " + std::to_string(t.ms) + " ms");
  }
  return std::string(errorCodeName(code)) + " " + std::to_string(t.ms);
}

/// Typed channels (ids from methodChannelId, not from their names).
const Channel kTypedHang(methodChannelId(0x9a7b3c, 0), "Studio.hang");
const Channel kTypedMissing(methodChannelId(0x9a7b3c, 1), "Studio.missing");

/// Thrown by a window handler: the caller must see this type's name, message and a stack.
struct ChartError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

TEST_CASE("calls to a role or window id with no live window fail fast with NoTarget") {
  TestBus tb("no-target", {}, /*dispatch=*/false);
  Link link;
  Child a = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    std::string out;
    out += expectError(timed([&] { return w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = kTimeout}); }),
                       ErrorCode::NoTarget, {"GetDashboardData", "role 'dashboard'"}, true);
    out += " " + expectError(timed([&] {
                               return w->invokeIn(Target(4242u), "GetDashboardData", {}, {.timeout = kTimeout});
                             }),
                             ErrorCode::NoTarget, {"GetDashboardData", "window 4242"}, true);
    link.tellParent(out);
  });
  tb->startDispatchThread();
  const auto report = words(link.hearChild());
  CHECK(a.join(10s) == 0);
  REQUIRE(report.size() == 4);
  MESSAGE("NoTarget by role after " << report[1] << " ms, by id after " << report[3] << " ms (timeout "
                                    << kTimeout.count() << " ms)");
  const std::int64_t t0 = nowNs();
  auto r = tb->invoke("dashboard", "GetDashboardData", {}, {.timeout = kTimeout}).get();
  CHECK(r.code() == ErrorCode::NoTarget);
  CHECK(r.error().message.find("role 'dashboard'") != std::string::npos);
  CHECK(msSince(t0) < kTimeout.count() / 2);
  CHECK(tb->send(Target(4242u), "counter").code() == ErrorCode::NoTarget);
}

TEST_CASE("calls to a target without a handler for the channel fail fast with NoHandler") {
  TestBus tb("no-handler", {}, /*dispatch=*/false);
  ServedWindow settings(ServedWindow::deferred, tb, "settings", nullptr);
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    std::string out;
    out += expectError(timed([&] { return w->invokeIn("settings", "GetWindowState", {}, {.timeout = kTimeout}); }),
                       ErrorCode::NoHandler, {"GetWindowState", "settings"}, true);
    out += " " + expectError(timed([&] { return w->invoke("GetWindowState", {}, {.timeout = kTimeout}); }),
                             ErrorCode::NoHandler, {"GetWindowState", "main"}, true);
    link.tellParent(out);
  });
  tb->startDispatchThread();
  settings.start();
  a.go();
  const auto report = words(link.hearChild());
  CHECK(a.join(10s) == 0);
  REQUIRE(report.size() == 4);
  MESSAGE("NoHandler routed after " << report[1] << " ms, to main after " << report[3] << " ms (timeout "
                                    << kTimeout.count() << " ms)");
  const std::int64_t t0 = nowNs();
  auto r = tb->invoke("settings", "GetWindowState", {}, {.timeout = kTimeout}).get();
  CHECK(r.code() == ErrorCode::NoHandler);
  CHECK(r.error().message.find("GetWindowState") != std::string::npos);
  CHECK(msSince(t0) < kTimeout.count() / 2);
  CHECK(settings.finish() == 0);
}

TEST_CASE("a target that exits before replying fails the call with TargetGone") {
  TestBus tb("target-gone", {}, /*dispatch=*/false);
  const ServedWindow::Setup exitInHandler = [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetDashboardData", [](const Message&, Builder&, const CallContext&) { std::_Exit(0); }));
  };
  ServedWindow b(ServedWindow::deferred, tb, "dashboard", exitInHandler);
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    const Timed t = timed([&] { return w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = kTimeout}); });
    link.tellParent(expectError(t, ErrorCode::TargetGone, {"GetDashboardData", "dashboard"}, true));
  });
  ServedWindow b2(ServedWindow::deferred, tb, "dashboard", exitInHandler);  // connects once b is gone
  tb->startDispatchThread();
  b.start();
  a.go();
  MESSAGE("routed TargetGone after " << words(link.hearChild())[1] << " ms");
  CHECK(a.join(10s) == 0);
  CHECK(b.finish() == 0);

  b2.start();
  auto r = tb->invoke("dashboard", "GetDashboardData", {}, {.timeout = kTimeout}).get();
  CHECK(r.code() == ErrorCode::TargetGone);
  CHECK(r.error().message.find("GetDashboardData") != std::string::npos);
  CHECK(b2.finish() == 0);
}

TEST_CASE("a handler that throws fails the call with HandlerError carrying the remote type, message and stack") {
  TestBus tb("handler-error", {}, /*dispatch=*/false);
  auto h = tb->handle("open-file", [](const Message&, Builder&, const CallContext&) {
    throw std::invalid_argument("no such file: /nope");
  });
  ServedWindow editor(ServedWindow::deferred, tb, "editor", [](Window& w, auto& regs) {
    regs.push_back(w.handle("UpdateChart", [](const Message& req, Builder&, const CallContext&) {
      throw ChartError("unknown chart id " + textOf(req));
    }));
    regs.push_back(w.handle("kj", [](const Message&, Builder&, const CallContext&) { KJ_FAIL_REQUIRE("kj says no"); }));
  });
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "dashboard");
    auto r = w->invokeIn("editor", "UpdateChart", text("42")).get();
    childCheck(r.code() == ErrorCode::HandlerError, "routed: " + r.error().toString());
    const Error e = r.error();  // a copy: r is reused below
    childCheck(e.remoteType.find("ChartError") != std::string::npos, "remote type " + e.remoteType);
    childCheck(e.remoteMessage == "unknown chart id 42", "remote message " + e.remoteMessage);
    childCheck(!e.remoteStack.empty(), "remote stack");
    childCheck(e.message.find("UpdateChart") != std::string::npos && e.message.find("editor") != std::string::npos,
               "message " + e.message);
    r = w->invokeIn("editor", "kj").get();
    childCheck(r.code() == ErrorCode::HandlerError && r.error().remoteType == "kj::Exception" &&
                   r.error().remoteMessage.find("kj says no") != std::string::npos,
               "kj: " + r.error().toString());
    childCheck(r.error().remoteStack.find("errors_test.cpp:") != std::string::npos,
               "a kj::Exception's stack starts at its throw site: " + r.error().remoteStack);
    r = w->invoke("open-file", text("/nope")).get();
    childCheck(r.code() == ErrorCode::HandlerError, "to main: " + r.error().toString());
    childCheck(r.error().remoteType == "std::invalid_argument", "main's remote type " + r.error().remoteType);
    childCheck(r.error().remoteMessage == "no such file: /nope", "main's remote message");
    childCheck(r.error().message.find("open-file") != std::string::npos, "message " + r.error().message);
    link.tellParent(e.remoteType + "\n" + e.remoteStack.substr(0, 600));
  });
  tb->startDispatchThread();
  editor.start();
  a.go();
  MESSAGE("remote type and stack: " << link.hearChild());
  CHECK(a.join(10s) == 0);
  auto r = tb->invoke("editor", "UpdateChart", text("7")).get();
  CHECK(r.code() == ErrorCode::HandlerError);
  CHECK(r.error().remoteMessage == "unknown chart id 7");
  CHECK(editor.finish() == 0);
}

TEST_CASE("a channel policy denies sends and calls from other roles with Denied") {
  TestBus tb("denied", {}, /*dispatch=*/false);
  tb->setPolicy("set-title", {.callers = {"main-window"}});
  tb->setPolicy("GetWindowState", {.callers = {"main-window"}});
  auto h = tb->handle("set-title", replyWith("ok"));
  std::atomic<int> titles{0};
  auto l = tb->on("set-title", [&](const Message&, const CallContext&) { ++titles; });
  ServedWindow settings(ServedWindow::deferred, tb, "settings", [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetWindowState", replyWith("state")));
  });
  auto caller = [&](const char* role, bool allowed) {
    return std::make_unique<GatedChild>([&tb, role, allowed] {
      auto w = connectWindow(tb.bus, role);
      for (auto call : {std::function<Call()>([&] { return w->invoke("set-title", text("t")); }),
                        std::function<Call()>([&] { return w->invokeIn("settings", "GetWindowState"); })}) {
        const Timed t = timed(call);
        if (allowed) {
          expectOk(t.result, std::string(role) + " is allowed");
        } else {
          expectError(t, ErrorCode::Denied, {"denied"}, true);
        }
      }
      expectOk(w->send("set-title", text("t")), "a denied send is dropped by the supervisor, not refused locally");
      // A round trip the supervisor handles after the send: the send was processed by then.
      childCheck(w->invoke("sync").get().code() == ErrorCode::NoHandler, "round trip");
    });
  };
  // Both forked before the dispatch thread runs; each connects once released.
  auto intruder = caller("editor", false);
  auto owner = caller("main-window", true);
  tb->startDispatchThread();
  settings.start();
  intruder->go();
  CHECK(intruder->join(10s) == 0);
  owner->go();
  CHECK(owner->join(10s) == 0);
  CHECK(titles.load() == 1);  // only main-window's send got through
  const RouterStats s = tb->stats();
  for (const auto& c : s.channels) {
    if (c.channel == "set-title" || c.channel == "GetWindowState") CHECK(c.errors.at("Denied") >= 1);
  }
  CHECK(settings.finish() == 0);
}

TEST_CASE("a window may connect by path only with a role the supervisor allows, and never as main") {
  TestBus tb("allowed-roles", {.allowedRoles = {"editor", "main"}}, /*dispatch=*/false);
  Child child = Child::fork([&] {
    WindowOptions o;
    o.bus = tb.bus;
    o.role = "editor";
    expectOk(Window::connect(o), "an allowed role");
    o.role = "intruder";
    auto r = Window::connect(o);
    childCheck(r.code() == ErrorCode::Denied, "a role not allowed: " + r.error().toString());
    childCheck(r.error().message.find("intruder") != std::string::npos, "the message names the role");
    o.role = "main";  // the main process's name: a window claiming it would pass for the supervisor
    r = Window::connect(o);
    childCheck(r.code() == ErrorCode::Denied, "role main: " + r.error().toString());
  });
  tb->startDispatchThread();
  CHECK(child.join(10s) == 0);
  CHECK(tb->windows().empty());
}

TEST_CASE("a target whose inbox is full makes the call fail fast with Full, and others are not delayed") {
  TestBus tb("full", {}, /*dispatch=*/false);
  Mailbox stuck(*tb.sup, "stuck");
  Link holdB;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [&](Window& w, auto& regs) {
    regs.push_back(w.handle("GetDashboardData", [&w, &holdB, first = true](const Message&, Builder&,
                                                                          const CallContext&) mutable {
      if (!std::exchange(first, false)) return;
      (void)w.send("stuck");
      holdB.hearParent(30s);  // stuck until the parent lets go
    }));
  }, {.inboxBytes = 4096});
  ServedWindow settings(ServedWindow::deferred, tb, "settings", [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetWindowState", replyWith("state")));
  });
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    std::vector<Call> calls;
    calls.push_back(w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 20000ms}));
    link.hearParent();  // the target is stuck in its handler now
    const std::string blob(600, 'x');
    std::string full;
    for (int i = 0; i < 64 && full.empty(); ++i) {
      const std::int64_t t0 = nowNs();
      Call call = w->invokeIn("dashboard", "GetDashboardData", text(blob), {.timeout = 20000ms});
      calls.push_back(call);
      // A call that found room stays pending (the target is stuck); a Full answer is written to
      // our inbox at once. A round trip to another window, which the supervisor handles after
      // it, tells which.
      childCheck(replyText(w->invokeIn("settings", "GetWindowState"), "round trip") == "state", "state");
      if (call.ready()) {
        full = expectError(Timed{call.get(), msSince(t0)}, ErrorCode::Full, {"GetDashboardData", "dashboard", "full"},
                           true);
      }
    }
    childCheck(!full.empty(), "64 calls of 600 bytes into a 4 KiB inbox never came back Full");
    // The stuck target does not delay calls between the other windows.
    std::vector<double> ms;
    for (int i = 0; i < 50; ++i) {
      const std::int64_t t0 = nowNs();
      childCheck(replyText(w->invokeIn("settings", "GetWindowState"), "call to settings") == "state", "state");
      ms.push_back(msSince(t0));
    }
    const Spread s = spreadOf(ms);
    link.tellParent(full + " " + std::to_string(s.median) + " " + std::to_string(s.max));
    link.hearParent();
    for (auto& call : calls) (void)call.get();  // answered or failed once the target is free
  });
  tb->startDispatchThread();
  dashboard.start();
  settings.start();
  a.go();
  stuck.next();
  link.tellChild("stuck");
  const auto report = words(link.hearChild(30s));
  REQUIRE(report.size() == 4);
  MESSAGE("Full after " << report[1] << " ms; calls to another window meanwhile: median " << report[2]
                        << " ms, max " << report[3] << " ms");
  CHECK(std::stod(report[3]) < 1000);
  // The supervisor's own push to the full inbox fails with Full too.
  Result<void> push;
  for (int i = 0; i < 64 && push.ok(); ++i) push = tb->send("dashboard", "counter", text(std::string(600, 'y')));
  CHECK(push.code() == ErrorCode::Full);
  holdB.tellChild("go");
  link.tellChild("finish");
  CHECK(a.join(30s) == 0);
  CHECK(dashboard.finish() == 0);
  CHECK(settings.finish() == 0);
}

TEST_CASE("a reply that finds its caller's inbox full is held and delivered once the caller reads again: none is lost") {
  for (const bool routed : {false, true}) {
    CAPTURE(routed);
    TestBus tb(routed ? "held-routed" : "held-main", {}, /*dispatch=*/false);
    Mailbox stuck(*tb.sup, "stuck");
    std::promise<Responder> asked;
    auto ping = tb->handleAsync("ping", [&](const Message&, Responder r, const CallContext&) { asked.set_value(r); });
    Link serve, hold, link;
    // The routed case's target: tells the parent it has the call, and answers when told.
    ServedWindow server(ServedWindow::deferred, tb, "server", [&](Window& w, auto& regs) {
      regs.push_back(w.handle("ping", [&serve](const Message&, Builder& reply, const CallContext&) {
        serve.tellParent("serving");
        serve.hearParent(30s);
        reply.initRoot<TestMessage>().setText("pong");
      }));
    });
    // The caller: a 4 KiB inbox, and a dispatch thread held in a listener while the main process
    // fills that inbox; its call's reply then finds no room.
    GatedChild caller([&] {
      auto w = connectWindow(tb.bus, "caller", {.inboxBytes = 4096});
      std::atomic<int> fillers{0};
      auto block = w->on("block", [&](const Message&, const CallContext&) {
        (void)w->send("stuck");
        hold.hearParent(30s);  // held until the parent filled the inbox and answered the call
      });
      auto fill = w->on("filler", [&](const Message&, const CallContext&) {
        fillers.fetch_add(1, std::memory_order_relaxed);  // relaxed: read on this thread after the reply
      });
      w->startDispatchThread();
      link.tellParent("up");
      link.hearParent(30s);  // "call": the dispatch thread is held now
      Call call = routed ? w->invokeIn("server", "ping", {}, {.timeout = 20000ms}) : w->invoke("ping", {}, {.timeout = 20000ms});
      auto r = call.get();
      link.tellParent(r ? "result Ok " + textOf(*r) : "result " + r.error().toString());
      link.tellParent(std::to_string(fillers.load(std::memory_order_relaxed)));  // relaxed: as above
      link.hearParent(30s);
    });
    tb->startDispatchThread();
    server.start();
    caller.go();
    REQUIRE(link.hearChild(30s) == "up");
    REQUIRE(tb->send("caller", "block"));
    stuck.next();
    link.tellChild("call");
    std::optional<Responder> responder;
    if (routed) {
      REQUIRE(serve.hearChild(30s) == "serving");
    } else {
      responder = asked.get_future().get();
    }
    // Fill the caller's inbox: pushes of 600 B until one is refused.
    int pushed = 0;
    for (Result<void> r; pushed < 64; ++pushed) {
      r = tb->send("caller", "filler", text(std::string(600, 'f')));
      if (!r) {
        CHECK(r.code() == ErrorCode::Full);
        break;
      }
    }
    REQUIRE(pushed < 64);
    // The reply finds the inbox full: the supervisor holds it.
    if (routed) {
      serve.tellChild("reply");
    } else {
      REQUIRE(responder->reply(text("pong")));
    }
    hold.tellChild("go");  // the caller reads its inbox again
    CHECK(link.hearChild(30s) == "result Ok pong");
    CHECK(link.hearChild(30s) == std::to_string(pushed));  // and every push before it
    link.tellChild("done");
    CHECK(caller.join(30s) == 0);
    CHECK(server.finish() == 0);
  }
}

TEST_CASE("a message larger than the ring's maximum record and no blob arena fails with TooLarge before anything is written") {
  // Windows without blob arenas (docs/architecture.md §17): nowhere else a large message can go.
  TestBus tb("too-large", {.maxRecordBytes = 64 * 1024, .windowBlobBytes = 0}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  const std::string huge(100 * 1024, 'z');
  ServedWindow editor(ServedWindow::deferred, tb, "editor",
                      [](Window& w, auto& regs) { regs.push_back(w.handle("echo", echoHandler())); });
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "dashboard");
    expectError(timed([&] { return w->invoke("echo", text(huge)); }), ErrorCode::TooLarge, {"echo"}, true);
    expectError(timed([&] { return w->invokeIn("editor", "echo", text(huge)); }), ErrorCode::TooLarge, {"echo"}, true);
    childCheck(w->send("echo", text(huge)).code() == ErrorCode::TooLarge, "send");
    childCheck(w->sendTo("editor", "echo", text(huge)).code() == ErrorCode::TooLarge, "sendTo");
    // Nothing was written: the window goes on working.
    childCheck(replyText(w->invokeIn("editor", "echo", text("small")), "after TooLarge") == "small", "echo");
  });
  tb->startDispatchThread();
  editor.start();
  a.go();
  CHECK(a.join(10s) == 0);
  CHECK(tb->send("editor", "echo", text(huge)).code() == ErrorCode::TooLarge);
  CHECK(tb->invoke("editor", "echo", text(huge)).get().code() == ErrorCode::TooLarge);
  CHECK(tb->broadcast("echo", text(huge)).code() == ErrorCode::TooLarge);
  auto r = tb->invoke("editor", "echo", text("small")).get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "small");
  CHECK(editor.finish() == 0);
}

TEST_CASE("a request whose schema does not match the handler's fails with InvalidMessage") {
  TestBus tb("invalid", {}, /*dispatch=*/false);
  const Channel handled(nameId("typed"), "typed", 0x1111, 0);
  const Channel other(nameId("typed"), "typed", 0x2222, 0);
  auto h = tb->handle(handled, replyWith("ok"));
  ServedWindow editor(ServedWindow::deferred, tb, "editor",
                      [&](Window& w, auto& regs) { regs.push_back(w.handle(handled, replyWith("ok"))); });
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "dashboard");
    expectError(timed([&] { return w->invoke(other); }), ErrorCode::InvalidMessage, {"typed", "main"}, true);
    expectError(timed([&] { return w->invokeIn("editor", other); }), ErrorCode::InvalidMessage, {"typed"}, true);
    expectOk(w->invokeIn("editor", handled).get(), "the matching schema");
    // Reading a payload that is not there is InvalidMessage too.
    childCheck(Message().tryRoot<TestMessage>().code() == ErrorCode::InvalidMessage, "empty message");
  });
  tb->startDispatchThread();
  editor.start();
  a.go();
  CHECK(a.join(10s) == 0);
  CHECK(tb->invoke("editor", other).get().code() == ErrorCode::InvalidMessage);
  CHECK(editor.finish() == 0);
}

TEST_CASE("a call without a reply fails with Timeout naming the channel, the target and the milliseconds") {
  TestBus tb("timeout", {}, /*dispatch=*/false);
  tb->setChannelTimeout("slow-default", 150ms);
  // Handlers that return as soon as the deadline passes by their own clock: their replies race
  // the supervisor's timer and must lose all the same (a reply after the deadline is late).
  auto slowMain = tb->handle("slow-main", [](const Message&, Builder&, const CallContext& ctx) {
    awaitCondition([&] { return ctx.cancelled(); }, 10s);
  });
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    auto hang = [](const Message&, Builder&, const CallContext& ctx) {
      childCheck(awaitCondition([&] { return ctx.cancelled(); }, 10s), "the handler never saw the deadline pass");
    };
    for (const Channel& ch : {Channel("GetDashboardData"), Channel("slow-default"), kTypedHang}) {
      regs.push_back(w.handle(ch, hang));
    }
  });
  // The caller connects once the dashboard is registered; go() tells it the dashboard's id.
  Link link;
  GatedChild a([&](const std::string& bId) {
    auto w = connectWindow(tb.bus, "editor");
    const Timed t = timed([&] { return w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 200ms}); });
    expectError(t, ErrorCode::Timeout, {"'GetDashboardData'", "role 'dashboard'", "window " + bId, "200 ms"},
                false);
    childCheck(t.ms >= 200 && t.ms < 400, "timed out after " + std::to_string(t.ms) + " ms");
    // No timeout given: the channel's default from setChannelTimeout.
    const Timed d = timed([&] { return w->invokeIn("dashboard", "slow-default"); });
    expectError(d, ErrorCode::Timeout, {"'slow-default'", "150 ms"}, false);
    childCheck(d.ms >= 150 && d.ms < 350, "channel default timed out after " + std::to_string(d.ms) + " ms");
    // A typed channel's id does not hash from its name: the caller's own name for it is used.
    expectError(timed([&] { return w->invokeIn("dashboard", kTypedHang, {}, {.timeout = 100ms}); }), ErrorCode::Timeout,
                {"'Studio.hang'", "100 ms"}, false);
    expectError(timed([&] { return w->invokeIn("dashboard", kTypedMissing); }), ErrorCode::NoHandler,
                {"'Studio.missing'"}, true);
    // A main handler that outruns the deadline: the caller gets Timeout, not its late reply.
    expectError(timed([&] { return w->invoke("slow-main", {}, {.timeout = 50ms}); }), ErrorCode::Timeout,
                {"'slow-main'", "main", "50 ms"}, false);
    link.tellParent(t.result.error().message);
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go(std::to_string(dashboard.id()));
  MESSAGE(link.hearChild());
  CHECK(a.join(10s) == 0);
  const std::int64_t t0 = nowNs();
  auto r = tb->invoke("dashboard", "GetDashboardData", {}, {.timeout = 100ms}).get();
  CHECK(r.code() == ErrorCode::Timeout);
  CHECK(msSince(t0) >= 100);
  INFO(r.error().message);
  CHECK(r.error().message.find("100 ms") != std::string::npos);
  CHECK(r.error().message.find("GetDashboardData") != std::string::npos);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("when the supervisor stops, pending and later calls fail with BusClosed and run() returns") {
  TestBus tb("bus-closed", {}, /*dispatch=*/false);
  // The target registers first (the lower window id), so the supervisor disconnects it first: the
  // caller must still see BusClosed, not TargetGone.
  Child b = Child::fork([&] {
    auto w = connectWindow(tb.bus, "dashboard");
    auto h = w->handle("GetDashboardData", [&](const Message&, Builder&, const CallContext& ctx) {
      (void)w->send("started");
      awaitCondition([&] { return ctx.cancelled() || w->closed(); }, 10s);
    });
    expectOk(w->send("ready", text("dashboard")), "ready");
    w->run();  // returns when the supervisor goes
  });
  Mailbox started(*tb.sup, "started");
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    Call pending = w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 10000ms});
    link.tellParent("invoked");
    w->run();  // returns when the supervisor goes
    auto r = pending.get();
    childCheck(r.code() == ErrorCode::BusClosed, "pending: " + r.error().toString());
    childCheck(r.error().message.find("GetDashboardData") != std::string::npos, "names the channel");
    r = w->invoke("later").get();
    childCheck(r.code() == ErrorCode::BusClosed, "later: " + r.error().toString());
    childCheck(w->send("later").code() == ErrorCode::BusClosed, "send after");
    childCheck(w->poll(0ms).code() == ErrorCode::BusClosed, "poll after");
  });
  tb->startDispatchThread();
  tb.awaitReady("dashboard");
  a.go();  // connects after the dashboard: the higher window id
  link.hearChild();
  started.next();
  tb->stop();
  CHECK(a.join(10s) == 0);
  CHECK(b.join(10s) == 0);
  CHECK(tb->invoke("dashboard", "x").get().code() == ErrorCode::BusClosed);
  CHECK(tb->send("dashboard", "x").code() == ErrorCode::BusClosed);
}

TEST_CASE("a window's own close fails its pending and later calls with BusClosed and cancels them at the target") {
  TestBus tb("self-closed", {}, /*dispatch=*/false);
  Mailbox started(*tb.sup, "started"), sawCancel(*tb.sup, "saw-cancel");
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetDashboardData", [&w](const Message&, Builder&, const CallContext& ctx) {
      (void)w.send("started");
      (void)w.send("saw-cancel", text(awaitCondition([&] { return ctx.cancelled(); }, 8s) ? "yes" : "no"));
    }));
  });
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    Call pending = w->invokeIn("dashboard", "GetDashboardData", {}, {.timeout = 10000ms});
    link.hearParent();
    w->close();
    auto r = pending.get();
    childCheck(r.code() == ErrorCode::BusClosed, "pending: " + r.error().toString());
    childCheck(w->invoke("x").get().code() == ErrorCode::BusClosed, "later");
    childCheck(w->closed(), "closed()");
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go();
  started.next();
  link.tellChild("close");
  CHECK(a.join(10s) == 0);
  CHECK(sawCancel.next().text == "yes");
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("a cancelled call yields Cancelled and the target's handler sees ctx.cancelled() turn true") {
  TestBus tb("cancelled", {}, /*dispatch=*/false);
  Mailbox started(*tb.sup, "started"), sawCancel(*tb.sup, "saw-cancel"), atStart(*tb.sup, "at-start");
  ServedWindow worker(ServedWindow::deferred, tb, "worker", [](Window& w, auto& regs) {
    regs.push_back(w.handle("at-start", [&w](const Message&, Builder&, const CallContext& ctx) {
      (void)w.send("at-start", text(ctx.cancelled() ? "cancelled at start" : "not cancelled"));
    }));
    regs.push_back(w.handle("long-job", [&w](const Message&, Builder&, const CallContext& ctx) {
      (void)w.send("started");
      const std::int64_t t0 = nowNs();
      const bool seen = awaitCondition([&] { return ctx.cancelled(); }, 8s);
      (void)w.send("saw-cancel", text(seen ? std::to_string(msSince(t0)) : "never"));
    }));
  });
  Link link;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    Call call = w->invokeIn("worker", "long-job", {}, {.timeout = 10000ms});
    link.hearParent();
    call.cancel();
    auto r = call.get();
    childCheck(r.code() == ErrorCode::Cancelled, "result: " + r.error().toString());
    childCheck(r.error().message.find("long-job") != std::string::npos, "names the channel");
    link.tellParent("cancelled");
  });
  // A call cancelled while it waits in the target's inbox (the handler is busy with the one
  // before): its handler starts with ctx.cancelled() already true.
  GatedChild a2([&] {
    auto w = connectWindow(tb.bus, "editor");
    Call busy = w->invokeIn("worker", "long-job", {}, {.timeout = 10000ms});
    Call queued = w->invokeIn("worker", "at-start", {}, {.timeout = 10000ms});
    link.hearParent();
    queued.cancel();
    childCheck(queued.get().code() == ErrorCode::Cancelled, "queued: " + queued.get().error().toString());
    link.tellParent("cancelled");
    link.hearParent();
    busy.cancel();
  });
  tb->startDispatchThread();
  worker.start();
  a.go();
  started.next();
  link.tellChild("cancel");
  CHECK(link.hearChild() == "cancelled");
  CHECK(a.join(10s) == 0);
  CHECK(sawCancel.next().text != "never");

  // The second caller (a2, forked above).
  a2.go();
  started.next();
  link.tellChild("cancel");
  CHECK(link.hearChild() == "cancelled");
  // The queued call's Cancel has reached the worker (it went out before the busy one's).
  link.tellChild("cancel busy");
  CHECK(sawCancel.next().text != "never");
  CHECK(atStart.next().text == "cancelled at start");
  CHECK(a2.join(10s) == 0);

  // The supervisor's own calls cancel the same way.
  Call call = tb->invoke("worker", "long-job", {}, {.timeout = 10000ms});
  started.next();
  call.cancel();
  CHECK(call.get().code() == ErrorCode::Cancelled);
  CHECK(sawCancel.next().text != "never");
  const RouterStats s = tb->stats();
  auto it = std::find_if(s.channels.begin(), s.channels.end(), [](auto& c) { return c.channel == "long-job"; });
  REQUIRE(it != s.channels.end());
  CHECK(it->errors.at("Cancelled") == 3);
  CHECK(worker.finish() == 0);
}
