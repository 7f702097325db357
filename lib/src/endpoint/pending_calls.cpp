#include "endpoint/pending_calls.hpp"

#include <algorithm>

namespace shmbus::detail {

std::uint64_t PendingCalls::add(const std::shared_ptr<CallState>& s) {
  std::lock_guard lk(mu_);
  s->requestId = nextId_++;
  calls_.emplace(s->requestId, s);
  // relaxed: the expiry hint only tells when to scan; the scan itself takes mu_.
  if (s->deadlineNs < nextExpiry_.load(std::memory_order_relaxed)) nextExpiry_.store(s->deadlineNs, std::memory_order_relaxed);
  return s->requestId;
}

std::shared_ptr<CallState> PendingCalls::take(std::uint64_t requestId) {
  std::lock_guard lk(mu_);
  auto it = calls_.find(requestId);
  if (it == calls_.end()) return nullptr;
  auto s = std::move(it->second);
  calls_.erase(it);
  return s;
}

std::vector<std::shared_ptr<CallState>> PendingCalls::takeExpired(std::int64_t now) {
  std::vector<std::shared_ptr<CallState>> out;
  if (now < nextExpiry()) return out;
  std::lock_guard lk(mu_);
  std::int64_t next = kNoDeadline;
  for (auto it = calls_.begin(); it != calls_.end();) {
    if (it->second->deadlineNs <= now) {
      out.push_back(std::move(it->second));
      it = calls_.erase(it);
    } else {
      next = std::min(next, it->second->deadlineNs);
      ++it;
    }
  }
  nextExpiry_.store(next, std::memory_order_relaxed);  // relaxed: a hint (see add)
  return out;
}

std::unordered_map<std::uint64_t, std::shared_ptr<CallState>> PendingCalls::takeAll() {
  std::lock_guard lk(mu_);
  std::unordered_map<std::uint64_t, std::shared_ptr<CallState>> all;
  all.swap(calls_);
  return all;
}

}  // namespace shmbus::detail
