// A set of 64-bit ids that only grows, whose membership test takes no lock: the contracts an
// endpoint has announced (docs/architecture.md §10: one typed call looks it up each time).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <unordered_set>

namespace shmbus::detail {

/// Ids inserted under the owner's mutex and tested without it. The first kInline ids live in an
/// array read with acquire loads (a linear scan: endpoints announce a handful of contracts); later
/// ones go to a hash set that only insert() reads, under the same mutex. So contains() is a hint:
/// true means the id was inserted; false means "not among the first kInline", and the caller then
/// takes its mutex and asks insert(), which knows for sure.
/// Thread contract: insert() under one mutex of the owner's; contains() from any thread.
class GrowOnlyIds {
 public:
  static constexpr std::size_t kInline = 32;

  /// True when `id` is among the first kInline ids inserted. Lock-free: one acquire load of the
  /// count (pairs with insert()'s release store), then relaxed loads of at most kInline ids.
  bool contains(std::uint64_t id) const noexcept {
    const std::size_t n = count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      // relaxed: each id was stored before the count that made it visible (release/acquire).
      if (ids_[i].load(std::memory_order_relaxed) == id) return true;
    }
    return false;
  }

  /// Adds `id`; returns false when it was there already. Caller holds the owner's mutex.
  bool insert(std::uint64_t id) {
    const std::size_t n = count_.load(std::memory_order_relaxed);  // relaxed: only writers (under the mutex) change it
    if (contains(id)) return false;
    if (n < kInline) {
      ids_[n].store(id, std::memory_order_relaxed);  // published by the count's release store
      count_.store(n + 1, std::memory_order_release);  // pairs with contains()'s acquire load
      return true;
    }
    return overflow_.insert(id).second;
  }

 private:
  std::array<std::atomic<std::uint64_t>, kInline> ids_{};
  std::atomic<std::size_t> count_{0};
  std::unordered_set<std::uint64_t> overflow_;  // under the owner's mutex
};

}  // namespace shmbus::detail
