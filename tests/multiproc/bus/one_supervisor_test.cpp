// One supervisor per bus (issue 11, item 1): a second one is refused with the running one's pid,
// its windows notice nothing, and the socket of a supervisor that was killed is reclaimed.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {
bool fileExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

/// The refusal a second supervisor of `bus` gets, in this process.
Error secondSupervisor(const std::string& bus) {
  SupervisorOptions o;
  o.bus = bus;
  auto s = Supervisor::create(o);
  REQUIRE_FALSE(s.ok());
  return s.error();
}
}  // namespace

TEST_CASE("a second supervisor of a bus is refused with the bus and the running one's pid; its windows notice nothing") {
  TestBus tb("one", {}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  Link link, otherLink;
  // A window that calls main before and after the second supervisors were refused.
  Child window = Child::fork([&] {
    auto w = echoAroundParent(tb.bus, "editor", link);
    // A window that connects now reaches the first supervisor too.
    auto late = connectWindow(tb.bus, "viewer");
    childCheck(replyText(late->invoke("echo", text("late")), "late") == "late", "late");
  });
  // Another process tries too (before the dispatch thread runs: see TestBus).
  const pid_t self = ::getpid();
  Child other = Child::fork([&] {
    childCheck(otherLink.hearParent(60s) == "try", "go");
    SupervisorOptions o;
    o.bus = tb.bus;
    auto s = Supervisor::create(o);
    childCheck(!s.ok(), "a second supervisor of the bus was created in another process");
    childCheck(s.code() == ErrorCode::Denied, s.error().toString());
    childCheck(s.error().message.find("bus '" + tb.bus + "'") != std::string::npos, s.error().message);
    childCheck(s.error().message.find("pid " + std::to_string(self)) != std::string::npos, s.error().message);
  });
  tb->startDispatchThread();
  REQUIRE(link.hearChild() == "up");

  const Error same = secondSupervisor(tb.bus);
  CHECK(same.code == ErrorCode::Denied);
  CHECK(same.message == "bus '" + tb.bus + "' already has a supervisor: pid " + std::to_string(self) +
                            " listens on " + tb->socketPath());
  otherLink.tellChild("try");
  CHECK(other.join(20s) == 0);
  CHECK(fileExists(tb->socketPath()));

  link.tellChild("refused");
  CHECK(window.join(20s) == 0);
}

TEST_CASE("the socket of a supervisor killed with SIGKILL is reclaimed by the next one") {
  const std::string bus = uniqueBus("stale");
  Link link;
  Child first = Child::fork([&] {
    SupervisorOptions o;
    o.bus = bus;
    auto s = Supervisor::create(o);
    expectOk(s, "first supervisor");
    link.tellParent((*s)->socketPath());
    link.hearParent(60s);  // killed before it hears anything
  });
  const std::string socket = link.hearChild();
  ::kill(first.pid(), SIGKILL);
  REQUIRE(first.join(10s) == 128 + SIGKILL);
  REQUIRE(fileExists(socket));  // left behind: nobody answers on it

  SupervisorOptions o;
  o.bus = bus;
  auto second = Supervisor::create(o);
  REQUIRE_MESSAGE(second.ok(), second.error().toString());
  Supervisor& sup = **second;
  CHECK(sup.socketPath() == socket);
  auto h = sup.handle("echo", echoHandler());
  Child window = Child::fork([&] {
    auto w = connectWindow(bus, "editor");
    childCheck(replyText(w->invoke("echo", text("reclaimed")), "echo") == "reclaimed", "echo");
  });
  sup.startDispatchThread();
  CHECK(window.join(20s) == 0);
  sup.stop();
  CHECK_FALSE(fileExists(socket));
  CHECK_FALSE(fileExists(socket + ".lock"));
}

TEST_CASE("a supervisor that stopped frees its bus for the next one in the same process") {
  const std::string bus = uniqueBus("again");
  SupervisorOptions o;
  o.bus = bus;
  for (int round = 0; round < 3; ++round) {
    auto s = Supervisor::create(o);
    REQUIRE_MESSAGE(s.ok(), "round " << round << ": " << s.error().toString());
    CHECK(Supervisor::create(o).code() == ErrorCode::Denied);
  }
}

TEST_CASE("a supervisor whose lock file was removed keeps its bus: its socket still answers") {
  TestBus tb("unlocked", {}, /*dispatch=*/false);
  auto h = tb->handle("echo", echoHandler());
  REQUIRE(::unlink((tb->socketPath() + ".lock").c_str()) == 0);  // a cleaner of /tmp, say
  Link link;
  Child window = Child::fork([&] { echoAroundParent(tb.bus, "editor", link); });
  const pid_t self = ::getpid();
  Child other = Child::fork([&] {
    SupervisorOptions o;
    o.bus = tb.bus;
    auto s = Supervisor::create(o);
    childCheck(s.code() == ErrorCode::Denied, "second supervisor: " + (s ? std::string("created") : s.error().toString()));
    childCheck(s.error().message.find("pid " + std::to_string(self)) != std::string::npos, s.error().message);
  });
  CHECK(other.join(20s) == 0);
  CHECK(fileExists(tb->socketPath()));
  tb->startDispatchThread();
  REQUIRE(link.hearChild() == "up");
  link.tellChild("refused");
  CHECK(window.join(20s) == 0);
}
