// The cancel board: a small block in each segment where the side that cancels a call posts its
// request id for the side that runs its handler (docs/architecture.md §11; ports: §16).
//
// A Cancel travels as a frame behind its Invoke, so the handler side's dispatcher sees the two in
// order. A handler already running when its Cancel is written cannot read its own inbox (its
// thread is busy in the handler), so the canceller also posts the id on a board before writing
// the frame; CallContext::cancelled() looks it up. A board is a ring of the last kSlots ids: older
// posts are overwritten, which only makes an early stop hint late (the Cancel frame and the
// deadline still end the call).
//
// Who posts: in a window's segment, the router (one board, 63 slots: the ids are the router's
// requests to that window). In a port's segment both ends run handlers and both cancel, and each
// end numbers its own calls, so one board would mix ids of the two directions (and have two
// writers): the same 512 bytes hold two boards of 31 slots instead (PortCancelBoards), each
// posted by one end, the caller, and read by the other.
//
//   canceller (one writer at a time)         handler side (any thread, read only)
//   ids[seq % kSlots].store(id, relaxed)     s = seq.load(acquire)            SYNC POINT "board"
//   seq.fetch_add(1, release)                scan ids[0 .. min(s, kSlots))
//
// Untrusted writers: a window may scribble its own segment (a port's peer: the whole port
// segment). Nothing read from a board is used but as a hint compared with ids: every index is
// taken modulo kSlots and every scan is bounded by kSlots, so a scribbled board can only make the
// scribbler's own calls look cancelled (or not) to their handlers.
#pragma once

#include <atomic>
#include <cstdint>

namespace shmbus::detail {

/// A board of `Slots` request ids (see the file comment).
template <std::uint32_t Slots>
struct BasicCancelBoard {
  static constexpr std::uint32_t kSlots = Slots;
  std::atomic<std::uint64_t> seq;              ///< posts so far
  std::atomic<std::uint64_t> ids[kSlots];      ///< the last kSlots cancelled request ids

  /// The canceller's side (its one writer: the router under its mutex; a port's end under its
  /// outbox mutex): posts `requestId`.
  void post(std::uint64_t requestId) noexcept {
    // relaxed load: only this writer stores seq (a hostile one's value is used modulo kSlots).
    const std::uint64_t s = seq.load(std::memory_order_relaxed);
    // relaxed: published by the release increment below.
    ids[s % kSlots].store(requestId, std::memory_order_relaxed);
    seq.fetch_add(1, std::memory_order_release);  // SYNC POINT "board": pairs with contains()
  }

  /// The handler's side: true when `requestId` was posted among the last kSlots posts. A racing
  /// post that overwrites a slot being read gives at worst a false "not yet" (the next call sees it).
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

/// A window's board: the router posts the calls it cancelled at that window. A struct, not an
/// alias, so that headers can forward-declare it (router/registry.hpp).
struct CancelBoard : BasicCancelBoard<63> {};
static_assert(sizeof(CancelBoard) == 512);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// One direction of a port (see PortCancelBoards).
using PortCancelBoard = BasicCancelBoard<31>;

/// A port's segment: the window board's 512 bytes as one board per direction (docs §16). Each
/// end posts the calls it cancelled on its own board and reads its peer's, so request ids of the
/// two directions, numbered by different callers, never meet.
struct PortCancelBoards {
  PortCancelBoard byOpener;    ///< posted by the opener (its calls), read by the acceptor
  PortCancelBoard byAcceptor;  ///< posted by the acceptor (its calls), read by the opener
};
static_assert(sizeof(PortCancelBoards) == sizeof(CancelBoard));

}  // namespace shmbus::detail
