// The cancel board: a small block in each window's segment where the router posts the request
// ids it cancelled at that window (docs/architecture.md, "Cancel").
//
// A Cancel travels as a frame on the window's inbox, behind its Invoke, so the window's dispatcher
// sees the two in order. A handler already running when its Cancel is written cannot read its own
// inbox (its thread is busy in the handler), so the router also posts the id here before writing
// the frame; CallContext::cancelled() looks it up. The board is a ring of the last kSlots ids:
// older posts are overwritten, which only makes an early stop hint late (the Cancel frame and the
// deadline still end the call).
//
//   router (producer, one thread)            window (any thread, read only)
//   ids[seq % kSlots].store(id, relaxed)     s = seq.load(acquire)            SYNC POINT "board"
//   seq.fetch_add(1, release)                scan ids[0 .. min(s, kSlots))
#pragma once

#include <atomic>
#include <cstdint>

namespace shmbus::detail {

struct CancelBoard {
  static constexpr std::uint32_t kSlots = 63;
  std::atomic<std::uint64_t> seq;              ///< posts so far
  std::atomic<std::uint64_t> ids[kSlots];      ///< the last kSlots cancelled request ids

  /// Router side (under the router mutex): posts `requestId`.
  void post(std::uint64_t requestId) noexcept {
    // relaxed load: only the router writes seq.
    const std::uint64_t s = seq.load(std::memory_order_relaxed);
    // relaxed: published by the release increment below.
    ids[s % kSlots].store(requestId, std::memory_order_relaxed);
    seq.fetch_add(1, std::memory_order_release);  // SYNC POINT "board": pairs with contains()
  }

  /// Window side: true when `requestId` was posted among the last kSlots posts. A racing post
  /// that overwrites a slot being read gives at worst a false "not yet" (the next call sees it).
  bool contains(std::uint64_t requestId) const noexcept {
    const std::uint64_t s = seq.load(std::memory_order_acquire);  // SYNC POINT "board"
    const std::uint64_t n = s < kSlots ? s : kSlots;
    for (std::uint64_t i = 0; i < n; ++i) {
      // relaxed: ordered after the acquire of seq above.
      if (ids[i].load(std::memory_order_relaxed) == requestId) return true;
    }
    return false;
  }
};
static_assert(sizeof(CancelBoard) == 512);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

}  // namespace shmbus::detail
