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

std::uint64_t RouteTable::add(Route r) {
  r.routeId = nextRoute_++;
  const auto id = r.routeId;
  deadlines_.emplace(r.deadline, id);
  if (r.callerId != 0) {
    byCaller_[{r.callerId, r.callerReq}] = id;
    InFlight& f = perCaller_[r.callerId];
    ++f.calls;
    f.bytes += r.requestBytes;
  }
  // Lazy timer: only a deadline earlier than the armed one needs a system call.
  if (armedAt_ == 0 || r.deadline < armedAt_) arm(r.deadline);
  routes_.emplace(id, std::move(r));
  return id;
}

std::optional<Route> RouteTable::take(std::uint64_t id) {
  auto it = routes_.find(id);
  if (it == routes_.end()) return std::nullopt;
  Route r = std::move(it->second);
  routes_.erase(it);
  deadlines_.erase({r.deadline, id});
  if (r.callerId != 0) {
    byCaller_.erase({r.callerId, r.callerReq});
    if (auto c = perCaller_.find(r.callerId); c != perCaller_.end()) {
      c->second.bytes -= r.requestBytes;
      if (--c->second.calls == 0) perCaller_.erase(c);
    }
  }
  return r;
}

std::uint64_t RouteTable::byCaller(std::uint32_t callerId, std::uint64_t callerReq) const {
  auto it = byCaller_.find({callerId, callerReq});
  return it == byCaller_.end() ? 0 : it->second;
}

RouteTable::InFlight RouteTable::inFlightOf(std::uint32_t callerId) const {
  auto it = perCaller_.find(callerId);
  return it == perCaller_.end() ? InFlight{} : it->second;
}

const Route* RouteTable::find(std::uint64_t id) const {
  auto it = routes_.find(id);
  return it == routes_.end() ? nullptr : &it->second;
}

std::vector<Route> RouteTable::takeExpired(std::int64_t now) {
  std::uint64_t expirations = 0;
  [[maybe_unused]] auto n = ::read(timerFd_, &expirations, sizeof expirations);
  std::vector<Route> out;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) out.push_back(*take(deadlines_.begin()->second));
  arm(deadlines_.empty() ? 0 : deadlines_.begin()->first);
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
