// Test helpers for code that crosses a process boundary: forked children, event pipes, unique bus
// names, and rings laid out in a shared memory segment between PROT_NONE guard pages.
//
// Children never return into doctest: a child runs one function and leaves with _exit (no
// destructors, no atexit, no doctest report). A failure inside a child is a thrown exception
// (childCheck) that the child prints to stderr and turns into exit status 1; the parent checks the
// status with Child::join. Synchronisation is by events (pipes, futex words, ring records), never
// by sleeping.
#pragma once

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/exception.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "ring/ring.hpp"
#include "segment/segment.hpp"
#include "wait/wait.hpp"

namespace shmbus::test {

using namespace std::chrono_literals;

/// A failed expectation inside a forked child (see childCheck).
struct ChildFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// In a child: throws ChildFailure with `what` unless `ok`. The child exits with status 1.
inline void childCheck(bool ok, const std::string& what) {
  if (!ok) throw ChildFailure(what);
}

/// Absolute CLOCK_MONOTONIC deadline `d` from now, in ns (the ring's deadline unit).
inline std::int64_t deadlineIn(std::chrono::nanoseconds d) { return detail::monotonicNowNs() + d.count(); }

/// Polls `cond` (yielding the CPU between looks) until it holds or `timeout` passes; returns
/// whether it held. For waiting on an event another thread or process publishes in memory.
template <typename Cond>
bool awaitCondition(Cond&& cond, std::chrono::nanoseconds timeout = 10s) {
  const std::int64_t deadline = deadlineIn(timeout);
  while (!cond()) {
    if (detail::monotonicNowNs() > deadline) return false;
    sched_yield();
  }
  return true;
}

/// Waits for a record on `c` until `limit` from now. True when one arrived before the deadline: a
/// wait that ends at its deadline is a lost wake-up (or a dead peer) even if the record is there by
/// then, because the wait looks once more when its time is up.
inline bool waitForData(detail::RingConsumer& c, detail::SpinPolicy policy, std::chrono::nanoseconds limit) {
  const std::int64_t deadline = deadlineIn(limit);
  return c.wait(deadline, policy, [] { return false; }) == detail::WaitStatus::Ready &&
         detail::monotonicNowNs() < deadline;
}

/// claim() of `bodyBytes` that waits for space until `limit` from now; a claim that succeeds only
/// at its deadline is reported as a lost wake-up (see waitForData).
inline Result<detail::Claim> claimWithin(detail::RingProducer& p, std::size_t bodyBytes, detail::SpinPolicy policy,
                                         std::chrono::nanoseconds limit) {
  const std::int64_t deadline = deadlineIn(limit);
  auto c = p.claim(bodyBytes, deadline, policy, [] { return false; });
  if (c.ok() && detail::monotonicNowNs() >= deadline) {
    p.abort(*c, 0);
    return makeError(ErrorCode::Timeout, "space appeared only at the deadline (lost wake-up?)");
  }
  return c;
}

/// A bus name unique to this process and call: "t<pid>-<tag><n>" (tests run in parallel).
inline std::string uniqueBus(std::string_view tag = "") {
  static std::atomic<unsigned> counter{0};
  return "t" + std::to_string(::getpid()) + "-" + std::string(tag) + std::to_string(counter++);
}

/// A forked child process running one function. Joined (or killed) by its owner.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  Child(Child&& o) noexcept : pid_(std::exchange(o.pid_, -1)) {}
  Child& operator=(Child&& o) noexcept {
    if (this != &o) {
      reap();
      pid_ = std::exchange(o.pid_, -1);
    }
    return *this;
  }
  /// Kills and reaps a child that was not joined (the parent's test failed early).
  ~Child() { reap(); }

  /// Forks; the child runs `body` and exits 0, or 1 after printing what it threw.
  static Child fork(const std::function<void()>& body) {
    std::fflush(nullptr);  // the child must not flush the parent's buffered output again
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      int status = 0;
      try {
        body();
      } catch (const kj::Exception& e) {
        std::fprintf(stderr, "child %d: kj::Exception: %s\n", ::getpid(), e.getDescription().cStr());
        status = 1;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
        status = 1;
      } catch (...) {
        std::fprintf(stderr, "child %d: unknown exception\n", ::getpid());
        status = 1;
      }
      ::_exit(status);
    }
    Child c;
    c.pid_ = pid;
    return c;
  }

  /// Waits for the child to exit, at most `timeout` (an event wait on a pidfd, not a sleep).
  /// Returns the exit status; a child killed by a signal gives 128 + signal; a child still running
  /// at the timeout is killed and gives -1.
  int join(std::chrono::milliseconds timeout) {
    if (pid_ < 0) return -1;
    const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));  // glibc's header lacks C linkage
    if (fd >= 0) {
      pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
      ::close(fd);
      if (r == 0) {
        std::fprintf(stderr, "child %d still running after %lld ms: killed\n", pid_,
                     static_cast<long long>(timeout.count()));
        reap();
        return -1;
      }
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
  }

  pid_t pid() const noexcept { return pid_; }

 private:
  void reap() noexcept {
    if (pid_ < 0) return;
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  pid_t pid_ = -1;
};

/// A one-way event channel between a parent and a forked child (both ends inherited by fork).
class Pipe {
 public:
  Pipe() {
    if (::pipe(fds_) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }

  /// Sends one event byte.
  void send(std::uint8_t event = 1) const {
    while (::write(fds_[1], &event, 1) < 0 && errno == EINTR) {
    }
  }

  /// Waits for one event byte at most `timeout`; nullopt on timeout or a closed pipe.
  std::optional<std::uint8_t> receive(std::chrono::milliseconds timeout) const {
    pollfd p{fds_[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
    std::uint8_t event = 0;
    if (::read(fds_[0], &event, 1) != 1) return std::nullopt;
    return event;
  }

 private:
  int fds_[2] = {-1, -1};
};

/// One ring inside a mapped segment: its control block and data area.
struct RingArea {
  detail::RingControl* control = nullptr;
  std::uint8_t* data = nullptr;
  detail::RingGeometry geometry{};

  detail::RingProducer producer(bool zeroOnClaim = false) const {
    return detail::RingProducer(control, data, geometry, zeroOnClaim);
  }
  detail::RingConsumer consumer() const { return detail::RingConsumer(control, data, geometry); }

  /// True when every data byte is zero (the ring's "free space is zero" invariant, when empty).
  bool allZero() const {
    for (std::size_t i = 0; i < geometry.capacity; ++i) {
      if (data[i] != 0) return false;
    }
    return true;
  }
  /// True when [p, p + n) lies inside this ring's data area.
  bool contains(const void* p, std::size_t n) const {
    const auto* b = static_cast<const std::uint8_t*>(p);
    return b >= data && n <= geometry.capacity && b + n <= data + geometry.capacity;
  }
};

/// A segment holding `rings` rings of one geometry, every data area between two PROT_NONE guard
/// pages, so any access outside a ring's data crashes the test:
///
///   page 0: SegmentHeader, then the RingControl blocks | guard | data 0 | guard | data 1 | guard ...
///
/// The creating process unlinks the name on destruction (or earlier with unlink()); children that
/// inherit the object by fork leave with _exit and never run the destructor.
class RingSegment {
 public:
  static constexpr std::size_t kMaxRings = 7;

  /// Creates a segment under a fresh unique bus name.
  static RingSegment create(detail::RingGeometry geometry, std::size_t rings = 1, std::string_view tag = "") {
    RingSegment r;
    r.bus_ = uniqueBus(tag);
    r.geometry_ = geometry;
    r.rings_ = rings;
    auto seg = detail::Segment::create(detail::Segment::makeName(r.bus_, 1), bytesFor(geometry, rings));
    if (!seg) throw std::runtime_error(seg.error().toString());
    r.segment_ = std::move(seg).value();
    r.owner_ = ::getpid();
    r.protect();
    return r;
  }

  /// Opens (maps again, at another address) a segment made by create() in another process.
  static RingSegment open(const std::string& name, detail::RingGeometry geometry, std::size_t rings = 1) {
    RingSegment r;
    r.geometry_ = geometry;
    r.rings_ = rings;
    auto seg = detail::Segment::open(name);
    if (!seg) throw std::runtime_error(seg.error().toString());
    r.segment_ = std::move(seg).value();
    if (r.segment_.size() != bytesFor(geometry, rings)) throw std::runtime_error("segment size mismatch");
    r.protect();
    return r;
  }

  RingSegment(RingSegment&& o) noexcept
      : segment_(std::move(o.segment_)),
        bus_(std::move(o.bus_)),
        geometry_(o.geometry_),
        rings_(o.rings_),
        owner_(std::exchange(o.owner_, -1)) {}
  RingSegment& operator=(RingSegment&&) = delete;
  ~RingSegment() { unlink(); }

  /// Removes the name (the creator only, once); mappings stay valid.
  void unlink() noexcept {
    if (owner_ == ::getpid()) detail::Segment::unlink(segment_.name());
    owner_ = -1;
  }

  RingArea ring(std::size_t i = 0) const {
    if (i >= rings_) throw std::out_of_range("ring index");
    RingArea a;
    a.control = reinterpret_cast<detail::RingControl*>(segment_.base() + sizeof(detail::SegmentHeader) +
                                                        i * sizeof(detail::RingControl));
    a.data = segment_.base() + page() + i * (page() + geometry_.capacity) + page();
    a.geometry = geometry_;
    return a;
  }

  /// Bytes of page 0 after the largest set of control blocks, free for a test's own shared state
  /// (flags, counters) that must stay out of the rings.
  std::uint8_t* scratch() const noexcept {
    return segment_.base() + sizeof(detail::SegmentHeader) + kMaxRings * sizeof(detail::RingControl);
  }
  static_assert(sizeof(detail::SegmentHeader) + kMaxRings * sizeof(detail::RingControl) < 4096);
  static constexpr std::size_t kScratchBytes =
      4096 - sizeof(detail::SegmentHeader) - kMaxRings * sizeof(detail::RingControl);

  const detail::Segment& segment() const noexcept { return segment_; }
  const std::string& name() const noexcept { return segment_.name(); }
  const std::string& bus() const noexcept { return bus_; }

  static std::size_t page() { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }
  static std::size_t bytesFor(const detail::RingGeometry& g, std::size_t rings) {
    if (rings == 0 || rings > kMaxRings || g.capacity % page() != 0) throw std::invalid_argument("ring layout");
    return page() + rings * (page() + g.capacity) + page();
  }

 private:
  RingSegment() = default;

  void protect() const {
    for (std::size_t i = 0; i <= rings_; ++i) {
      std::uint8_t* guard = segment_.base() + page() + i * (page() + geometry_.capacity);
      if (::mprotect(guard, page(), PROT_NONE) != 0) throw std::runtime_error("mprotect of a guard page failed");
    }
  }

  detail::Segment segment_;
  std::string bus_;
  detail::RingGeometry geometry_{};
  std::size_t rings_ = 0;
  pid_t owner_ = -1;
};

}  // namespace shmbus::test
