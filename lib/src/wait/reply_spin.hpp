// How long a caller spins for a reply before it parks, learned per channel from the replies it
// has seen (docs/architecture.md §4, "Learned reply spin").
//
// A parked caller pays one futex wake-up (tens of µs on a VM) on top of the reply's own travel
// time. A caller whose replies usually come within a few µs should spin for them instead, but
// only as long as spinning is likely to pay: this table keeps, per channel, an exponentially
// weighted average of the reply time and of the share of replies that came within the cap, and
// grants a spin of twice the average (capped) while at least half the replies came within the
// cap. A channel whose handler is slow or whose caller is usually off-CPU earns no spin and parks
// after the window's ordinary spin (WindowOptions::spin). A reply that arrives while its caller is
// parked looks slower than it is (the caller's wake-up is in it), so a channel is probed: a call
// on a channel not known yet, and every kProbeEvery-th call on one that earned no spin, spins for
// the whole cap once. The estimator is the EWMA with gain
// 1/8 of TCP's smoothed RTT (RFC 6298 §2), applied to a spin-then-block budget in the manner of
// the adaptive mutexes of Karlin et al., "Empirical Studies of Competitive Spinning for a
// Shared-Memory Multiprocessor" (SOSP 1991).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace shmbus::detail {

/// Per-channel reply-time statistics and the spin budget they earn. A direct-mapped table of
/// kSlots entries keyed by channel id: two channels that share a slot take it over in turn (each
/// then relearns), which costs spin opportunities, never correctness.
///
/// Thread contract: budgetNs() and observe() may be called from any thread at once. The fields
/// are relaxed atomics: the numbers are a heuristic and a torn update (one thread's average with
/// another's key) only skews one decision.
class ReplySpin {
 public:
  /// Number of channels remembered at once.
  static constexpr std::size_t kSlots = 64;
  /// Reply times above this multiple of the cap are counted as the cap times it, so that one
  /// reply that took seconds does not erase what a fast channel has learned.
  static constexpr std::int64_t kClampFactor = 4;
  /// A channel earns a spin while this share (in 1/1024) of its recent replies came within the cap.
  static constexpr std::int32_t kMinHitScore = 512;
  /// A channel that earned no spin is probed (spins for the cap) once per this many calls.
  static constexpr std::uint32_t kProbeEvery = 64;

  /// Sets the cap in ns (the longest spin ever granted; <= 0 disables learning: budgetNs() is then
  /// always 0) and the number of CPUs this process may run on (1 disables it as well: a spinning
  /// caller would only delay the answer it waits for). Forgets what was learned. Call before the
  /// first observe() (no synchronisation with concurrent observers).
  void configure(std::int64_t capNs, int cpus) noexcept;

  /// The configured cap in ns (0 when disabled).
  std::int64_t capNs() const noexcept { return cap_; }

  /// The spin a call on `channel` has earned, in ns: 0 when learning is disabled, the channel is
  /// unknown or its replies are usually slower than the cap; otherwise min(cap, 2 × average).
  std::int64_t budgetNs(std::uint64_t channel) const noexcept;

  /// The spin to give a call on `channel` that is being sent now, in ns: budgetNs(channel) when
  /// the channel earned one; the cap (a probe) when the channel is not known yet or on every
  /// kProbeEvery-th call that earned none; 0 when learning is disabled.
  std::int64_t spinFor(std::uint64_t channel) noexcept;

  /// Records that a call on `channel` got its reply `replyNs` ns after it was sent.
  void observe(std::uint64_t channel, std::int64_t replyNs) noexcept;

 private:
  struct Slot {
    std::atomic<std::uint64_t> channel{0};
    std::atomic<std::int64_t> avgNs{0};     // EWMA (gain 1/8) of clamped reply times
    std::atomic<std::int32_t> hitScore{0};  // EWMA (gain 1/8) of 1024 × (reply within the cap)
    std::atomic<std::uint32_t> unspun{0};   // calls given no spin since the last probe
  };
  static std::size_t slotOf(std::uint64_t channel) noexcept {
    // Channel ids are FNV-1a hashes of names (nameId): the high bits are as mixed as the low.
    return static_cast<std::size_t>(channel >> 58) % kSlots;
  }
  std::int64_t cap_ = 0;
  std::array<Slot, kSlots> slots_{};
};

}  // namespace shmbus::detail
