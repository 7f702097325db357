// Supervisor::spawn (docs/architecture.md §5): windows started by main over a pre-authenticated socket. The
// window program is tests/multiproc/bus/test_window.cpp; meson passes its path in
// $SHMBUS_TEST_WINDOW.
#include <doctest/doctest.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;


TEST_CASE("a spawned window registers with the role spawn gave it and answers main's calls") {
  TestBus tb("spawn");
  auto info = tb->spawn("viewer", {windowProgram(), "echo"});
  REQUIRE_MESSAGE(info.ok(), info.error().toString());
  CHECK(info->role == "viewer");
  CHECK(info->spawned);
  const Heard ready = tb.ready->next();
  CHECK(ready.role == "viewer");
  CHECK(ready.text == "viewer");
  CHECK(ready.windowId == info->id);
  const auto listed = tb->windows();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].id == info->id);
  CHECK(listed[0].pid == info->pid);
  CHECK(listed[0].spawned);
  auto r = tb->invoke("viewer", "echo", text("hello"), {.timeout = 2000ms}).get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "hello");
  r = tb->invoke(info->id, "whoami").get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "viewer " + std::to_string(info->id));
  // Stopping the supervisor ends the spawned window (its run() returns) and reaps it.
  tb->stop();
  CHECK(processGone(info->pid));
}

TEST_CASE("a spawned window cannot forge its role") {
  TestBus tb("spawn-forge");
  std::string sourceRole;
  auto l = tb->on("ready", [&](const Message&, const CallContext& ctx) { sourceRole = std::string(ctx.sourceRole); });
  auto info = tb->spawn("viewer", {windowProgram(), "forge"});
  REQUIRE_MESSAGE(info.ok(), info.error().toString());
  const Heard ready = tb.ready->next();
  CHECK(ready.role == "viewer");
  CHECK(ready.text == "viewer");  // the window's own role() is the one spawn gave
  auto r = tb->invoke("viewer", "whoami").get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(textOf(*r) == "viewer " + std::to_string(info->id));
  CHECK(tb->invoke("admin", "whoami").get().code() == ErrorCode::NoTarget);
  CHECK(tb->windows().size() == 1);
}

TEST_CASE("main spawns a hidden worker window and calls it") {
  TestBus tb("spawn-worker", {}, /*dispatch=*/false);
  // Other windows reach the worker through the router too: this one connects once it is released.
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    auto s = w->invokeIn("worker", "sum", [](Builder& b) { b.initRoot<TestMessage>().initNumbers(3).set(2, 7); }).get();
    expectOk(s, "invokeIn worker");
    childCheck(s->root<TestMessage>().getSeq() == 7, "sum");
  });
  tb->startDispatchThread();
  auto info = tb->spawn("worker", {windowProgram(), "worker"}, {"SHMBUS_TEST_EXTRA=1"});
  REQUIRE_MESSAGE(info.ok(), info.error().toString());
  CHECK(tb.awaitReady("worker") == info->id);
  auto r = tb->invoke("worker", "sum", [](Builder& b) {
    auto n = b.initRoot<TestMessage>().initNumbers(100);
    for (unsigned i = 0; i < 100; ++i) n.set(i, i + 1);
  }).get();
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  CHECK(r->root<TestMessage>().getSeq() == 5050);
  a.go();
  CHECK(a.join(10s) == 0);
}

TEST_CASE("spawning a program that does not exist leaves no window behind") {
  TestBus tb("spawn-missing");
  auto info = tb->spawn("ghost", {"/nonexistent/shmbus-window"});
  if (info.ok()) {
    // The child fails its exec: the pre-authenticated socket hangs up before registering.
    CHECK(tb->waitForRole("ghost", 300ms).code() == ErrorCode::Timeout);
    REQUIRE(awaitCondition([&] { return processGone(info->pid) || tb->windows().empty(); }));
  }
  CHECK(tb->windows().empty());
}

TEST_CASE("a spawned window that closes before its process ends is reaped when it exits, with no later close") {
  TestBus tb("spawn-reap");
  std::mutex mu;
  std::condition_variable cv;
  bool closed = false;
  auto l = tb->onWindowClosed([&](const WindowEvent&) {
    {
      std::lock_guard lk(mu);
      closed = true;
    }
    cv.notify_all();
  });
  auto info = tb->spawn("leaver", {windowProgram(), "leave"});
  REQUIRE_MESSAGE(info.ok(), info.error().toString());
  CHECK(tb.awaitReady("leaver") == info->id);
  REQUIRE(tb->send(info->id, "leave").ok());
  {
    std::unique_lock lk(mu);
    REQUIRE(cv.wait_for(lk, 10s, [&] { return closed; }));
  }
  // The router saw the hang-up while the process lives on (it waits to be killed): no other
  // window closes after it, so only its exit can get it reaped. A zombie answers kill(pid, 0);
  // a reaped process does not.
  CHECK_FALSE(processGone(info->pid));
  ::kill(info->pid, SIGKILL);
  CHECK(awaitCondition([&] { return processGone(info->pid); }));
  CHECK(tb->windows().empty());
}
