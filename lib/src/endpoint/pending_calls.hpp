// The calls a window has made and not yet seen answered (docs/architecture.md §10).
//
// The supervisor answers every call (reply, error, Timeout at the deadline, TargetGone, BusClosed);
// the window keeps its own fallback deadline per call (the caller's deadline plus a grace) in case
// the supervisor is alive but cannot answer. Thread contract: every method is thread-safe.
//
// A slab, not a hash map: a request id names its slot (low kSlotBits) and a sequence number
// (the bits above), so add() and take() index a vector instead of hashing and allocating a node
// per call, and a late answer to an ended call cannot match a newer one in the same slot (the
// sequence grows; it wraps only after 2^40 calls).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "call/call.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

class PendingCalls {
 public:
  /// Slots per table: the most calls one window may have in flight at once (16,777,216).
  static constexpr unsigned kSlotBits = 24;

  /// Registers `s` under a new request id (written to s->requestId) and returns it: increasing
  /// from call to call, never 0, not given again for 2^40 calls. Returns 0 (and leaves `s` alone) when
  /// 2^kSlotBits calls are already in flight.
  std::uint64_t add(const std::shared_ptr<CallState>& s);
  /// Removes and returns call `requestId` (null when it already ended or never was).
  std::shared_ptr<CallState> take(std::uint64_t requestId);
  /// Removes and returns every call whose local deadline is <= now. Cheap when none is due.
  std::vector<std::shared_ptr<CallState>> takeExpired(std::int64_t now);
  /// Removes and returns every call.
  std::vector<std::shared_ptr<CallState>> takeAll();
  /// The earliest local deadline (kNoDeadline when none): a hint for how long to park.
  std::int64_t nextExpiry() const noexcept {
    return nextExpiry_.load(std::memory_order_relaxed);  // relaxed: a hint; takeExpired locks
  }

 private:
  struct Slot {
    std::uint64_t id = 0;  // 0 = free
    std::shared_ptr<CallState> call;
  };
  std::shared_ptr<CallState> release(Slot& slot);  // caller holds mu_

  mutable std::mutex mu_;
  std::vector<Slot> slots_;              // guarded by mu_
  std::vector<std::uint32_t> free_;      // guarded by mu_: indices of free slots
  std::uint64_t nextSeq_ = 1;            // guarded by mu_
  std::atomic<std::int64_t> nextExpiry_{kNoDeadline};
};

}  // namespace shmbus::detail
