#include <doctest/doctest.h>
#include <signal.h>

#include <sys/wait.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "bus_test.hpp"
#include "segment/segment.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {
/// Starts shmbusd with `args` (after argv[0]), its descriptor `fd` (1 or 2) writing into a pipe.
/// Returns its pid and the pipe's read end (the caller closes it).
std::pair<pid_t, int> execDaemon(const std::vector<std::string>& args, int fd) {
  const char* exe = std::getenv("SHMBUSD");
  REQUIRE(exe != nullptr);
  std::vector<char*> argv{const_cast<char*>(exe)};  // built before fork: the child only execs
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int pipeFds[2];
  REQUIRE(::pipe(pipeFds) == 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipeFds[1], fd);
    ::close(pipeFds[0]);
    ::execv(exe, argv.data());
    ::_exit(127);
  }
  ::close(pipeFds[1]);
  return {pid, pipeFds[0]};
}

/// Starts shmbusd (allowing roles editor and viewer, plus `extra` arguments) and returns once it
/// says it is listening (its first stdout line: an event, not a sleep).
pid_t startDaemon(const std::string& bus, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"--bus", bus, "--allow-role", "editor", "--allow-role", "viewer", "-l", "silent"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto [pid, out] = execDaemon(args, 1);
  std::string line;
  char c;
  while (::read(out, &c, 1) == 1 && c != '\n') line += c;
  ::close(out);
  REQUIRE_MESSAGE(line.find("listening") != std::string::npos, "shmbusd said: " << line);
  return pid;
}

/// A "viewer" window of `bus` whose "ping" handler replies with the request's text and the
/// caller's role, dispatching on its own thread.
std::pair<std::unique_ptr<Window>, Registration> pingViewer(const std::string& bus) {
  auto viewer = connectWindow(bus, "viewer");
  auto h = viewer->handle("ping", [](const Message& req, Builder& reply, const CallContext& ctx) {
    reply.initRoot<TestMessage>().setText(textOf(req) + " from " + std::string(ctx.sourceRole));
  });
  viewer->startDispatchThread();
  return {std::move(viewer), std::move(h)};
}

/// `editor` pings the viewer with `word` (retrying NoHandler: the handler registration races the
/// first call); the reply's text.
std::string ping(Window& editor, const std::string& word) {
  Result<Message> r = makeError(ErrorCode::Timeout, "not called");
  for (int i = 0; i < 1000; ++i) {
    r = editor.invokeIn("viewer", "ping", text(word)).get();
    if (r.code() != ErrorCode::NoHandler) break;
  }
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  return textOf(*r);
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
  auto [viewer, h] = pingViewer(bus);
  CHECK(ping(*editor, "hi") == "hi from editor");

  ::kill(daemon, SIGTERM);
  int status = -1;
  REQUIRE(::waitpid(daemon, &status, 0) == daemon);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  auto after = editor->invokeIn("viewer", "ping", text("late")).get();
  CHECK(after.code() == ErrorCode::BusClosed);
  CHECK(detail::Segment::countNames(bus) == 0);
}

TEST_CASE("a second shmbusd for a running bus exits non-zero naming the bus and the first one's pid") {
  const std::string bus = uniqueBus("twice");
  const pid_t first = startDaemon(bus);
  auto editor = connectWindow(bus, "editor");
  auto [viewer, h] = pingViewer(bus);

  // The second one, its stderr collected until it exits.
  auto [second, err] = execDaemon({"--bus", bus}, 2);
  std::string said;
  char c;
  while (::read(err, &c, 1) == 1) said += c;
  ::close(err);
  int status = -1;
  REQUIRE(::waitpid(second, &status, 0) == second);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 127));
  CHECK_MESSAGE(said.find("bus '" + bus + "' already has a supervisor: pid " + std::to_string(first)) !=
                    std::string::npos,
                "second shmbusd said: " << said);

  // The first one's windows noticed nothing, and new windows still reach it.
  CHECK(ping(*editor, "still here") == "still here from editor");
  auto late = connectWindow(bus, "editor");
  CHECK(late != nullptr);

  ::kill(first, SIGTERM);
  REQUIRE(::waitpid(first, &status, 0) == first);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

TEST_CASE("shmbusd --invited-role closes a role to connections by path; --invite-only closes every role") {
  for (const bool all : {false, true}) {
    const std::string bus = uniqueBus(all ? "daemon-io" : "daemon-ir");
    const pid_t daemon = startDaemon(bus, all ? std::vector<std::string>{"--invite-only"}
                                              : std::vector<std::string>{"--invited-role", "editor"});
    WindowOptions o;
    o.bus = bus;
    o.role = "editor";
    auto denied = Window::connect(o);
    CHECK(denied.code() == ErrorCode::Denied);
    CHECK(denied.error().message.find("by invitation only") != std::string::npos);
    o.role = "viewer";
    CHECK(Window::connect(o).code() == (all ? ErrorCode::Denied : ErrorCode::Ok));
    ::kill(daemon, SIGTERM);
    int status = -1;
    REQUIRE(::waitpid(daemon, &status, 0) == daemon);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
}
