// Unforgeable roles (issue 11, item 3): roles closed to registration by path (invitedRoles,
// inviteOnly) are given only by spawn() or a one-time invitation token (Supervisor::invite); the
// registry says how each window got its role and its uid; other uids are refused unless
// allowedUids names them.
#include <doctest/doctest.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// In a child: connecting `role` with `token` fails with Denied, its message holds `part` and
/// never the token's text.
void expectDenied(const std::string& bus, const std::string& role, const std::string& token, std::string_view part,
                  const std::string& what) {
  WindowOptions o;
  o.bus = bus;
  o.role = role;
  o.token = token;
  auto w = Window::connect(o);
  childCheck(w.code() == ErrorCode::Denied, what + ": got " + (w ? std::string("a window") : w.error().toString()));
  childCheck(w.error().message.find(part) != std::string::npos,
             what + ": message '" + w.error().message + "' lacks '" + std::string(part) + "'");
  childCheck(token.empty() || w.error().message.find(token) == std::string::npos, what + ": the token was echoed");
}

/// In a child: connects `role` with `token` (and `o`'s other options) and calls main's "echo".
std::unique_ptr<Window> connectInvited(const std::string& bus, const std::string& role, const std::string& token,
                                       WindowOptions o = {}) {
  o.token = token;
  auto w = connectWindow(bus, role, o);
  childCheck(replyText(w->invoke("echo", text("hi")), "echo") == "hi", "echo");
  return w;
}

/// How a window got its role, as text (doctest prints strings, not enum classes).
std::string how(Admission a) { return toString(a); }

/// The window with `role` in the registry (fails the test when absent).
WindowInfo windowWithRole(Supervisor& sup, const std::string& role) {
  for (const auto& w : sup.windows()) {
    if (w.role == role) return w;
  }
  FAIL("no window with role '" << role << "'");
  return {};
}

/// In a child: becomes uid 65534 and connects as `role` through `socket`: Denied, naming the uid.
void expectUidRefused(const std::string& bus, const std::string& socket, const std::string& role) {
  becomeNobody();
  WindowOptions o;
  o.bus = bus;
  o.role = role;
  o.socketPath = socket;
  auto w = Window::connect(o);
  childCheck(w.code() == ErrorCode::Denied, "got " + (w ? std::string("a window") : w.error().toString()));
  childCheck(w.error().message.find("uid 65534") != std::string::npos, w.error().message);
}

/// A child that becomes uid 65534, connects as "editor" through `socket`, announces ready and
/// stays until the parent's word on `link`.
Child nobodyEditor(const std::string& bus, const std::string& socket, Link& link) {
  return Child::fork([&] {
    becomeNobody();
    WindowOptions o;
    o.socketPath = socket;
    auto w = connectInvited(bus, "editor", "", o);
    announceReady(*w);
    link.hearParent();
  });
}
}  // namespace

TEST_CASE("an invited role is refused without a token; open roles still connect without one") {
  TestBus tb("inv-open", {.invitedRoles = {"editor"}}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  Link link;
  Child c = Child::fork([&] {
    expectDenied(tb.bus, "editor", "", "by invitation only", "editor without a token");
    auto w = connectInvited(tb.bus, "viewer", "");
    announceReady(*w);
    link.hearParent();  // live until the parent looked at the registry
  });
  tb->startDispatchThread();
  tb.awaitReady("viewer");
  const WindowInfo v = windowWithRole(*tb.sup, "viewer");
  CHECK(how(v.admission) == "open");
  CHECK(v.uid == ::getuid());
  link.tellChild("bye");
  CHECK(c.join(30s) == 0);
}

TEST_CASE("a token admits its role once: another role, a second use and an unknown token are Denied") {
  TestBus tb("inv-once", {.invitedRoles = {"editor"}}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  auto token = tb->invite("editor", 60s);
  REQUIRE(token.ok());
  CHECK(token->size() == 32);
  Link link;
  Child c = Child::fork([&] {
    expectDenied(tb.bus, "viewer", *token, "issued for another role", "a token for another role");
    expectDenied(tb.bus, "editor", std::string(32, '0'), "unknown", "an unknown token");
    auto w = connectInvited(tb.bus, "editor", *token);
    announceReady(*w);
    expectDenied(tb.bus, "editor", *token, "already used", "the token's second use");
    link.tellParent("done");
    link.hearParent();
  });
  tb->startDispatchThread();
  tb.awaitReady("editor");
  CHECK(link.hearChild() == "done");
  const WindowInfo e = windowWithRole(*tb.sup, "editor");
  CHECK(how(e.admission) == "invited");
  CHECK(e.uid == ::getuid());
  CHECK_FALSE(e.spawned);

  // The inspector's snapshot shows the same.
  auto insp = Inspector::attach(tb.bus);
  REQUIRE(insp.ok());
  auto snap = (*insp)->snapshot();
  REQUIRE(snap.ok());
  REQUIRE(snap->windows.size() == 1);
  CHECK(how(snap->windows[0].admission) == "invited");
  CHECK(snap->windows[0].uid == ::getuid());
  link.tellChild("bye");
  CHECK(c.join(30s) == 0);
}

TEST_CASE("a token is refused after its ttl") {
  TestBus tb("inv-ttl", {.inviteOnly = true}, /*dispatch=*/false);
  auto token = tb->invite("editor", 20ms);
  const std::int64_t issued = nowNs();  // the expiry is at or before issued + 20 ms
  REQUIRE(token.ok());
  Child c = Child::fork([&] {
    // allowed: the expiry is a time, not an event; one absolute sleep until it has certainly passed.
    const std::int64_t expiry = issued + 20'000'000;
    const timespec at{static_cast<time_t>(expiry / 1'000'000'000), static_cast<long>(expiry % 1'000'000'000)};
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, nullptr) == EINTR) {
    }
    childCheck(nowNs() >= issued + 20'000'000, "the clock passed the expiry");
    expectDenied(tb.bus, "editor", *token, "expired", "an expired token");
  });
  tb->startDispatchThread();
  CHECK(c.join(30s) == 0);
  CHECK(tb->windows().empty());
}

TEST_CASE("$SHMBUS_TOKEN carries the token when WindowOptions::token is empty; inviteOnly closes every role") {
  TestBus tb("inv-env", {.inviteOnly = true}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  auto token = tb->invite("worker", 60s);
  auto forMain = tb->invite("main", 60s);
  REQUIRE(token.ok());
  REQUIRE(forMain.ok());
  Link link;
  Child c = Child::fork([&] {
    expectDenied(tb.bus, "viewer", "", "by invitation only", "any role without a token");
    ::setenv("SHMBUS_TOKEN", token->c_str(), 1);
    auto w = connectInvited(tb.bus, "worker", "");
    childCheck(std::getenv("SHMBUS_TOKEN") == nullptr, "connect removed $SHMBUS_TOKEN");
    auto m = connectInvited(tb.bus, "main", *forMain);  // as spawn() may, an invitation may give "main"
    announceReady(*w);
    link.hearParent();
  });
  tb->startDispatchThread();
  tb.awaitReady("worker");
  CHECK(how(windowWithRole(*tb.sup, "worker").admission) == "invited");
  CHECK(how(windowWithRole(*tb.sup, "main").admission) == "invited");
  link.tellChild("bye");
  CHECK(c.join(30s) == 0);
}

TEST_CASE("bad invitations and options are InvalidArgument, never echoing a token") {
  TestBus tb("inv-args", {}, /*dispatch=*/false);
  CHECK(tb->invite("a/b", 1s).code() == ErrorCode::InvalidArgument);
  CHECK(tb->invite("editor", -1ms).code() == ErrorCode::InvalidArgument);
  CHECK(tb->invite("editor", 0ms).code() == ErrorCode::InvalidArgument);
  CHECK(tb->invite("editor", std::chrono::milliseconds::max()).ok());  // clamped to kMaxTimeout
  CHECK(Supervisor::create({.bus = uniqueBus("inv-bad"), .invitedRoles = {"../x"}}).code() ==
        ErrorCode::InvalidArgument);
  WindowOptions o;
  o.bus = tb.bus;
  o.role = "editor";
  o.token = "not-hex-secret";
  auto w = Window::connect(o);
  REQUIRE(w.code() == ErrorCode::InvalidArgument);
  CHECK(w.error().message.find("hex digits") != std::string::npos);
  CHECK(w.error().message.find("secret") == std::string::npos);
}

TEST_CASE("spawned windows show as spawned with the supervisor's uid") {
  const std::string exe = windowProgram();
  TestBus tb("inv-spawn", {.inviteOnly = true});
  auto info = tb->spawn("editor", {exe, "echo"});
  REQUIRE(info.ok());
  CHECK(how(info->admission) == "spawned");
  auto live = tb->waitForRole("editor", 10s);
  REQUIRE(live.ok());
  CHECK(how(live->admission) == "spawned");
  CHECK(live->uid == ::getuid());
}

TEST_CASE("another uid is refused with Denied, and accepted when allowedUids names it") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to start a window as uid 65534");
    return;
  }
  SUBCASE("not allowed") {
    SharedDir dir;
    TestBus tb("inv-uid-no", {.socketPath = dir.socket()}, /*dispatch=*/false);
    REQUIRE(::chmod(dir.socket().c_str(), 0666) == 0);  // reachable: the uid check alone refuses
    Child c = Child::fork([&] { expectUidRefused(tb.bus, dir.socket(), "editor"); });
    tb->startDispatchThread();
    CHECK(c.join(30s) == 0);
    CHECK(tb->windows().empty());
  }
  SUBCASE("allowed") {
    SharedDir dir;
    TestBus tb("inv-uid-yes", {.allowedUids = {kNobody}, .socketPath = dir.socket()}, /*dispatch=*/false);
    auto h = tb->handle("echo", echoHandler());
    Link link;
    Child c = nobodyEditor(tb.bus, dir.socket(), link);
    tb->startDispatchThread();
    tb.awaitReady("editor");
    const WindowInfo e = windowWithRole(*tb.sup, "editor");
    CHECK(e.uid == kNobody);
    CHECK(how(e.admission) == "open");
    link.tellChild("bye");
    CHECK(c.join(30s) == 0);
  }
  SUBCASE("allowed by the policy's uids, and refused again once a policy drops them") {
    SharedDir dir;
    TestBus tb("inv-uid-policy", {.socketPath = dir.socket()}, /*dispatch=*/false);
    auto h = tb->handle("echo", echoHandler());
    struct stat st{};
    REQUIRE(::stat(dir.socket().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);  // no other uid: only the owner may connect
    Policy p;
    p.uids = {kNobody};
    REQUIRE(tb->setPolicy(p).ok());
    REQUIRE(::stat(dir.socket().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0666);  // reachable: SO_PEERCRED decides
    Link link;
    Child c = nobodyEditor(tb.bus, dir.socket(), link);
    GatedChild again([&] { expectUidRefused(tb.bus, dir.socket(), "viewer"); });  // forked before dispatch
    tb->startDispatchThread();
    tb.awaitReady("editor");
    CHECK(windowWithRole(*tb.sup, "editor").uid == kNobody);
    REQUIRE(tb->setPolicy(Policy{}).ok());
    REQUIRE(::stat(dir.socket().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    // A window already connected keeps its place; the next connection of that uid is refused.
    REQUIRE(::chmod(dir.socket().c_str(), 0666) == 0);  // reachable: the uid check alone refuses
    again.go();
    CHECK(again.join(30s) == 0);
    link.tellChild("bye");
    CHECK(c.join(30s) == 0);
  }
}
