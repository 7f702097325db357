// Calls in flight through the router, their deadlines, and the per-channel counters behind
// RouterStats (docs/architecture.md, "Router").
//
// Guarded by the router mutex. The deadline timer is a timerfd in the router's epoll set, armed
// lazily: adding a route re-arms it only when the new deadline is earlier than the armed one, and
// removing one never re-arms (a timer that fires with nothing due just re-arms to the earliest),
// so a call whose deadline lies behind others costs no system call.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <memory_resource>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shmbus/error.hpp"
#include "shmbus/supervisor.hpp"

namespace shmbus::detail {

struct CallState;

/// One call in flight. callerId 0 = a call made by the main process (state set);
/// targetId 0 = a call to a main-process handler.
struct Route {
  std::uint64_t routeId = 0;
  std::uint32_t callerId = 0;
  std::uint64_t callerReq = 0;
  std::uint32_t targetId = 0;
  std::uint64_t channel = 0;
  std::int64_t deadline = 0;
  std::int64_t start = 0;
  std::int64_t timeoutMs = 0;
  std::shared_ptr<CallState> state;
  // For the trace (docs/architecture.md §14): the roles by id (the windows may be gone when the
  // call ends), the flow, and the request's payload bytes.
  std::uint64_t callerRole = 0;
  std::uint64_t targetRole = 0;
  std::uint64_t traceId = 0;
  std::uint32_t requestBytes = 0;
};

/// The routes table with its deadline index and timer. Guarded by the router mutex.
class RouteTable {
 public:
  /// `timerFd`: a CLOCK_MONOTONIC timerfd (owned by the router; -1 until setTimer).
  explicit RouteTable(int timerFd) : timerFd_(timerFd) {}
  RouteTable(const RouteTable&) = delete;
  RouteTable& operator=(const RouteTable&) = delete;
  /// The timerfd, once the router has made it (before the first route).
  void setTimer(int timerFd) noexcept { timerFd_ = timerFd; }

  /// Adds `r`, giving it the next route id; returns that id.
  std::uint64_t add(Route r);
  /// Removes and returns route `id`, if present.
  std::optional<Route> take(std::uint64_t id);
  /// The route id of (caller, caller's request id), or 0.
  std::uint64_t byCaller(std::uint32_t callerId, std::uint64_t callerReq) const;
  bool contains(std::uint64_t id) const { return routes_.count(id) != 0; }
  /// What one window has in flight: its routes, and the sum of their Route::requestBytes.
  struct InFlight {
    std::uint32_t calls = 0;
    std::uint64_t bytes = 0;
  };
  /// What window `callerId` has in flight (zeros for none). O(1).
  InFlight inFlightOf(std::uint32_t callerId) const;
  const Route* find(std::uint64_t id) const;
  /// Removes and returns every route whose deadline is <= now (the timer fired).
  std::vector<Route> takeExpired(std::int64_t now);
  /// Removes and returns every route that `pred` selects.
  template <typename Pred>
  std::vector<Route> takeIf(Pred&& pred) {
    std::vector<std::uint64_t> ids;
    for (auto& [id, r] : routes_) {
      if (pred(r)) ids.push_back(id);
    }
    std::vector<Route> out;
    for (auto id : ids) out.push_back(*take(id));
    return out;
  }
  const std::pmr::unordered_map<std::uint64_t, Route>& all() const noexcept { return routes_; }

 private:
  void arm(std::int64_t at);

  int timerFd_;
  // The three indexes allocate their nodes from one pool: a route costs no malloc/free once the
  // pool holds as many nodes as calls were ever in flight at once (docs/architecture.md §10).
  // Declared before the containers, so it outlives them.
  std::pmr::unsynchronized_pool_resource pool_;
  std::pmr::unordered_map<std::uint64_t, Route> routes_{&pool_};
  struct CallerKey {
    std::uint32_t callerId;
    std::uint64_t callerReq;
    bool operator==(const CallerKey&) const = default;
  };
  struct CallerKeyHash {
    std::size_t operator()(const CallerKey& k) const noexcept {
      return std::hash<std::uint64_t>()(k.callerReq * 0x9e3779b97f4a7c15ull ^ k.callerId);
    }
  };
  std::pmr::unordered_map<CallerKey, std::uint64_t, CallerKeyHash> byCaller_{&pool_};  // exact (caller, request) → route
  std::pmr::set<std::pair<std::int64_t, std::uint64_t>> deadlines_{&pool_};
  std::pmr::unordered_map<std::uint32_t, InFlight> perCaller_{&pool_};  // window → its routes (inFlightOf)
  std::int64_t armedAt_ = 0;  // 0 = disarmed
  std::uint64_t nextRoute_ = 1;
};

/// Per-channel counters and latency samples (RouterStats). Guarded by the router mutex.
class RouterCounters {
 public:
  struct Channel {
    std::uint64_t calls = 0, messages = 0, late = 0;
    std::map<ErrorCode, std::uint64_t> errors;
    std::vector<double> latencyMs;
    std::size_t next = 0;
    void sample(double ms);
  };
  Channel& at(std::uint64_t channel) { return channels_[channel]; }
  void error(std::uint64_t channel, ErrorCode code) { ++channels_[channel].errors[code]; }
  const std::unordered_map<std::uint64_t, Channel>& channels() const noexcept { return channels_; }

  std::uint64_t lateReplies = 0, spoofedReplies = 0, undeliverable = 0, badMessages = 0;
  std::uint64_t unanswered = 0;  ///< main-process responders dropped without a reply
  std::uint64_t overPendingLimit = 0;  ///< invokes refused: their window's calls or bytes in flight were at its cap
  std::uint64_t handshakeTimeouts = 0;  ///< connections closed for not finishing the handshake in time
  std::uint64_t refusedWindows = 0;     ///< connections refused at the window cap or for want of fds
  std::uint64_t policyDenials = 0;      ///< messages, calls and handler registrations the policy refused

 private:
  std::unordered_map<std::uint64_t, Channel> channels_;
};

}  // namespace shmbus::detail
