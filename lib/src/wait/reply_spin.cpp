// Learned reply spin (reply_spin.hpp; docs/architecture.md §4).
#include "wait/reply_spin.hpp"

#include <algorithm>

namespace shmbus::detail {

void ReplySpin::configure(std::int64_t capNs, int cpus) noexcept {
  cap_ = capNs > 0 && cpus > 1 ? capNs : 0;
  for (auto& s : slots_) {
    // relaxed: configure() runs before any observer (its contract).
    s.channel.store(0, std::memory_order_relaxed);
    s.avgNs.store(0, std::memory_order_relaxed);
    s.hitScore.store(0, std::memory_order_relaxed);
    s.unspun.store(0, std::memory_order_relaxed);
  }
}

std::int64_t ReplySpin::budgetNs(std::uint64_t channel) const noexcept {
  if (cap_ <= 0) return 0;
  const Slot& s = slots_[slotOf(channel)];
  // relaxed: a heuristic read (class comment); no data is published through these fields.
  if (s.channel.load(std::memory_order_relaxed) != channel) return 0;
  if (s.hitScore.load(std::memory_order_relaxed) < kMinHitScore) return 0;
  return std::min(cap_, 2 * s.avgNs.load(std::memory_order_relaxed));  // relaxed: as above
}

std::int64_t ReplySpin::spinFor(std::uint64_t channel) noexcept {
  if (cap_ <= 0) return 0;
  Slot& s = slots_[slotOf(channel)];
  // relaxed: a heuristic (class comment).
  if (s.channel.load(std::memory_order_relaxed) != channel) return cap_;  // not known yet: probe
  if (const std::int64_t b = budgetNs(channel); b > 0) return b;
  // relaxed: a lost increment only moves the next probe.
  if (s.unspun.fetch_add(1, std::memory_order_relaxed) + 1 < kProbeEvery) return 0;
  s.unspun.store(0, std::memory_order_relaxed);
  return cap_;
}

void ReplySpin::observe(std::uint64_t channel, std::int64_t replyNs) noexcept {
  if (cap_ <= 0) return;
  replyNs = std::clamp<std::int64_t>(replyNs, 0, kClampFactor * cap_);
  const std::int32_t hit = replyNs <= cap_ ? 1024 : 0;
  Slot& s = slots_[slotOf(channel)];
  // relaxed throughout: a heuristic (class comment); concurrent observers may lose an update.
  if (s.channel.load(std::memory_order_relaxed) != channel) {
    // A new channel in this slot starts from its first reply.
    s.avgNs.store(replyNs, std::memory_order_relaxed);
    s.hitScore.store(hit, std::memory_order_relaxed);
    s.channel.store(channel, std::memory_order_relaxed);
    return;
  }
  const std::int64_t avg = s.avgNs.load(std::memory_order_relaxed);
  s.avgNs.store(avg + (replyNs - avg) / 8, std::memory_order_relaxed);
  const std::int32_t score = s.hitScore.load(std::memory_order_relaxed);
  s.hitScore.store(score + (hit - score) / 8, std::memory_order_relaxed);
}

}  // namespace shmbus::detail
