// The soak's supervisor side. One Supervisor, `windows` slots (role r<slot / 4>), each filled by a
// window process started either by Supervisor::spawn or as a plain child that connects by path.
// The main thread churns: kill -9 of a live window (its slot is filled again once main hears
// window-closed), now and then kill -9 of a window still in its handshake (filled again at once),
// a broadcast and a main → window call per tick. The windows themselves call each other and main,
// reconnect and exit (soak_window.cpp). The two snapshots of the supervisor process are taken in
// the same steady state: every slot's window registered (its hello heard) and idle (before kGo,
// after every final tally), the registry holding exactly `windows` windows, no call pending.
#include "soak_run.hpp"

#include <fmt/core.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <vector>

#include "soak.hpp"
#include "soak_probe.hpp"
#include "soak_report.hpp"
#include "test.capnp.h"

extern char** environ;

namespace shmbus::soak {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr unsigned kWindowsPerRole = 4;
constexpr auto kLaunchLimit = 30s;  // a window that is not back within this long is a failure
constexpr auto kSettleLimit = 60s;  // for the quiet phase: every final tally, the registry steady
constexpr auto kReapLimit = 5s;     // for the last processes that ended to be reaped, once settled

// What the supervisor's callbacks heard, for the churn thread: a window's hello (its handlers are
// registered), its final tally, a window-closed.
struct Event {
  enum Kind { Hello, Final, Closed } kind;
  unsigned slot = 0;
  pid_t pid = 0;
  std::uint32_t id = 0;
};

class Events {
 public:
  void push(Event e) {
    {
      std::lock_guard lk(mu_);
      q_.push_back(e);
    }
    cv_.notify_all();
  }
  // Everything heard so far, waiting until `until` for the first.
  std::deque<Event> take(Clock::time_point until) {
    std::unique_lock lk(mu_);
    cv_.wait_until(lk, until, [&] { return !q_.empty(); });
    return std::exchange(q_, {});
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> q_;
};

struct Slot {
  std::string role;
  bool spawned = false;
  pid_t pid = 0;          // the process filling the slot now
  std::uint32_t id = 0;   // its window id once its hello was heard
  bool live = false;      // hello heard, not killed, not closed since
  bool killed = false;    // the process was killed: its hellos are stale, its window-closed refills
  bool final = false;     // its final tally heard (quiet phase)
  Clock::time_point since{};
};

enum class Phase : int { Wait, Run, Quiet };

class Soak {
 public:
  Soak(const SoakOptions& o, Supervisor& sup) : o_(o), sup_(sup), rng_(o.seed) {
    for (unsigned k = 0; k < o.windows; ++k) slots_.push_back({.role = fmt::format("r{}", k / kWindowsPerRole), .spawned = k % 2 == 0});
    regs_.push_back(sup.handle(kPing, [](const Message& req, Builder& reply, const CallContext&) {
      reply.initRoot<test::TestMessage>().setText(textOf(req));
    }));
    regs_.push_back(sup.handle(kHello, [this](const Message& req, Builder& reply, const CallContext& ctx) {
      unsigned slot = 0;
      int pid = 0;
      std::sscanf(textOf(req).c_str(), "%u %d", &slot, &pid);
      events_.push({Event::Hello, slot, pid, ctx.sourceWindowId});
      // acquire: pairs with the release stores of setPhase (the phase a window learns here).
      const auto phase = static_cast<Phase>(phase_.load(std::memory_order_acquire));
      reply.initRoot<test::TestMessage>().setText(phase == Phase::Wait ? kPhaseWait : phase == Phase::Run ? kPhaseRun : kPhaseQuiet);
    }));
    regs_.push_back(sup.on(kTally, [this](const Message& m, const CallContext& ctx) {
      auto t = m.root<test::TestMessage>();
      auto numbers = t.getNumbers();
      if (numbers.size() != kOps * kCodes) return;
      {
        std::lock_guard lk(tallyMu_);
        for (unsigned i = 0; i < numbers.size(); ++i) tally_[i / kCodes][i % kCodes] += numbers[i];
      }
      if (std::string_view(t.getText().cStr()) == "final") {
        events_.push({Event::Final, static_cast<unsigned>(t.getSeq()), 0, ctx.sourceWindowId});
      }
    }));
    regs_.push_back(sup.onWindowClosed([this](const WindowEvent& e) { events_.push({Event::Closed, 0, e.pid, e.windowId}); }));
  }

  ~Soak() { regs_.clear(); }

  int run() {
    sup_.startDispatchThread();
    for (unsigned k = 0; k < slots_.size(); ++k) launch(k);
    if (!settle(false)) return finish();
    const Snapshot start = takeSnapshot(sup_.bus());
    setPhase(Phase::Run);
    report_.bump(Op::Broadcast, sup_.broadcast(kGo));
    const auto t0 = Clock::now();
    churn(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.seconds)));
    report_.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    setPhase(Phase::Quiet);
    report_.bump(Op::Broadcast, sup_.broadcast(kQuiet));
    if (!failed() && settle(true, start.fds)) {
      const Snapshot end = takeSnapshot(sup_.bus());
      const std::vector<PortInfo> ports = sup_.ports();
      const RouterStats stats = sup_.stats();
      report_.router(stats);
      {
        std::lock_guard lk(tallyMu_);
        report_.add(tally_);
      }
      // Route ports open, and those ended whose caller lives (their segments stay mapped).
      report_.compare(start, end, o_,
                      static_cast<std::size_t>(std::count_if(ports.begin(), ports.end(), [](const PortInfo& p) { return p.route; })) +
                          static_cast<std::size_t>(stats.retiredRoutes));
    }
    return finish();
  }

 private:
  bool failed() const { return !report_.failures.empty(); }

  void setPhase(Phase p) {
    // release: pairs with the acquire load of the hello handler (on the callback lane).
    phase_.store(static_cast<int>(p), std::memory_order_release);
  }

  void launch(unsigned k) {
    Slot& s = slots_[k];
    std::vector<std::string> argv{o_.exe, "window", "--slot", std::to_string(k), "--roles",
                                  std::to_string((o_.windows + kWindowsPerRole - 1) / kWindowsPerRole),
                                  "--seed", std::to_string(o_.seed * 1000003u + ++report_.launches),
                                  "--reply-spin-cap-us", std::to_string(o_.replySpinCapUs)};
    s.id = 0;
    s.live = s.final = s.killed = false;
    s.since = Clock::now();
    if (s.spawned) {
      argv.push_back("--spawned");
      auto r = sup_.spawn(s.role, argv);
      if (!r) return report_.fail("spawn: " + r.error().toString());
      s.pid = r->pid;
      ++report_.spawned;
      return;
    }
    for (const char* a : {"--bus", sup_.bus().c_str(), "--role", s.role.c_str()}) argv.emplace_back(a);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = 0;
    if (const int e = ::posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ); e != 0) {
      return report_.fail(fmt::format("posix_spawn: {}", std::strerror(e)));
    }
    s.pid = pid;
    children_.push_back({pid, false});
    ++report_.connected;
  }

  // kill -9 of the process of slot k; the caller decides when the slot is filled again.
  void kill(unsigned k) {
    Slot& s = slots_[k];
    ::kill(s.pid, SIGKILL);
    for (auto& c : children_) {
      if (c.pid == s.pid) c.killed = true;
    }
    s.live = false;
    s.killed = true;
    s.since = Clock::now();
  }

  void handle(const Event& e) {
    if (e.kind == Event::Closed) {
      for (unsigned k = 0; k < slots_.size(); ++k) {
        Slot& s = slots_[k];
        if (s.id != e.id || e.id == 0) continue;
        s.id = 0;
        s.live = false;
        if (s.killed || s.spawned) {
          // Killed, or a spawned window that exited: another process fills the slot, started the
          // other way half of the time.
          if (!s.killed) ++report_.exits;
          if (rng_() % 2) s.spawned = !s.spawned;
          launch(k);
        } else {
          ++report_.reconnects;  // the same process connects again
          s.since = Clock::now();
        }
      }
      return;
    }
    if (e.slot >= slots_.size()) return report_.fail(fmt::format("event for slot {} of {}", e.slot, slots_.size()));
    Slot& s = slots_[e.slot];
    // A killed process may have sent a hello on a new connection (it was reconnecting) before it
    // died: stale, its window-closed is what refills the slot.
    if (e.kind == Event::Hello && e.pid == s.pid && !s.killed) {
      s.id = e.id;
      s.live = true;
    } else if (e.kind == Event::Final && e.id == s.id && s.live) {
      s.final = true;
    }
  }

  // Reaps the children that connect by path; one that died of anything but our kill -9, or exited
  // non-zero, is a failure.
  void reap(bool block) {
    std::erase_if(children_, [&](const Child& c) {
      int status = 0;
      if (block) awaitExit(c.pid);
      if (::waitpid(c.pid, &status, block ? 0 : WNOHANG) != c.pid) return false;
      const bool ok = (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && c.killed) ||
                      (WIFEXITED(status) && WEXITSTATUS(status) == 0);
      if (!ok) report_.fail(fmt::format("window process {} ended with status {:#x}", c.pid, status));
      return true;
    });
  }

  // Waits up to 10 s for `pid` to exit (pidfd), then kills it.
  static void awaitExit(pid_t pid) {
    const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) return;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) == 0) ::kill(pid, SIGKILL);
    ::close(fd);
  }

  void churn(Clock::time_point end) {
    const auto tick = o_.killsPerSecond > 0 ? std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1 / o_.killsPerSecond))
                                            : Clock::duration(100ms);
    auto next = Clock::now() + tick;
    while (!failed() && Clock::now() < end) {
      for (const Event& e : events_.take(next)) handle(e);
      reap(false);
      checkStuck();
      if (Clock::now() < next) continue;
      next += tick;
      if (o_.killsPerSecond > 0) killOne();
      report_.bump(Op::Broadcast, sup_.broadcast(kBeat, text("beat")));
      const std::string payload = fmt::format("main-{}", report_.kills);
      const std::string role = slots_[rng_() % slots_.size()].role;
      auto r = sup_.invoke(role, kEcho, text(payload), {.timeout = 2000ms}).get();
      report_.count(Op::SupCall, r.ok() && textOf(*r) != payload ? kWrongReply : static_cast<unsigned>(r.code()));
    }
  }

  // kill -9 of a random registered window, or one time in four of a window in its handshake (or
  // reconnecting) when there is one.
  void killOne() {
    std::vector<unsigned> live, joining;
    for (unsigned k = 0; k < slots_.size(); ++k) {
      if (!slots_[k].killed) (slots_[k].live ? live : joining).push_back(k);
    }
    if (!joining.empty() && (live.empty() || rng_() % 4 == 0)) {
      const unsigned k = joining[rng_() % joining.size()];
      kill(k);  // it may never register: no window-closed to wait for, fill the slot at once
      ++report_.handshakeKills;
      launch(k);
    } else if (!live.empty()) {
      kill(live[rng_() % live.size()]);  // filled again once main hears its window-closed
      ++report_.kills;
    }
  }

  void checkStuck() {
    for (unsigned k = 0; k < slots_.size(); ++k) {
      const Slot& s = slots_[k];
      if (s.live || Clock::now() - s.since <= kLaunchLimit) continue;
      std::string registered = "none";
      for (const WindowInfo& w : sup_.windows()) {
        if (w.pid == s.pid) registered = fmt::format("window {}", w.id);
      }
      report_.fail(fmt::format("slot {} (role {}, pid {}, {}{}) has no registered window for {} s; registry: {}", k,
                               s.role, s.pid, s.spawned ? "spawned" : "connected by path", s.killed ? ", killed" : "",
                               std::chrono::duration_cast<std::chrono::seconds>(kLaunchLimit).count(), registered));
    }
  }

  // Waits for the steady state: every slot's window registered (and, in the quiet phase, its final
  // tally heard), exactly `windows` windows in the registry, no call pending. `fds` (the quiet
  // phase): the descriptors of the start's steady state, which the last processes' pidfds and
  // sockets return to once the router has handled their ends.
  bool settle(bool quiet, std::size_t fds = SIZE_MAX) {
    const auto limit = Clock::now() + kSettleLimit;
    Clock::time_point reapSince{};
    for (;;) {
      bool all = true;
      for (const Slot& s : slots_) all = all && s.live && (!quiet || s.final);
      all = all && sup_.windows().size() == slots_.size() && sup_.stats().pending.empty();
      if (all) {
        // Processes killed or gone are reaped on events the soak cannot wait for (the Reaper's
        // pidfds in the router, closed in a routing round after the window's end; its own waitpid
        // below): one process per slot, no zombie, no descriptor more than at the start. A
        // descriptor that stays past kReapLimit is a leak, which compare() reports.
        const Snapshot now = takeSnapshot(sup_.bus());
        if (now.children == slots_.size() && now.zombies == 0 && now.fds <= fds) return true;
        if (reapSince == Clock::time_point{}) reapSince = Clock::now();
        if (Clock::now() - reapSince > kReapLimit) return true;  // compare() names what stayed
      }
      if (failed()) return false;
      if (Clock::now() > limit) {
        std::string missing;
        for (unsigned k = 0; k < slots_.size(); ++k) {
          if (!slots_[k].live || (quiet && !slots_[k].final)) missing += fmt::format(" {}(pid {})", k, slots_[k].pid);
        }
        report_.fail(fmt::format("no steady state within {} s: {} windows registered, slots not settled:{}",
                                 std::chrono::duration_cast<std::chrono::seconds>(kSettleLimit).count(),
                                 sup_.windows().size(), missing.empty() ? " none" : missing));
        return false;
      }
      // Every condition above changes with an event (hello, final tally, window-closed) except the
      // last pending route and the last registry removal, which complete within a routing round,
      // and the reaping of the last processes that ended.
      for (const Event& e : events_.take(Clock::now() + (all ? 1ms : 100ms))) handle(e);
      reap(false);
    }
  }

  int finish() {
    sup_.stop();
    const Snapshot left = takeSnapshot(sup_.bus());
    reap(true);
    regs_.clear();
    if (left.segMaps != 0 || left.segFds != 0) {
      report_.fail(fmt::format("{} mappings and {} descriptors of the bus's segments left after stop()", left.segMaps,
                               left.segFds));
    }
    return report_.print(o_);
  }

  struct Child {
    pid_t pid;
    bool killed;
  };

  const SoakOptions& o_;
  Supervisor& sup_;
  std::mt19937 rng_;
  std::vector<Slot> slots_;
  std::vector<Child> children_;  // processes started with posix_spawn (spawn()'s are the Reaper's)
  Events events_;
  std::atomic<int> phase_{static_cast<int>(Phase::Wait)};
  std::mutex tallyMu_;
  Tally tally_{};  // the windows' tallies (tallyMu_)
  Report report_;
  std::vector<Registration> regs_;  // last: unregistered before what the callbacks use goes
};

}  // namespace

int runSoak(const SoakOptions& options) {
  // One malloc arena: glibc creates another per thread on first contention and never unmaps it
  // (two mappings each, up to 8 per core), which the mapping count would take for a leak.
  ::mallopt(M_ARENA_MAX, 1);
  const std::string bus = fmt::format("soak-{}", ::getpid());
  auto sup = Supervisor::create({.bus = bus, .inboxBytes = kRingBytes, .outboxBytes = kRingBytes, .logLevel = LogLevel::Error});
  if (!sup) {
    fmt::print(stderr, "soak: {}\n", sup.error().toString());
    return 1;
  }
  fmt::print("soak: bus {}, {} windows, {} s, seed {}, {} kill -9 per second\n", bus, options.windows, options.seconds,
             options.seed, options.killsPerSecond);
  std::fflush(stdout);
  return Soak(options, **sup).run();
}

}  // namespace shmbus::soak
