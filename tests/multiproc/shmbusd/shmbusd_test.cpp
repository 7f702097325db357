#include <doctest/doctest.h>
#include <signal.h>

#include <sys/wait.h>

#include <cstdlib>

#include "bus_test.hpp"
#include "segment/segment.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {
/// Starts shmbusd and returns once it says it is listening (its first stdout line: an event,
/// not a sleep).
pid_t startDaemon(const std::string& bus) {
  const char* exe = std::getenv("SHMBUSD");
  REQUIRE(exe != nullptr);
  int out[2];
  REQUIRE(::pipe(out) == 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::close(out[0]);
    ::execl(exe, exe, "--bus", bus.c_str(), "--allow-role", "editor", "--allow-role", "viewer", "-l", "silent",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  std::string line;
  char c;
  while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(out[0]);
  REQUIRE_MESSAGE(line.find("listening") != std::string::npos, "shmbusd said: " << line);
  return pid;
}
}  // namespace

TEST_CASE("shmbusd admits allowed roles, denies others, and closes the bus on SIGTERM") {
  const std::string bus = uniqueBus("daemon");
  const pid_t daemon = startDaemon(bus);
  auto editor = connectWindow(bus, "editor");
  REQUIRE(editor != nullptr);
  CHECK(editor->role() == "editor");

  WindowOptions o;
  o.bus = bus;
  o.role = "intruder";
  auto denied = Window::connect(o);
  REQUIRE_FALSE(denied.ok());
  CHECK(denied.code() == ErrorCode::Denied);
  CHECK(denied.error().message.find("intruder") != std::string::npos);

  // Two windows talk through the daemon (routed call).
  auto viewer = connectWindow(bus, "viewer");
  REQUIRE(viewer != nullptr);
  auto h = viewer->handle("ping", [](const Message& req, Builder& reply, const CallContext& ctx) {
    reply.initRoot<TestMessage>().setText(textOf(req) + " from " + std::string(ctx.sourceRole));
  });
  viewer->startDispatchThread();
  Result<Message> r = makeError(ErrorCode::Timeout, "not called");
  for (int i = 0; i < 1000; ++i) {  // the handler registration races the first call: retry NoHandler
    r = editor->invokeIn("viewer", "ping", text("hi")).get();
    if (r.code() != ErrorCode::NoHandler) break;
  }
  REQUIRE(r.ok());
  CHECK(textOf(*r) == "hi from editor");

  ::kill(daemon, SIGTERM);
  int status = -1;
  REQUIRE(::waitpid(daemon, &status, 0) == daemon);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  auto after = editor->invokeIn("viewer", "ping", text("late")).get();
  CHECK(after.code() == ErrorCode::BusClosed);
  CHECK(detail::Segment::countNames(bus) == 0);
}
