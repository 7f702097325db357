// The main process's callback lane: where main-process handlers, listeners and then-callbacks run,
// never on the router (docs/architecture.md, "Main lane").
//
// Width 1 (the default) runs callbacks one at a time in arrival order. The common case costs no
// hand-off: the thread that dispatches runs the callback itself right after its routing round
// ("in place": the request is read in the caller's outbox record, no copy, no wake-up). While it
// does, the router has no thread; if the callback is still running after kTakeoverNs, the standby
// thread takes over routing until the callback returns, so a main handler that takes seconds
// delays no routed call, deadline or death by more than about kTakeoverNs. Callbacks that arrive
// while the lane is busy are copied and queued. Width N > 1 adds N - 1 worker threads that run
// queued callbacks concurrently (then callbacks may run out of order).
//
// The standby thread is parked (no CPU) while the bus is idle; while callbacks keep coming it
// checks every kTakeoverNs whether one has been running too long (one wake-up per ms), so the
// dispatching thread never pays a system call to tell it a callback started.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "log/log.hpp"

namespace shmbus::detail {

class Lane {
 public:
  using Job = std::function<void()>;
  /// How long a callback runs in place before the standby takes over routing, ns.
  static constexpr std::int64_t kTakeoverNs = 1'000'000;
  /// How long the standby keeps checking after the start of the last callback that ended before
  /// it parks for good, ns.
  static constexpr std::int64_t kStayAwakeNs = 200'000'000;

  /// `width` >= 1 callbacks at once. `takeoverRound` runs one routing round that must return
  /// within about `until` (absolute ns); the standby calls it while a callback runs too long.
  /// `wakeDispatcher` makes a dispatching thread parked in its routing round return from it (the
  /// router's wake()), so it runs what enqueue() queued; any thread, no lock held.
  Lane(unsigned width, Logger log, std::function<void(std::int64_t until)> takeoverRound,
       std::function<void()> wakeDispatcher = {});
  ~Lane();
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  /// Reserves a slot for an in-place callback on this thread: true when a slot is free and nothing
  /// is queued (order is kept), or when this thread already runs a callback of this lane (a nested
  /// dispatch inside a callback, as Call::get() does). Then call runReserved() next.
  bool tryReserve();
  /// Runs `fn` in the slot tryReserve() gave, outside every lock, then releases the slot.
  void runReserved(const Job& fn);
  /// Queues `job` (it runs later on a dispatching thread or a worker) and, unless this thread runs
  /// one of this lane's callbacks (it runs the queue when that returns), wakes the dispatching
  /// thread: a job queued by the standby's routing round or by any other thread while the
  /// dispatcher parks would otherwise wait for the next unrelated event.
  void enqueue(Job job);
  /// Runs queued callbacks on this thread while a slot is free. Dispatching threads call it after
  /// every round; never from the standby.
  void runQueued();
  /// Stops the standby and the workers (queued callbacks are dropped). Idempotent.
  void stop();

 private:
  bool acquireLocked();            // under mu_
  void startThreads();             // the standby and the workers, once
  void runJob(const Job& fn, bool onDispatcher);
  void standbyLoop();
  void workerLoop();

  const unsigned width_;
  Logger log_;
  std::function<void(std::int64_t)> takeoverRound_;
  std::function<void()> wakeDispatcher_;

  std::mutex mu_;
  std::condition_variable workCv_;
  std::deque<Job> queue_;          // guarded by mu_
  /// queue_.size(), written under mu_ (enqueue: release; pops: relaxed, the mutex orders them) and
  /// read without it (acquire) by runQueued's first check, so the dispatcher takes no lock per round when nothing is queued
  /// (docs/architecture.md §10). A job queued just after that check is not lost: its enqueue()
  /// wakes the dispatcher (or runs on this thread's return from the callback that queued it).
  std::atomic<std::size_t> queued_{0};
  unsigned running_ = 0;           // guarded by mu_
  bool stopping_ = false;          // guarded by mu_

  // Standby: SYNC POINT "deep" — jobStarted() stores busySince_ then loads deep_ (both seq_cst);
  // the standby stores deep_ then loads busySince_ (both seq_cst) before it parks for good: one of
  // the two sees the other, so a callback never starts unseen while the standby sleeps for good.
  std::atomic<std::int64_t> busySince_{0};  ///< start of the callback running on a dispatcher (0 = none)
  std::atomic<std::int64_t> lastStart_{0};  ///< start of the last callback that ended, ns
  std::atomic<bool> deep_{false};
  std::mutex standbyMu_;
  std::condition_variable standbyCv_;
  std::once_flag threadsStarted_;
  std::thread standby_;
  std::vector<std::thread> workers_;
};

}  // namespace shmbus::detail
