#include "endpoint/pending_calls.hpp"

#include <algorithm>

namespace shmbus::detail {

namespace {
constexpr std::uint64_t kSlotMask = (std::uint64_t{1} << PendingCalls::kSlotBits) - 1;
}  // namespace

std::uint64_t PendingCalls::add(const std::shared_ptr<CallState>& s) {
  std::lock_guard lk(mu_);
  std::uint32_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
  } else {
    if (slots_.size() > kSlotMask) return 0;
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  const std::uint64_t id = (nextSeq_ << kSlotBits) | index;
  // The sequence wraps after 2^(64 - kSlotBits) calls (days at a million calls per second) back
  // to 1, never to 0: an id is never 0, and repeats only after 2^40 further calls.
  if (++nextSeq_ >> (64 - kSlotBits) != 0) nextSeq_ = 1;
  slots_[index] = Slot{id, s};
  s->requestId = id;
  // relaxed: the expiry hint only tells when to scan; the scan itself takes mu_.
  if (s->deadlineNs < nextExpiry_.load(std::memory_order_relaxed)) nextExpiry_.store(s->deadlineNs, std::memory_order_relaxed);
  return id;
}

std::shared_ptr<CallState> PendingCalls::release(Slot& slot) {
  free_.push_back(static_cast<std::uint32_t>(&slot - slots_.data()));
  slot.id = 0;
  return std::move(slot.call);
}

std::shared_ptr<CallState> PendingCalls::take(std::uint64_t requestId) {
  std::lock_guard lk(mu_);
  const std::uint64_t index = requestId & kSlotMask;
  if (requestId == 0 || index >= slots_.size() || slots_[index].id != requestId) return nullptr;
  return release(slots_[index]);
}

std::vector<std::shared_ptr<CallState>> PendingCalls::takeExpired(std::int64_t now) {
  std::vector<std::shared_ptr<CallState>> out;
  if (now < nextExpiry()) return out;
  std::lock_guard lk(mu_);
  std::int64_t next = kNoDeadline;
  for (Slot& slot : slots_) {
    if (slot.id == 0) continue;
    if (slot.call->deadlineNs <= now) {
      out.push_back(release(slot));
    } else {
      next = std::min(next, slot.call->deadlineNs);
    }
  }
  nextExpiry_.store(next, std::memory_order_relaxed);  // relaxed: a hint (see add)
  return out;
}

std::vector<std::shared_ptr<CallState>> PendingCalls::takeAll() {
  std::lock_guard lk(mu_);
  std::vector<std::shared_ptr<CallState>> all;
  for (Slot& slot : slots_) {
    if (slot.id != 0) all.push_back(std::move(slot.call));
  }
  slots_.clear();
  free_.clear();
  return all;
}

}  // namespace shmbus::detail
