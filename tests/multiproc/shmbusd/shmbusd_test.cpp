#include <doctest/doctest.h>
#include <signal.h>

#include <sys/wait.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {
/// Starts shmbusd with `args` (after argv[0]), its descriptor `fd` (1 or 2; -1: both) writing into
/// a pipe. Returns its pid and the pipe's read end (the caller closes it).
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
    if (fd < 0) ::dup2(pipeFds[1], 1);
    ::dup2(pipeFds[1], fd < 0 ? 2 : fd);
    ::close(pipeFds[0]);
    ::execv(exe, argv.data());
    ::_exit(127);
  }
  ::close(pipeFds[1]);
  return {pid, pipeFds[0]};
}

/// The next line `fd` gives (without its '\n'; what there is at end of file).
std::string readLine(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

/// Everything `fd` gives until end of file.
std::string readAll(int fd) {
  std::string all;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<std::size_t>(n));
  return all;
}

/// Runs shmbusd with `args` to its end: its exit status and what it wrote (stdout and stderr).
std::pair<int, std::string> runDaemon(const std::vector<std::string>& args) {
  auto [pid, out] = execDaemon(args, -1);
  std::string said = readAll(out);
  ::close(out);
  int status = -1;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return {WEXITSTATUS(status), said};
}

/// A file in /tmp holding `text`, removed on destruction.
struct TempFile {
  explicit TempFile(const std::string& text) {
    char name[] = "/tmp/shmbusd-policy-XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = name;
    write(text);
  }
  ~TempFile() { ::unlink(path.c_str()); }
  /// Replaces the content (a new file renamed over the old: a reader never sees half of it).
  void write(const std::string& text) const {
    const std::string tmp = path + ".new";
    FILE* f = std::fopen(tmp.c_str(), "w");
    REQUIRE(f != nullptr);
    REQUIRE(std::fwrite(text.data(), 1, text.size(), f) == text.size());
    REQUIRE(std::fclose(f) == 0);
    REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0);
  }
  std::string path;
};

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
  // The windows of this process map their segments and keep one descriptor each, of their own
  // segment (for its blob arena, docs/architecture.md §17): with the daemon gone, nothing of the
  // bus outlives them (sealed memfds have no name to leave behind).
  const SegmentsHeld held = segmentsHeld(bus);
  CHECK(held.mappings >= 2);
  CHECK(held.descriptors <= held.mappings);
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

TEST_CASE("shmbusd --policy FILE --check prints the effective rules of the example policy and exits 0") {
  const char* example = std::getenv("SHMBUS_EXAMPLE_POLICY");
  REQUIRE(example != nullptr);
  auto [status, said] = runDaemon({"--policy", example, "--check"});
  INFO(said);
  CHECK(status == 0);
  CHECK(said.starts_with("default deny\ndefault-admission invited\n"));
  CHECK(said.find("role editor: admission open, max-windows 4, max-message-bytes 65536, max-pending-calls 64, "
                  "max-bytes-in-flight 1048576 (line 18)\n") !=
        std::string::npos);
  CHECK(said.find("role worker: admission invited (default), max-windows -, max-message-bytes 1048576") !=
        std::string::npos);
  CHECK(said.find("channel Dashboard.*: send (unset); invoke [editor,main]; handle [dashboard]; receive (unset)") !=
        std::string::npos);
}

TEST_CASE("a bad policy file makes shmbusd --check, and shmbusd itself, exit non-zero naming FILE:LINE:COL") {
  TempFile bad("default = \"deny\"\n\n[roles.editor]\nmax-windos = 2\n");
  for (const bool check : {true, false}) {
    std::vector<std::string> args{"--policy", bad.path};
    if (check) args.push_back("--check");
    else args.insert(args.end(), {"--bus", uniqueBus("daemon-bad"), "-l", "silent"});
    auto [status, said] = runDaemon(args);
    CHECK(status == 1);
    CHECK_MESSAGE(said.find(bad.path + ":4:1: unknown key 'max-windos' in roles.editor") != std::string::npos, said);
    CHECK(said.find("listening") == std::string::npos);
  }
  // One source of admission rules: --policy with --allow-role is a usage error.
  auto [status, said] = runDaemon({"--bus", uniqueBus("daemon-both"), "--policy", bad.path, "--allow-role", "x"});
  CHECK(status != 0);
  CHECK(said.find("excludes") != std::string::npos);
}

TEST_CASE("SIGHUP reloads the policy file: the change is logged and applies to the next call; a bad file keeps the old") {
  const std::string allow = "[[channels]]\npattern = \"ping\"\ninvoke = [\"editor\"]\n";
  TempFile file(allow);
  const std::string bus = uniqueBus("daemon-hup");
  auto [daemon, out] = execDaemon({"--bus", bus, "--policy", file.path, "-l", "silent"}, -1);
  REQUIRE(readLine(out).find("listening") != std::string::npos);
  auto editor = connectWindow(bus, "editor");
  auto [viewer, h] = pingViewer(bus);
  CHECK(ping(*editor, "one") == "one from editor");

  file.write("[[channels]]\npattern = \"ping\"\ninvoke = [\"main\"]\n");
  ::kill(daemon, SIGHUP);
  CHECK(readLine(out) == "shmbusd: policy reloaded from " + file.path + ": changes:");
  CHECK(readLine(out) == "- channel ping: send (unset); invoke [editor]; handle (unset); receive (unset)");
  CHECK(readLine(out) == "+ channel ping: send (unset); invoke [main]; handle (unset); receive (unset)");
  auto denied = editor->invokeIn("viewer", "ping", text("two")).get();
  CHECK(denied.code() == ErrorCode::Denied);

  file.write("[[channels]]\npattern = \"ping\"\ninvoke = [\"editor\"]\nbogus = 1\n");
  ::kill(daemon, SIGHUP);
  CHECK(readLine(out) == "shmbusd: " + file.path + ":4:1: unknown key 'bogus' in a channel rule (known: pattern, "
                                                   "send, invoke, handle, receive)");
  CHECK(readLine(out) == "shmbusd: policy not reloaded, the one in force stays");
  CHECK(editor->invokeIn("viewer", "ping", text("three")).get().code() == ErrorCode::Denied);

  file.write(allow);
  ::kill(daemon, SIGHUP);
  CHECK(readLine(out).find("policy reloaded") != std::string::npos);
  readLine(out);
  readLine(out);
  CHECK(ping(*editor, "four") == "four from editor");

  ::kill(daemon, SIGTERM);
  int status = -1;
  REQUIRE(::waitpid(daemon, &status, 0) == daemon);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  ::close(out);
}
