#include "router/routes.hpp"

#include <sys/timerfd.h>
#include <unistd.h>

#include "wait/wait.hpp"

namespace shmbus::detail {

namespace {
constexpr std::size_t kLatencySamples = 4096;
}  // namespace

void RouteTable::arm(std::int64_t at) {
  armedAt_ = at;
  itimerspec its{};
  if (at != 0) {
    its.it_value.tv_sec = at / 1'000'000'000;
    its.it_value.tv_nsec = at % 1'000'000'000;
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  }
  ::timerfd_settime(timerFd_, TFD_TIMER_ABSTIME, &its, nullptr);
}

std::uint32_t RouteTable::slotOf(std::uint64_t id) const noexcept {
  const std::uint64_t low = id & 0xffffffffu;
  if (low == 0 || low > slots_.size()) return kNotLive;
  const auto i = static_cast<std::uint32_t>(low - 1);
  const Slot& s = slots_[i];
  return s.heapPos != kNotLive && s.gen == static_cast<std::uint32_t>(id >> 32) ? i : kNotLive;
}

bool RouteTable::earlier(std::uint32_t a, std::uint32_t b) const noexcept {
  const Slot& x = slots_[a];
  const Slot& y = slots_[b];
  return x.route.deadline != y.route.deadline ? x.route.deadline < y.route.deadline : x.seq < y.seq;
}

void RouteTable::place(std::uint32_t pos, std::uint32_t slot) noexcept {
  heap_[pos] = slot;
  slots_[slot].heapPos = pos;
}

void RouteTable::siftUp(std::uint32_t pos) noexcept {
  const std::uint32_t slot = heap_[pos];
  while (pos > 0) {
    const std::uint32_t parent = (pos - 1) / 2;
    if (!earlier(slot, heap_[parent])) break;
    place(pos, heap_[parent]);
    pos = parent;
  }
  place(pos, slot);
}

void RouteTable::siftDown(std::uint32_t pos) noexcept {
  const std::uint32_t slot = heap_[pos];
  const auto n = static_cast<std::uint32_t>(heap_.size());
  for (;;) {
    std::uint32_t child = 2 * pos + 1;
    if (child >= n) break;
    if (child + 1 < n && earlier(heap_[child + 1], heap_[child])) ++child;
    if (!earlier(heap_[child], slot)) break;
    place(pos, heap_[child]);
    pos = child;
  }
  place(pos, slot);
}

std::uint64_t RouteTable::add(Route r) {
  std::uint32_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  Slot& s = slots_[i];
  r.routeId = (std::uint64_t{s.gen} << 32) | (std::uint64_t{i} + 1);
  const auto id = r.routeId;
  if (r.callerId != 0) {
    byCaller_[{r.callerId, r.callerReq}] = id;
    InFlight& f = perCaller_[r.callerId];
    ++f.calls;
    f.bytes += r.requestBytes;
  }
  // Lazy timer: only a deadline earlier than the armed one needs a system call.
  if (armedAt_ == 0 || r.deadline < armedAt_) arm(r.deadline);
  s.route = std::move(r);
  s.seq = nextSeq_++;
  heap_.push_back(i);
  siftUp(static_cast<std::uint32_t>(heap_.size() - 1));
  return id;
}

std::optional<Route> RouteTable::take(std::uint64_t id) {
  const std::uint32_t i = slotOf(id);
  if (i == kNotLive) return std::nullopt;
  Slot& s = slots_[i];
  // Out of the heap: the last element fills the hole and moves whichever way it must.
  const std::uint32_t pos = s.heapPos;
  const std::uint32_t last = heap_.back();
  heap_.pop_back();
  if (last != i) {
    place(pos, last);
    siftDown(pos);
    siftUp(slots_[last].heapPos);
  }
  Route r = std::move(s.route);
  s.route = Route{};
  s.heapPos = kNotLive;
  ++s.gen;  // the id just taken is never given again
  free_.push_back(i);
  if (r.callerId != 0) {
    byCaller_.erase({r.callerId, r.callerReq});
    if (InFlight* c = perCaller_.find(r.callerId)) {
      c->bytes -= r.requestBytes;
      if (--c->calls == 0) perCaller_.erase(r.callerId);
    }
  }
  return r;
}

std::uint64_t RouteTable::byCaller(std::uint32_t callerId, std::uint64_t callerReq) const {
  const std::uint64_t* id = byCaller_.find({callerId, callerReq});
  return id == nullptr ? 0 : *id;
}

RouteTable::InFlight RouteTable::inFlightOf(std::uint32_t callerId) const {
  const InFlight* f = perCaller_.find(callerId);
  return f == nullptr ? InFlight{} : *f;
}

const Route* RouteTable::find(std::uint64_t id) const {
  const std::uint32_t i = slotOf(id);
  return i == kNotLive ? nullptr : &slots_[i].route;
}

std::vector<Route> RouteTable::takeExpired(std::int64_t now) {
  std::uint64_t expirations = 0;
  [[maybe_unused]] auto n = ::read(timerFd_, &expirations, sizeof expirations);
  std::vector<Route> out;
  while (!heap_.empty() && slots_[heap_.front()].route.deadline <= now) {
    out.push_back(*take(slots_[heap_.front()].route.routeId));
  }
  arm(heap_.empty() ? 0 : slots_[heap_.front()].route.deadline);
  return out;
}

void RouterCounters::Channel::sample(double ms) {
  if (latencyMs.size() < kLatencySamples) {
    latencyMs.push_back(ms);
  } else {
    latencyMs[next++ % kLatencySamples] = ms;
  }
}

}  // namespace shmbus::detail
