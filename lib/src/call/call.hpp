// Call state shared by a Call handle and the endpoint (Window or Supervisor) that completes it,
// plus the holders behind Message.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "message/message.hpp"
#include "shmbus/channel.hpp"
#include "shmbus/message.hpp"

namespace shmbus::detail {

/// The endpoint side of a call: how to wait for it and how to cancel it.
struct CallOwner {
  virtual ~CallOwner() = default;
  /// Blocks until `s` is complete (dispatching meanwhile where the thread may); returns its result.
  virtual Result<Message> waitFor(const std::shared_ptr<CallState>& s) = 0;
  /// Cancels `s` (completes it with Cancelled and tells the target).
  virtual void cancel(const std::shared_ptr<CallState>& s) = 0;
};

struct CallState {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Result<Message>> result;             // guarded by mu until `done`; immutable after
  /// True once `result` is set (it never changes after): a waiter checks this without the mutex,
  /// once per spin of its dispatch loop (docs/architecture.md §10). Stored with release under
  /// `mu` right after `result` (completeCall); read with acquire, which makes `result` readable.
  std::atomic<bool> done{false};
  std::function<void(Result<Message>)> then;         // guarded by mu
  CallOwner* owner = nullptr;                        // guarded by mu; null once the owner closed
  std::uint64_t requestId = 0;
  std::int64_t deadlineNs = 0;                       // absolute CLOCK_MONOTONIC, for the local fallback timer
  std::int64_t timeoutMs = 0;                        // the caller's timeout; 0 = the channel's default
  // What the call is, for error messages: kept as its parts and formatted only when an error
  // names the call (what()), not once per call (docs/architecture.md §10).
  std::string channelName;
  Target target;
  /// "invoke 'ch' to role 'x'".
  std::string what() const;
  /// Where the then-callback runs: null = on the completing thread (a window's dispatcher); the
  /// supervisor posts it to its callback lane, so user code never runs on the router.
  std::function<void(std::function<void()>)> post;
  /// Set on a call made over a port while an inspector is attached (docs/architecture.md §14
  /// "Ports"): runs once, on the completing thread, with the outcome before anyone can see it.
  std::function<void(const CallState&, const Result<Message>&)> onEnd;  // guarded by mu until taken
  /// Traced calls: the request's payload bytes, stored before the request's commit (writeFrame)
  /// and read by onEnd, possibly on the thread that read the reply: ordered through the peer's
  /// process (SYNC POINT "record" both ways), which a race detector cannot see, hence atomic.
  std::atomic<std::size_t> requestBytes{0};
  std::uint32_t replyBytes = 0;  ///< a reply's payload bytes, set before it completes the call
  // Learned reply spin (wait/reply_spin.hpp), set before the call is published (pending.add) and
  // read by the thread that reads its reply or waits for it: ordered by the PendingCalls mutex.
  std::uint64_t spinChannel = 0;  ///< the channel whose reply times this call feeds
  std::int64_t sentNs = 0;        ///< CLOCK_MONOTONIC ns when the request was written; 0 = not learning
  std::int64_t spinUntilNs = 0;   ///< a waiter may spin for the reply until this time (ns)
  bool ending = false;           // guarded by mu: onEnd is running (the call completes after it)
  /// A direct route's call (docs/architecture.md §19): its stats slot's errors by ErrorCode
  /// value (16 counters in the route port's segment), counted when it fails; null otherwise.
  std::atomic<std::uint64_t>* routeErrors = nullptr;
};

/// How long after a call's deadline a waiter gives up by itself when nobody answers it (the
/// dispatching thread may be stuck): the caller's own fallback, never the normal path.
inline constexpr std::int64_t kLocalGraceNs = 20'000'000;

/// Completes `s` once: stores the result, wakes waiters, runs the then-callback on this thread.
/// Returns false (and drops `r`) when `s` was already complete.
bool completeCall(const std::shared_ptr<CallState>& s, Result<Message> r);

/// True when `s` is complete; then `s.result` may be read without `s.mu` (it is immutable once
/// set). Lock-free: one acquire load, pairing with completeCall's release store of `done`.
inline bool isDone(const CallState& s) noexcept { return s.done.load(std::memory_order_acquire); }

/// A message that outlives its callback: either an in-place view whose record stays reserved
/// until the holder is destroyed (window replies, zero copy: a derived holder releases the record
/// in its destructor), or an owned copy (`storage`).
struct HeldMessage {
  InPlaceMessage msg;
  std::vector<std::uint64_t> storage;  ///< words (not capnp::word: clang's is not copyable, so no vector of it)
  HeldMessage() = default;
  HeldMessage(const HeldMessage&) = delete;
  HeldMessage& operator=(const HeldMessage&) = delete;
  virtual ~HeldMessage() = default;
};

/// An endpoint's dispatch gate: held by whichever thread dispatches (the dispatch thread, run(),
/// poll(), a Call::get() while nobody else dispatches); recursive so that a callback may dispatch
/// again (re-entrant Call::get), and timed (try_lock_for) so that poll() waits at most its timeout
/// for a dispatching thread to let go. A recursive mutex plus a condition variable that unlock()
/// signals while someone waits, rather than std::recursive_timed_mutex: libstdc++ locks that one
/// with pthread_mutex_clocklock, which GCC 12's ThreadSanitizer does not intercept (it then
/// reports every unlock as one of an unlocked mutex). Meets Lockable (std::lock_guard,
/// std::unique_lock with a duration).
class DispatchGate {
 public:
  void lock() { m_.lock(); }
  bool try_lock() { return m_.try_lock(); }
  void unlock() {
    m_.unlock();
    // seq_cst: with try_lock_for's increment, a store-load pair (Dekker): either the waiter's
    // try_lock sees the gate free, or this load sees the waiter and signals under waitMu_.
    if (waiters_.load(std::memory_order_seq_cst) != 0) {
      std::lock_guard lk(waitMu_);
      freed_.notify_all();
    }
  }
  /// Takes the gate, waiting at most `d` for the thread that holds it. False when it stayed taken.
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    if (m_.try_lock()) return true;
    const auto until = std::chrono::steady_clock::now() + d;
    waiters_.fetch_add(1, std::memory_order_seq_cst);  // seq_cst: pairs with unlock's load
    std::unique_lock lk(waitMu_);
    bool got = false;
    while (!(got = m_.try_lock()) && freed_.wait_until(lk, until) != std::cv_status::timeout) {
    }
    if (!got) got = m_.try_lock();  // the last chance after the timeout
    waiters_.fetch_sub(1, std::memory_order_relaxed);  // relaxed: only ever over-signals
    return got;
  }

 private:
  std::recursive_mutex m_;
  std::mutex waitMu_;
  std::condition_variable freed_;
  std::atomic<int> waiters_{0};
};

/// Starts the dispatch thread of an endpoint: a thread that takes `gate` (the endpoint's dispatch
/// gate, recursive, so `run` may take it again) and then runs `run`. Returns once the thread holds
/// the gate: otherwise a Call::get() right after the start could take the gate first and run
/// callbacks on the calling thread (and a handler needing a lock that caller holds would deadlock
/// there instead of timing the call out). Not from a thread that holds `gate`.
std::thread startDispatcher(DispatchGate& gate, std::function<void()> run);

/// Builds a HeldMessage that owns a copy of `bytes` (a MessageTable + segments span).
/// Errors: InvalidMessage.
Result<std::shared_ptr<HeldMessage>> copyMessage(const std::uint8_t* bytes, std::size_t n);

/// Builds a HeldMessage that owns a copy of the message built in `mb` (MessageTable layout).
/// Errors: TooLarge (more segments than a table holds), InvalidMessage.
Result<std::shared_ptr<HeldMessage>> copyBuilt(capnp::MessageBuilder& mb);

}  // namespace shmbus::detail
