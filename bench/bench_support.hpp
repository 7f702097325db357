// Harness for cross-process benchmarks: a cheap tick clock, CPU pinning, shared anonymous memory,
// a forked partner process with a watchdog, and latency percentiles.
//
// Every benchmark in ring_bench runs in two processes: the Google Benchmark process (pinned to
// kMainCpu) and a partner it forks for that one run (pinned to kPartnerCpu), which echoes or
// consumes. The partner learns the iteration count through fork (it is a copy of the parent's
// memory), so no stop protocol is needed: it does exactly its share of the work and _exit()s.
// bus_bench adds partners that are left unpinned (kUnpinned: a router in the middle of a call)
// and signals between processes over pipes (EventPipe).
#pragma once

#include <errno.h>  // program_invocation_short_name (GNU)
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <utility>
#include <vector>

#include "wait/wait.hpp"

namespace shmbus::bench {

inline constexpr int kMainCpu = 0;     ///< the benchmark process (ping sender / producer)
inline constexpr int kPartnerCpu = 1;  ///< the forked partner (echoer / consumer)
inline constexpr int kUnpinned = -1;   ///< Partner::spawn: may run on every CPU (a router)

/// Prints a message and ends the process at once. Used on the hot paths where an error means
/// the measurement is meaningless (a partner that lost a message, a corrupt ring).
[[noreturn]] inline void fatal(const char* what) {
  std::fprintf(stderr, "%s: fatal: %s\n", program_invocation_short_name, what);
  std::fflush(stderr);
  ::_exit(4);
}

// ---------------------------------------------------------------------------------------------
// Clock

/// A raw timestamp. On x86 the TSC (this machine reports constant_tsc + nonstop_tsc), about 10 ns
/// against ~40 ns for steady_clock::now(): the floor round trip is ~200 ns, so the clock's cost
/// is visible. The lfence keeps rdtsc from executing before the loads that detected the reply.
inline std::uint64_t ticksNow() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_lfence();
  return __rdtsc();
#else
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
#endif
}

/// Nanoseconds per tick, calibrated once against steady_clock over a 50 ms busy wait.
inline double nsPerTick() {
  static const double value = [] {
#if defined(__x86_64__) || defined(__i386__)
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    const std::uint64_t c0 = ticksNow();
    while (Clock::now() - t0 < std::chrono::milliseconds(50)) {
    }
    const auto t1 = Clock::now();
    const std::uint64_t c1 = ticksNow();
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()) /
           static_cast<double>(c1 - c0);
#else
    return 1.0;
#endif
  }();
  return value;
}

// ---------------------------------------------------------------------------------------------
// Pinning

/// Pins the calling process to `cpu`. Returns false when the CPU is not available.
inline bool pinToCpu(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

/// Lets the calling process run on every configured CPU again (the kernel keeps only those its
/// cpuset allows). A process forked by a pinned one inherits the pin; a router in the middle of a
/// benchmark must not keep it (docs/architecture.md §13: every hop through a pinned router is a cross-CPU
/// wake-up). Returns false when the kernel refuses the mask.
inline bool unpinFromCpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  const long n = ::sysconf(_SC_NPROCESSORS_CONF);
  for (long cpu = 0; cpu < n && cpu < CPU_SETSIZE; ++cpu) CPU_SET(static_cast<int>(cpu), &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

/// Pins the benchmark process for one run and restores its previous mask afterwards, so the
/// framework's own bookkeeping between runs is not confined to one CPU.
class ScopedPin {
 public:
  explicit ScopedPin(int cpu) {
    saved_ok_ = ::sched_getaffinity(0, sizeof saved_, &saved_) == 0;
    ok_ = pinToCpu(cpu);
  }
  ~ScopedPin() {
    if (saved_ok_) ::sched_setaffinity(0, sizeof saved_, &saved_);
  }
  ScopedPin(const ScopedPin&) = delete;
  ScopedPin& operator=(const ScopedPin&) = delete;
  bool ok() const noexcept { return ok_; }

 private:
  cpu_set_t saved_{};
  bool saved_ok_ = false;
  bool ok_ = false;
};

// ---------------------------------------------------------------------------------------------
// Memory

/// Anonymous MAP_SHARED memory: inherited by a forked partner, zero filled, pre-faulted
/// (MADV_POPULATE_WRITE) so no page fault lands inside a timed loop.
class SharedMemory {
 public:
  explicit SharedMemory(std::size_t bytes) : bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fatal("mmap of shared anonymous memory failed");
    base_ = static_cast<std::uint8_t*>(p);
    prefault(base_, bytes_);
  }
  ~SharedMemory() { ::munmap(base_, bytes_); }
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  std::uint8_t* base() const noexcept { return base_; }
  template <typename T>
  T* as(std::size_t offset = 0) const noexcept {
    return reinterpret_cast<T*>(base_ + offset);
  }

  /// Maps every page of [p, p + n) writable in this process now (a mapping inherited through
  /// fork, or a segment opened by name, has no page-table entries yet in the new process).
  static void prefault(void* p, std::size_t n) noexcept {
    auto* b = static_cast<std::uint8_t*>(p);
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(b) & ~(page - 1);
    const std::uintptr_t last = reinterpret_cast<std::uintptr_t>(b) + n;
    if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_POPULATE_WRITE) == 0) return;
    // Older kernels: touch each page (an atomic add of 0 writes without changing the data).
    for (std::uintptr_t a = first; a < last; a += page) {
      reinterpret_cast<std::atomic<std::uint8_t>*>(std::max(a, reinterpret_cast<std::uintptr_t>(b)))
          ->fetch_add(0, std::memory_order_relaxed);
    }
  }

 private:
  std::uint8_t* base_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Process-local buffer, touched at construction (no page faults in the timed loop).
inline std::vector<std::uint8_t> touchedBuffer(std::size_t bytes, std::uint8_t fill) {
  return std::vector<std::uint8_t>(std::max<std::size_t>(bytes, 64), fill);
}

// ---------------------------------------------------------------------------------------------
// Partner process

/// Handshake words between the benchmark process and its partner, each on its own cache line.
struct Handshake {
  alignas(64) std::atomic<std::uint32_t> ready;   ///< partner attached and pre-faulted
  alignas(64) std::atomic<std::uint32_t> done;    ///< partner finished its share (Stream)
  alignas(64) std::atomic<std::uint64_t> errors;  ///< messages the partner found out of order
};

/// A forked partner process, pinned to one CPU (or to none), killed with the parent
/// (PR_SET_PDEATHSIG) and reaped by the destructor (killed first if it is still running).
class Partner {
 public:
  /// Forks; the child pins itself to `cpu` (kUnpinned: unpins itself, see unpinFromCpus), runs
  /// `body()`, and _exit()s: 0 on return, 2 on an exception (message on stderr), 3 when it cannot
  /// pin. _exit, not exit: the child must not flush the parent's stdio buffers (Google
  /// Benchmark's output) or run its atexit handlers.
  template <typename Body>
  static Partner spawn(int cpu, Body&& body) {
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) fatal("fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(3);  // the parent died before prctl took effect
      ::alarm(0);                             // the watchdog is the parent's
      if (!(cpu == kUnpinned ? unpinFromCpus() : pinToCpu(cpu))) {
        std::fprintf(stderr, "%s: partner cannot pin to CPU %d\n", program_invocation_short_name, cpu);
        ::_exit(3);
      }
      try {
        body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: partner failed: %s\n", program_invocation_short_name, e.what());
        ::_exit(2);
      }
      ::_exit(0);
    }
    return Partner(pid);
  }

  Partner(Partner&& o) noexcept : pid_(std::exchange(o.pid_, -1)) {}
  Partner& operator=(Partner&&) = delete;
  ~Partner() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      join();
    }
  }

  /// False once the partner has exited (it is then reaped).
  bool alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exitOk_ = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      return false;
    }
    return true;
  }

  /// Waits for the partner to exit; true if it exited with status 0.
  bool join() {
    if (pid_ > 0) {
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
      exitOk_ = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    return exitOk_;
  }

  /// Spins until `hs.ready` is set (true) or the partner exits first (false).
  bool awaitReady(const Handshake& hs) {
    for (std::uint64_t i = 1; hs.ready.load(std::memory_order_acquire) == 0; ++i) {
      detail::cpuRelax();
      if ((i & 0xffff) == 0 && !alive()) return false;
    }
    return true;
  }

 private:
  explicit Partner(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
  bool exitOk_ = false;
};

/// A one-way stream of 64-bit events from a forked partner to the benchmark process over a pipe:
/// "ready", then "done" with a result. Waiting on it sleeps in read(2) (no spinning, no sleeps of
/// a guessed length), and a partner that dies before it notifies ends the wait with end-of-file
/// instead of a hang, provided the parent closed its own write end (closeWriter) right after the
/// fork, before it forks anything else.
///
/// Process contract: create before Partner::spawn; the partner calls notify(), the parent calls
/// closeWriter() once and then wait(). Both ends are O_CLOEXEC (an exec'd daemon never holds them).
class EventPipe {
 public:
  EventPipe() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) fatal("pipe2 failed");
  }
  ~EventPipe() {
    for (int& fd : fds_) {
      if (fd >= 0) ::close(std::exchange(fd, -1));
    }
  }
  EventPipe(const EventPipe&) = delete;
  EventPipe& operator=(const EventPipe&) = delete;

  /// Partner side: sends `value` (8 bytes, atomic on a pipe). Ends the process (fatal) if the
  /// parent is gone, since nobody is left to measure.
  void notify(std::uint64_t value = 1) const {
    ssize_t n;
    while ((n = ::write(fds_[1], &value, sizeof value)) < 0 && errno == EINTR) {
    }
    if (n != static_cast<ssize_t>(sizeof value)) fatal("EventPipe: write failed");
  }

  /// Parent side: drops the parent's copy of the write end, so that wait() sees end-of-file once
  /// the partner exits. Call right after Partner::spawn.
  void closeWriter() {
    if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
  }

  /// Parent side: blocks until the next event and returns its value; nullopt when the partner
  /// exited (or closed the pipe) without sending one. A SIGALRM (Watchdog) ends the process.
  std::optional<std::uint64_t> wait() const {
    std::uint64_t value = 0;
    std::size_t got = 0;
    while (got < sizeof value) {
      const ssize_t n = ::read(fds_[0], reinterpret_cast<char*>(&value) + got, sizeof value - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return std::nullopt;
      got += static_cast<std::size_t>(n);
    }
    return value;
  }

 private:
  int fds_[2] = {-1, -1};
};

/// Arms a watchdog for one benchmark run: if the run has not finished within `seconds` (a lost
/// message, a dead partner), SIGALRM prints the benchmark's name and ends the process rather
/// than hang a CI job. The partner is killed with us (PR_SET_PDEATHSIG).
class Watchdog {
 public:
  Watchdog(const char* name, unsigned seconds) {
    current() = name;
    struct sigaction sa {};
    sa.sa_handler = &onAlarm;
    ::sigaction(SIGALRM, &sa, nullptr);
    ::alarm(seconds);
  }
  ~Watchdog() { ::alarm(0); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  static const char*& current() {
    static const char* name = "";
    return name;
  }
  static void onAlarm(int) {
    const char prefix[] = ": watchdog: benchmark hung: ";
    [[maybe_unused]] auto p = ::write(2, program_invocation_short_name, std::strlen(program_invocation_short_name));
    [[maybe_unused]] auto a = ::write(2, prefix, sizeof prefix - 1);
    [[maybe_unused]] auto b = ::write(2, current(), std::strlen(current()));
    [[maybe_unused]] auto c = ::write(2, "\n", 1);
    ::_exit(5);
  }
};

// ---------------------------------------------------------------------------------------------
// Statistics

/// The step in which the tick counter advances: the gcd of many consecutive-read deltas. 1 on a
/// counter that ticks every cycle; 26 on this KVM guest, whose TSC moves in 10 ns steps, which is
/// coarse against a 130 ns round trip (percentiles() interpolates within a step because of it).
inline std::uint64_t tickQuantum() {
  static const std::uint64_t value = [] {
    std::uint64_t g = 0;
    for (int i = 0; i < 4096; ++i) {
      const std::uint64_t a = ticksNow();
      const std::uint64_t b = ticksNow();
      std::uint64_t d = b - a;
      if (d == 0) continue;
      while (d != 0) g = std::exchange(d, g % d);  // g = gcd(g, d)
    }
    return g == 0 ? std::uint64_t{1} : g;
  }();
  return value;
}

struct Percentiles {
  double p50Ns = 0;
  double p99Ns = 0;
};

/// p50 and p99 of per-iteration tick deltas, in ns (reorders `ticks`). Each delta is a count of
/// clock steps, so a delta of v ticks stands for a true duration spread over [v - q/2, v + q/2)
/// (q = tickQuantum()); the percentile is interpolated linearly inside that step (the grouped-data
/// median). Without this, a 130 ns p50 could only move in 10 ns (8 %) jumps.
inline Percentiles percentiles(std::vector<std::uint64_t>& ticks) {
  Percentiles p;
  if (ticks.empty()) return p;
  const double n = static_cast<double>(ticks.size());
  const double q = static_cast<double>(tickQuantum());
  auto at = [&](double quantile) {
    const double rank = quantile * n;  // wanted number of samples below the answer
    const auto k = std::min(ticks.size() - 1, static_cast<std::size_t>(rank));
    std::nth_element(ticks.begin(), ticks.begin() + static_cast<std::ptrdiff_t>(k), ticks.end());
    const std::uint64_t v = ticks[k];
    std::size_t below = 0, equal = 0;
    for (const std::uint64_t t : ticks) {
      below += t < v;
      equal += t == v;
    }
    double frac = (rank - static_cast<double>(below)) / static_cast<double>(equal);
    frac = std::clamp(frac, 0.0, 1.0);
    const double value = q > 1 ? static_cast<double>(v) - q / 2 + frac * q : static_cast<double>(v);
    return value * nsPerTick();
  };
  p.p50Ns = at(0.50);
  p.p99Ns = at(0.99);
  return p;
}

}  // namespace shmbus::bench
