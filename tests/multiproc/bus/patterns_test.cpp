// Every messaging pattern of docs/architecture.md §2 (except direct ports) across real processes: the test
// process runs the supervisor, forked children are the windows.
#include <doctest/doctest.h>

#include <condition_variable>
#include <map>
#include <mutex>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

std::string describeContext(const std::string& body, const CallContext& ctx) {
  return body + " " + std::to_string(ctx.sourceWindowId) + " " + std::string(ctx.sourceRole) + " " +
         std::string(ctx.channel) + " " + std::to_string(ctx.requestId) + " " + std::to_string(ctx.deadlineNs);
}

}  // namespace

TEST_CASE("a window's send reaches every supervisor listener; a once listener runs for the first send only") {
  TestBus tb("send", {}, /*dispatch=*/false);
  std::vector<std::string> a, b, once;
  std::mutex mu;
  std::condition_variable cv;
  auto note = [&](std::vector<std::string>& v) {
    return [&](const Message& m, const CallContext& ctx) {
      {
        std::lock_guard lk(mu);
        v.push_back(textOf(m) + "@" + std::string(ctx.sourceRole) + "#" + std::to_string(ctx.sourceWindowId));
      }
      cv.notify_all();
    };
  };
  auto la = tb->on("note", note(a));
  auto lo = tb->once("note", note(once));
  auto lb = tb->on("note", note(b));
  Link link;
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    link.tellParent(std::to_string(w->id()));
    expectOk(w->send("note", text("one")), "first send");
    expectOk(w->send("note", text("two")), "second send");
    link.hearParent();
  });
  tb->startDispatchThread();
  const std::string id = link.hearChild();
  {
    std::unique_lock lk(mu);
    REQUIRE(cv.wait_for(lk, 10s, [&] { return a.size() == 2 && b.size() == 2; }));
  }
  link.tellChild("done");
  CHECK(child.join(10s) == 0);
  const std::vector<std::string> expected{"one@editor#" + id, "two@editor#" + id};
  CHECK(a == expected);
  CHECK(b == expected);
  CHECK(once == std::vector<std::string>{"one@editor#" + id});
}

TEST_CASE("a window's invoke gets the reply of the supervisor's handler, with the caller in the context") {
  TestBus tb("invoke-main", {}, /*dispatch=*/false);
  std::mutex seenMu;  // the handler runs on the dispatch thread; the test thread reads after the child's word
  std::string seen;
  auto h = tb->handle("describe", textHandler([&](const std::string& body, const CallContext& ctx) {
    std::lock_guard lk(seenMu);
    seen = describeContext(body, ctx);
    return "main saw " + body;
  }));
  Link link;
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    const std::int64_t before = nowNs();
    childCheck(replyText(w->invoke("describe", text("hi"), {.timeout = 3000ms}), "invoke") == "main saw hi", "reply");
    link.tellParent(std::to_string(w->id()) + " " + std::to_string(before) + " " + std::to_string(nowNs()));
  });
  tb->startDispatchThread();
  const auto ids = words(link.hearChild());
  CHECK(child.join(10s) == 0);
  const auto ctx = [&] {
    std::lock_guard lk(seenMu);
    return words(seen);
  }();
  REQUIRE(ctx.size() == 6);
  CHECK(ctx[0] == "hi");
  CHECK(ctx[1] == ids[0]);
  CHECK(ctx[2] == "editor");
  CHECK(ctx[3] == "describe");
  CHECK(std::stoull(ctx[4]) != 0);
  const std::int64_t deadline = std::stoll(ctx[5]);
  CHECK(deadline >= std::stoll(ids[1]) + 3'000'000'000);
  CHECK(deadline <= std::stoll(ids[2]) + 3'000'000'000);
}

TEST_CASE("the supervisor's send by window id and by role reaches the window's listeners and its once listener") {
  TestBus tb("push", {}, /*dispatch=*/false);
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "dashboard");
    Inbox first, second, once;
    auto l1 = w->on("counter", [&](const Message& m, const CallContext& ctx) {
      first.add(textOf(m) + "@" + std::string(ctx.sourceRole) + "#" + std::to_string(ctx.sourceWindowId));
    });
    auto l2 = w->on("counter", [&](const Message& m, const CallContext&) { second.add(textOf(m)); });
    auto l3 = w->once("counter", [&](const Message& m, const CallContext&) { once.add(textOf(m)); });
    announceReady(*w);
    childCheck(first.await(2) == "1@main#0,2@main#0", "first listener: " + first.await(2));
    childCheck(second.await(2) == "1,2", "second listener");
    expectOk(w->send("report", text(once.await(1))), "report");
  });
  Mailbox report(*tb.sup, "report");
  tb->startDispatchThread();
  const std::uint32_t id = tb.awaitReady("dashboard");
  REQUIRE(tb->send(id, "counter", text("1")).ok());
  REQUIRE(tb->send("dashboard", "counter", text("2")).ok());
  CHECK(report.next().text == "1");
  CHECK(child.join(10s) == 0);
}

TEST_CASE("a broadcast reaches the windows of the listed roles and skips the excluded roles") {
  // Children are forked before the dispatch thread starts (a fork while another thread holds
  // libasan's allocator lock can hang the child in sanitizer builds).
  TestBus tb("broadcast", {}, /*dispatch=*/false);
  std::vector<Child> children;
  for (const char* role : {"alpha", "beta", "gamma"}) {
    children.push_back(Child::fork([&tb, role] {
      auto w = connectWindow(tb.bus, role);
      Inbox got;
      auto l = w->on("news", [&](const Message& m, const CallContext& ctx) {
        childCheck(ctx.sourceWindowId == 0 && ctx.sourceRole == "main", "a broadcast comes from main");
        got.add(textOf(m));
      });
      announceReady(*w);
      // Every window hears the last broadcast ("end"), so the count tells when all arrived.
      const std::string all = std::string(role) == "alpha" ? got.await(3) : got.await(2);
      expectOk(w->send("report", text(all)), "report");
    }));
  }
  Mailbox report(*tb.sup, "report");
  tb->startDispatchThread();
  for (int i = 0; i < 3; ++i) tb.ready->next();
  auto all = tb->broadcast("news", text("all"));
  REQUIRE(all.ok());
  CHECK(all->delivered == 3);
  auto some = tb->broadcast("news", text("alpha-only"), {.roles = {"alpha", "beta"}, .excludeRoles = {"beta"}});
  REQUIRE(some.ok());
  CHECK(some->delivered == 1);
  auto end = tb->broadcast("news", text("end"), {.excludeRoles = {"nobody"}});
  REQUIRE(end.ok());
  CHECK(end->delivered == 3);
  std::map<std::string, std::string> heard;
  for (int i = 0; i < 3; ++i) {
    const Heard h = report.next();
    heard[h.role] = h.text;
  }
  CHECK(heard["alpha"] == "all,alpha-only,end");
  CHECK(heard["beta"] == "all,end");
  CHECK(heard["gamma"] == "all,end");
  for (auto& c : children) CHECK(c.join(10s) == 0);
}

TEST_CASE("the supervisor's invoke calls a window's handler by id and by role, with main as the source") {
  TestBus tb("invoke-window", {}, /*dispatch=*/false);
  ServedWindow settings(ServedWindow::deferred, tb, "settings", [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetWindowState", textHandler(describeContext)));
  });
  tb->startDispatchThread();
  settings.start();
  for (const Target& target : {Target(settings.id()), Target("settings")}) {
    const std::int64_t before = nowNs();
    auto r = tb->invoke(target, "GetWindowState", text("state?"), {.timeout = 2000ms}).get();
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    const auto ctx = words(textOf(*r));
    REQUIRE(ctx.size() == 6);
    CHECK(ctx[0] == "state?");
    CHECK(ctx[1] == "0");
    CHECK(ctx[2] == "main");
    CHECK(ctx[3] == "GetWindowState");
    CHECK(std::stoull(ctx[4]) != 0);
    CHECK(std::stoll(ctx[5]) >= before + 2'000'000'000);
    CHECK(std::stoll(ctx[5]) <= nowNs() + 2'000'000'000);
  }
  CHECK(settings.finish() == 0);
}

TEST_CASE("invokeIn by role and by window id reaches the other window's handler with the caller's context") {
  TestBus tb("invoke-in", {}, /*dispatch=*/false);
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    regs.push_back(w.handle("GetDashboardData", textHandler(describeContext)));
  });
  // The caller connects once the dashboard is registered; go() tells it the dashboard's id.
  GatedChild a([&](const std::string& dashboardId) {
    const std::uint32_t bId = static_cast<std::uint32_t>(std::stoul(dashboardId));
    auto w = connectWindow(tb.bus, "editor");
    for (const Target& target : {Target("dashboard"), Target(bId)}) {
      const std::int64_t before = nowNs();
      const auto ctx = words(replyText(w->invokeIn(target, "GetDashboardData", text("q"), {.timeout = 3000ms}),
                                       "invokeIn " + target.describe()));
      const std::int64_t after = nowNs();
      childCheck(ctx.size() == 6, "context has 6 fields");
      childCheck(ctx[0] == "q", "request text");
      childCheck(ctx[1] == std::to_string(w->id()), "source window id " + ctx[1]);
      childCheck(ctx[2] == "editor", "source role " + ctx[2]);
      childCheck(ctx[3] == "GetDashboardData", "channel " + ctx[3]);
      childCheck(std::stoull(ctx[4]) != 0, "request id");
      const std::int64_t deadline = std::stoll(ctx[5]);
      childCheck(deadline >= before + 3'000'000'000 && deadline <= after + 3'000'000'000, "deadline");
    }
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go(std::to_string(dashboard.id()));
  CHECK(a.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("sendTo by role and by window id reaches the other window's listeners with the sender's id and role") {
  TestBus tb("send-to", {}, /*dispatch=*/false);
  Mailbox report(*tb.sup, "report");
  Child b = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    Inbox got;
    auto l = w->on("UpdateChart", [&](const Message& m, const CallContext& ctx) {
      got.add(textOf(m) + "@" + std::string(ctx.sourceRole) + "#" + std::to_string(ctx.sourceWindowId));
    });
    announceReady(*w);
    expectOk(w->send("report", text(got.await(2))), "report");
  });
  // The sender connects once the editor is ready; go() tells it the editor's id.
  Link toA;
  GatedChild a([&](const std::string& editorId) {
    const std::uint32_t bId = static_cast<std::uint32_t>(std::stoul(editorId));
    auto w = connectWindow(tb.bus, "dashboard");
    toA.tellParent(std::to_string(w->id()));
    expectOk(w->sendTo("editor", "UpdateChart", text("by-role")), "sendTo role");
    expectOk(w->sendTo(bId, "UpdateChart", text("by-id")), "sendTo id");
    toA.hearParent();
  });
  tb->startDispatchThread();
  a.go(std::to_string(tb.awaitReady("editor")));
  const std::string aId = toA.hearChild();
  CHECK(report.next().text == "by-role@dashboard#" + aId + ",by-id@dashboard#" + aId);
  toA.tellChild("done");
  CHECK(a.join(10s) == 0);
  CHECK(b.join(10s) == 0);
}

TEST_CASE("the last registered window handler wins; its cleanup handle removes it and the older one stays gone") {
  TestBus tb("handler-window", {}, /*dispatch=*/false);
  Mailbox ack(*tb.sup, "ack");
  Link link;
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "worker");
    Registration first = w->handle("which", replyWith("first"));
    Registration second = w->handle("which", replyWith("second"));
    announceReady(*w);
    childCheck(link.hearParent() == "drop-first", "step 1");
    first.reset();  // replaced already: removing it changes nothing
    expectOk(w->send("ack"), "ack 1");
    childCheck(link.hearParent() == "drop-second", "step 2");
    second();  // the Electron-style cleanup call
    expectOk(w->send("ack"), "ack 2");
    link.hearParent();
  });
  tb->startDispatchThread();
  tb.awaitReady("worker");
  auto which = [&] { return tb->invoke("worker", "which", {}, {.timeout = 2000ms}).get(); };
  auto r = which();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "second");
  link.tellChild("drop-first");
  ack.next();
  r = which();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "second");
  link.tellChild("drop-second");
  ack.next();
  CHECK(which().code() == ErrorCode::NoHandler);
  link.tellChild("done");
  CHECK(child.join(10s) == 0);
}

TEST_CASE("the last registered supervisor handler wins; its cleanup handle leaves NoHandler") {
  TestBus tb("handler-main", {}, /*dispatch=*/false);
  Registration first = tb->handle("which", replyWith("first"));
  Registration second = tb->handle("which", replyWith("second"));
  Link link;
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    childCheck(replyText(w->invoke("which"), "invoke 1") == "second", "last registered wins");
    link.tellParent("1");
    link.hearParent();
    childCheck(replyText(w->invoke("which"), "invoke 2") == "second", "the replaced handler stays replaced");
    link.tellParent("2");
    link.hearParent();
    auto r = w->invoke("which").get();
    childCheck(r.code() == ErrorCode::NoHandler, "after cleanup: " + r.error().toString());
  });
  tb->startDispatchThread();
  link.hearChild();
  first.reset();
  link.tellChild("go");
  link.hearChild();
  second();
  link.tellChild("go");
  CHECK(child.join(10s) == 0);
}

TEST_CASE("window-opened and window-closed events reach listening windows and main listeners") {
  TestBus tb("events", {}, /*dispatch=*/false);
  Mailbox report(*tb.sup, "report");
  Mailbox mainOpened(*tb.sup, "window-opened"), mainClosed(*tb.sup, "window-closed");
  auto eventText = [](const Message& m) {
    auto e = m.root<schema::WindowEvent>();
    return std::to_string(e.getWindowId()) + " " + std::string(e.getRole()) + " " + std::to_string(e.getPid()) +
           " " + std::string(e.getReason());
  };
  // Main listeners see the event's payload too (Mailbox keeps only TestMessage texts).
  std::vector<std::string> mainEvents;
  std::mutex mu;
  auto lo = tb->on("window-closed", [&](const Message& m, const CallContext&) {
    std::lock_guard lk(mu);
    mainEvents.push_back(eventText(m));
  });
  ServedWindow watcher(ServedWindow::deferred, tb, "main-window", [&](Window& w, auto& regs) {
    auto forward = [&w, eventText](const char* what) {
      return [&w, what, eventText](const Message& m, const CallContext& ctx) {
        childCheck(ctx.sourceWindowId == 0, "events come from main");
        (void)w.send("report", text(std::string(what) + " " + eventText(m)));
      };
    };
    regs.push_back(w.on("window-opened", forward("opened")));
    regs.push_back(w.on("window-closed", forward("closed")));
  });
  // The editor connects once the watcher listens, so the watcher hears it open.
  Link toB;
  GatedChild b([&] {
    auto w = connectWindow(tb.bus, "editor");
    toB.tellParent(std::to_string(w->id()));
    toB.hearParent();
    w->close();
  });
  tb->startDispatchThread();
  watcher.start();
  b.go();
  const std::string bId = toB.hearChild();
  const std::string bPid = std::to_string(b.pid());
  const auto opened = report.next().words();
  REQUIRE(opened.size() >= 4);
  CHECK(opened[0] == "opened");
  CHECK(opened[1] == bId);
  CHECK(opened[2] == "editor");
  CHECK(opened[3] == bPid);
  toB.tellChild("close");
  const auto closed = report.next().words();
  REQUIRE(closed.size() == 5);
  CHECK(closed[4] == "closed");
  CHECK(closed[0] == "closed");
  CHECK(closed[1] == bId);
  CHECK(closed[2] == "editor");
  CHECK(closed[3] == bPid);
  CHECK(b.join(10s) == 0);
  // The main listeners heard both windows open and the editor close.
  CHECK(mainOpened.next().windowId != 0);
  CHECK(mainOpened.next().windowId == static_cast<std::uint32_t>(std::stoul(bId)));
  CHECK(mainClosed.next().windowId == static_cast<std::uint32_t>(std::stoul(bId)));
  {
    std::lock_guard lk(mu);
    REQUIRE(mainEvents.size() == 1);
    CHECK(words(mainEvents[0])[0] == bId);
  }
  CHECK(watcher.finish() == 0);
}

TEST_CASE("typed lifecycle events: onWindowOpened and onWindowClosed on the supervisor and on a window") {
  TestBus tb("typed-events", {}, /*dispatch=*/false);
  Mailbox report(*tb.sup, "report");
  std::mutex mu;
  std::condition_variable cv;
  std::vector<WindowEvent> opened, closed;
  auto record = [&](std::vector<WindowEvent>& into) {
    return [&](const WindowEvent& e) {
      std::lock_guard lk(mu);
      into.push_back(e);
      cv.notify_all();
    };
  };
  auto o = tb->onWindowOpened(record(opened));
  auto c = tb->onWindowClosed(record(closed));
  ServedWindow watcher(ServedWindow::deferred, tb, "watcher", [](Window& w, auto& regs) {
    regs.push_back(w.onWindowClosed([&w](const WindowEvent& e) {
      (void)w.send("report", text(e.role + " " + std::to_string(e.windowId) + " " + e.reason));
    }));
  });
  Link toB;
  GatedChild b([&] {
    auto w = connectWindow(tb.bus, "editor");
    toB.tellParent(std::to_string(w->id()));
    toB.hearParent();
  });
  tb->startDispatchThread();
  watcher.start();
  b.go();
  const auto bId = static_cast<std::uint32_t>(std::stoul(toB.hearChild()));
  const pid_t bPid = b.pid();
  toB.tellChild("exit");
  CHECK(b.join(10s) == 0);
  CHECK(report.next().text == "editor " + std::to_string(bId) + " closed");
  std::unique_lock lk(mu);
  REQUIRE(cv.wait_for(lk, 10s, [&] { return opened.size() >= 2 && !closed.empty(); }));
  CHECK(opened[0].role == "watcher");
  CHECK(opened[1].role == "editor");
  CHECK(opened[1].windowId == bId);
  CHECK(opened[1].pid == bPid);
  CHECK(closed[0].windowId == bId);
  CHECK(closed[0].reason == "closed");
}
