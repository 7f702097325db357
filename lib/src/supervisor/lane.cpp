#include "supervisor/lane.hpp"

#include "common/tls.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

namespace {
// The lane whose callback this thread runs now, and how deeply nested (a callback that blocks in
// Call::get() dispatches, and that round may run further callbacks of the same lane in place).
SHMBUS_HOT_TLS thread_local const Lane* tLane = nullptr;
SHMBUS_HOT_TLS thread_local int tDepth = 0;
}  // namespace

Lane::Lane(unsigned width, Logger log, std::function<void(std::int64_t)> takeoverRound,
           std::function<void()> wakeDispatcher)
    : width_(width == 0 ? 1 : width),
      log_(std::move(log)),
      takeoverRound_(std::move(takeoverRound)),
      wakeDispatcher_(std::move(wakeDispatcher)) {}

void Lane::startThreads() {
  // Started with the first callback, not at construction: a process forks its windows right
  // after Supervisor::create (tests, spawn-by-fork applications), and a fork is safest while the
  // process has one thread (sanitizer runtimes, allocator locks).
  std::call_once(threadsStarted_, [this] {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    standby_ = std::thread([this] { standbyLoop(); });
    for (unsigned i = 1; i < width_; ++i) workers_.emplace_back([this] { workerLoop(); });
  });
}

Lane::~Lane() { stop(); }

bool Lane::acquireLocked() {
  if (running_ >= width_) return false;
  ++running_;
  return true;
}

bool Lane::tryReserve() {
  if (tLane == this) return true;  // nested inside one of this lane's callbacks on this thread
  std::lock_guard lk(mu_);
  if (stopping_ || !queue_.empty()) return false;
  return acquireLocked();
}

void Lane::runJob(const Job& fn, bool onDispatcher) {
  const Lane* outer = tLane;
  tLane = this;
  ++tDepth;
  std::int64_t started = 0;
  if (onDispatcher && tDepth == 1) {
    startThreads();
    started = monotonicNowNs();
    busySince_.store(started, std::memory_order_seq_cst);  // SYNC POINT "deep"
    if (deep_.load(std::memory_order_seq_cst)) {
      std::lock_guard lk(standbyMu_);
      standbyCv_.notify_one();
    }
  }
  try {
    fn();
  } catch (const std::exception& e) {
    log_(LogLevel::Error, "a main-process callback threw: {}", e.what());
  } catch (...) {
    log_(LogLevel::Error, "a main-process callback threw a non-standard exception");
  }
  if (onDispatcher && tDepth == 1) {
    // relaxed: a hint for the standby. The start, not the end: one clock read per callback.
    lastStart_.store(started, std::memory_order_relaxed);
    busySince_.store(0, std::memory_order_release);                // pairs with the standby's acquire
  }
  --tDepth;
  tLane = outer;
}

void Lane::runReserved(const Job& fn) {
  const bool nested = tLane == this;
  runJob(fn, true);
  if (nested) return;
  {
    std::lock_guard lk(mu_);
    --running_;
    if (queue_.empty()) return;  // the common case: one lock, no second look at the queue
  }
  runQueued();
}

void Lane::enqueue(Job job) {
  if (width_ > 1) startThreads();
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    queue_.push_back(std::move(job));
    queued_.store(queue_.size(), std::memory_order_release);  // pairs with runQueued's acquire
  }
  if (!workers_.empty()) workCv_.notify_one();
  // A dispatching thread runs the queue after every round; this makes sure a round ends soon
  // (the job may come from the standby's round while the dispatcher is about to park, or from
  // any other thread). Not needed inside a callback of this lane: runReserved/runQueued go on to
  // the queue when it returns.
  if (tLane != this && wakeDispatcher_) wakeDispatcher_();
}

void Lane::runQueued() {
  // acquire: pairs with enqueue()'s release store; a job this misses (queued concurrently) comes
  // with a wake-up of the dispatcher of its own (see queued_).
  if (queued_.load(std::memory_order_acquire) == 0) return;
  for (;;) {
    Job job;
    {
      std::lock_guard lk(mu_);
      if (queue_.empty() || stopping_) return;
      if (tLane != this && !acquireLocked()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      queued_.store(queue_.size(), std::memory_order_relaxed);  // under mu_
    }
    const bool nested = tLane == this;
    runJob(job, true);
    if (!nested) {
      std::lock_guard lk(mu_);
      --running_;
    }
  }
}

void Lane::workerLoop() {
  std::unique_lock lk(mu_);
  for (;;) {
    workCv_.wait(lk, [&] { return stopping_ || (!queue_.empty() && running_ < width_); });
    if (stopping_) return;
    ++running_;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    queued_.store(queue_.size(), std::memory_order_relaxed);  // under mu_
    lk.unlock();
    runJob(job, false);
    lk.lock();
    --running_;
  }
}

void Lane::standbyLoop() {
  std::unique_lock lk(standbyMu_);
  for (;;) {
    {
      std::lock_guard s(mu_);
      if (stopping_) return;
    }
    const std::int64_t now = monotonicNowNs();
    const std::int64_t since = busySince_.load(std::memory_order_acquire);  // pairs with runJob's stores
    if (since != 0 && now - since >= kTakeoverNs) {
      lk.unlock();
      log_(LogLevel::Debug, "a main-process callback has run {} ms: the standby routes meanwhile", (now - since) / 1'000'000);
      // Route until that callback returns (rounds of at most kTakeoverNs re-check it).
      while (busySince_.load(std::memory_order_acquire) == since) {
        {
          std::lock_guard s(mu_);
          if (stopping_) return;
        }
        takeoverRound_(monotonicNowNs() + kTakeoverNs);
      }
      lk.lock();
      continue;
    }
    if (since != 0) {
      standbyCv_.wait_for(lk, std::chrono::nanoseconds(kTakeoverNs - (now - since)));
      continue;
    }
    if (now - lastStart_.load(std::memory_order_relaxed) < kStayAwakeNs) {  // relaxed: a hint
      standbyCv_.wait_for(lk, std::chrono::nanoseconds(kTakeoverNs));
      continue;
    }
    deep_.store(true, std::memory_order_seq_cst);  // SYNC POINT "deep"
    if (busySince_.load(std::memory_order_seq_cst) == 0) standbyCv_.wait(lk);
    deep_.store(false, std::memory_order_relaxed);  // relaxed: only this thread reads it for a decision
  }
}

void Lane::stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
    queue_.clear();
    queued_.store(0, std::memory_order_relaxed);  // under mu_
  }
  workCv_.notify_all();
  {
    std::lock_guard lk(standbyMu_);
    standbyCv_.notify_all();
  }
  if (standby_.joinable() && standby_.get_id() != std::this_thread::get_id()) standby_.join();
  for (auto& w : workers_) {
    if (w.joinable() && w.get_id() != std::this_thread::get_id()) w.join();
  }
}

}  // namespace shmbus::detail
