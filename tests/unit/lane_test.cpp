// Unit tests of the main process's callback lane (lib/src/supervisor/lane): in-place reservation,
// the queue, workers, the standby's takeover and stop().
#include "supervisor/lane.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "wait/wait.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace std::chrono_literals;

namespace {

const Logger kLog{"lane", "unit", LogLevel::Warn};

/// No routing to do: the takeover round of a lane whose test does not look at it.
void noRound(std::int64_t) {}

/// `n` parties meet; each arrive() returns true once all have arrived, false if that takes longer
/// than `limit` (the parties did not run at the same time).
class Rendezvous {
 public:
  explicit Rendezvous(int n) : n_(n) {}
  bool arrive(std::chrono::milliseconds limit = 10s) {
    std::unique_lock lk(mu_);
    if (++arrived_ == n_) cv_.notify_all();
    return cv_.wait_for(lk, limit, [&] { return arrived_ >= n_; });
  }
  int arrived() {
    std::lock_guard lk(mu_);
    return arrived_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int arrived_ = 0;
};

/// A flag one thread sets and another waits for, at most `limit`.
class Event {
 public:
  void set() {
    std::lock_guard lk(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::nanoseconds limit = 10s) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, limit, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

}  // namespace

TEST_CASE("width 1 runs queued jobs in FIFO order on the thread that calls runQueued") {
  Lane lane(1, kLog, noRound);
  std::vector<int> order;
  std::set<std::thread::id> threads;
  for (int i = 0; i < 5; ++i) {
    lane.enqueue([&, i] {
      order.push_back(i);
      threads.insert(std::this_thread::get_id());
    });
  }
  CHECK(order.empty());  // width 1 has no worker: nothing runs until a dispatcher asks
  lane.runQueued();
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(threads == std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST_CASE("tryReserve fails while a job runs or jobs are queued") {
  Lane lane(1, kLog, noRound);
  bool otherThread = true;
  REQUIRE(lane.tryReserve());
  lane.runReserved([&] {
    std::thread([&] { otherThread = lane.tryReserve(); }).join();
  });
  CHECK_FALSE(otherThread);

  int ran = 0;
  lane.enqueue([&] { ++ran; });
  CHECK_FALSE(lane.tryReserve());  // order is kept: the queued job goes first
  lane.runQueued();
  CHECK(ran == 1);
  REQUIRE(lane.tryReserve());
  std::vector<int> order;  // a job queued while one runs in place runs right after it
  lane.runReserved([&] {
    order.push_back(1);
    lane.enqueue([&] { order.push_back(2); });
  });
  CHECK(order == std::vector<int>{1, 2});
}

TEST_CASE("a nested tryReserve on the thread running a job succeeds and runs in place") {
  Lane lane(1, kLog, noRound);
  std::vector<int> order;
  REQUIRE(lane.tryReserve());
  lane.runReserved([&] {
    order.push_back(1);
    REQUIRE(lane.tryReserve());  // e.g. Call::get() dispatching inside a main handler
    lane.runReserved([&] { order.push_back(2); });
    order.push_back(3);
  });
  CHECK(order == std::vector<int>{1, 2, 3});
  bool free = false;  // the nested run did not release the outer slot twice, nor keep it
  std::thread([&] {
    free = lane.tryReserve();
    if (free) lane.runReserved([] {});
  }).join();
  CHECK(free);
}

TEST_CASE("width 3 runs two queued jobs on workers and a third in place, all at once") {
  Lane lane(3, kLog, noRound);
  Rendezvous all(3);
  std::mutex mu;
  std::set<std::thread::id> threads;
  bool met[3] = {false, false, false};
  for (int i = 0; i < 2; ++i) {
    lane.enqueue([&, i] {
      {
        std::lock_guard lk(mu);
        threads.insert(std::this_thread::get_id());
      }
      met[i] = all.arrive();
    });
  }
  // Both workers hold their job (the queue is empty again) before this thread takes the last slot.
  std::int64_t until = monotonicNowNs() + 10'000'000'000;
  while (all.arrived() < 2 && monotonicNowNs() < until) std::this_thread::yield();
  REQUIRE(all.arrived() == 2);
  REQUIRE(lane.tryReserve());
  lane.runReserved([&] { met[2] = all.arrive(); });
  lane.stop();  // joins the workers: their writes are visible
  CHECK(met[0]);
  CHECK(met[1]);
  CHECK(met[2]);
  CHECK(threads.size() == 2);
  CHECK(threads.count(std::this_thread::get_id()) == 0);
}

TEST_CASE("the standby routes while an in-place job runs past kTakeoverNs, and stops after") {
  std::mutex mu;
  std::condition_variable cv;
  bool jobRunning = false;
  int rounds = 0, straysAfterEnd = 0;
  std::int64_t firstRound = 0;
  // A routing round: returns by `until`, as the router's epoll round does.
  Lane lane(1, kLog, [&](std::int64_t until) {
    std::unique_lock lk(mu);
    if (rounds++ == 0) firstRound = monotonicNowNs();
    if (!jobRunning) ++straysAfterEnd;
    cv.notify_all();
    cv.wait_until(lk, std::chrono::steady_clock::now() + std::chrono::nanoseconds(until - monotonicNowNs()));
  });
  REQUIRE(lane.tryReserve());
  bool tookOver = false;
  {
    std::lock_guard g(mu);
    jobRunning = true;  // before the lane marks the job busy: no round sees it not yet started
  }
  const std::int64_t jobStart = monotonicNowNs();
  lane.runReserved([&] {
    std::unique_lock lk(mu);
    // The job runs until the standby has done two rounds for it.
    tookOver = cv.wait_for(lk, 10s, [&] { return rounds >= 2; });
    jobRunning = false;
  });
  std::unique_lock lk(mu);
  REQUIRE(tookOver);
  CHECK(firstRound - jobStart >= Lane::kTakeoverNs);
  // Absence can only be watched over a window: a standby still routing would run a round every
  // kTakeoverNs, about 50 here. One round may have started as the job ended (the race the loop's
  // re-check after each round resolves).
  cv.wait_for(lk, std::chrono::nanoseconds(50 * Lane::kTakeoverNs), [&] { return straysAfterEnd > 1; });
  CHECK(straysAfterEnd <= 1);
}

TEST_CASE("stop drops queued jobs, refuses new ones and frees no slot") {
  Lane lane(1, kLog, noRound);
  int ran = 0;
  for (int i = 0; i < 3; ++i) lane.enqueue([&] { ++ran; });
  lane.stop();
  lane.runQueued();
  lane.enqueue([&] { ++ran; });
  lane.runQueued();
  CHECK(ran == 0);
  CHECK_FALSE(lane.tryReserve());
  lane.stop();  // idempotent
}

TEST_CASE("stop waits for the job a worker is running") {
  Lane lane(2, kLog, noRound);
  Event started, proceed, stopReturned;
  bool sawStopReturn = true;
  lane.enqueue([&] {
    started.set();
    proceed.wait();
    // If stop() did not join this worker it would return now: watch for that a while.
    sawStopReturn = stopReturned.wait(std::chrono::nanoseconds(20 * Lane::kTakeoverNs));
  });
  REQUIRE(started.wait());
  std::thread stopper([&] {
    lane.stop();
    stopReturned.set();
  });
  // stop() has begun once the free slot is refused (the queue is empty, one of two slots is busy).
  std::int64_t until = monotonicNowNs() + 10'000'000'000;
  while (lane.tryReserve() && monotonicNowNs() < until) lane.runReserved([] {});
  proceed.set();
  stopper.join();
  CHECK_FALSE(sawStopReturn);
  CHECK(stopReturned.wait(0s));
}

TEST_CASE("a job queued while no callback of the lane runs wakes the dispatcher; one queued inside a callback does not") {
  // The dispatcher's side, simulated: it ran the queue (empty) and parks until woken, as the
  // router's epoll_wait does; a job queued by another thread (the standby's routing round) must
  // end that park, or it waits for the next unrelated event.
  Event woken;
  std::atomic<int> wakes{0};
  Lane lane(1, Logger{"lane", "t", LogLevel::Warn}, noRound, [&] {
    wakes.fetch_add(1, std::memory_order_relaxed);
    woken.set();
  });
  lane.runQueued();
  std::atomic<bool> ran{false};
  std::thread other([&] { lane.enqueue([&] { ran.store(true); }); });
  REQUIRE(woken.wait(10s));  // the event: without the wake, the dispatcher would sleep on
  other.join();
  lane.runQueued();
  CHECK(ran.load());
  CHECK(wakes.load() == 1);
  // Inside a callback of the lane the queue runs when the callback returns: no wake.
  REQUIRE(lane.tryReserve());
  std::atomic<bool> nestedRan{false};
  lane.runReserved([&] { lane.enqueue([&] { nestedRan.store(true); }); });
  CHECK(nestedRan.load());
  CHECK(wakes.load() == 1);
}
