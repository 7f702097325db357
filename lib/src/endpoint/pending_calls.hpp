// The calls a window has made and not yet seen answered (docs/architecture.md, "Endpoint core").
//
// The supervisor answers every call (reply, error, Timeout at the deadline, TargetGone, BusClosed);
// the window keeps its own fallback deadline per call (the caller's deadline plus a grace) in case
// the supervisor is alive but cannot answer. Thread contract: every method is thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "call/call.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

class PendingCalls {
 public:
  /// Registers `s` under the next request id (written to s->requestId) and returns it.
  std::uint64_t add(const std::shared_ptr<CallState>& s);
  /// Removes and returns call `requestId` (null when it already ended).
  std::shared_ptr<CallState> take(std::uint64_t requestId);
  /// Removes and returns every call whose local deadline is <= now. Cheap when none is due.
  std::vector<std::shared_ptr<CallState>> takeExpired(std::int64_t now);
  /// Removes and returns every call.
  std::unordered_map<std::uint64_t, std::shared_ptr<CallState>> takeAll();
  /// The earliest local deadline (kNoDeadline when none): a hint for how long to park.
  std::int64_t nextExpiry() const noexcept {
    return nextExpiry_.load(std::memory_order_relaxed);  // relaxed: a hint; takeExpired locks
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, std::shared_ptr<CallState>> calls_;  // guarded by mu_
  std::uint64_t nextId_ = 1;                                             // guarded by mu_
  std::atomic<std::int64_t> nextExpiry_{kNoDeadline};
};

}  // namespace shmbus::detail
