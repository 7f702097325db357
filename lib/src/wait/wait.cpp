#include "wait/wait.hpp"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <climits>
#include <ctime>

namespace shmbus::detail {

namespace {
long membarrier(int cmd) noexcept { return syscall(SYS_membarrier, cmd, 0u, 0); }

bool gHeavyAvailable = false;

/// Queries membarrier(2) and registers this process for GLOBAL_EXPEDITED. Idempotent.
bool registerAsymmetric() noexcept {
  const long cmds = membarrier(MEMBARRIER_CMD_QUERY);
  gHeavyAvailable = cmds > 0 && (cmds & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0;
  return cmds > 0 && (cmds & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0 &&
         membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
}

bool initAsymmetric() noexcept {
  // A fork child gets a fresh registration (exec starts over through this initializer anyway).
  pthread_atfork(nullptr, nullptr, [] { wait_state::gLightNotify = registerAsymmetric(); });
  return registerAsymmetric();
}
}  // namespace

namespace wait_state {
bool gLightNotify = initAsymmetric();
}  // namespace wait_state

bool lightNotifyEnabled() noexcept { return wait_state::gLightNotify; }

void useAsymmetricBarriers(bool enable) noexcept {
  if (enable) {
    wait_state::gLightNotify = registerAsymmetric();
  } else {
    wait_state::gLightNotify = false;
    gHeavyAvailable = false;
  }
}
bool heavyBarrierAvailable() noexcept { return gHeavyAvailable; }

bool waiterBarrier(WaitWord& word) noexcept {
  WaitWord* w = &word;
  return waiterBarrier(&w, 1);
}

bool waiterBarrier(WaitWord* const* words, std::size_t n) noexcept {
  // SYNC POINT W with a fencing notify() (see wait.hpp); on x86-64 and ARMv8 the caller's
  // seq_cst RMW already is a full barrier, so this costs nothing more on the path that parks.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (gHeavyAvailable && membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return false;
  bool newMark = false;
  for (std::size_t i = 0; i < n; ++i) {
    // relaxed load / seq_cst store: set once; every notifier fences from its next notify on.
    if (words[i]->fenceNeeded.load(std::memory_order_relaxed) == 0) {
      words[i]->fenceNeeded.store(1, std::memory_order_seq_cst);
      newMark = true;
    }
  }
  return newMark;
}

std::int64_t monotonicNowNs() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int futexWait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t timeoutNs) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeoutNs >= 0) {
    ts.tv_sec = static_cast<time_t>(timeoutNs / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeoutNs % 1'000'000'000);
    tsp = &ts;
  }
  // FUTEX_WAIT without FUTEX_PRIVATE_FLAG: the word is in memory shared between processes.
  const long r = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, tsp,
                         nullptr, 0);
  return r == 0 ? 0 : errno;
}

int futexWaitAny(std::atomic<std::uint32_t>* const* words, const std::uint32_t* expected, std::size_t n,
                 std::int64_t deadlineNs) noexcept {
#ifdef __NR_futex_waitv
  // struct futex_waitv of <linux/futex.h> (5.16); declared here so older headers still build.
  struct WaitV {
    std::uint64_t val;
    std::uint64_t uaddr;
    std::uint32_t flags;
    std::uint32_t reserved;
  };
  constexpr std::uint32_t kFutex32 = 2;  // FUTEX2_SIZE_U32; no FUTEX2_PRIVATE: shared between processes
  WaitV v[kMaxWaitWords];
  n = n > kMaxWaitWords ? kMaxWaitWords : n;
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = WaitV{expected[i], reinterpret_cast<std::uint64_t>(words[i]), kFutex32, 0};
  }
  timespec ts{};
  timespec* tsp = nullptr;
  if (deadlineNs != kNoDeadline) {
    ts.tv_sec = static_cast<time_t>(deadlineNs / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(deadlineNs % 1'000'000'000);
    tsp = &ts;
  }
  const long r = syscall(__NR_futex_waitv, v, static_cast<unsigned>(n), 0u, tsp, CLOCK_MONOTONIC);
  if (r >= 0) return 0;
  if (errno != ENOSYS) return errno;
#endif
  // No futex_waitv: the first word for at most 1 ms; the caller looks at every word again.
  std::int64_t left = 1'000'000;
  if (deadlineNs != kNoDeadline) left = std::min<std::int64_t>(left, std::max<std::int64_t>(0, deadlineNs - monotonicNowNs()));
  return futexWait(words[0], expected[0], left);
}

int futexWake(std::atomic<std::uint32_t>* word, int count) noexcept {
  const long r = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, count, nullptr,
                         nullptr, 0);
  return r >= 0 ? static_cast<int>(r) : -errno;
}

void wakeWaiters(WaitWord& word, int eventFd) noexcept {
  // SYNC POINT seq: release pairs with the waiter's acquire load of seq.
  word.seq.fetch_add(1, std::memory_order_release);
  if (eventFd >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(eventFd, &one, sizeof one);
  } else {
    futexWake(&word.seq, INT_MAX);
  }
}

void wakeAll(WaitWord& word) noexcept {
  word.seq.fetch_add(1, std::memory_order_release);  // SYNC POINT seq (as in notify)
  futexWake(&word.seq, INT_MAX);
}

}  // namespace shmbus::detail
