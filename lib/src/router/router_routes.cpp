// The router's side of direct routes (docs/architecture.md §19): after a window's routed call or
// send reached a window, the router opens a route port between the two (a port of §16 that it
// opens itself) and grants the caller that channel on it; the caller's fence keeps the channel's
// order across the switch; closing a port (death, close, revoke, a policy change) ends the route.
#include <capnp/message.h>
#include <fmt/format.h>

#include "protocol/frame_io.hpp"
#include "router/router.hpp"
#include "router/router_internal.hpp"

namespace shmbus::detail {

namespace {
// Ports a window may hold as one end (router_ports.cpp's cap, counted the same way).
constexpr std::size_t kMaxRoutePortsPerWindow = 64;
// Route ports a window may have opened as the caller: each holds a ring pair per (caller,
// target) pair, so a window that calls many others keeps the rest of its calls routed.
constexpr std::size_t kMaxRoutesPerCaller = 16;
}  // namespace

void Router::grantRoute(Conn& w, const FrameHeader& h, Conn& t) {
  if (!opts_.directRoutes || &w == &t || h.target == kTargetMain) return;
  // Limits the router enforces per call (RoleRule) need every call to pass through it.
  if (policy_.limitsOf(w.roleId) != nullptr) return;
  // Payloads are captured where the router sees them: while an inspector captures this channel's,
  // it is granted no new route (routes granted before keep running, traced without payloads).
  if (capturing(h.channel)) return;
  const auto grantKey = std::make_tuple(h.target, h.role, h.channel);
  PortLink* p = nullptr;
  bool fresh = false;
  if (auto it = routePorts_.find({w.id, t.id}); it != routePorts_.end()) {
    auto pit = ports_.find(it->second);
    if (pit == ports_.end()) {
      routePorts_.erase(it);
    } else {
      p = &pit->second;
    }
  }
  if (p != nullptr && p->grants.count(grantKey) != 0) return;
  if (p == nullptr) {
    std::size_t mine = 0, theirs = 0, routes = 0;
    for (auto& [id, q] : ports_) {
      mine += q.opener == w.id || q.acceptor == w.id ? 1 : 0;
      theirs += q.opener == t.id || q.acceptor == t.id ? 1 : 0;
      routes += q.route && q.opener == w.id ? 1 : 0;
    }
    if (mine >= kMaxRoutePortsPerWindow || theirs >= kMaxRoutePortsPerWindow || routes >= kMaxRoutesPerCaller) return;
    const std::uint64_t id = nextPortId_++;
    // Each direction's ring as large as its receiver's inbox (the caller's for replies, the
    // target's for requests): what a window chose to buffer stays what it buffers, and what
    // fits routed fits direct. The segment's "inbox" is the opener's (the caller's). Blob arenas
    // as large as a window's own (windowBlobBytes, not counted in the ports' limits): a message
    // too large for the ring goes direct too, zero copy (docs/architecture.md §17).
    auto seg = createWindowSegment(opts_.bus, static_cast<std::uint32_t>(id), w.inbox.geometry().capacity,
                                   t.inbox.geometry().capacity, opts_.maxRecordBytes, opts_.windowBlobBytes, true);
    if (!seg) {
      log_(LogLevel::Warn, "no direct route {} → {}: {}", w.describe(), t.describe(), seg.error().message);
      return;
    }
    // The sealed memfd goes before the frame that names it (each window's watchdog files it).
    const int fd = seg->segment->fd();
    if (!sendControl(t.sock.get(), ControlType::PortFd, id, nullptr, fd) ||
        !sendControl(w.sock.get(), ControlType::PortFd, id, nullptr, fd)) {
      return;
    }
    seg->segment->closeFd();  // both ends have their own
    PortLink link;
    link.id = id;
    link.opener = w.id;
    link.acceptor = t.id;
    link.openerRole = w.role;
    link.acceptorRole = t.role;
    link.channel = h.channel;
    link.accepted = true;
    link.route = true;
    link.seg = std::move(*seg);
    link.routeStats = reinterpret_cast<RouteStatsTable*>(link.seg.segment->base() + link.seg.routeStatsOffset);
    p = &ports_.emplace(id, std::move(link)).first->second;
    routePorts_[{w.id, t.id}] = id;
    fresh = true;
    log_(LogLevel::Debug, "port {}: direct route {} → {}", id, w.describe(), t.describe());
  }
  std::size_t slot = 0;
  while (slot < p->slotChannels.size() && p->slotChannels[slot] != h.channel) ++slot;
  const bool newChannel = slot == p->slotChannels.size();
  if (newChannel && slot == kRouteSlots) return;  // the port's stats table is full: routed it stays
  auto undo = [&] {
    if (fresh) closePort(p->id, kPortRevoked, std::nullopt, "its route could not be granted");
  };
  // Writes `f` to `to`'s inbox, with the port's Welcome (the peer's id and role; the acceptor
  // sees the rings swapped) when that end has not had it yet.
  auto writeRouteFrame = [&](Conn& to, const FrameHeader& f, const Conn& peer, bool& mapped) {
    const bool acceptor = &to == &t;
    BuildFn fill;
    if (!mapped) fill = [&](Builder& b) { fillWelcome(b, opts_.bus, peer.id, peer.role, p->seg, acceptor, p->id); };
    auto r = writeToWindow(to, [&] { return writeFrame(to.inbox, f, fill, mapped ? 0 : 1024); });
    if (r) mapped = true;
    return r.ok();
  };
  // The target first: it learns the channel (and maps the port) before any direct record of it
  // can be read, since the caller's fence reaches it behind this frame.
  if (newChannel || !p->acceptorMapped) {
    FrameHeader open = frameHeader(FrameKind::RouteOpen, h.channel);
    open.requestId = p->id;
    open.source = w.id;
    open.role = w.roleId;
    open.target = t.id;
    if (!writeRouteFrame(t, open, w, p->acceptorMapped)) return undo();
    if (newChannel) p->slotChannels.push_back(h.channel);
  }
  FrameHeader grant = frameHeader(FrameKind::RouteGrant, h.channel);
  grant.requestId = p->id;
  grant.target = h.target;
  grant.role = h.role;
  grant.source = static_cast<std::uint32_t>(slot);
  auto it = channelTimeoutMs_.find(h.channel);
  grant.status = static_cast<std::uint32_t>(it != channelTimeoutMs_.end() ? it->second : kDefaultTimeout.count());
  if (!writeRouteFrame(w, grant, t, p->openerMapped)) return undo();
  p->grants.insert(grantKey);
}

void Router::onRouteFence(Conn& w, const FrameHeader& h) {
  auto it = ports_.find(h.requestId);
  if (it == ports_.end() || !it->second.route || it->second.opener != w.id) return;  // closed meanwhile
  Conn* t = registry_.live(it->second.acceptor);
  if (t == nullptr) return;
  FrameHeader out = frameHeader(static_cast<FrameKind>(h.kind), h.channel);
  out.requestId = h.requestId;
  out.status = h.status;
  out.source = w.id;
  auto r = writeOutcome(*t, [&] { return writeFrame(t->inbox, out, {}, 0); }, [&] { return heldFrame(out, {}); });
  if (!r) {
    // The target's inbox is full and so is what is held for it: without its fence the route
    // would stall (or, a sync, lose its order), so it ends (calls in flight on it fail with
    // TargetGone; later ones go routed).
    closePort(it->first, kPortRevoked, std::nullopt, "its fence could not be delivered");
  }
}

void Router::closeRoutes(std::string_view why) {
  std::vector<std::uint64_t> ids;
  for (auto& [id, p] : ports_) {
    if (p.route) ids.push_back(id);
  }
  for (auto id : ids) closePort(id, kPortRevoked, std::nullopt, why);
}

void Router::addRouteCounts(const RouteStatsTable& table, const std::vector<std::uint64_t>& slotChannels,
                            std::map<std::uint64_t, RouterStats::ChannelStats>& into) {
  for (std::size_t i = 0; i < slotChannels.size(); ++i) {
    const RouteStatsSlot& s = table.slots[i];
    RouterStats::ChannelStats& c = into[slotChannels[i]];
    // relaxed: counters, read as they are; the caller's increments need no order with anything.
    c.directCalls += s.calls.load(std::memory_order_relaxed);
    c.directMessages += s.messages.load(std::memory_order_relaxed);
    for (std::uint16_t code = 1; code <= static_cast<std::uint16_t>(kLastErrorCode); ++code) {
      const std::uint64_t n = s.errors[code].load(std::memory_order_relaxed);  // relaxed: as above
      if (n != 0) c.errors[errorCodeName(static_cast<ErrorCode>(code))] += n;
    }
  }
}

void Router::foldRetiredRoutes(std::uint32_t opener) {
  std::erase_if(retiredRoutes_, [&](const RetiredRoute& r) {
    if (r.opener != opener) return false;
    addRouteCounts(*r.table, r.slotChannels, routeFolded_);
    return true;
  });
}

}  // namespace shmbus::detail
