// A window's direct routes (docs/architecture.md §19): route ports the supervisor opened between
// this window and another, as the caller (its later calls and sends of a granted channel go over
// the port) or the target (its handlers answer them). A route end is a port end (port.cpp) that
// this window's own dispatch loop reads beside its inbox, so handlers keep running on the one
// thread that dispatches the window, and a waiting call still serves calls to it.
#include <fmt/format.h>

#include <algorithm>

#include "bus.capnp.h"
#include "window/window_impl.hpp"

namespace shmbus {

using namespace detail;
using namespace window_detail;

namespace {
/// The key of `t` as the window's frames name it (headerFor: a role by its id, else the window
/// id), with `channel` (0: the target's entry in routeByTarget).
Window::Impl::RouteKey routeKey(const Target& t, std::uint64_t channel) {
  return t.role.empty() ? Window::Impl::RouteKey{t.windowId, 0, channel}
                        : Window::Impl::RouteKey{kTargetByRole, nameId(t.role), channel};
}
}  // namespace

std::shared_ptr<Window::Impl> Window::Impl::routeEnd(std::uint64_t portId) const {
  for (const auto& e : routeEnds) {
    if (e->port->id == portId) return e;
  }
  return nullptr;
}

std::shared_ptr<Window::Impl> Window::Impl::attachRouteEnd(std::uint64_t portId, InPlaceMessage& msg, bool opener,
                                                           std::uint64_t channel) {
  // The descriptor first, whatever comes next: it must not stay filed.
  auto fd = takePortFd(*hub, portId);
  auto fail = [&](const Error& e) {
    log(LogLevel::Warn, "direct route {} not taken (calls stay routed): {}", portId, e.message);
    return nullptr;
  };
  if (!fd) return fail(fd.error());
  if (msg.empty()) return fail(makeError(ErrorCode::InvalidMessage, "no description"));
  auto info = readWelcome(msg.reader());
  if (!info) return fail(info.error());
  info->portId = portId;
  if (opener && info->routeStatsOffset == 0) return fail(makeError(ErrorCode::InvalidMessage, "no stats table"));
  std::string name = callbacks->name(channel);
  if (name.empty()) name = internedName(channel);
  auto end = mapPortEnd(*this, *info, *fd, opener, fmt::format("route:{}", name), kDefaultTimeout);
  if (!end) return fail(end.error());
  std::shared_ptr<Impl> e = std::move(*end);
  e->port->routeOwner = this;
  if (opener) {
    e->port->routeStats = reinterpret_cast<RouteStatsTable*>(e->link.segment->base() + info->routeStatsOffset);
  } else {
    e->callbacks = callbacks;  // the window's handlers and listeners serve the route
  }
  e->log = Logger{"route", fmt::format("{}/{}#{} route {}", bus, link.role, link.id, portId), opts.logLevel};
  routeEnds.push_back(e);
  return e;
}

void Window::Impl::onRouteOpen(const FrameView& f, InPlaceMessage& msg) {
  std::shared_ptr<Impl> e = routeEnd(f.header.requestId);
  if (!e) e = attachRouteEnd(f.header.requestId, msg, false, f.header.channel);
  if (e) e->port->allowed.insert(f.header.channel);
}

void Window::Impl::onRouteGrant(const FrameView& f, InPlaceMessage& msg) {
  std::shared_ptr<Impl> e = routeEnd(f.header.requestId);
  if (!e) {
    if (msg.empty()) return;  // its description never reached this window: the calls stay routed
    e = attachRouteEnd(f.header.requestId, msg, true, f.header.channel);
    if (!e) return;
  }
  if (!e->port->opener || e->port->routeStats == nullptr || f.header.source >= kRouteSlots) return;
  RouteGrantEntry g;
  g.end = e;
  g.timeout = std::chrono::milliseconds(f.header.status);
  g.slot = &e->port->routeStats->slots[f.header.source];
  std::lock_guard lk(outMu);
  routeByTarget[RouteKey{f.header.target, f.header.role, 0}] = e;
  routeGrants[RouteKey{f.header.target, f.header.role, f.header.channel}] = std::move(g);
  routeGrantCount.store(routeGrants.size(), std::memory_order_relaxed);  // relaxed: a hint (sendImpl)
}

void Window::Impl::onRouteFence(const FrameHeader& h) {
  if (auto e = routeEnd(h.requestId); e && !e->port->opener) e->port->fenceSeen = std::max(e->port->fenceSeen, h.status);
}

Window::Impl::RouteGrantEntry* Window::Impl::grantLocked(const Target& t, const Channel& ch) {
  if (t.isMain()) return nullptr;
  auto it = routeGrants.find(routeKey(t, ch.id));
  if (it == routeGrants.end()) return nullptr;
  RouteGrantEntry& g = it->second;
  if (g.end->closed.load(std::memory_order_acquire) || g.end->portEnded()) {  // acquire: pairs with markClosed
    routeGrants.erase(it);
    routeGrantCount.store(routeGrants.size(), std::memory_order_relaxed);  // relaxed: a hint
    return nullptr;
  }
  if (!g.fenced || g.end->port->routedSince) {
    // The first direct record of this channel, or the first since a routed one to this target:
    // the fence goes first, through the supervisor behind every routed record this window wrote
    // before it (this outbox, under outMu), and a marker on the route's ring, so the target
    // reads nothing direct before those (§19).
    const std::uint32_t k = g.end->port->fencesSent + 1;
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(FrameKind::RouteFence);
    h.channel = ch.id;
    h.requestId = g.end->port->id;
    h.status = k;
    const std::int64_t until = monotonicNowNs() + 1'000'000'000;
    if (!writeOutLocked(h, {}, 0, until)) return nullptr;  // stays routed; the next call tries again
    Result<void> marked;
    {
      std::lock_guard elk(g.end->outMu);
      marked = g.end->writeOutLocked(h, {}, 0, until);
    }
    // A fence without its marker gates nothing (fences only ever grow), so the next try is safe.
    g.end->port->fencesSent = k;
    if (!marked) return nullptr;
    g.fenced = true;
    g.end->port->routedSince = false;
  }
  return &g;
}

Result<void> Window::Impl::syncRouteLocked(const Target& t) {
  if (t.isMain()) return {};
  auto it = routeByTarget.find(routeKey(t, 0));
  if (it == routeByTarget.end()) return {};
  PortSide& ps = *it->second->port;
  ps.routedSince = true;
  // relaxed: set by this thread's own direct writes (program order) or another's (no order owed).
  if (!ps.directSince.exchange(false, std::memory_order_relaxed)) return {};
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::RouteSync);
  h.requestId = ps.id;
  h.status = ps.written.load(std::memory_order_relaxed);  // relaxed: as directSince
  return writeOutLocked(h, {}, 0, monotonicNowNs() + 1'000'000'000);
}

void Window::Impl::onRouteSync(const FrameHeader& h) {
  auto e = routeEnd(h.requestId);
  if (!e || e->port->opener) return;
  PortSide& ps = *e->port;
  // Everything the caller wrote on the route before its sync is in the ring already: read it now
  // (a count beyond what is there, from a hostile caller, just stops at the end).
  while (static_cast<std::int32_t>(h.status - ps.readCount) > 0 && ps.gateFence <= ps.fenceSeen) {
    auto r = e->link.inbox.tryRead();
    if (!r) {
      e->endPortCorrupt(r.error());
      break;
    }
    if (!*r) break;
    ++ps.readCount;
    e->handleRecord(**r);
  }
  e->advanceHead();
}

void Window::Impl::dropRoute(const std::shared_ptr<Impl>& end) {
  {
    std::lock_guard lk(outMu);
    std::erase_if(routeGrants, [&](const auto& kv) { return kv.second.end == end; });
    std::erase_if(routeByTarget, [&](const auto& kv) { return kv.second == end; });
    routeGrantCount.store(routeGrants.size(), std::memory_order_relaxed);  // relaxed: a hint
  }
  std::erase(routeEnds, end);
}

int Window::Impl::dispatchRoutes(CallState* waiting, std::int64_t now) {
  int total = 0;
  // By index, holding one end at a time: a handler's nested dispatch may add or drop ends
  // meanwhile (an end dropped before index i makes this round skip one, which the next reads).
  for (std::size_t i = 0; i < routeEnds.size(); ++i) {
    const std::shared_ptr<Impl> e = routeEnds[i];
    if (e->portEnded() && !e->closed.load(std::memory_order_acquire)) e->onPortEnded();  // acquire: markClosed
    if (e->closed.load(std::memory_order_acquire)) {  // acquire: as above
      dropRoute(e);
      --i;  // the next end moved into this index
      continue;
    }
    int n = 0;
    while (n < kBatch && e->port->gateFence <= e->port->fenceSeen) {
      auto r = e->link.inbox.tryRead();
      if (!r) {
        e->endPortCorrupt(r.error());
        break;
      }
      if (!*r) break;
      ++e->port->readCount;
      e->handleRecord(**r);
      ++n;
      if (waiting != nullptr && isDone(*waiting)) break;
    }
    e->advanceHead();
    e->expireLocal(now);
    total += n;
  }
  return total;
}

WaitStatus Window::Impl::waitAll(std::int64_t until, const SpinPolicy& policy) {
  WaitWord* words[kMaxWaitWords];
  std::size_t n = 0;
  words[n++] = &link.inbox.control()->dataReady;
  for (const auto& e : routeEnds) {
    if (n == kMaxWaitWords) break;  // more ends than words: those beyond are read every round
    words[n++] = &e->link.inbox.control()->dataReady;
  }
  const bool partial = routeEnds.size() + 1 > kMaxWaitWords;
  // A round wakes up at least every millisecond when some ends have no word in the park.
  if (partial) until = std::min(until, monotonicNowNs() + 1'000'000);
  return spinThenParkAny(
      words, n,
      [&] {
        // acquire: pairs with markClosed's / the lease releases' release stores; a port's close
        // word is set before its closer's wakeAll (SYNC POINT "port close").
        if (closed.load(std::memory_order_acquire) || lease->dirty.load(std::memory_order_acquire) ||
            link.inbox.hasData()) {
          return true;
        }
        for (const auto& e : routeEnds) {
          if (e->lease->dirty.load(std::memory_order_acquire) || e->portEnded() ||
              (e->port->gateFence <= e->port->fenceSeen && e->link.inbox.hasData())) {
            return true;
          }
        }
        return false;
      },
      policy, until);
}

}  // namespace shmbus
