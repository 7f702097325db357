// Blocking on a call without deadlocking: the Call::get() algorithm both endpoints share
// (docs/architecture.md, "Endpoint core").
//
// A thread that waits for a call's result dispatches itself when nobody else does (it takes the
// endpoint's dispatch gate), so a handler may invoke and a cycle A→B→A completes by re-entrant
// dispatch. When another thread dispatches, it waits on the call's condition variable in slices
// of at most 10 ms, and gives up at the call's local deadline by itself: the dispatching thread
// may be the reason no answer comes (blocked in a handler that waits for this thread), and the
// wait must never outlive the deadline.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>

#include "call/call.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

/// `Endpoint` provides:
///   DispatchGate& gate();                              the dispatch gate
///   void dispatchRound(std::int64_t until, CallState* waiting);   one round, parks until `until`
///   bool closed() const;                               no more dispatching will happen
///   Result<Message> closedResult(const std::shared_ptr<CallState>&);  result when closed
///   void giveUp(const std::shared_ptr<CallState>&);    the local deadline passed: complete `s`
///                                                      with Timeout unless already complete
template <typename Endpoint>
Result<Message> waitForCall(const std::shared_ptr<CallState>& s, Endpoint& ep) {
  // isDone: a lock-free check per round of the loop; `result` is immutable once done.
  auto done = [&] { return isDone(*s); };
  for (;;) {
    if (done()) return *s->result;
    if (ep.gate().try_lock()) {
      while (!done() && !ep.closed()) {
        if (monotonicNowNs() >= s->deadlineNs) {
          ep.giveUp(s);
          break;
        }
        ep.dispatchRound(s->deadlineNs, s.get());
      }
      ep.gate().unlock();
      if (done()) return *s->result;
      return ep.closedResult(s);
    }
    // Another thread dispatches: wait for the result, re-checking now and then in case that
    // thread stops dispatching (then this thread takes over).
    const std::int64_t left = s->deadlineNs - monotonicNowNs();
    {
      std::unique_lock lk(s->mu);
      const auto slice = std::chrono::nanoseconds(std::clamp<std::int64_t>(left, 0, 10'000'000));
      if (s->cv.wait_for(lk, slice, [&] { return s->result.has_value(); })) return *s->result;
    }
    if (left <= 0) ep.giveUp(s);
  }
}

}  // namespace shmbus::detail
