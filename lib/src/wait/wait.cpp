#include "wait/wait.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace shmbus::detail {

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

int futexWake(std::atomic<std::uint32_t>* word, int count) noexcept {
  const long r = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, count, nullptr,
                         nullptr, 0);
  return r >= 0 ? static_cast<int>(r) : -errno;
}

void notify(WaitWord& word, int eventFd) noexcept {
  // SYNC POINT W: pairs with the waiter's seq_cst fetch_add on `waiters` (see wait.hpp).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // relaxed: ordered by the fence above.
  if (word.waiters.load(std::memory_order_relaxed) == 0) return;
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
