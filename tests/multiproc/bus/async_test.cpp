// Asynchronous replies (Responder) and C++20 coroutines (shmbus/coro.hpp) across processes.
#include <shmbus/coro.hpp>

#include <future>
#include <optional>
#include <thread>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {
BuildFn replyTextFn(const std::string& s) { return text(s); }

/// Threads a handler starts to reply later, joined before the endpoint they reply through is
/// destroyed, so that their replies are delivered (a Responder that outlives its endpoint replies
/// BusClosed: the last two cases).
class ReplyThreads {
 public:
  template <typename F>
  void start(F&& fn) {
    std::lock_guard lk(mu_);
    threads_.emplace_back(std::forward<F>(fn));
  }
  void joinAll() {
    std::vector<std::thread> all;
    {
      std::lock_guard lk(mu_);
      all.swap(threads_);
    }
    for (auto& t : all) t.join();
  }
  ~ReplyThreads() { joinAll(); }

 private:
  std::mutex mu_;
  std::vector<std::thread> threads_;
};
}  // namespace

TEST_CASE("a window's async handler frees its dispatch thread and replies later; a second reply is refused") {
  TestBus tb("async-window", {}, /*dispatch=*/false);
  Mailbox second(*tb.sup, "second-reply");
  ServedWindow w(ServedWindow::deferred, tb, "worker", [](Window& win, auto& regs) {
    // "hold" keeps its Responder; "release" answers the held call from another thread, then itself.
    auto held = std::make_shared<std::optional<Responder>>();
    auto threads = std::make_shared<ReplyThreads>();
    // Registrations go before the Window does: this one joins the reply thread first.
    regs.push_back(Registration([threads, held] {
      threads->joinAll();
      held->reset();
    }));
    regs.push_back(win.handleAsync("hold", [held](const Message&, Responder r, const CallContext&) { *held = r; }));
    regs.push_back(win.handleAsync("release", [held, threads, &win](const Message&, Responder r, const CallContext&) {
      threads->start([held, r, &win]() mutable {
        Responder h = **held;
        childCheck(h.reply(replyTextFn("held reply")).ok(), "reply to the held call");
        auto again = h.reply(replyTextFn("twice"));
        (void)win.send("second-reply", text(again.ok() ? "accepted" : errorCodeName(again.code())));
        childCheck(r.reply(replyTextFn("released")).ok(), "reply to release");
      });
    }));
  });
  tb->startDispatchThread();
  w.start();
  Call hold = tb->invoke("worker", "hold", {}, {.timeout = 5000ms});
  // The worker's dispatch thread is free while "hold" waits: "release" gets through.
  auto r = tb->invoke("worker", "release", {}, {.timeout = 5000ms}).get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "released");
  auto h = hold.get();
  REQUIRE_MESSAGE(h.ok(), h.error().toString());
  CHECK(textOf(*h) == "held reply");
  CHECK(second.next().text == "InvalidMessage");
  CHECK(w.finish() == 0);
}

TEST_CASE("main's async handler replies from another thread; a dropped Responder ends in Timeout and is counted") {
  TestBus tb("async-main", {}, /*dispatch=*/false);
  ReplyThreads threads;  // joined before the supervisor goes
  auto later = tb->handleAsync("later", [&threads](const Message& req, Responder r, const CallContext&) {
    threads.start([r, t = textOf(req)]() mutable { (void)r.reply(replyTextFn(t + " later")); });
  });
  auto dropped = tb->handleAsync("dropped", [](const Message&, Responder, const CallContext&) {});
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    childCheck(replyText(w->invoke("later", text("answer"), {.timeout = 5000ms}), "later") == "answer later", "later");
    const std::int64_t t0 = nowNs();
    auto r = w->invoke("dropped", {}, {.timeout = 100ms}).get();
    childCheck(r.code() == ErrorCode::Timeout, "dropped: " + r.error().toString());
    toA.tellParent(std::to_string(msSince(t0)));
  });
  tb->startDispatchThread();
  a.go();
  const double ms = std::stod(toA.hearChild());
  MESSAGE("a call whose Responder was dropped timed out after " << ms << " ms");
  CHECK(ms >= 100);
  CHECK(a.join(10s) == 0);
  CHECK(tb->stats().unansweredCalls == 1);
}

TEST_CASE("a coroutine handler co_awaits another window and its co_return value is the reply; syncWait with or without a dispatch thread") {
  TestBus tb("coro", {}, /*dispatch=*/false);
  ServedWindow back(ServedWindow::deferred, tb, "back", [](Window& win, auto& regs) {
    regs.push_back(win.handle("echo", echoHandler()));
  });
  ServedWindow front(ServedWindow::deferred, tb, "front", [](Window& win, auto& regs) {
    regs.push_back(handleCo(win, "relay", [&win](Request req) -> Task<Reply> {
      const std::string asked = textOf(req.message());
      // Two awaits in a row: the dispatch thread serves other calls while this one is suspended.
      auto first = co_await win.invokeIn("back", "echo", text(asked), {.timeout = 5000ms});
      if (!first) throw CallFailure(first.error());
      auto second = co_await win.invokeIn("back", "echo", text(textOf(*first) + " again"), {.timeout = 5000ms});
      if (!second) throw CallFailure(second.error());
      Reply reply;
      reply.initRoot<TestMessage>().setText(textOf(*second) + " via " + std::string(req.context().sourceRole));
      co_return reply;
    }));
    regs.push_back(handleCo(win, "refuse", [](Request) -> Task<Reply> {
      throw CallFailure(makeError(ErrorCode::Denied, "not today"));
      co_return Reply();
    }));
  });
  // A coroutine driven by syncWait on a window without a dispatch thread (forked before the
  // supervisor's threads start, as TestBus asks).
  Link toC;
  GatedChild c([&] {
    auto w = connectWindow(tb.bus, "client");
    auto task = [&]() -> Task<std::string> {
      auto a = co_await w->invokeIn("front", "relay", text("y"), {.timeout = 5000ms});
      co_return a ? textOf(*a) : a.error().toString();
    };
    toC.tellParent(syncWait(*w, task()));
  });
  // The same from a window whose dispatch thread runs: the task resumes there, syncWait (and a
  // poll on the caller's thread meanwhile) must not wait for the gate the dispatch thread holds.
  Link toD;
  GatedChild d([&] {
    auto w = connectWindow(tb.bus, "client2");
    w->startDispatchThread();
    const auto polled = w->poll(20ms);  // returns without dispatching
    childCheck(polled.ok(), "poll beside the dispatch thread: " + (polled ? std::string() : polled.error().toString()));
    auto task = [&]() -> Task<std::string> {
      auto a = co_await w->invokeIn("front", "relay", text("z"), {.timeout = 5000ms});
      co_return a ? textOf(*a) : a.error().toString();
    };
    toD.tellParent(syncWait(*w, task()));
  });
  tb->startDispatchThread();
  back.start();
  front.start();
  d.go();
  CHECK(toD.hearChild() == "z again via client2");
  CHECK(d.join(10s) == 0);
  auto r = tb->invoke("front", "relay", text("x"), {.timeout = 5000ms}).get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "x again via main");
  auto denied = tb->invoke("front", "refuse", {}, {.timeout = 5000ms}).get();
  CHECK(denied.code() == ErrorCode::Denied);
  CHECK(denied.error().message.find("not today") != std::string::npos);
  c.go();
  CHECK(toC.hearChild() == "y again via client");
  CHECK(c.join(10s) == 0);
  CHECK(front.finish() == 0);
  CHECK(back.finish() == 0);
}

TEST_CASE("a window handler sees ctx.cancelled() turn true when the bus closes") {
  auto tb = std::make_unique<TestBus>("cancel-close", SupervisorOptions{}, /*dispatch=*/false);
  Mailbox started(*tb->sup, "started");
  Link toW;
  GatedChild w([&] {
    auto win = connectWindow(tb->bus, "worker");
    auto h = win->handle("long", [&](const Message&, Builder&, const CallContext& ctx) {
      (void)win->send("started");
      toW.tellParent(awaitCondition([&] { return ctx.cancelled(); }, 8s) ? "cancelled" : "never");
    });
    announceReady(*win);
    toW.hearParent(20s);
  });
  (*tb)->startDispatchThread();
  w.go();
  tb->awaitReady("worker");
  Call call = (*tb)->invoke("worker", "long", {}, {.timeout = 10000ms});
  started.next();
  (*tb)->stop();
  CHECK(toW.hearChild() == "cancelled");
  CHECK(call.get().code() == ErrorCode::BusClosed);
  toW.tellChild("done");
  CHECK(w.join(10s) == 0);
}

TEST_CASE("a Responder that outlives its window replies BusClosed, and dropping it later is safe") {
  TestBus tb("async-outlive-window", {}, /*dispatch=*/false);
  Link toParent;
  GatedChild child([&] {
    std::optional<Responder> kept;  // declared before the window: it outlives it
    std::promise<void> handled;
    auto win = connectWindow(tb.bus, "keeper");
    auto reg = std::make_unique<Registration>(
        win->handleAsync("keep", [&](const Message&, Responder r, const CallContext&) {
          kept = std::move(r);
          handled.set_value();
        }));
    announceReady(*win);
    handled.get_future().wait();
    childCheck(!kept->cancelled(), "cancelled before the window went");
    reg.reset();
    win.reset();  // the window goes while its call's Responder lives on
    auto r = kept->reply(replyTextFn("too late"));
    childCheck(r.code() == ErrorCode::BusClosed, std::string("a reply after the window went: ") + errorCodeName(r.code()));
    childCheck(kept->cancelled(), "cancelled() after the window went");
    kept.reset();  // the last copy: counts nothing, touches nothing of the window
    toParent.tellParent("ok");
  });
  tb->startDispatchThread();
  child.go();
  const std::uint32_t id = tb.awaitReady("keeper");
  Call call = tb->invoke(Target(id), "keep", {}, {.timeout = 10000ms});
  CHECK(toParent.hearChild() == "ok");
  CHECK(call.get().code() == ErrorCode::TargetGone);
  CHECK(child.join(10s) == 0);
}

TEST_CASE("a Responder that outlives its supervisor replies BusClosed, and dropping it later is safe") {
  std::optional<Responder> kept;  // declared before the supervisor: it outlives it
  std::promise<void> handled;
  Link toChild;
  std::optional<GatedChild> child;
  {
    TestBus tb("async-outlive-main", {}, /*dispatch=*/false);
    auto reg = tb->handleAsync("keep", [&](const Message&, Responder r, const CallContext&) {
      kept = std::move(r);
      handled.set_value();
    });
    child.emplace([&] {
      auto w = connectWindow(tb.bus, "caller");
      auto r = w->invoke("keep", {}, {.timeout = 10000ms}).get();
      // The supervisor went with the call in flight: the window's bus closed under it.
      childCheck(!r.ok(), "the kept call cannot succeed");
      toChild.tellParent("done");
    });
    tb->startDispatchThread();
    child->go();
    handled.get_future().wait();
    CHECK_FALSE(kept->cancelled());
    tb->stop();
  }  // the supervisor is destroyed here
  auto r = kept->reply(replyTextFn("too late"));
  CHECK(r.code() == ErrorCode::BusClosed);
  CHECK(kept->cancelled());
  kept.reset();  // the last copy: counts nothing, touches nothing of the supervisor
  CHECK(toChild.hearChild() == "done");
  CHECK(child->join(10s) == 0);
}
