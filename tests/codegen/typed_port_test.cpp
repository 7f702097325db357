// Generated stubs (golden.capnp's Studio) on a port (docs/architecture.md §16) across real
// processes, and the cancel of a synchronous handler running on a port (§11): a caller's cancel
// reaches it through the caller's own board of the port's segment, in both directions at once
// without the request ids of the two directions meeting; the caller's deadline and the port's end
// reach it too. Nothing here asserts a time (suite multiproc only, so ThreadSanitizer runs it);
// every wait is for an event a child reports.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bus_test.hpp"
#include "golden.shmbus.h"
#include "shmbus/coro.hpp"

using namespace shmbus;
using namespace shmbus::golden;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// "error CODE MESSAGE" for a failed typed result.
std::string errorLine(const Error& e) { return fmt::format("error {} {}", errorCodeName(e.code), e.message); }

/// One window of a typed port test, in a forked child: connects when the parent says "go", then
/// obeys the parent's commands (one line each, answered with one line):
///   listen              → "listening" (the acceptor: takes ports on "studio-port" and starts them)
///   open                → "opened" (the opener: a port to role "acceptor", not started yet)
///   co-echo TEXT        → "echo TEXT LENGTH": a coroutine co_awaits the typed call, driven by
///                         syncWait polling the port (before "start")
///   start               → "started" (the port's dispatch thread)
///   echo TEXT | delete KEY | store TAGS... | describe NAME TAGS... → the typed reply ("echo ...",
///                         "removed 0|1", "point X Y", "described AREA SUMMARY") or "error CODE MESSAGE"
///   notify TEXT         → "sent";  heard N → "heard" + the first N notes this side's listener got
///   slow [MS]           → "calling ID" (Studio.slow, spinning; MS: the timeout, default 30 s);
///                         later, from a waiter thread: "result CODE"
///   cancel              → cancels that call (no answer: its "result" follows)
///   running             → "running N": how many slow handlers of this side are in their loop
///   close               → "closed";  done → exits.
/// Both ends serve Studio on the port with the generated handlers; the slow handler tells the
/// parent "slow-started ID" and, once ctx.cancelled() turned true, "slow-ended ID" (ID: the
/// caller's request id, ctx.requestId).
class TypedPortPeer : public DrivenWindow {
 public:
  TypedPortPeer(TestBus& tb, std::string role) : DrivenWindow(std::move(role)) {
    forkBody(tb, [this](const std::string& bus) { body(bus); });
  }

 private:
  struct State {
    std::mutex mu;
    std::shared_ptr<Port> port;
    std::vector<Registration> regs;
    Inbox notes;
    std::atomic<int> running{0};
  };

  /// Studio's handlers on `p`, with the generated registration functions.
  void serve(State& st, const std::shared_ptr<Port>& p) {
    const Link& link = link_;
    std::lock_guard lk(st.mu);
    st.port = p;
    Port& port = *p;
    st.regs.push_back(StudioHandlers::handleEcho(port, [](auto params, auto results, const CallContext& ctx) {
      results.setText(fmt::format("{} from {}#{}", params.getText().cStr(), ctx.sourceRole, ctx.sourceWindowId));
      results.setLength(params.getText().size());
    }));
    st.regs.push_back(StudioHandlers::handleDelete(port, [](auto params, auto results) {
      if (params.getKey() == "boom") throw std::runtime_error("cannot delete boom");
      results.setRemoved(params.getKey() == "present");
    }));
    st.regs.push_back(StudioHandlers::handleStore(port, [](Shape::Reader shape, Point::Builder at) {
      at.setX(static_cast<std::int32_t>(shape.getTags().size()));
      at.setY(shape.getStyle().getStroke());
    }));
    st.regs.push_back(StudioHandlers::handleSlow(port, [&link, &st](auto, auto results, const CallContext& ctx) {
      // relaxed: a count the parent asks for after this handler's own report over the Link.
      st.running.fetch_add(1, std::memory_order_relaxed);
      link.tellParent(fmt::format("slow-started {}", ctx.requestId));
      // Polls its own cancellation, the event under test: not a wait for the test.
      while (!ctx.cancelled()) std::this_thread::sleep_for(200us);  // allowed: cancelled() has no wait; the handler polls the event under test
      st.running.fetch_sub(1, std::memory_order_relaxed);  // relaxed: as above
      link.tellParent(fmt::format("slow-ended {}", ctx.requestId));
      results.setDone(true);
    }));
    // A coroutine handler (handle<Method>Co): it co_awaits a typed call back to its caller over
    // the same port, and its co_return value is the typed reply.
    st.regs.push_back(StudioHandlers::handleDescribeCo(
        port, [&port](TypedRequest<StudioMethods::Describe> req) -> Task<TypedReply<StudioMethods::Describe>> {
          const std::string name = req.params().getShape().getName();
          if (name == "boom") throw std::runtime_error("cannot describe boom");
          StudioPortClient back(port);
          auto echoed = co_await back.echo([&](auto p) { p.setText(name); });
          if (!echoed) throw CallFailure(echoed.error());
          TypedReply<StudioMethods::Describe> reply;
          reply.results().setArea(static_cast<double>(req.params().getShape().getTags().size()));
          reply.results().setSummary(fmt::format("{} via {}", echoed->reader().getText().cStr(), req.context().sourceRole));
          co_return reply;
        }));
    st.regs.push_back(StudioHandlers::onNotify(port, [&st](auto params) {
      st.notes.add(fmt::format("{}:{}", params.getMessage().cStr(), params.getSeq()));
    }));
  }

  void body(const std::string& bus) {
    auto w = connectWindow(bus, role_);
    State st;
    std::vector<Registration> regs;
    std::thread waiter;
    TypedCall<StudioMethods::Slow::Results> slow;
    announceReady(*w);
    auto port = [&]() -> Port& {
      std::lock_guard lk(st.mu);
      return *st.port;
    };
    auto answer = [&](auto&& r, auto ok) { link_.tellParent(r ? ok(*r) : errorLine(r.error())); };
    for (;;) {
      const auto cmd = words(link_.hearParent(120s));
      if (cmd.empty() || cmd[0] == "done") break;
      const std::string arg = cmd.size() > 1 ? cmd[1] : std::string();
      if (cmd[0] == "listen") {
        regs.push_back(w->onPort("studio-port", [this, &st](std::shared_ptr<Port> p) {
          serve(st, p);
          p->start();
        }));
        link_.tellParent("listening");
      } else if (cmd[0] == "open") {
        auto p = w->openPort("acceptor", "studio-port", {.timeout = 5000ms});
        if (!p) {
          link_.tellParent(errorLine(p.error()));
          continue;
        }
        serve(st, *p);
        link_.tellParent("opened");
      } else if (cmd[0] == "co-echo") {
        StudioPortClient client(port());
        auto call = [&]() -> Task<std::string> {
          auto r = co_await client.echo([&](auto p) { p.setText(arg); });
          co_return r ? fmt::format("echo {} {}", r->reader().getText().cStr(), r->reader().getLength())
                      : errorLine(r.error());
        };
        link_.tellParent(syncWait(port(), call()));
      } else if (cmd[0] == "start") {
        port().start();
        link_.tellParent("started");
      } else if (cmd[0] == "echo") {
        answer(StudioPortClient(port()).echo([&](auto p) { p.setText(arg); }).get(), [](const auto& t) {
          return fmt::format("echo {} {}", t->getText().cStr(), t->getLength());
        });
      } else if (cmd[0] == "delete") {
        answer(StudioPortClient(port()).delete_([&](auto p) { p.setKey(arg); }).get(),
               [](const auto& t) { return fmt::format("removed {}", t->getRemoved() ? 1 : 0); });
      } else if (cmd[0] == "store") {
        auto r = StudioPortClient(port()).store([&](Shape::Builder s) {
          auto tags = s.initTags(static_cast<unsigned>(cmd.size() - 1));
          for (unsigned i = 1; i < cmd.size(); ++i) tags.set(i - 1, cmd[i]);
          s.initStyle().setStroke(7);
        }).get();
        answer(r, [](const auto& t) { return fmt::format("point {} {}", t->getX(), t->getY()); });
      } else if (cmd[0] == "describe") {
        auto r = StudioPortClient(port()).describe([&](auto p) {
          auto shape = p.initShape();
          shape.setName(arg);
          auto tags = shape.initTags(static_cast<unsigned>(cmd.size() - 2));
          for (unsigned i = 2; i < cmd.size(); ++i) tags.set(i - 2, cmd[i]);
        }).get();
        answer(r, [](const auto& t) { return fmt::format("described {} {}", t->getArea(), t->getSummary().cStr()); });
      } else if (cmd[0] == "notify") {
        auto r = StudioPortClient(port()).notify([&](auto p) {
          p.setMessage(arg);
          p.setSeq(42);
        });
        link_.tellParent(r ? "sent" : errorLine(r.error()));
      } else if (cmd[0] == "heard") {
        link_.tellParent("heard " + st.notes.await(std::stoul(arg)));
      } else if (cmd[0] == "slow") {
        CallOptions options;
        if (!arg.empty()) options.timeout = std::chrono::milliseconds(std::stol(arg));
        slow = StudioPortClient(port()).slow([](auto p) { p.setSpinUntilCancelled(true); },
                                             arg.empty() ? CallOptions{.timeout = 30s} : options);
        // Told before the waiter starts: a short deadline must not put its result first.
        link_.tellParent(fmt::format("calling {}", slow.requestId()));
        if (waiter.joinable()) waiter.join();
        waiter = std::thread([this, call = slow]() mutable {
          auto r = call.get();
          link_.tellParent(fmt::format("result {}", r ? "Ok" : errorCodeName(r.code())));
        });
      } else if (cmd[0] == "cancel") {
        slow.cancel();
      } else if (cmd[0] == "running") {
        link_.tellParent(fmt::format("running {}", st.running.load(std::memory_order_relaxed)));  // as above
      } else if (cmd[0] == "close") {
        port().close();
        link_.tellParent("closed");
      }
    }
    if (waiter.joinable()) waiter.join();
    std::lock_guard lk(st.mu);
    st.regs.clear();
    st.port.reset();
  }
};

/// The two ends of a Studio port: forked before the supervisor's dispatch thread runs; the
/// acceptor listens, the opener opens (its end is not started: see "co-echo").
struct TypedPortPair {
  explicit TypedPortPair(std::string_view tag)
      : tb(tag, {}, false), acceptor(tb, "acceptor"), opener(tb, "opener") {
    tb->startDispatchThread();
    acceptorId = acceptor.start(tb);
    openerId = opener.start(tb);
    REQUIRE(acceptor.ask("listen") == "listening");
    REQUIRE(opener.ask("open") == "opened");
  }
  /// Starts the dispatch thread of the opener's end.
  void startOpener() { REQUIRE(opener.ask("start") == "started"); }
  TestBus tb;
  TypedPortPeer acceptor, opener;
  std::uint32_t acceptorId = 0, openerId = 0;
};

/// The request id in word 1 of a line ("calling 5", "slow-started 5").
std::string idOf(const std::string& line) { return words(line).at(1); }

}  // namespace

TEST_CASE("generated stubs call, send and serve over a port both ways: typed replies, a typed error, co_await") {
  TypedPortPair pp("typed-port");
  // A coroutine on the opener's end: co_await on the typed port call, syncWait polling the port.
  CHECK(pp.opener.ask("co-echo awaited") == fmt::format("echo awaited from opener#{} 7", pp.openerId));
  pp.startOpener();
  CHECK(pp.opener.ask("echo hello") == fmt::format("echo hello from opener#{} 5", pp.openerId));
  CHECK(pp.acceptor.ask("echo back") == fmt::format("echo back from acceptor#{} 4", pp.acceptorId));
  CHECK(pp.opener.ask("store a b c") == "point 3 7");  // a named struct both ways
  CHECK(pp.opener.ask("delete present") == "removed 1");
  // The handler's exception comes back as the typed call's HandlerError, with its text.
  const std::string boom = pp.opener.ask("delete boom");
  CHECK(boom.starts_with("error HandlerError "));
  CHECK(boom.find("cannot delete boom") != std::string::npos);
  CHECK(pp.acceptor.ask("delete boom").starts_with("error HandlerError "));
  // A typed coroutine handler: it called the opener back (the opener's echo names its caller,
  // the acceptor) before it replied with the typed results; its throw is the caller's HandlerError.
  CHECK(pp.opener.ask("describe plan a b") == fmt::format("described 2 plan from acceptor#{} via opener", pp.acceptorId));
  const std::string noDescribe = pp.opener.ask("describe boom");
  CHECK(noDescribe.starts_with("error HandlerError "));
  CHECK(noDescribe.find("cannot describe boom") != std::string::npos);
  // A $oneway method: the generated send, heard by the generated listener on the other end.
  CHECK(pp.opener.ask("notify one") == "sent");
  CHECK(pp.opener.ask("notify two") == "sent");
  CHECK(pp.acceptor.ask("heard 2") == "heard one:42,two:42");
  CHECK(pp.acceptor.ask("notify three") == "sent");
  CHECK(pp.opener.ask("heard 1") == "heard three:42");
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

TEST_CASE("a running synchronous handler on a port sees its caller's cancel, each direction on its own board") {
  TypedPortPair pp("typed-port-cancel");
  pp.startOpener();
  // Both ends call Studio.slow on the other; both are their end's first call, so both carry the
  // same request id: a board shared by the two directions would cancel both at the first cancel.
  const std::string fromOpener = idOf(pp.opener.ask("slow"));
  CHECK(idOf(pp.acceptor.hear()) == fromOpener);  // slow-started, in the acceptor
  const std::string fromAcceptor = idOf(pp.acceptor.ask("slow"));
  CHECK(idOf(pp.opener.hear()) == fromAcceptor);  // slow-started, in the opener
  REQUIRE(fromOpener == fromAcceptor);
  pp.opener.tell("cancel");
  CHECK(pp.opener.hear() == "result Cancelled");
  CHECK(pp.acceptor.hear() == "slow-ended " + fromOpener);  // the sync handler saw the cancel
  // The acceptor's call, with the same id, runs on in the opener: its handler did not stop.
  CHECK(pp.opener.ask("running") == "running 1");
  pp.acceptor.tell("cancel");
  CHECK(pp.acceptor.hear() == "result Cancelled");
  CHECK(pp.opener.hear() == "slow-ended " + fromAcceptor);
  CHECK(pp.opener.ask("running") == "running 0");
  // The port goes on, both ways.
  CHECK(pp.opener.ask("echo after") == fmt::format("echo after from opener#{} 5", pp.openerId));
  CHECK(pp.acceptor.ask("echo after") == fmt::format("echo after from acceptor#{} 5", pp.acceptorId));
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

/// `caller` calls Studio.slow on `handler` with `timeout` ("0": the method's $timeoutMs) and
/// the handler spins until ctx.cancelled(): the caller gets Timeout and the handler sees it end.
void slowTimesOut(TypedPortPeer& caller, TypedPortPeer& handler, const std::string& timeout) {
  const std::string id = idOf(caller.ask("slow " + timeout));
  CHECK(idOf(handler.hear()) == id);  // slow-started
  CHECK(caller.hear() == "result Timeout");
  CHECK(handler.hear() == "slow-ended " + id);
}

TEST_CASE("a running synchronous handler on a port sees its caller's deadline; the caller gets Timeout") {
  TypedPortPair pp("typed-port-deadline");
  pp.startOpener();
  slowTimesOut(pp.opener, pp.acceptor, "0");  // Studio.slow's $timeoutMs(150)
  slowTimesOut(pp.acceptor, pp.opener, "40");  // an explicit timeout, the other way
  CHECK(pp.opener.ask("echo after") == fmt::format("echo after from opener#{} 5", pp.openerId));
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

TEST_CASE("a running synchronous handler on a port sees the port end: the caller's close, the caller's death") {
  for (const bool kill : {false, true}) {
    CAPTURE(kill);
    TypedPortPair pp(kill ? "typed-port-kill" : "typed-port-close");
    pp.startOpener();
    const std::string id = idOf(pp.opener.ask("slow"));
    CHECK(idOf(pp.acceptor.hear()) == id);
    if (kill) {
      REQUIRE(::kill(pp.opener.pid(), SIGKILL) == 0);
    } else {
      // "closed" and the call's result (its own close: Cancelled) come from two threads.
      pp.opener.tell("close");
      std::vector<std::string> lines{pp.opener.hear(), pp.opener.hear()};
      std::sort(lines.begin(), lines.end());
      CHECK(lines == std::vector<std::string>{"closed", "result Cancelled"});
    }
    CHECK(pp.acceptor.hear() == "slow-ended " + id);  // ctx.cancelled() turned true
    CHECK((kill ? pp.opener.join() : pp.opener.finish()) == (kill ? 128 + SIGKILL : 0));
    CHECK(pp.acceptor.finish() == 0);
  }
}
