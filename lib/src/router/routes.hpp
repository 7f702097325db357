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
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/flat_map.hpp"
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
///
/// Layout (docs/architecture.md §10, the lean call path): routes live in a slab whose slots are
/// reused; a route id is the slot's index + 1 in its low 32 bits and the slot's generation in the
/// high 32 (bumped at every take), so an id is never given twice (a late or forged reply names a
/// slot whose generation moved on and finds nothing) and lookup by id is an index, not a hash.
/// Deadlines are a binary min-heap of slot indexes (each slot knows its heap position, so take
/// removes in O(log n)); (caller, request) and per-caller counts are FlatMaps. Once the slab,
/// heap and maps have grown to the most calls ever in flight, add and take allocate nothing.
class RouteTable {
 public:
  /// `timerFd`: a CLOCK_MONOTONIC timerfd (owned by the router; -1 until setTimer).
  explicit RouteTable(int timerFd) : timerFd_(timerFd) {}
  RouteTable(const RouteTable&) = delete;
  RouteTable& operator=(const RouteTable&) = delete;
  /// The timerfd, once the router has made it (before the first route).
  void setTimer(int timerFd) noexcept { timerFd_ = timerFd; }

  /// Adds `r`, giving it a route id never given before (never 0); returns that id.
  std::uint64_t add(Route r);
  /// Removes and returns route `id`, if present (any id, even forged, is safe to ask for).
  std::optional<Route> take(std::uint64_t id);
  /// The route id of (caller, caller's request id), or 0.
  std::uint64_t byCaller(std::uint32_t callerId, std::uint64_t callerReq) const;
  bool contains(std::uint64_t id) const { return find(id) != nullptr; }
  /// What one window has in flight: its routes, and the sum of their Route::requestBytes.
  struct InFlight {
    std::uint32_t calls = 0;
    std::uint64_t bytes = 0;
  };
  /// What window `callerId` has in flight (zeros for none). O(1).
  InFlight inFlightOf(std::uint32_t callerId) const;
  /// Route `id`, or nullptr. Valid until the next add or take.
  const Route* find(std::uint64_t id) const;
  /// Removes and returns every route whose deadline is <= now (the timer fired), earliest first.
  std::vector<Route> takeExpired(std::int64_t now);
  /// Removes and returns every route that `pred` selects.
  template <typename Pred>
  std::vector<Route> takeIf(Pred&& pred) {
    std::vector<std::uint64_t> ids;
    forEach([&](const Route& r) {
      if (pred(r)) ids.push_back(r.routeId);
    });
    std::vector<Route> out;
    for (auto id : ids) out.push_back(*take(id));
    return out;
  }
  /// Calls `f(const Route&)` for every route in flight, in slot order. `f` must not add or take.
  template <typename F>
  void forEach(F&& f) const {
    for (const Slot& s : slots_) {
      if (s.heapPos != kNotLive) f(s.route);
    }
  }
  /// Routes in flight.
  std::size_t size() const noexcept { return heap_.size(); }

 private:
  static constexpr std::uint32_t kNotLive = 0xffffffffu;
  struct Slot {
    Route route;
    std::uint32_t gen = 0;
    std::uint32_t heapPos = kNotLive;  // position in heap_, or kNotLive for a free slot
    std::uint64_t seq = 0;             // add order: ties of equal deadlines expire oldest first
  };
  struct CallerKey {
    std::uint32_t callerId = 0;
    std::uint64_t callerReq = 0;
    bool operator==(const CallerKey&) const = default;
  };
  struct CallerKeyHash {
    std::uint64_t operator()(const CallerKey& k) const noexcept {
      return k.callerReq * 0xff51afd7ed558ccdull ^ k.callerId;
    }
  };
  struct IdHash {
    std::uint64_t operator()(std::uint32_t id) const noexcept { return id; }
  };

  void arm(std::int64_t at);
  std::uint32_t slotOf(std::uint64_t id) const noexcept;  // index, or kNotLive when id names no route
  bool earlier(std::uint32_t a, std::uint32_t b) const noexcept;
  void place(std::uint32_t pos, std::uint32_t slot) noexcept;
  void siftUp(std::uint32_t pos) noexcept;
  void siftDown(std::uint32_t pos) noexcept;

  int timerFd_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;  // free slot indexes, reused last-in first-out (hot lines)
  std::vector<std::uint32_t> heap_;  // slot indexes, min-heap by (deadline, seq)
  FlatMap<CallerKey, std::uint64_t, CallerKeyHash> byCaller_;  // exact (caller, request) → route
  FlatMap<std::uint32_t, InFlight, IdHash> perCaller_;          // window → its routes (inFlightOf)
  std::int64_t armedAt_ = 0;  // 0 = disarmed
  std::uint64_t nextSeq_ = 1;
};

/// Per-channel counters and latency samples (RouterStats). Guarded by the router mutex.
class RouterCounters {
 public:
  RouterCounters() = default;
  RouterCounters(const RouterCounters&) = delete;  // at() remembers a pointer into channels_
  RouterCounters& operator=(const RouterCounters&) = delete;
  struct Channel {
    std::uint64_t calls = 0, messages = 0, late = 0;
    std::map<ErrorCode, std::uint64_t> errors;
    std::vector<double> latencyMs;
    std::size_t next = 0;
    void sample(double ms);
  };
  /// The counters of `channel` (created empty). The last channel's entry is remembered: a stream
  /// of calls on one channel costs a compare, not a hash lookup, per call (docs/architecture.md
  /// §10); the map's nodes never move, so the pointer stays valid until the map is destroyed.
  Channel& at(std::uint64_t channel) {
    if (last_ == nullptr || lastId_ != channel) {
      last_ = &channels_[channel];
      lastId_ = channel;
    }
    return *last_;
  }
  void error(std::uint64_t channel, ErrorCode code) { ++at(channel).errors[code]; }
  const std::unordered_map<std::uint64_t, Channel>& channels() const noexcept { return channels_; }

  std::uint64_t lateReplies = 0, spoofedReplies = 0, undeliverable = 0, badMessages = 0;
  std::uint64_t unanswered = 0;  ///< main-process responders dropped without a reply
  std::uint64_t overPendingLimit = 0;  ///< invokes refused: their window's calls or bytes in flight were at its cap
  std::uint64_t handshakeTimeouts = 0;  ///< connections closed for not finishing the handshake in time
  std::uint64_t refusedWindows = 0;     ///< connections refused at the window cap or for want of fds
  std::uint64_t policyDenials = 0;      ///< messages, calls and handler registrations the policy refused

 private:
  std::unordered_map<std::uint64_t, Channel> channels_;  // never erased from (at()'s pointer)
  Channel* last_ = nullptr;
  std::uint64_t lastId_ = 0;
};

}  // namespace shmbus::detail
