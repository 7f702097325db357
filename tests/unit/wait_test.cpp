// Unit tests of spin-then-park waiting on a shared futex word (lib/src/wait), within one process.
// Waiting across processes is in tests/multiproc/wait_multiproc_test.cpp.
#include "wait/wait.hpp"

#include <doctest/doctest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "shm_test.hpp"

using namespace shmbus::detail;
using shmbus::test::deadlineIn;
using namespace std::chrono_literals;

namespace {
constexpr SpinPolicy kParkAtOnce{std::chrono::nanoseconds(0)};
using shmbus::test::awaitCondition;
}  // namespace

TEST_CASE("notify without a waiter makes no wake-up call") {
  WaitWord w{};
  constexpr int kCalls = 20'000;
  const std::int64_t t0 = monotonicNowNs();
  for (int i = 0; i < kCalls; ++i) notify(w);
  const std::int64_t notifyNs = monotonicNowNs() - t0;
  // The wake path bumps seq before FUTEX_WAKE: an unchanged seq proves no wake was issued.
  CHECK(w.seq.load() == 0);

  // For scale only, the same number of FUTEX_WAKE syscalls (nobody waits on `other` either). No
  // assertion on the times: a vCPU preempted during the first loop would fail it (speed is
  // bench/'s business); the unchanged seq above is the proof.
  WaitWord other{};
  const std::int64_t t1 = monotonicNowNs();
  for (int i = 0; i < kCalls; ++i) futexWake(&other.seq, 1);
  const std::int64_t wakeNs = monotonicNowNs() - t1;
  MESSAGE("notify without waiter: " << notifyNs / kCalls << " ns, FUTEX_WAKE: " << wakeNs / kCalls << " ns");
}

TEST_CASE("notify with a parked waiter bumps the word and wakes it") {
  WaitWord w{};
  std::atomic<bool> ready{false};
  WaitStatus status = WaitStatus::Timeout;
  const std::int64_t deadline = deadlineIn(10s);
  std::thread waiter([&] { status = spinThenPark(w, [&] { return ready.load(); }, kParkAtOnce, deadline); });
  REQUIRE(awaitCondition([&] { return w.waiters.load() == 1; }));
  ready = true;
  notify(w);
  waiter.join();
  CHECK(status == WaitStatus::Ready);
  CHECK(monotonicNowNs() < deadline);  // woken, not timed out with the flag set meanwhile
  CHECK(w.seq.load() == 1);
  CHECK(w.waiters.load() == 0);
}

TEST_CASE("a futex wait with a timeout returns ETIMEDOUT after the timeout") {
  WaitWord w{};
  const std::int64_t t0 = monotonicNowNs();
  CHECK(futexWait(&w.seq, 0, 20'000'000) == ETIMEDOUT);
  const std::int64_t elapsed = monotonicNowNs() - t0;
  CHECK(elapsed >= 20'000'000);
  CHECK(elapsed < 2'000'000'000);
}

TEST_CASE("a futex wait on a word that already changed returns EAGAIN at once") {
  WaitWord w{};
  w.seq = 5;
  CHECK(futexWait(&w.seq, 4, -1) == EAGAIN);
}

TEST_CASE("spinThenPark returns Timeout at its deadline and leaves no waiter counted") {
  WaitWord w{};
  for (SpinPolicy policy : {kParkAtOnce, SpinPolicy{}, SpinPolicy{std::chrono::milliseconds(5)}}) {
    const std::int64_t t0 = monotonicNowNs();
    CHECK(spinThenPark(w, [] { return false; }, policy, t0 + 30'000'000) == WaitStatus::Timeout);
    const std::int64_t elapsed = monotonicNowNs() - t0;
    CHECK(elapsed >= 30'000'000);
    CHECK(elapsed < 2'000'000'000);
    CHECK(w.waiters.load() == 0);
  }
  // A deadline already past: one look at the predicate, no park.
  CHECK(spinThenPark(w, [] { return false; }, kParkAtOnce, monotonicNowNs() - 1) == WaitStatus::Timeout);
  CHECK(spinThenPark(w, [] { return true; }, kParkAtOnce, monotonicNowNs() - 1) == WaitStatus::Ready);
}

TEST_CASE("spinThenPark returns at once when the predicate holds, without touching the word") {
  WaitWord w{};
  int calls = 0;
  CHECK(spinThenPark(w, [&] { return ++calls > 0; }, SpinPolicy{}, kNoDeadline) == WaitStatus::Ready);
  CHECK(calls == 1);
  CHECK(w.waiters.load() == 0);
  CHECK(w.seq.load() == 0);
}

TEST_CASE("a predicate that turns true while spinning ends the wait before any park") {
  WaitWord w{};
  int calls = 0;
  CHECK(spinThenPark(w, [&] { return ++calls == 50; }, SpinPolicy{std::chrono::seconds(5)}, kNoDeadline) ==
        WaitStatus::Ready);
  CHECK(calls == 50);
  CHECK(w.seq.load() == 0);
}

TEST_CASE("wakeAll wakes every parked waiter") {
  WaitWord w{};
  std::atomic<bool> ready{false};
  std::vector<std::thread> waiters;
  std::atomic<int> woken{0};
  const std::int64_t deadline = deadlineIn(10s);
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&] {
      if (spinThenPark(w, [&] { return ready.load(); }, kParkAtOnce, deadline) == WaitStatus::Ready &&
          monotonicNowNs() < deadline) {
        ++woken;
      }
    });
  }
  REQUIRE(awaitCondition([&] { return w.waiters.load() == 3; }));
  ready = true;
  wakeAll(w);
  for (auto& t : waiters) t.join();
  CHECK(woken.load() == 3);
  CHECK(w.waiters.load() == 0);
}

TEST_CASE("notify through an eventfd writes the eventfd instead of waking the futex") {
  WaitWord w{};
  const int efd = ::eventfd(0, EFD_NONBLOCK);
  REQUIRE(efd >= 0);
  std::uint64_t count = 0;
  notify(w, efd);  // no waiter: nothing written
  CHECK(::read(efd, &count, sizeof count) < 0);
  w.waiters = 1;   // as if a consumer were between [W] and its park
  notify(w, efd);
  notify(w, efd);
  REQUIRE(::read(efd, &count, sizeof count) == sizeof count);
  CHECK(count == 2);
  CHECK(w.seq.load() == 2);
  ::close(efd);
}

TEST_CASE("the monotonic clock never goes backwards") {
  std::int64_t last = monotonicNowNs();
  for (int i = 0; i < 1000; ++i) {
    const std::int64_t now = monotonicNowNs();
    REQUIRE(now >= last);
    last = now;
  }
  CHECK(last > 0);
}

TEST_CASE("notify is a compiler barrier when membarrier is registered, and a waiter without it marks the word") {
  // On Linux >= 4.16 without a seccomp filter on membarrier both are true; the library falls back
  // to full fences otherwise, so print which path this machine takes.
  MESSAGE("light notify: " << lightNotifyEnabled() << ", heavy barrier available: " << heavyBarrierAvailable());
  WaitWord w{};
  const bool newMark = waiterBarrier(w);
  if (heavyBarrierAvailable()) {
    CHECK_FALSE(newMark);
    CHECK(w.fenceNeeded.load() == 0);
  } else {
    CHECK(newMark);
    CHECK(w.fenceNeeded.load() == 1);
    CHECK_FALSE(waiterBarrier(w));  // marked once
  }
}

TEST_CASE("two threads hand off 20000 times through parked waits, with asymmetric barriers and without") {
  // Each side parks at once (no spin) on every wait, so every handoff goes through the
  // announce / barrier / re-check protocol; a lost wake-up would stall until the 10 s deadline.
  for (const bool asymmetric : {true, false}) {
    CAPTURE(asymmetric);
    useAsymmetricBarriers(asymmetric);
    WaitWord ping{}, pong{};
    std::atomic<std::uint64_t> pings{0}, pongs{0};
    constexpr std::uint64_t kRounds = 20000;
    const std::int64_t deadline = deadlineIn(20s);
    std::atomic<bool> stalled{false};
    std::thread echo([&] {
      for (std::uint64_t i = 1; i <= kRounds; ++i) {
        if (spinThenPark(ping, [&] { return pings.load(std::memory_order_acquire) >= i; }, kParkAtOnce, deadline) !=
            WaitStatus::Ready) {
          stalled = true;
          return;
        }
        pongs.store(i, std::memory_order_release);
        notify(pong);
      }
    });
    for (std::uint64_t i = 1; i <= kRounds && !stalled; ++i) {
      pings.store(i, std::memory_order_release);
      notify(ping);
      if (spinThenPark(pong, [&] { return pongs.load(std::memory_order_acquire) >= i; }, kParkAtOnce, deadline) !=
          WaitStatus::Ready) {
        stalled = true;
      }
    }
    echo.join();
    CHECK_FALSE(stalled.load());
    CHECK(pongs.load() == kRounds);
    if (!asymmetric) CHECK((ping.fenceNeeded.load() == 1 || pong.fenceNeeded.load() == 1));
  }
  useAsymmetricBarriers(true);
}
