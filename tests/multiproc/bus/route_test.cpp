// Direct routes (docs/architecture.md §19) across real processes: an "editor" window calls and
// sends to role "dashboard"; after the first routed call of a channel the supervisor grants a
// route port and the later ones go over it. What is checked: every answer comes from the right
// window with the caller's context, the stats count every call (and which went direct), one-way
// messages keep their order across the switch, cancel and deadlines reach the target, the
// target's death gives TargetGone and the next call finds the window that took the role, a newer
// window taking the role while calls stream (the first closing gracefully) loses none and gets
// none meant for the first, a policy change closes the routes without losing a call, and an
// inspector sees direct calls and sends as the routed ones they stand for. Every child is forked before the
// supervisor's dispatch thread starts (TestBus); children report through mailboxes on main.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <csignal>
#include <deque>

#include "bus_test.hpp"
#include "shmbus/inspect.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

SupervisorOptions routed() {
  SupervisorOptions o;
  o.directRoutes = true;
  return o;
}

/// The dashboard's handlers: "echo" answers "TEXT SOURCE_ID SOURCE_ROLE MY_ID"; "slow" answers
/// at once unless the text is "block": then it tells main "entered", polls its cancellation and
/// tells main "left" once it turned true (caller's cancel, deadline or the port's end); "tick"
/// listener checks the order of numbered one-way messages and "count" answers "N ORDERED".
ServedWindow::Setup dashboardSetup() {
  return [](Window& w, std::vector<Registration>& regs) {
    auto next = std::make_shared<int>(0);
    auto ordered = std::make_shared<bool>(true);
    const std::uint32_t me = w.id();
    regs.push_back(w.handle("echo", textHandler([me](const std::string& t, const CallContext& ctx) {
      return fmt::format("{} {} {} {}", t, ctx.sourceWindowId, ctx.sourceRole, me);
    })));
    regs.push_back(w.handle("slow", textHandler([&w, me](const std::string& t, const CallContext& ctx) {
      if (t != "block") return fmt::format("{} {}", t, me);
      (void)w.send("entered", text("block"));
      // Polls its own cancellation (no wait exists for it): the event under test.
      while (!ctx.cancelled()) std::this_thread::sleep_for(200us);  // allowed: polls the event under test
      (void)w.send("left", text("block"));
      return std::string("late");
    })));
    regs.push_back(w.on("tick", [next, ordered](const Message& m, const CallContext&) {
      // 10 µs of work per message: the dashboard falls behind, so routed messages queue in its
      // inbox while direct ones queue on the route (a round reads at most 64 of each).
      const auto until = nowNs() + 10'000;
      while (nowNs() < until) {
      }
      if (std::stoi(textOf(m)) != *next) *ordered = false;
      ++*next;
    }));
    regs.push_back(w.handle("count", textHandler([next, ordered](const std::string&, const CallContext&) {
      return fmt::format("{} {}", *next, *ordered ? "ordered" : "REORDERED");
    })));
  };
}

const RouterStats::ChannelStats* channelStats(const RouterStats& s, const std::string& name) {
  for (const auto& c : s.channels) {
    if (c.channel == name) return &c;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("calls after the first go over a direct route, answered with the caller's context and counted") {
  TestBus tb("route-calls", routed(), false);
  Mailbox result(*tb.sup, "result");
  Link link;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    auto round = [&](int from, int to) {
      for (int i = from; i < to; ++i) {
        const auto got = words(replyText(w->invokeIn("dashboard", "echo", text(std::to_string(i))), "echo"));
        childCheck(got.size() == 4 && got[0] == std::to_string(i) && got[1] == std::to_string(w->id()) &&
                       got[2] == "editor",
                   "echo answered with the caller's context");
      }
    };
    round(0, 200);
    (void)w->send("result", text("round1"));
    link.hearParent(120s);
    round(200, 300);  // after the policy change: routed again, then a new route
    (void)w->send("result", text("round2"));
    link.hearParent(120s);
  });
  tb->startDispatchThread();
  dashboard.start();
  editor.go();
  REQUIRE(result.next(30s).text == "round1");
  RouterStats s = tb->stats();
  const auto* echo = channelStats(s, "echo");
  REQUIRE(echo != nullptr);
  CHECK(echo->calls == 200);
  // The first call went routed (it made the grant); the grant is read before the next reply.
  CHECK(echo->directCalls >= 190);
  CHECK(echo->directCalls < 200);
  CHECK(echo->errors.empty());
  auto ports = tb->ports();
  REQUIRE(ports.size() == 1);
  CHECK(ports[0].route);
  CHECK(ports[0].acceptor == dashboard.id());
  // A policy change closes every route (granted under the old policy); nothing is lost.
  REQUIRE(tb->setPolicy(tb->policy()).ok());
  CHECK(tb->ports().empty());
  link.tellChild("go");
  REQUIRE(result.next(30s).text == "round2");
  s = tb->stats();
  echo = channelStats(s, "echo");
  REQUIRE(echo != nullptr);
  CHECK(echo->calls == 300);
  CHECK(echo->errors.empty());
  CHECK(echo->directCalls >= 280);
  link.tellChild("go");
  CHECK(editor.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("one-way messages keep their order across the switch to a direct route") {
  TestBus tb("route-order", routed(), false);
  Mailbox result(*tb.sup, "result");
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  constexpr int kTicks = 5000;
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    w->startDispatchThread();  // grants are read while the sends go on
    for (int i = 0; i < kTicks;) {
      auto r = w->sendTo("dashboard", "tick", text(std::to_string(i)));
      if (r) {
        // A pause now and then (pacing, not a synchronisation): the grant is read while routed
        // messages still queue ahead of the dashboard, which is slower than this loop.
        if (++i % 50 == 0) std::this_thread::sleep_for(50us);  // allowed: pacing
      } else {
        childCheck(r.code() == ErrorCode::Full, "send: " + r.error().toString());
        std::this_thread::yield();  // the dashboard is behind: try the same message again
      }
    }
    (void)w->send("result", text(replyText(w->invokeIn("dashboard", "count"), "count")));
  });
  tb->startDispatchThread();
  dashboard.start();
  editor.go();
  CHECK(result.next(60s).text == fmt::format("{} ordered", kTicks));
  const auto s = tb->stats();
  const auto* tick = channelStats(s, "tick");
  REQUIRE(tick != nullptr);
  CHECK(tick->messages == kTicks);
  CHECK(tick->directMessages > 0);
  CHECK(editor.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("a direct call's cancel and deadline reach the target") {
  TestBus tb("route-cancel", routed(), false);
  Mailbox result(*tb.sup, "result"), entered(*tb.sup, "entered"), left(*tb.sup, "left");
  Link link;
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    w->startDispatchThread();
    for (int i = 0; i < 3; ++i) replyText(w->invokeIn("dashboard", "slow", text("x")), "slow");  // the route
    Call c = w->invokeIn("dashboard", "slow", text("block"), CallOptions{.timeout = 10s});
    link.hearParent(120s);  // the handler entered
    c.cancel();
    auto r = c.get();
    (void)w->send("result", text(r ? "ok" : errorCodeName(r.code())));
    link.hearParent(120s);
    const auto start = nowNs();
    auto t = w->invokeIn("dashboard", "slow", text("block"), CallOptions{.timeout = 300ms}).get();
    (void)w->send("result", text(fmt::format("{} {}", t ? "ok" : errorCodeName(t.code()), msSince(start) < 5000)));
  });
  tb->startDispatchThread();
  dashboard.start();
  editor.go();
  REQUIRE(entered.next(30s).text == "block");
  link.tellChild("cancel");
  CHECK(result.next(30s).text == "Cancelled");
  CHECK(left.next(30s).text == "block");  // the handler saw the caller's cancel
  link.tellChild("deadline");
  REQUIRE(entered.next(30s).text == "block");
  CHECK(result.next(30s).text == "Timeout true");
  CHECK(left.next(30s).text == "block");  // and the deadline
  const auto s = tb->stats();
  const auto* slow = channelStats(s, "slow");
  REQUIRE(slow != nullptr);
  CHECK(slow->directCalls >= 3);
  CHECK(slow->errors.at("Cancelled") == 1);
  CHECK(slow->errors.at("Timeout") == 1);
  CHECK(editor.join(10s) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("the target's death fails a direct call with TargetGone; the next call finds the new window") {
  TestBus tb("route-death", routed(), false);
  Mailbox result(*tb.sup, "result"), entered(*tb.sup, "entered");
  Link link;
  ServedWindow first(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  ServedWindow second(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    w->startDispatchThread();
    for (int i = 0; i < 3; ++i) replyText(w->invokeIn("dashboard", "slow", text("x")), "slow");  // the route
    auto r = w->invokeIn("dashboard", "slow", text("block"), CallOptions{.timeout = 20s}).get();
    (void)w->send("result", text(r ? "ok" : errorCodeName(r.code())));
    link.hearParent(120s);  // the second dashboard is up
    for (int i = 0; i < 3; ++i) {
      const auto got = words(replyText(w->invokeIn("dashboard", "slow", text("y")), "slow after"));
      (void)w->send("result", text(got.size() == 2 ? got[1] : "?"));
    }
  });
  tb->startDispatchThread();
  first.start();
  editor.go();
  REQUIRE(entered.next(30s).text == "block");
  ::kill(first.pid(), SIGKILL);
  CHECK(result.next(30s).text == "TargetGone");
  // The direct call that failed counts in the stats, though it failed at the caller after the
  // route ended: its table is read until the caller goes, then folded.
  auto goneCount = [&] {
    const RouterStats all = tb->stats();
    const auto s = channelStats(all, "slow");
    REQUIRE(s != nullptr);
    return s->errors.count("TargetGone") != 0 ? s->errors.at("TargetGone") : 0;
  };
  CHECK(goneCount() == 1);
  second.start();
  link.tellChild("go");
  for (int i = 0; i < 3; ++i) CHECK(result.next(30s).text == std::to_string(second.id()));
  CHECK(editor.join(10s) == 0);
  CHECK(second.finish() == 0);
  CHECK(goneCount() == 1);
}

TEST_CASE("a newer window takes the role mid-stream of direct calls: none lost, none answered by the wrong window") {
  TestBus tb("route-handover", routed(), false);
  Mailbox result(*tb.sup, "result");
  // The first dashboard closes its window (handlers still registered) when told: a graceful end.
  Link firstLink;
  GatedChild first([&] {
    auto w = connectWindow(tb.bus, "dashboard");
    std::vector<Registration> regs;
    dashboardSetup()(*w, regs);
    w->startDispatchThread();
    firstLink.tellParent(std::to_string(w->id()));
    firstLink.hearParent(120s);
    w->close();
    firstLink.tellParent("closed");
    firstLink.hearParent(120s);
  });
  ServedWindow second(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  // The editor keeps 8 calls in flight to role "dashboard" and writes down, in the order it made
  // them, who answered each (its window id) or how it failed; it stops 300 outcomes after the
  // parent said the first dashboard closed.
  Link editorLink;
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    w->startDispatchThread();
    std::deque<std::pair<int, Call>> inFlight;
    std::vector<std::string> outcomes;
    std::string firstId;
    std::size_t closedAt = SIZE_MAX;  // calls made from here on must not reach the first window
    bool steady = false;
    int next = 0;
    while (closedAt == SIZE_MAX || outcomes.size() < closedAt + 300 || !inFlight.empty()) {
      const bool more = closedAt == SIZE_MAX || static_cast<std::size_t>(next) < closedAt + 300;
      if (more && inFlight.size() < 8) {
        inFlight.emplace_back(next, w->invokeIn("dashboard", "echo", text(std::to_string(next)), {.timeout = 20s}));
        ++next;
      } else {
        auto [i, call] = std::move(inFlight.front());
        inFlight.pop_front();
        auto r = call.get();
        if (!r) {
          outcomes.emplace_back(errorCodeName(r.code()));
        } else {
          const auto got = words(textOf(*r));
          childCheck(got.size() == 4 && got[0] == std::to_string(i), "each answer is its own call's");
          childCheck(static_cast<std::size_t>(i) < closedAt || got[3] != firstId,
                     "a call made after the first window closed was answered by it");
          outcomes.push_back(got.size() == 4 ? got[3] : "?");
        }
      }
      if (!steady && outcomes.size() >= 300) {
        steady = true;
        (void)w->send("result", text("steady"));
      }
      if (closedAt == SIZE_MAX && editorLink.parentSpoke()) {
        firstId = words(editorLink.hearParent())[1];
        closedAt = static_cast<std::size_t>(next);
      }
    }
    // Runs of equal outcomes: "12:1500 TargetGone:3 13:300".
    std::string runs;
    for (std::size_t k = 0; k < outcomes.size();) {
      std::size_t n = 1;
      while (k + n < outcomes.size() && outcomes[k + n] == outcomes[k]) ++n;
      runs += fmt::format("{}{}:{}", runs.empty() ? "" : " ", outcomes[k], n);
      k += n;
    }
    (void)w->send("result", text(runs));
    editorLink.hearParent(120s);
  });
  tb->startDispatchThread();
  first.go();
  const std::string firstId = firstLink.hearChild(30s);
  editor.go();
  REQUIRE(result.next(30s).text == "steady");
  second.start();  // registered: the role still resolves to the first window, the older one
  firstLink.tellChild("close");
  REQUIRE(firstLink.hearChild(30s) == "closed");
  editorLink.tellChild("closed " + firstId);
  const std::string runs = result.next(60s).text;
  INFO("outcomes in call order: " << runs);
  // The first window answered every call until it closed, and the second answered every later
  // one: nothing lost, nothing answered twice or by the wrong window. Between the two, failing
  // with TargetGone: the direct calls in flight when the first window closed (at most the 8),
  // and then the routed calls the supervisor still routed to it until it saw it gone (at most 8
  // more: as without direct routes).
  std::vector<std::pair<std::string, std::size_t>> seq;
  for (const auto& r : words(runs)) {
    const auto colon = r.rfind(':');
    seq.emplace_back(r.substr(0, colon), std::stoul(r.substr(colon + 1)));
  }
  REQUIRE(seq.size() >= 2);
  CHECK(seq.front().first == firstId);
  CHECK(seq.front().second >= 300);
  CHECK(seq.back().first == std::to_string(second.id()));
  CHECK(seq.back().second >= 300 - 16);
  CHECK(seq.size() <= 3);
  if (seq.size() == 3) {
    CHECK(seq[1].first == "TargetGone");
    CHECK(seq[1].second <= 16);
  }
  std::size_t total = 0;
  for (const auto& [who, n] : seq) total += n;
  const auto s = tb->stats();
  const auto* echo = channelStats(s, "echo");
  REQUIRE(echo != nullptr);
  CHECK(echo->calls == total);  // every call counted once, direct or routed
  // All but the failures and, for each of the two windows, the calls made before the grant came
  // back (at most the 8 in flight).
  CHECK(echo->directCalls + 8 + 2 * 8 >= total);
  // The second window's route is the one left.
  const auto ports = tb->ports();
  REQUIRE(ports.size() == 1);
  CHECK(ports[0].route);
  CHECK(ports[0].acceptor == second.id());
  editorLink.tellChild("done");
  firstLink.tellChild("exit");
  CHECK(editor.join(10s) == 0);
  CHECK(first.join(10s) == 0);
  CHECK(second.finish() == 0);
}

TEST_CASE("an inspector sees every direct call and send as the routed one it stands for, and no route port") {
  TestBus tb("route-trace", routed(), false);
  Mailbox result(*tb.sup, "result");
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", dashboardSetup());
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    for (int i = 0; i < 5; ++i) {
      childCheck(words(replyText(w->invokeIn("dashboard", "echo", text(std::to_string(i))), "echo")).size() == 4, "echo");
      expectOk(w->sendTo("dashboard", "tick", text(std::to_string(i))), "tick");
    }
    (void)w->send("result", text(replyText(w->invokeIn("dashboard", "count"), "count")));
  });
  tb->startDispatchThread();
  auto in = Inspector::attach(tb.bus);
  REQUIRE(in.ok());
  dashboard.start();
  editor.go();
  CHECK(result.next(30s).text == "5 ordered");
  CHECK(editor.join(10s) == 0);
  // The editor's end batches its direct records (flushed at its close at the latest).
  std::size_t calls = 0, sends = 0, directCalls = 0, directSends = 0;
  while (calls < 6 || sends < 5) {
    auto e = (*in)->next(10s);
    REQUIRE(e.ok());
    REQUIRE_MESSAGE(e->has_value(), "the trace ended after " << calls << " calls and " << sends << " sends");
    const TraceEvent& ev = **e;
    INFO(toText(ev));
    CHECK(ev.kind != TraceKind::PortOpen);  // a route port is the router's path, not an event
    CHECK(ev.kind != TraceKind::PortClose);
    if (ev.channel != "echo" && ev.channel != "tick" && ev.channel != "count") continue;
    CHECK(ev.sourceRole == "editor");
    CHECK(ev.targetId == dashboard.id());
    CHECK(ev.targetRole == "dashboard");
    CHECK(ev.status == ErrorCode::Ok);
    CHECK(ev.requestBytes > 0);
    if (ev.kind == TraceKind::Send) {
      ++sends;
      directSends += ev.portId != 0 ? 1 : 0;
    } else {
      CHECK(ev.kind == TraceKind::Invoke);
      ++calls;
      directCalls += ev.portId != 0 ? 1 : 0;
      CHECK(ev.replyBytes > 0);
    }
  }
  CHECK(calls == 6);
  CHECK(sends == 5);
  // The first call and the first send of each channel went routed (they made the grants).
  CHECK(directCalls >= 4);
  CHECK(directSends >= 4);
  CHECK(dashboard.finish() == 0);
}
