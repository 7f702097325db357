// Spin-then-park waiting on a futex word that lives in shared memory.
//
// Algorithm (the classic futex "event count", Drepper, "Futexes Are Tricky", 2011, §5, and the
// waiter-count guard of cameron314/readerwriterqueue's LightweightSemaphore):
//
//   waiter                                   notifier
//   ------                                   --------
//   s = seq.load(acquire)                    publish(data)            (release store)
//   waiters.fetch_add(1, seq_cst)   [W]      barrier                  [W]
//   membarrier(GLOBAL_EXPEDITED)    [W]      if waiters.load(): seq.fetch_add(1); futex_wake(seq)
//   if ready(): done
//   futex_wait(seq, s, timeout)
//
// The two [W] sides form a store-buffer (Dekker) pair: either the waiter's re-check sees the
// published data, or the notifier sees `waiters != 0` and bumps `seq` after the waiter read `s`,
// so FUTEX_WAIT returns at once (EAGAIN) or is woken. No wake-up is lost, and a notifier with no
// waiter issues no syscall at all. The notifier's barrier is a full fence, or only a compiler
// barrier when the waiter's membarrier() makes up for it (asymmetric barriers, below).
//
// The futex is the shared (non-PRIVATE) variant, so it works between processes that map the same
// segment at different addresses (the kernel keys it on the page's inode and offset).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace shmbus::detail {

/// A futex word and its waiter count, laid out for shared memory. Plain data: every field starts
/// at zero in a freshly zeroed segment; no constructor runs in shared memory.
struct WaitWord {
  std::atomic<std::uint32_t> seq;      ///< futex word; bumped by every notify that finds a waiter
  std::atomic<std::uint32_t> waiters;  ///< number of threads between [W] and the end of their park
  /// Set (never cleared) by a waiter process that cannot issue asymmetric barriers (membarrier
  /// unavailable, e.g. filtered by seccomp): notifiers of this word then use a full fence.
  std::atomic<std::uint32_t> fenceNeeded;
  std::uint32_t reserved;
};
static_assert(sizeof(WaitWord) == 16);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

/// CLOCK_MONOTONIC now, in ns. About 20-40 ns (vDSO).
std::int64_t monotonicNowNs() noexcept;

/// Deadline value meaning "wait forever".
inline constexpr std::int64_t kNoDeadline = INT64_MAX;

/// Asymmetric barriers (the "fast side / slow side" pattern of membarrier(2); folly's
/// asymmetricLightBarrier/asymmetricHeavyBarrier): notify() runs on every publish and needs only
/// a compiler barrier when this process is registered for MEMBARRIER_CMD_GLOBAL_EXPEDITED; a waiter
/// about to park (rare) issues membarrier(GLOBAL_EXPEDITED), which makes every running thread of
/// every registered process pass a full barrier. A locked instruction per publish would drain the
/// store buffer while the record's cache lines are still in flight to the other core
/// (bench/ring_bench: about +80 ns per spinning round trip).
/// True when this process is registered (decided once, at load and again in a fork child).
bool lightNotifyEnabled() noexcept;
/// True when this process can issue MEMBARRIER_CMD_GLOBAL_EXPEDITED.
bool heavyBarrierAvailable() noexcept;
/// Tests only: `false` makes this process behave as if membarrier were unavailable (notifiers
/// fence, waiters mark fenceNeeded); `true` restores what the kernel offers. Call while no other
/// thread of this process notifies or waits.
void useAsymmetricBarriers(bool enable) noexcept;
namespace wait_state {
/// lightNotifyEnabled(), cached for the inline notify(); written only at load and in a fork child.
extern bool gLightNotify;
}  // namespace wait_state

/// The waiter's half of SYNC POINT W, after it announced itself in `waiters` (seq_cst RMW) and
/// before it re-checks its predicate: a seq_cst fence (pairs with a fencing notify() by the C++
/// model itself, since predicates load with acquire only), then membarrier(GLOBAL_EXPEDITED) when
/// available (pairs with a light notify()); otherwise it marks `word` fenceNeeded so its notifiers
/// fence from then on. Returns true when that mark was new: a notifier may have skipped its fence
/// just before, so the caller parks for at most kFirstMarkParkNs this time. One system call when
/// membarrier is available (the caller is about to park anyway). Any thread or process.
bool waiterBarrier(WaitWord& word) noexcept;
/// The same for several words at once (one system call): the supervisor's epoll wait.
bool waiterBarrier(WaitWord* const* words, std::size_t n) noexcept;
/// Bound on the one park that follows a new fenceNeeded mark (see waiterBarrier), ns.
inline constexpr std::int64_t kFirstMarkParkNs = 1'000'000;

/// One architectural pause (x86 `pause`), for spin loops.
inline void cpuRelax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// FUTEX_WAIT (shared) on `word` while it equals `expected`, for at most `timeoutNs` (< 0: forever).
/// Returns 0 when woken, or an errno value (EAGAIN: the word changed; ETIMEDOUT; EINTR).
int futexWait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t timeoutNs) noexcept;

/// FUTEX_WAKE (shared) of up to `count` waiters. Returns the number woken, or -errno.
int futexWake(std::atomic<std::uint32_t>* word, int count) noexcept;

/// How long a waiter spins before it parks. Default 4 µs: about the cost of one futex
/// round trip's user-visible latency saved when a partner answers fast, small enough that an idle
/// endpoint costs nothing (docs/architecture.md §13: with 2 cores, long spins starve the partner). Measured by
/// bench/ring_bench (PingPong/ring_spin vs ring_parked).
struct SpinPolicy {
  std::chrono::nanoseconds spin{std::chrono::microseconds(4)};
};

/// Result of a wait.
enum class WaitStatus { Ready, Timeout };

/// Waits until `ready()` returns true, spinning for `policy.spin`, then parking on `word.seq`.
/// `deadlineNs` is absolute CLOCK_MONOTONIC ns (kNoDeadline: forever). `ready` must be a cheap
/// acquire-load predicate; it is called again after every wake-up (spurious wake-ups are fine).
/// Thread contract: any number of threads or processes may wait on one word concurrently.
template <typename Ready>
WaitStatus spinThenPark(WaitWord& word, Ready&& ready, const SpinPolicy& policy,
                        std::int64_t deadlineNs) {
  if (ready()) return WaitStatus::Ready;
  if (policy.spin.count() > 0) {
    // Reading the clock costs ~30 pause-free iterations: read it first after 16 iterations (a
    // partner that answers within them never pays for it), then every 16.
    std::int64_t spinEnd = 0;
    for (unsigned i = 1;; ++i) {
      cpuRelax();
      if (ready()) return WaitStatus::Ready;
      if ((i & 15u) == 0) {
        const std::int64_t now = monotonicNowNs();
        if (spinEnd == 0) {
          spinEnd = now + policy.spin.count();
        } else if (now >= spinEnd) {
          break;
        }
      }
    }
  }
  for (;;) {
    // SYNC POINT seq: acquire pairs with the notifier's release fetch_add, so a changed seq is
    // observed no earlier than the data published before it.
    const std::uint32_t s = word.seq.load(std::memory_order_acquire);
    // SYNC POINT W: announce, then the waiter's barrier (store-buffer pattern with notify()).
    word.waiters.fetch_add(1, std::memory_order_seq_cst);
    const bool newMark = waiterBarrier(word);
    if (ready()) {
      // relaxed: the count is only a hint for notifiers; a stale non-zero costs one spare wake.
      word.waiters.fetch_sub(1, std::memory_order_relaxed);
      return WaitStatus::Ready;
    }
    std::int64_t timeout = -1;
    if (deadlineNs != kNoDeadline) {
      timeout = deadlineNs - monotonicNowNs();
      if (timeout <= 0) {
        word.waiters.fetch_sub(1, std::memory_order_relaxed);  // relaxed: hint, as above
        return ready() ? WaitStatus::Ready : WaitStatus::Timeout;
      }
    }
    if (newMark && (timeout < 0 || timeout > kFirstMarkParkNs)) timeout = kFirstMarkParkNs;
    futexWait(&word.seq, s, timeout);
    word.waiters.fetch_sub(1, std::memory_order_relaxed);  // relaxed: hint, as above
    if (ready()) return WaitStatus::Ready;
  }
}

/// FUTEX_WAITV (Linux 5.16) on `n` (at most kMaxWaitWords) shared 32-bit futex words at once:
/// returns when any of them is woken or no longer equals its `expected` value, or at the
/// absolute CLOCK_MONOTONIC `deadlineNs` (kNoDeadline: never). Returns 0, or an errno value
/// (EAGAIN: a word changed; ETIMEDOUT; EINTR). A kernel without futex_waitv (ENOSYS) gets a
/// FUTEX_WAIT on the first word of at most 1 ms instead (the caller's loop then looks again).
int futexWaitAny(std::atomic<std::uint32_t>* const* words, const std::uint32_t* expected, std::size_t n,
                 std::int64_t deadlineNs) noexcept;
/// The most words futexWaitAny and spinThenParkAny take (the kernel's limit is 128).
inline constexpr std::size_t kMaxWaitWords = 64;

/// spinThenPark over several words: waits until `ready()` (which covers what every word
/// announces) returns true, spinning for `policy.spin`, then parking on all of `words` at once
/// (futexWaitAny); any notify of any of them wakes it. The waiter protocol is spinThenPark's on
/// each word (SYNC POINTs seq and W), so notifiers need no change. `n` in [1, kMaxWaitWords].
/// A window dispatching its direct routes beside its inbox (docs/architecture.md §19).
template <typename Ready>
WaitStatus spinThenParkAny(WaitWord* const* words, std::size_t n, Ready&& ready, const SpinPolicy& policy,
                           std::int64_t deadlineNs) {
  if (n == 1) return spinThenPark(*words[0], ready, policy, deadlineNs);
  if (ready()) return WaitStatus::Ready;
  if (policy.spin.count() > 0) {
    const std::int64_t spinEnd = monotonicNowNs() + policy.spin.count();
    for (unsigned i = 1;; ++i) {
      cpuRelax();
      if (ready()) return WaitStatus::Ready;
      if ((i & 15u) == 0 && monotonicNowNs() >= spinEnd) break;
    }
  }
  std::atomic<std::uint32_t>* seqs[kMaxWaitWords];
  std::uint32_t seen[kMaxWaitWords];
  for (;;) {
    for (std::size_t i = 0; i < n; ++i) {
      seqs[i] = &words[i]->seq;
      // SYNC POINT seq (per word, as in spinThenPark).
      seen[i] = words[i]->seq.load(std::memory_order_acquire);
      // SYNC POINT W: announce on every word, then one barrier for all of them.
      words[i]->waiters.fetch_add(1, std::memory_order_seq_cst);
    }
    const bool newMark = waiterBarrier(words, n);
    auto leave = [&] {
      // relaxed: the counts are hints for notifiers (as in spinThenPark).
      for (std::size_t i = 0; i < n; ++i) words[i]->waiters.fetch_sub(1, std::memory_order_relaxed);
    };
    if (ready()) {
      leave();
      return WaitStatus::Ready;
    }
    const std::int64_t now = monotonicNowNs();
    if (deadlineNs != kNoDeadline && deadlineNs <= now) {
      leave();
      return ready() ? WaitStatus::Ready : WaitStatus::Timeout;
    }
    std::int64_t until = deadlineNs;
    if (newMark && (until == kNoDeadline || until - now > kFirstMarkParkNs)) until = now + kFirstMarkParkNs;
    futexWaitAny(seqs, seen, n, until);
    leave();
    if (ready()) return WaitStatus::Ready;
  }
}

/// The slow half of notify(): bumps seq and wakes the parked waiters (FUTEX_WAKE, or an eventfd
/// write when `eventFd >= 0`). Call only after notify()'s barrier found `waiters != 0`.
void wakeWaiters(WaitWord& word, int eventFd) noexcept;

/// Producer side: after publishing data with a release store, wakes the waiters of `word` if
/// any are parked. Inline; when nobody waits it costs two loads and a compiler barrier (a full
/// fence instead when this process is not registered for membarrier or a waiter of `word` asked
/// for it), and no system call.
/// If `eventFd >= 0` the wake-up is an eventfd write instead of FUTEX_WAKE (for a consumer that
/// waits in epoll, like the supervisor). Thread contract: any thread or process.
inline void notify(WaitWord& word, int eventFd = -1) noexcept {
  // SYNC POINT W (store-buffer pair with the waiter's announce-then-recheck): the data store
  // before this call must not pass the load of `waiters` below.
  // relaxed: fenceNeeded is set once, by a waiter, before that waiter's first park.
  if (wait_state::gLightNotify && word.fenceNeeded.load(std::memory_order_relaxed) == 0) [[likely]] {
    // Compiler barrier only: the waiter's membarrier(GLOBAL_EXPEDITED) supplies the hardware
    // barrier on this thread when it matters (asymmetric Dekker; see lightNotifyEnabled()).
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  // relaxed: ordered by the barrier above.
  if (word.waiters.load(std::memory_order_relaxed) != 0) [[unlikely]] wakeWaiters(word, eventFd);
}

/// Unconditional wake of every waiter on `word` (shutdown, peer death): bumps seq and wakes all.
void wakeAll(WaitWord& word) noexcept;

}  // namespace shmbus::detail
