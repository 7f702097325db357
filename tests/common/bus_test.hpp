// Helpers for tests that run a supervisor and windows in real processes (tests/multiproc/bus,
// tests/stress/bus). Built on shm_test.hpp: Child (fork, join with a timeout, kill on scope
// exit), childCheck, uniqueBus, awaitCondition.
//
// Synchronisation is by events only: a Link (a SOCK_SEQPACKET pair) between the test process and
// a child, a Mailbox that collects what a supervisor listener hears (the bus itself), waitpid.
// A child that registers handlers announces itself with a "ready" send to main after the
// registrations: its outbox is one ordered ring, so the supervisor knows the handlers before it
// hears "ready".
#pragma once

#include <capnp/message.h>
#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "bus.capnp.h"
#include "message/message.hpp"
#include "protocol/frame.hpp"
#include "raw_outbox.hpp"
#include "ring/ring.hpp"
#include "segment/segment.hpp"
#include "segment_probe.hpp"
#include "shm_test.hpp"
#include "shmbus/shmbus.hpp"
#include "test.capnp.h"
#include "wait/wait.hpp"
#include "wire/handshake.hpp"

namespace shmbus::test {

using namespace std::chrono_literals;

/// CLOCK_MONOTONIC now in ns. The clock is system-wide, so stamps taken in different processes
/// compare (a child reports when a result arrived; the parent knows when it killed).
inline std::int64_t nowNs() { return detail::monotonicNowNs(); }
inline double msSince(std::int64_t startNs) { return static_cast<double>(nowNs() - startNs) / 1e6; }

/// Whitespace-separated words of `s` (the messages tests pass around are "key value ..." lines).
inline std::vector<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// True in an AddressSanitizer build (GCC defines __SANITIZE_ADDRESS__, clang has the feature). A
/// killed ASan process takes the kernel milliseconds longer to tear down (its shadow mappings) before
/// its sockets close, so tests that time peer death widen their budget there.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

/// Minimum, median and maximum of samples (ms), for MESSAGE reports.
struct Spread {
  double min = 0, median = 0, max = 0;
};
inline Spread spreadOf(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

/// A two-way message link between the test process and one forked child: a SOCK_SEQPACKET pair,
/// so each send is one whole message. Create it before forking; the parent talks through
/// tellChild/hearChild, the child through tellParent/hearParent. A hear that times out throws
/// (a failed test in the parent, exit status 1 in a child).
class Link {
 public:
  Link() {
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds_) != 0) {
      throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    }
  }
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;
  ~Link() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }

  void tellChild(std::string_view m) const { put(fds_[0], m); }
  void tellParent(std::string_view m) const { put(fds_[1], m); }
  std::string hearChild(std::chrono::milliseconds timeout = 10s) const { return get(fds_[0], timeout, "child"); }
  std::string hearParent(std::chrono::milliseconds timeout = 10s) const { return get(fds_[1], timeout, "parent"); }
  /// True when the parent sent something not heard yet (does not wait).
  bool parentSpoke() const {
    pollfd p{fds_[1], POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  }

 private:
  static void put(int fd, std::string_view m) {
    while (::send(fd, m.data(), m.size(), MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
  }
  static std::string get(int fd, std::chrono::milliseconds timeout, const char* who) {
    pollfd p{fd, POLLIN, 0};
    int r;
    do {
      r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);
    if (r != 1) throw std::runtime_error(std::string("no message from the ") + who + " within " +
                                         std::to_string(timeout.count()) + " ms");
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0) throw std::runtime_error(std::string("recv from the ") + who + ": " + std::strerror(errno));
    return std::string(buf, static_cast<std::size_t>(n));
  }

  int fds_[2] = {-1, -1};
};

/// Builds a test.capnp TestMessage with `s` as its text.
inline BuildFn text(std::string s) {
  return [s = std::move(s)](Builder& b) { b.initRoot<TestMessage>().setText(s); };
}

/// The text of a TestMessage ("" for an empty message).
inline std::string textOf(const Message& m) {
  return m.empty() ? std::string() : std::string(m.root<TestMessage>().getText());
}

/// A handler that replies with `fn(request text, ctx)` as text.
inline Handler textHandler(std::function<std::string(const std::string&, const CallContext&)> fn) {
  return [fn = std::move(fn)](const Message& req, Builder& reply, const CallContext& ctx) {
    reply.initRoot<TestMessage>().setText(fn(textOf(req), ctx));
  };
}

/// In a child: fails the child (childCheck) unless `r` is ok, naming `what` and the error.
template <typename R>
void expectOk(const R& r, const std::string& what) {
  childCheck(r.ok(), what + ": " + r.error().toString());
}

/// In a child: the text of a call's reply (fails the child on an error).
inline std::string replyText(Call call, const std::string& what) {
  auto r = call.get();
  expectOk(r, what);
  return textOf(*r);
}

/// The test_window program (tests/multiproc/bus/test_window.cpp) for Supervisor::spawn: meson
/// passes its path in $SHMBUS_TEST_WINDOW. In the test process.
inline std::string windowProgram() {
  const char* p = std::getenv("SHMBUS_TEST_WINDOW");
  REQUIRE_MESSAGE(p != nullptr, "SHMBUS_TEST_WINDOW must name the test_window program (meson sets it)");
  return p;
}

/// True once `pid` no longer exists (exited and reaped).
inline bool processGone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

/// Connects a window; fails the calling child when it cannot (the supervisor exists already:
/// tests fork their windows after Supervisor::create).
inline std::unique_ptr<Window> connectWindow(const std::string& bus, const std::string& role,
                                             WindowOptions options = {}) {
  options.bus = bus;
  options.role = role;
  auto w = Window::connect(options);
  expectOk(w, "connect '" + role + "' to bus '" + bus + "'");
  return std::move(*w);
}

/// In a child: starts the window's dispatch thread and announces "ready" (text: the role) to
/// main, after whatever handlers and listeners the caller registered (see the file comment).
inline void announceReady(Window& w) {
  w.startDispatchThread();
  expectOk(w.send("ready", text(w.role())), "send ready");
}

/// Texts a window's listeners received, for the child's main thread to wait on (in a child).
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> got;

  void add(std::string s) {
    // Notified under the lock: the waiter may destroy the Inbox as soon as it sees the count.
    std::lock_guard lk(mu);
    got.push_back(std::move(s));
    cv.notify_all();
  }
  /// How many texts arrived so far.
  std::size_t size() {
    std::lock_guard lk(mu);
    return got.size();
  }
  /// Waits until `n` texts arrived; returns them joined by ','.
  std::string await(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lk(mu);
    childCheck(cv.wait_for(lk, timeout, [&] { return got.size() >= n; }),
               "only " + std::to_string(got.size()) + " of " + std::to_string(n) + " messages arrived");
    std::string out;
    for (const auto& s : got) out += (out.empty() ? "" : ",") + s;
    return out;
  }
};

/// What a supervisor listener heard: sender and text.
struct Heard {
  std::uint32_t windowId = 0;
  std::string role;
  std::string text;
  std::vector<std::string> words() const { return test::words(text); }
};

/// Collects what the supervisor's listener on `channel` hears, for the test thread to wait on
/// (listeners run on the dispatch thread).
class Mailbox {
 public:
  Mailbox(Supervisor& sup, const Channel& channel)
      : reg_(sup.on(channel, [this](const Message& m, const CallContext& ctx) {
          {
            std::lock_guard lk(mu_);
            q_.push_back({ctx.sourceWindowId, std::string(ctx.sourceRole), textOf(m)});
          }
          cv_.notify_all();
        })) {}

  /// The next message, waiting at most `timeout` (throws on timeout: a failed test).
  Heard next(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lk(mu_);
    if (!cv_.wait_for(lk, timeout, [&] { return !q_.empty(); })) {
      throw std::runtime_error("the supervisor heard nothing within " + std::to_string(timeout.count()) + " ms");
    }
    Heard h = std::move(q_.front());
    q_.pop_front();
    return h;
  }

  /// The next message from window `id`, skipping (and keeping) messages from others.
  Heard nextFrom(std::uint32_t id, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lk(mu_);
    auto it = q_.end();
    if (!cv_.wait_for(lk, timeout, [&] {
          it = std::find_if(q_.begin(), q_.end(), [&](const Heard& h) { return h.windowId == id; });
          return it != q_.end();
        })) {
      throw std::runtime_error("window " + std::to_string(id) + " said nothing within " +
                               std::to_string(timeout.count()) + " ms");
    }
    Heard h = std::move(*it);
    q_.erase(it);
    return h;
  }

  std::size_t size() {
    std::lock_guard lk(mu_);
    return q_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Heard> q_;
  Registration reg_;  // last: unregistered before the queue goes
};

/// A policy that allows everything and lets inspectors read captured payloads
/// (docs/architecture.md §14 "Payloads").
inline Policy payloadPolicy() {
  Policy p;
  p.inspectPayloads = true;
  return p;
}

/// A supervisor on a fresh bus name with its dispatch thread running (start it after forking
/// children that must not inherit a running thread, or at once), plus the "ready" mailbox.
/// On destruction it stops the supervisor and checks that no segment name is left behind.
///
/// Fork children before the dispatch thread runs: a child forked while another thread of this
/// process holds an allocator lock can hang (so it is with ASan's allocator). Construct with
/// dispatch = false, fork every child (GatedChild and ServedWindow::deferred for the ones that
/// must connect after others), then call tb->startDispatchThread(). A window's connect waits in
/// the listen backlog until the supervisor dispatches.
struct TestBus {
  explicit TestBus(std::string_view tag, SupervisorOptions options = {}, bool dispatch = true) {
    options.bus = uniqueBus(tag);
    auto s = Supervisor::create(options);
    REQUIRE_MESSAGE(s.ok(), s.error().toString());
    sup = std::move(*s);
    bus = options.bus;
    ready = std::make_unique<Mailbox>(*sup, "ready");
    if (dispatch) sup->startDispatchThread();
  }
  TestBus(const TestBus&) = delete;
  TestBus& operator=(const TestBus&) = delete;
  ~TestBus() {
    ready.reset();
    sup->stop();
    // The supervisor's mappings and descriptors of the bus's segments went with it (a window of
    // this process that outlives the bus keeps its own mapping, never a descriptor).
    CHECK(segmentsHeld(bus).descriptors == 0);
  }

  Supervisor* operator->() const { return sup.get(); }

  /// Waits for the "ready" of the window with `role` (see announceReady); returns its id.
  std::uint32_t awaitReady(const std::string& role, std::chrono::milliseconds timeout = 10s) {
    const Heard h = ready->next(timeout);
    REQUIRE_MESSAGE(h.role == role, "expected ready from '" << role << "', got it from '" << h.role << "'");
    return h.windowId;
  }

  std::string bus;
  std::unique_ptr<Supervisor> sup;
  std::unique_ptr<Mailbox> ready;
};

/// In a child: connects a window with `role`, calls main's "echo" handler, tells the parent "up"
/// through `link`, waits for the parent's next word, and calls "echo" again: the window was
/// served before and after whatever the parent did meanwhile. Returns the window.
inline std::unique_ptr<Window> echoAroundParent(const std::string& bus, const std::string& role, const Link& link) {
  auto w = connectWindow(bus, role);
  childCheck(replyText(w->invoke("echo", text("before")), "echo before") == "before", "echo before");
  link.tellParent("up");
  link.hearParent(120s);
  childCheck(replyText(w->invoke("echo", text("after")), "echo after") == "after", "echo after");
  return w;
}

/// A handler that replies with the request's text.
inline Handler echoHandler() {
  return textHandler([](const std::string& request, const CallContext&) { return request; });
}

/// A handler that always replies `answer` as text.
inline Handler replyWith(std::string answer) {
  return textHandler([answer = std::move(answer)](const std::string&, const CallContext&) { return answer; });
}

/// A main-process handler on `channel` that holds every request (its Responder) until the test
/// answers them all: calls stay in flight as long as the test needs.
class HeldCalls {
 public:
  HeldCalls(Supervisor& sup, const std::string& channel)
      : registration_(sup.handleAsync(channel, [this](const Message&, Responder r, const CallContext&) {
          std::lock_guard lk(mu_);
          held_.push_back(std::move(r));
          cv_.notify_all();
        })) {}
  HeldCalls(const HeldCalls&) = delete;
  HeldCalls& operator=(const HeldCalls&) = delete;
  ~HeldCalls() { registration_ = Registration(); }  // no handler runs into a destroyed member

  /// Waits until `n` requests are held (the router counts them in flight); false at `timeout`.
  bool await(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return held_.size() == n; });
  }
  /// Replies "x" to every held request (each reply must succeed).
  void answerAll() {
    std::lock_guard lk(mu_);
    for (auto& r : held_) CHECK(r.reply([](Builder& b) { b.initRoot<test::TestMessage>().setText("x"); }).ok());
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Responder> held_;
  Registration registration_;
};

/// A child forked now whose body waits for the parent's go() before it runs: lets a test fork
/// every child before the dispatch thread starts (see TestBus) while a window still connects only
/// after others did. The body may take the text go() sends (e.g. an id known only later). A
/// child never released is killed on destruction.
class GatedChild {
 public:
  explicit GatedChild(const std::function<void(const std::string&)>& body)
      : child_(Child::fork([&] { body(gate_.hearParent(120s)); })) {}
  explicit GatedChild(const std::function<void()>& body)
      : GatedChild(std::function<void(const std::string&)>([&](const std::string&) { body(); })) {}
  GatedChild(const GatedChild&) = delete;
  GatedChild& operator=(const GatedChild&) = delete;

  /// Lets the body run, with `word` as its argument.
  void go(std::string_view word = "go") const { gate_.tellChild(word); }
  int join(std::chrono::milliseconds timeout) { return child_.join(timeout); }
  pid_t pid() const noexcept { return child_.pid(); }

 private:
  Link gate_;  // before child_: the child uses it
  Child child_;
};

/// A window in a forked child that the test drives one command line at a time over a Link (the
/// port tests): a derived class forks its body with forkBody() once its own members exist; the
/// body runs when start() says "go" (so children can be forked before the supervisor's dispatch
/// thread runs, see TestBus), connects with role(), announces "ready" and answers the parent's
/// lines until "done". A child never finished is killed on destruction.
class DrivenWindow {
 public:
  explicit DrivenWindow(std::string role) : role_(std::move(role)) {}
  DrivenWindow(const DrivenWindow&) = delete;
  DrivenWindow& operator=(const DrivenWindow&) = delete;

  /// Lets the child connect; returns its window id once the supervisor heard its "ready".
  std::uint32_t start(TestBus& tb) {
    link_.tellChild("go");
    return tb.awaitReady(role_);
  }
  /// Tells the child `command` and returns its one-line answer.
  std::string ask(const std::string& command, std::chrono::milliseconds timeout = 10s) {
    link_.tellChild(command);
    return link_.hearChild(timeout);
  }
  /// The child's next line (an answer, or what a callback of its reported).
  std::string hear(std::chrono::milliseconds timeout = 10s) { return link_.hearChild(timeout); }
  /// Tells the child `command` without waiting for an answer.
  void tell(const std::string& command) { link_.tellChild(command); }
  pid_t pid() const noexcept { return child_.pid(); }
  /// Tells the child "done"; returns its exit status (0: every check in it held).
  int finish() {
    link_.tellChild("done");
    return child_.join(10s);
  }
  /// Waits for the child to exit (one the test killed: 128 + the signal).
  int join() { return child_.join(10s); }

 protected:
  /// Forks the child: it waits for start()'s "go", then runs `body(bus)`.
  void forkBody(const TestBus& tb, std::function<void(const std::string& bus)> body) {
    child_ = Child::fork([this, bus = tb.bus, body = std::move(body)] {
      if (link_.hearParent(120s) == "go") body(bus);
    });
  }

  std::string role_;  ///< the role the body connects with
  Link link_;         ///< the body's side: hearParent / tellParent; before child_ (made before the fork)

 private:
  Child child_;
};

/// A child window (role "worker") that, once go() releases it, calls main's "echo" `calls` times
/// with the texts `textFor(i)`, checks every reply, tells the parent "done" through `link` and
/// waits for the parent's next word. For tests that watch a stream of calls (the inspector's).
inline GatedChild echoCaller(const TestBus& tb, const Link& link, int calls, std::function<std::string(int)> textFor) {
  return GatedChild([&tb, &link, calls, textFor = std::move(textFor)] {
    auto w = connectWindow(tb.bus, "worker");
    for (int i = 0; i < calls; ++i) {
      const std::string t = textFor(i);
      childCheck(replyText(w->invoke("echo", text(t)), "echo") == t, "echo");
    }
    link.tellParent("done");
    link.hearParent();
  });
}

/// A window in a forked child that serves: `setup` registers its handlers and listeners (it keeps
/// the Registrations in the vector it gets; its lambdas may capture the Window by reference),
/// then the child announces "ready" and dispatches until finish(). The constructor returns once
/// the supervisor heard "ready", so the handlers are known to it (see the file comment).
/// ServedWindow(ServedWindow::deferred, ...) forks the child but lets it connect only at start(),
/// which then returns once the supervisor heard "ready" (for forking before the dispatch thread
/// runs, see TestBus).
class ServedWindow {
 public:
  using Setup = std::function<void(Window&, std::vector<Registration>&)>;
  struct Deferred {};
  static constexpr Deferred deferred{};

  ServedWindow(TestBus& tb, const std::string& role, const Setup& setup, WindowOptions options = {})
      : ServedWindow(deferred, tb, role, setup, std::move(options), false) {
    id_ = tb.awaitReady(role);
  }
  ServedWindow(Deferred, TestBus& tb, const std::string& role, const Setup& setup, WindowOptions options = {})
      : ServedWindow(deferred, tb, role, setup, std::move(options), true) {}

  /// Lets a deferred window connect; returns once the supervisor heard its "ready".
  void start() {
    link_.tellChild("go");
    id_ = tb_.awaitReady(role_);
  }

  std::uint32_t id() const noexcept { return id_; }
  pid_t pid() const noexcept { return child_.pid(); }

  /// Lets the window close and its process exit; returns the exit status (0 = every check in it
  /// held; 128 + signal for a process the test killed).
  int finish(std::chrono::milliseconds timeout = 10s) {
    link_.tellChild("done");
    return child_.join(timeout);
  }

 private:
  ServedWindow(Deferred, TestBus& tb, const std::string& role, const Setup& setup, WindowOptions options,
               bool gated)
      : tb_(tb), role_(role) {
    child_ = Child::fork([&] {
      if (gated && link_.hearParent(120s) != "go") return;  // finished before start()
      auto w = connectWindow(tb.bus, role, options);
      std::vector<Registration> regs;
      if (setup) setup(*w, regs);
      announceReady(*w);
      link_.hearParent(120s);
    });
  }

  TestBus& tb_;
  std::string role_;
  Link link_;
  Child child_;
  std::uint32_t id_ = 0;
};

/// Open file descriptors of this process (/proc/self/fd), for leak checks.
inline std::size_t openFdCount() {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
  }
  return n - 1;  // the directory stream's own descriptor
}

/// CPU time (user + system) a process has used so far, in clock ticks (/proc/<pid>/stat fields
/// 14 and 15; all its threads).
inline long long cpuTicks(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto close = s.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return -1;
  std::istringstream in(s.substr(close + 2));
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  return utime + stime;
}

/// The path of a tool the test's meson definition passes in the environment variable `var`.
inline std::string toolPath(const char* var) {
  const char* p = std::getenv(var);
  REQUIRE_MESSAGE(p != nullptr, var << " must name the tool (meson sets it)");
  return p;
}

/// A program run in its own process with its stdout and stderr on pipes (the CLI tools' tests:
/// shmbus-inspect, shmbusd). The child only dup2s and execs: nothing that could take a lock, so
/// it may be started while the test's threads run.
class ToolProcess {
 public:
  /// Starts `exe` with `args` (argv[1]...).
  ToolProcess(const std::string& exe, std::vector<std::string> args) {
    args.insert(args.begin(), exe);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int out[2], err[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    pid_ = ::fork();  // the child only dup2s and execs: nothing that could take a lock
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~ToolProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(out_);
    ::close(err_);
  }
  ToolProcess(const ToolProcess&) = delete;
  ToolProcess& operator=(const ToolProcess&) = delete;

  /// The next line of its stdout (or stderr), waiting at most `timeout`; "" at end of file.
  /// Throws std::runtime_error when no line came in time.
  std::string line(std::chrono::milliseconds timeout = 10s) { return readLine(out_, outBuf_, timeout); }
  std::string errLine(std::chrono::milliseconds timeout = 10s) { return readLine(err_, errBuf_, timeout); }

  /// Waits for the process to exit (an event on its pipe, then waitpid); returns its status.
  int wait() {
    int status = 0;
    REQUIRE(::waitpid(pid_, &status, 0) == pid_);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  static std::string readLine(int fd, std::string& buf, std::chrono::milliseconds timeout) {
    const std::int64_t deadline = nowNs() + std::chrono::nanoseconds(timeout).count();
    for (;;) {
      if (auto nl = buf.find('\n'); nl != std::string::npos) {
        std::string l = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        return l;
      }
      pollfd p{fd, POLLIN, 0};
      const std::int64_t left = (deadline - nowNs()) / 1'000'000;
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) == 0) {
        throw std::runtime_error("the tool printed no line within " + std::to_string(timeout.count()) + " ms");
      }
      char chunk[4096];
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n <= 0) return std::exchange(buf, std::string());
      buf.append(chunk, static_cast<std::size_t>(n));
    }
  }

  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  std::string outBuf_, errBuf_;
};

/// The uid (and gid) "nobody", for tests of another user's access (run as root).
inline constexpr uid_t kNobody = 65534;

/// A directory others may search, for a socket a process of another uid can reach (the default
/// runtime directory is 0700). Removed on destruction.
struct SharedDir {
  SharedDir() {
    char tmpl[] = "/tmp/shmbus-shared-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
    REQUIRE(::chmod(path.c_str(), 0711) == 0);
  }
  ~SharedDir() {
    ::unlink((path + "/bus.sock").c_str());
    ::unlink((path + "/bus.sock.lock").c_str());
    ::rmdir(path.c_str());
  }
  SharedDir(const SharedDir&) = delete;
  SharedDir& operator=(const SharedDir&) = delete;
  std::string socket() const { return path + "/bus.sock"; }
  std::string path;
};

/// In a child: becomes uid/gid kNobody (no supplementary groups). Fails the child when it cannot.
inline void becomeNobody() {
  childCheck(::setgroups(0, nullptr) == 0 && ::setgid(kNobody) == 0 && ::setuid(kNobody) == 0, "setuid(65534)");
}

}  // namespace shmbus::test
