// Inputs and limits (issue 11, items 5 and 6): bad names and timeouts are InvalidArgument with the
// rule in the message, wherever they enter; connections that never finish their handshake are
// closed at the deadline; a bus takes at most maxWindows windows.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/resource.h>

#include <climits>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "bus_test.hpp"
#include "control/socket.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {
constexpr std::string_view kRoleRule = "role names are 1..64 characters of [A-Za-z0-9_.-], not starting with '.'";
constexpr std::string_view kChannelRule = "channel names are 1..128 characters of [A-Za-z0-9_.:-], not starting with '.'";

/// In a child: `r` failed with InvalidArgument and a message holding `part`.
template <typename R>
void expectInvalid(const R& r, std::string_view part, const std::string& what) {
  childCheck(r.code() == ErrorCode::InvalidArgument, what + ": got " + r.error().toString());
  childCheck(r.error().message.find(part) != std::string::npos, what + ": message '" + r.error().message +
                                                                      "' lacks '" + std::string(part) + "'");
}

/// Waits until the supervisor hangs up `fd` (recv returns 0 or ECONNRESET). False at `timeout`.
bool hungUp(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
  char b;
  const ssize_t n = ::recv(fd, &b, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}
}  // namespace

TEST_CASE("bad role names are InvalidArgument at connect, stating the rule") {
  TestBus tb("names", {}, /*dispatch=*/false);
  Child c = Child::fork([&] {
    for (const std::string& role : {std::string("a/b"), std::string("../../etc"), std::string(".hidden"),
                                    std::string("nul\0x", 5), std::string(100'000, 'r'), std::string()}) {
      WindowOptions o;
      o.bus = tb.bus;
      o.role = role;
      expectInvalid(Window::connect(o), kRoleRule, "connect as '" + role.substr(0, 20) + "'");
    }
    WindowOptions o;
    o.bus = tb.bus;
    o.role = "MAIN";
    expectInvalid(Window::connect(o), "reserved for the main process", "connect as MAIN");
    o.role = "main";
    childCheck(Window::connect(o).code() == ErrorCode::Denied, "connect as main");
    o.role = "editor";
    o.bus = "a/b";
    expectInvalid(Window::connect(o), "bus names are 1..64 characters of [A-Za-z0-9_-]", "bus a/b");
    o.bus = tb.bus;
    o.inboxBytes = 5000;
    expectInvalid(Window::connect(o), "powers of two", "ring size 5000");
    o.inboxBytes = 0;
    o.connectTimeout = -1ms;
    expectInvalid(Window::connect(o), "connectTimeout -1 ms must be positive", "negative connectTimeout");
  });
  tb->startDispatchThread();
  CHECK(c.join(30s) == 0);
  CHECK(tb->windows().empty());
}

TEST_CASE("a window's bad role targets, channel names and negative timeouts are InvalidArgument; huge timeouts work") {
  TestBus tb("wargs", {}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  Child c = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    expectInvalid(w->invokeIn("a/b", "echo").get(), kRoleRule, "invokeIn a/b");
    expectInvalid(w->sendTo("../../etc", "echo"), kRoleRule, "sendTo ../../etc");
    expectInvalid(w->sendTo("MAIN", "echo"), "reserved", "sendTo MAIN");
    expectInvalid(w->invoke("bad/channel").get(), kChannelRule, "invoke bad/channel");
    expectInvalid(w->send(std::string(200, 'c')), kChannelRule, "send to a 200-character channel");
    expectInvalid(w->invoke("echo", {}, {.timeout = -1ms}).get(), "timeout -1 ms is negative", "timeout -1");
    expectInvalid(w->invoke("echo", {}, {.timeout = std::chrono::milliseconds(LLONG_MIN)}).get(), "is negative",
                  "timeout min");
    expectInvalid(w->poll(-1ms), "is negative", "poll -1");
    // A huge timeout is clamped (kMaxTimeout), never overflowed into an instant Timeout.
    auto r = w->invoke("echo", text("long"), {.timeout = std::chrono::milliseconds(LONG_MAX / 2)}).get();
    expectOk(r, "invoke with timeout LONG_MAX/2");
    childCheck(textOf(*r) == "long", "reply");
    auto m = w->invoke("echo", text("max"), {.timeout = std::chrono::milliseconds::max()}).get();
    expectOk(m, "invoke with timeout max()");
    // The window is still fine after every refusal.
    childCheck(replyText(w->invoke("echo", text("ok")), "echo") == "ok", "echo after");
  });
  tb->startDispatchThread();
  CHECK(c.join(30s) == 0);
}

TEST_CASE("the supervisor's bad names, roles and timeouts are InvalidArgument with the rule") {
  for (const std::string& bus : {std::string("a/b"), std::string(""), std::string(65, 'b'), std::string("x\0y", 3)}) {
    SupervisorOptions o;
    o.bus = bus;
    auto s = Supervisor::create(o);
    CHECK(s.code() == ErrorCode::InvalidArgument);
    CHECK(s.error().message.find("bus names are 1..64 characters of [A-Za-z0-9_-]") != std::string::npos);
  }
  SupervisorOptions bad;
  bad.bus = uniqueBus("opts");
  bad.allowedRoles = {"editor", "a/b"};
  CHECK(Supervisor::create(bad).error().message.find(kRoleRule) != std::string::npos);
  bad.allowedRoles = {};
  bad.handshakeTimeout = 0ms;
  CHECK(Supervisor::create(bad).code() == ErrorCode::InvalidArgument);
  bad.handshakeTimeout = 1000ms;
  bad.maxWindows = 0;
  CHECK(Supervisor::create(bad).code() == ErrorCode::InvalidArgument);

  TestBus tb("sargs", {}, /*dispatch=*/false);
  Link link;
  Child window = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    link.hearParent(60s);
  });
  auto invalid = [](const auto& r, std::string_view part) {
    CHECK(r.code() == ErrorCode::InvalidArgument);
    CHECK_MESSAGE(r.error().message.find(part) != std::string::npos, r.error().message);
  };
  invalid(tb->spawn("a/b", {"true"}), kRoleRule);
  invalid(tb->spawn("MAIN", {"true"}), "reserved");
  invalid(tb->send("../../etc", "echo"), kRoleRule);
  invalid(tb->send("editor", "a b"), kChannelRule);
  invalid(tb->invoke("a/b", "echo").get(), kRoleRule);
  invalid(tb->invoke("editor", "echo", {}, {.timeout = -5ms}).get(), "timeout -5 ms is negative");
  invalid(tb->broadcast("echo", {}, {.roles = {"a/b"}}), kRoleRule);
  invalid(tb->broadcast("echo", {}, {.excludeRoles = {std::string("nul\0x", 5)}}), "'nul\\x00x'");
  invalid(tb->broadcast("bad/channel"), kChannelRule);
  invalid(tb->waitForRole("a/b", 10ms), kRoleRule);
  invalid(tb->waitForRole("editor", -1ms), "is negative");
  invalid(tb->poll(-1ms), "is negative");
  CHECK_THROWS_AS(tb->setChannelTimeout("echo", 0ms), UsageError);
  tb->startDispatchThread();
  // A huge wait does not overflow into an instant Timeout: it waits, and finds the window.
  auto found = tb->waitForRole("editor", std::chrono::milliseconds(LONG_MAX / 2));
  CHECK_MESSAGE(found.ok(), found.error().toString());
  link.tellChild("done");
  CHECK(window.join(20s) == 0);
}

TEST_CASE("connections that never finish their handshake are closed at the deadline; windows keep working") {
  SupervisorOptions o;
  o.handshakeTimeout = 300ms;
  TestBus tb("silent", o, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  Link link;
  Child window = Child::fork([&] { echoAroundParent(tb.bus, "editor", link); });
  tb->startDispatchThread();
  REQUIRE(link.hearChild() == "up");

  constexpr std::size_t kSilent = 130;  // more than the listen backlog: every one is accepted
  const std::int64_t start = nowNs();
  std::vector<detail::Fd> silent;
  for (std::size_t i = 0; i < kSilent; ++i) {
    auto fd = detail::connectSeqpacket(tb->socketPath());
    REQUIRE_MESSAGE(fd.ok(), fd.error().toString());
    silent.push_back(std::move(*fd));
  }
  for (auto& fd : silent) REQUIRE(hungUp(fd.get(), 10s));
  CHECK(msSince(start) >= 300.0);  // never before the deadline
  CHECK(tb->stats().handshakeTimeouts == kSilent);
  CHECK(tb->windows().size() == 1);  // the window that finished its handshake is still there

  link.tellChild("again");
  CHECK(window.join(20s) == 0);
}

TEST_CASE("a bus takes at most maxWindows windows: the next one gets Full naming the cap, a freed slot is reused") {
  SupervisorOptions o;
  o.maxWindows = 2;
  TestBus tb("cap", o, /*dispatch=*/false);
  Link first, second, third;
  auto holder = [&](const Link& l, const std::string& role) {
    return Child::fork([&l, &tb, role] {
      auto w = connectWindow(tb.bus, role);
      l.tellParent("up");
      l.hearParent(60s);
    });
  };
  Child one = holder(first, "one");
  Child two = holder(second, "two");
  Child three = Child::fork([&] {
    childCheck(third.hearParent(60s) == "try", "go");
    WindowOptions w;
    w.bus = tb.bus;
    w.role = "three";
    auto refused = Window::connect(w);
    childCheck(refused.code() == ErrorCode::Full, "third window: " + refused.error().toString());
    childCheck(refused.error().message.find("cap of 2 windows") != std::string::npos, refused.error().message);
    third.tellParent("refused");
    childCheck(third.hearParent(60s) == "again", "go again");
    auto admitted = Window::connect(w);
    expectOk(admitted, "third window once a slot is free");
    third.tellParent("admitted");
    third.hearParent(60s);
  });
  tb->startDispatchThread();
  REQUIRE(first.hearChild() == "up");
  REQUIRE(second.hearChild() == "up");
  third.tellChild("try");
  REQUIRE(third.hearChild() == "refused");
  CHECK(tb->stats().refusedWindows == 1);
  auto spawned = tb->spawn("four", {"true"});
  CHECK(spawned.code() == ErrorCode::Full);

  first.tellChild("done");
  CHECK(one.join(20s) == 0);
  REQUIRE(awaitCondition([&] { return tb->windows().size() == 1; }));
  third.tellChild("again");
  CHECK(third.hearChild() == "admitted");
  CHECK(awaitCondition([&] { return tb->windows().size() == 2; }));
  second.tellChild("done");
  third.tellChild("done");
  CHECK(two.join(20s) == 0);
  CHECK(three.join(20s) == 0);
}

TEST_CASE("a supervisor out of file descriptors closes new connections at once and serves again once they go") {
  // The supervisor runs in a child whose descriptor limit is low; the silent connections of this
  // process use up its descriptors (their handshake deadline is far away).
  const std::string bus = uniqueBus("nofd");
  Link link;
  Child supervisor = Child::fork([&] {
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = 48;
    childCheck(::setrlimit(RLIMIT_NOFILE, &lim) == 0, "setrlimit");
    SupervisorOptions o;
    o.bus = bus;
    o.handshakeTimeout = 60s;
    auto s = Supervisor::create(o);
    expectOk(s, "supervisor");
    auto h = (*s)->handle("echo", echoHandler());
    (*s)->startDispatchThread();
    link.tellParent((*s)->socketPath());
    childCheck(link.hearParent(60s) == "done", "done");
    const RouterStats st = (*s)->stats();
    childCheck(st.refusedWindows > 0, "no connection was refused for want of descriptors");
    childCheck(st.handshakeTimeouts == 0, "a handshake deadline passed");
  });
  const std::string socket = link.hearChild();
  constexpr std::size_t kSilent = 80;  // more than 48 descriptors, fewer than the listen backlog
  std::vector<detail::Fd> silent;
  for (std::size_t i = 0; i < kSilent; ++i) {
    auto fd = detail::connectSeqpacket(socket);
    REQUIRE_MESSAGE(fd.ok(), fd.error().toString());
    silent.push_back(std::move(*fd));
  }
  // The last one cannot have got a descriptor: it is closed, not left in the backlog.
  CHECK(hungUp(silent.back().get(), 20s));
  silent.clear();
  // Once the silent ones are gone the supervisor has descriptors again (it sees their hang-ups
  // in its own time: a connection that comes first may still be closed unheard).
  WindowOptions o;
  o.bus = bus;
  o.role = "editor";
  Result<std::unique_ptr<Window>> w = makeError(ErrorCode::BusClosed, "not tried");
  CHECK(awaitCondition([&] {
    w = Window::connect(o);
    return w.code() != ErrorCode::BusClosed;
  }, 20s));
  REQUIRE_MESSAGE(w.ok(), w.error().toString());
  auto back = (*w)->invoke("echo", text("back")).get();
  REQUIRE_MESSAGE(back.ok(), back.error().toString());
  CHECK(textOf(*back) == "back");
  (*w).reset();
  link.tellChild("done");
  CHECK(supervisor.join(20s) == 0);
}

TEST_CASE("a window with maxPendingCalls calls in flight gets Full for the next one, and can call again once one ends") {
  SupervisorOptions o;
  o.maxPendingCalls = 3;
  TestBus tb("pending-cap", o, /*dispatch=*/false);
  HeldCalls held(*tb.sup, "hold");
  Link link;
  Child caller = Child::fork([&] {
    auto w = connectWindow(tb.bus, "caller");
    std::vector<Call> calls;
    for (int i = 0; i < 3; ++i) calls.push_back(w->invoke("hold", text("x"), {.timeout = 30000ms}));
    link.tellParent("three");
    childCheck(link.hearParent(60s) == "fourth", "go");
    auto refused = w->invoke("hold", text("x")).get();
    childCheck(refused.code() == ErrorCode::Full, "fourth call: " + refused.error().toString());
    childCheck(refused.error().message.find("3 calls in flight") != std::string::npos, refused.error().message);
    link.tellParent("refused");
    childCheck(link.hearParent(60s) == "answered", "go again");
    for (auto& c : calls) expectOk(c.get(), "held call");
    expectOk(w->invoke("hold-free", text("x")).get(), "a call once the others ended");
  });
  auto free = tb->handle("hold-free", echoHandler());
  tb->startDispatchThread();
  REQUIRE(link.hearChild() == "three");
  REQUIRE(held.await(3));  // all three reached the handler
  link.tellChild("fourth");
  REQUIRE(link.hearChild() == "refused");
  CHECK(tb->stats().overPendingLimit == 1);
  held.answerAll();
  link.tellChild("answered");
  CHECK(caller.join(20s) == 0);
}
