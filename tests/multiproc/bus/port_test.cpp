// Ports (docs/architecture.md §16) across real processes: two windows, each in a forked child
// driven by the test process through a Link, open and accept a port, talk over it, and end it by
// close, kill -9 or revoke. Times from a kill to the survivor's result are measured across
// processes (CLOCK_MONOTONIC is system-wide); the program runs alone (meson is_parallel: false).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <condition_variable>
#include <csignal>
#include <fstream>
#include <mutex>
#include <thread>

#include "bus_test.hpp"
#include "port_peer.hpp"
#include "segment/segment.hpp"
#include "wire/handshake.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

// The product's budget from a death or a close to the survivor's result (the brief of issue 13);
// an ASan build's killed process takes longer to go (death_test.cpp).
constexpr double kEndMs = kAddressSanitizer ? 50 : 10;

/// One window of a port test, in a forked child: connects when the parent says "go", then
/// obeys the parent's commands (one line each, answered with one line):
///   open TARGET CHANNEL [RING] → "opened ID" | "error CODE MESSAGE" (RING: PortOptions::ringBytes)
///   invoke CHANNEL TEXT [MS] → "reply TEXT" | "error CODE" (MS: the call's timeout, default 5 s)
///   start-hang [CHANNEL]     → "started"; later, from another thread: "result CODE STAMP_NS"
///                              (CHANNEL: "hang" by default); cancel → cancels that call (no answer)
///   send CHANNEL TEXT        → "sent" | "error CODE";  heard N → the first N texts heard on "note"
///   close                    → "closed";  await-close → "close-listener CODE STAMP_NS"
///   listen CHANNEL | listen-throw CHANNEL (a listener that throws) → "listening"
///   unlisten                 → "unlistened" (every onPort registration reset)
///   done                     → exits.
/// The acceptor ("listen CHANNEL" first) takes ports on CHANNEL. Every port gets handlers "echo",
/// "whoami" (the caller's id and role) and "hang" (tells the parent "hanging", returns once the
/// call is cancelled or the port ended), "hang-async" (an async handler: tells "hanging", then a
/// thread tells "handler-cancelled" once its Responder is cancelled), a listener on "note", and a
/// close listener.
class PortPeer : public DrivenWindow {
 public:
  PortPeer(TestBus& tb, std::string role) : DrivenWindow(std::move(role)) {
    forkBody(tb, [this](const std::string& bus) { body(bus); });
  }

 private:
  struct State : PortHolder {
    std::string closed;  // "CODE STAMP" once the close listener ran
    Inbox notes;
    std::vector<std::thread> responders;  // hang-async's watchers, joined at the end
  };

  void setup(State& st, const std::shared_ptr<Port>& p) {
    const Link& link = link_;
    std::lock_guard lk(st.mu);
    st.port = p;
    st.regs.push_back(p->handle("echo", echoHandler()));
    st.regs.push_back(p->handle("whoami", textHandler([](const std::string&, const CallContext& ctx) {
      return fmt::format("{} {}", ctx.sourceWindowId, ctx.sourceRole);
    })));
    st.regs.push_back(p->handle("hang", [&link](const Message&, Builder&, const CallContext& ctx) {
      link.tellParent("hanging");
      // Polls its own cancellation (the port's end turns it true): not a wait for the test.
      while (!ctx.cancelled()) std::this_thread::sleep_for(200us);  // allowed: cancelled() has no wait; the handler polls the event under test
    }));
    st.regs.push_back(p->handleAsync("hang-async", [&link, &st](const Message&, Responder r, const CallContext&) {
      link.tellParent("hanging");
      std::lock_guard lk2(st.mu);
      st.responders.emplace_back([&link, r = std::move(r)] {
        // Polls the Responder's cancellation (a Cancel frame turns it true): not a wait for the test.
        while (!r.cancelled()) std::this_thread::sleep_for(200us);  // allowed: cancelled() has no wait; polls the event under test
        link.tellParent("handler-cancelled");
      });
    }));
    st.regs.push_back(p->on("note", [&st](const Message& m, const CallContext&) { st.notes.add(textOf(m)); }));
    st.regs.push_back(p->onClose([&st](const Error& why) {
      std::lock_guard lk2(st.mu);
      st.closed = fmt::format("{} {}", errorCodeName(why.code), nowNs());
      st.cv.notify_all();
    }));
    p->start();
  }

  /// A hostile opener: writes a record header claiming more bytes than the ring holds where its
  /// next record would go in port `id`'s ring to the acceptor (nothing was sent on it yet), and
  /// wakes the acceptor. The mapping is found by the segment's name in /proc/self/maps.
  static void scribble(const std::string& bus, std::uint64_t id) {
    std::uint8_t* base = portMapping(bus, id);
    const auto layout = detail::segmentLayout(detail::kDefaultPortRingBytes, detail::kDefaultPortRingBytes);
    auto* control = reinterpret_cast<detail::RingControl*>(base + layout.outboxOffset);
    auto* record = detail::headerAt(base + layout.outboxOffset + sizeof(detail::RingControl), 0);
    record->type = detail::kRecordData;
    record->length.store(1 << 24, std::memory_order_release);  // pairs with the consumer's acquire
    detail::wakeAll(control->dataReady);
  }

  void body(const std::string& bus) {
    auto w = connectWindow(bus, role_);
    State st;
    std::vector<Registration> regs;
    std::thread waiter;
    Call pending;
    announceReady(*w);
    auto port = [&] { return st.get(); };
    for (;;) {
      const auto cmd = words(link_.hearParent(120s));
      if (cmd.empty() || cmd[0] == "done") break;
      if (cmd[0] == "listen") {
        regs.push_back(w->onPort(cmd[1], [this, &st](std::shared_ptr<Port> p) { setup(st, p); }));
        link_.tellParent("listening");
      } else if (cmd[0] == "listen-throw") {
        regs.push_back(w->onPort(cmd[1], [](std::shared_ptr<Port>) { throw std::runtime_error("not today"); }));
        link_.tellParent("listening");
      } else if (cmd[0] == "unlisten") {
        regs.clear();
        link_.tellParent("unlistened");
      } else if (cmd[0] == "open") {
        const auto ring = static_cast<std::uint32_t>(cmd.size() > 3 ? std::stoul(cmd[3]) : 0);
        answerOpen(link_, *w, cmd[1], cmd[2], {.ringBytes = ring, .timeout = 5000ms},
                   [&](const std::shared_ptr<Port>& p) { setup(st, p); });
      } else if (cmd[0] == "invoke") {
        const std::chrono::milliseconds timeout(cmd.size() > 3 ? std::stol(cmd[3]) : 5000);
        auto r = port()->invoke(cmd[1], text(cmd[2]), {.timeout = timeout}).get();
        link_.tellParent(r ? "reply " + textOf(*r) : "error " + std::string(errorCodeName(r.code())));
      } else if (cmd[0] == "start-hang") {
        Call call = port()->invoke(cmd.size() > 1 ? cmd[1] : "hang", {}, {.timeout = 20000ms});
        pending = call;
        waiter = std::thread([this, call]() mutable {
          auto r = call.get();
          link_.tellParent(fmt::format("result {} {}", r ? "Ok" : errorCodeName(r.code()), nowNs()));
        });
        link_.tellParent("started");
      } else if (cmd[0] == "cancel") {
        pending.cancel();
      } else if (cmd[0] == "send") {
        auto r = port()->send(cmd[1], text(cmd[2]));
        link_.tellParent(r ? "sent" : "error " + std::string(errorCodeName(r.code())));
      } else if (cmd[0] == "heard") {
        const std::size_t n = std::stoul(cmd[1]);
        st.notes.await(n);
        link_.tellParent("heard " + st.notes.await(n));
      } else if (cmd[0] == "close") {
        port()->close();
        link_.tellParent("closed");
      } else if (cmd[0] == "scribble") {
        scribble(bus, std::stoull(cmd[1]));
        link_.tellParent("scribbled");
      } else if (cmd[0] == "await-close") {
        std::unique_lock lk(st.mu);
        st.cv.wait_for(lk, 10s, [&] { return !st.closed.empty(); });
        link_.tellParent("close-listener " + st.closed);
      }
    }
    if (waiter.joinable()) waiter.join();
    std::vector<std::thread> responders;
    {
      std::lock_guard lk(st.mu);
      responders.swap(st.responders);
    }
    for (auto& t : responders) t.join();
    st.drop();
  }
};

/// The two ends of a port on "chat": the acceptor listens, the opener opens. Forked before the
/// supervisor's dispatch thread runs (TestBus).
struct PortPair {
  explicit PortPair(std::string_view tag) : tb(tag, {}, false), acceptor(tb, "acceptor"), opener(tb, "opener") {
    tb->startDispatchThread();
    acceptorId = acceptor.start(tb);
    openerId = opener.start(tb);
    REQUIRE(acceptor.ask("listen chat") == "listening");
  }
  std::uint64_t open() {
    const auto r = words(opener.ask("open acceptor chat"));
    REQUIRE_MESSAGE(r[0] == "opened", fmt::format("{}", fmt::join(r, " ")));
    return std::stoull(r[1]);
  }
  TestBus tb;
  PortPeer acceptor, opener;
  std::uint32_t acceptorId = 0, openerId = 0;
};

/// The stamp (CLOCK_MONOTONIC ns) in word `at` of a line, as ms since `since`.
double stampMs(const std::vector<std::string>& w, std::size_t at, std::int64_t since) {
  return static_cast<double>(std::stoll(w.at(at)) - since) / 1e6;
}


}  // namespace

TEST_CASE("a port carries send/on and invoke/handle both ways, and the supervisor lists it") {
  PortPair pp("port-roundtrip");
  const std::uint64_t id = pp.open();
  CHECK(pp.opener.ask("invoke echo hello") == "reply hello");
  CHECK(pp.acceptor.ask("invoke echo back") == "reply back");
  // The handler's context names the peer as the supervisor knows it, not as the frame says.
  CHECK(pp.opener.ask("invoke whoami x") == fmt::format("reply {} opener", pp.openerId));
  CHECK(pp.acceptor.ask("invoke whoami x") == fmt::format("reply {} acceptor", pp.acceptorId));
  CHECK(pp.opener.ask("send note one") == "sent");
  CHECK(pp.opener.ask("send note two") == "sent");
  CHECK(pp.acceptor.ask("heard 2") == "heard one,two");
  CHECK(pp.opener.ask("invoke nobody x") == "error NoHandler");
  const auto ports = pp.tb->ports();
  REQUIRE(ports.size() == 1);
  CHECK(ports[0].id == id);
  CHECK(ports[0].opener == pp.openerId);
  CHECK(ports[0].acceptor == pp.acceptorId);
  CHECK(ports[0].channel == "chat");
  CHECK(ports[0].accepted);
  // The supervisor maps the two windows' segments and the port's, and keeps no descriptor of any.
  CHECK(segmentsHeld(pp.tb.bus) == SegmentsHeld{3, 0});
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

TEST_CASE("opening a port is checked like an invoke: a role the policy forbids gets Denied") {
  PortPair pp("port-denied");
  pp.tb->setPolicy(Channel("chat"), ChannelPolicy{{"acceptor"}});  // the opener may not invoke "chat"
  CHECK(words(pp.opener.ask("open acceptor chat"))[1] == "Denied");
  CHECK(pp.tb->ports().empty());
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

TEST_CASE("a port to a window without an onPort listener is NoHandler, to one that throws HandlerError, to no window NoTarget, too large or to itself InvalidArgument") {
  PortPair pp("port-nohandler");
  CHECK(words(pp.opener.ask("open acceptor elsewhere"))[1] == "NoHandler");
  CHECK(words(pp.opener.ask("open nobody chat"))[1] == "NoTarget");
  CHECK(words(pp.opener.ask("open opener chat"))[1] == "InvalidArgument");  // a port to itself
  // Rings larger than a window's (the supervisor's default: 1 MiB) are refused by the supervisor;
  // a size that is no power of two already by the window.
  CHECK(words(pp.opener.ask("open acceptor chat 4194304"))[1] == "InvalidArgument");
  CHECK(words(pp.opener.ask("open acceptor chat 5000"))[1] == "InvalidArgument");
  REQUIRE(pp.acceptor.ask("listen-throw thrower") == "listening");
  CHECK(words(pp.opener.ask("open acceptor thrower"))[1] == "HandlerError");
  REQUIRE(pp.acceptor.ask("unlisten") == "unlistened");
  CHECK(words(pp.opener.ask("open acceptor chat"))[1] == "NoHandler");
  CHECK(pp.tb->ports().empty());
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

namespace {

/// While `caller` waits for the other side's "hang" handler, `end` ends the port (the other side
/// closes it, or dies); checks that the call fails with TargetGone within kEndMs and that the
/// caller's close listener ran with TargetGone.
void endDuringCall(PortPeer& caller, PortPeer& other, const char* what, const std::function<void()>& end) {
  REQUIRE(caller.ask("start-hang") == "started");
  REQUIRE(other.hear() == "hanging");
  const std::int64_t t0 = nowNs();
  end();
  const auto result = words(caller.hear());
  CHECK(result[1] == "TargetGone");
  const double ms = stampMs(result, 2, t0);
  MESSAGE(std::string(what) << " → the peer's TargetGone: " << ms << " ms");
  CHECK(ms < kEndMs);
  CHECK(words(caller.ask("await-close"))[1] == "TargetGone");
}

/// Runs `body` twice on a fresh open port: with the acceptor as the side that ends it and the
/// opener as the one that waits, then the other way round.
void eachSideEnds(const std::string& tag, const std::function<void(PortPair&, PortPeer& waiter, PortPeer& ender)>& body) {
  for (const bool acceptorEnds : {true, false}) {
    CAPTURE(acceptorEnds);
    PortPair pp(tag + (acceptorEnds ? "-a" : "-o"));
    pp.open();
    body(pp, acceptorEnds ? pp.opener : pp.acceptor, acceptorEnds ? pp.acceptor : pp.opener);
  }
}

}  // namespace

TEST_CASE("a port closed by either side fails the other side's pending call with TargetGone") {
  eachSideEnds("port-close", [](PortPair& pp, PortPeer& caller, PortPeer& closer) {
    endDuringCall(caller, closer, "close", [&] { REQUIRE(closer.ask("close") == "closed"); });
    CHECK(words(closer.ask("await-close"))[1] == "Cancelled");  // its own listener: its own close
    // An answer from the supervisor orders the closer's PortClose (same ring, written before).
    CHECK(closer.ask("open nobody chat").starts_with("error NoTarget"));
    CHECK(pp.tb->ports().empty());  // the closer told the supervisor
    CHECK(pp.opener.finish() == 0);
    CHECK(pp.acceptor.finish() == 0);
  });
}

TEST_CASE("kill -9 of either side fails the survivor's pending call with TargetGone; the supervisor lets go of the port") {
  eachSideEnds("port-kill", [](PortPair& pp, PortPeer& survivor, PortPeer& victim) {
    endDuringCall(survivor, victim, "kill -9", [&] { REQUIRE(::kill(victim.pid(), SIGKILL) == 0); });
    CHECK(victim.join() == 128 + SIGKILL);
    // The port's mappings went with it: the supervisor and the survivor keep their window segments.
    REQUIRE(awaitCondition([&] { return pp.tb->ports().empty(); }));
    CHECK(segmentsHeld(pp.tb.bus) == SegmentsHeld{1, 0});
    // The survivor's window is unharmed: the supervisor still answers it.
    CHECK(survivor.ask("open nobody chat").starts_with("error NoTarget"));
    CHECK(pp.tb->ports().empty());
    CHECK(survivor.finish() == 0);
  });
}

TEST_CASE("a peer that scribbles into the port's ring ends only that port, with Corrupt where it was read") {
  PortPair pp("port-hostile");
  const std::uint64_t id = pp.open();
  REQUIRE(pp.opener.ask(fmt::format("scribble {}", id)) == "scribbled");
  CHECK(words(pp.acceptor.ask("await-close"))[1] == "Corrupt");
  CHECK(words(pp.opener.ask("await-close"))[1] == "TargetGone");
  // Both windows are unharmed: the supervisor answers them, and a new port works. The answer
  // also orders the acceptor's PortClose (same ring, written before) before the next check.
  CHECK(pp.acceptor.ask("open nobody chat").starts_with("error NoTarget"));
  CHECK(pp.tb->ports().empty());  // the acceptor told the supervisor
  pp.open();
  CHECK(pp.opener.ask("invoke echo again") == "reply again");
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

TEST_CASE("a port call times out at its own deadline, and a cancel reaches the peer's async handler") {
  PortPair pp("port-deadline");
  pp.open();
  const std::int64_t t0 = nowNs();
  CHECK(pp.opener.ask("invoke hang x 50") == "error Timeout");
  CHECK(msSince(t0) >= 50);
  CHECK(pp.acceptor.hear() == "hanging");  // it ran, and returned at the call's deadline
  REQUIRE(pp.opener.ask("start-hang hang-async") == "started");
  REQUIRE(pp.acceptor.hear() == "hanging");
  pp.opener.tell("cancel");
  CHECK(words(pp.opener.hear())[1] == "Cancelled");
  CHECK(pp.acceptor.hear() == "handler-cancelled");
  CHECK(pp.opener.ask("invoke echo still") == "reply still");  // the port goes on
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}

TEST_CASE("the supervisor revokes a port: both sides end with TargetGone") {
  PortPair pp("port-revoke");
  const std::uint64_t id = pp.open();
  REQUIRE(pp.opener.ask("start-hang") == "started");
  REQUIRE(pp.acceptor.hear() == "hanging");
  REQUIRE(pp.tb->revokePort(id).ok());
  CHECK(words(pp.opener.hear())[1] == "TargetGone");
  CHECK(words(pp.opener.ask("await-close"))[1] == "TargetGone");
  CHECK(words(pp.acceptor.ask("await-close"))[1] == "TargetGone");
  CHECK(pp.tb->ports().empty());
  CHECK(pp.tb->revokePort(id).code() == ErrorCode::NoTarget);
  CHECK(words(pp.opener.ask("send note x"))[1] == "TargetGone");
  CHECK(pp.opener.finish() == 0);
  CHECK(pp.acceptor.finish() == 0);
}
