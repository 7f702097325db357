// The router's side of ports (docs/architecture.md §16): opening (policy, target, listener,
// segment), handing the segment to both windows, closing on a close, a death or a revoke.
#include <capnp/message.h>
#include <fmt/format.h>

#include <algorithm>

#include "blob/blob.hpp"
#include "bus.capnp.h"
#include "protocol/frame_io.hpp"
#include "router/router.hpp"
#include "router/router_internal.hpp"
#include "trace/trace_event.hpp"

namespace shmbus::detail {

namespace {
// Ended ports remembered for their ends' last trace records (Router::recentPorts_).
constexpr std::size_t kRecentPorts = 64;
// Ports one window may have open or offered at once (as opener or acceptor): each holds a segment
// mapped here, so a window cannot make the supervisor map without bound (with rings no larger than
// a window's: at most 64 × 2 × the window ring size of shared memory per window).
constexpr std::size_t kMaxPortsPerWindow = 64;
}  // namespace

void Router::expirePortOffers() {
  const std::int64_t now = monotonicNowNs();
  std::vector<std::uint64_t> due;
  for (auto& [id, p] : ports_) {
    if (!p.accepted && now >= p.deadline) due.push_back(id);
  }
  for (auto id : due) {
    // The opener has given up by now (its own deadline is the same): nothing to answer.
    closePort(id, kPortOpenTimedOut, std::nullopt);
  }
}

void Router::onPortOpen(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  expirePortOffers();  // offers whose target never answered do not count against the caps
  // A refusal is the open's Error, traced as a PortOpen (not as an Invoke) with the target if known.
  auto refuse = [&](Error e, const Conn* to = nullptr) {
    tracePortRefused(w, h, to, e);
    replyError(w, h, std::move(e), false);
  };
  if (auto v = validatePayload(f.payload, f.payloadBytes); !v) return blame(w, h, "open port", v.error());
  auto what = [&] { return fmt::format("open port on '{}' from {}", registry_.nameOf(h.channel, w.id), w.describe()); };
  std::uint32_t ring = kDefaultPortRingBytes;
  std::uint64_t blobAsked = 0;  // per direction; 0 = the default, clamped to what the limits leave
  {
    InPlaceMessage m;
    if (m.parse(f.payload, f.payloadBytes) && !m.empty()) {
      try {
        auto hello = m.reader().getRoot<schema::Hello>();
        const std::uint32_t asked = hello.getInboxBytes();
        if (asked != 0) ring = asked;
        blobAsked = hello.getBlobBytes();
      } catch (const kj::Exception& e) {
        return refuse(makeError(ErrorCode::InvalidMessage, what() + ": " + e.getDescription().cStr()));
      }
    }
  }
  if (auto v = checkRingSizes(ring, ring); !v) return refuse(makeError(v.code(), what() + ": " + v.error().message));
  if (const std::uint32_t most = std::max(opts_.inboxBytes, opts_.outboxBytes); ring > most) {
    return refuse(makeError(ErrorCode::InvalidArgument,
                                      fmt::format("{}: rings of {} bytes asked, a port's are at most as large as a "
                                                  "window's ({} bytes, SupervisorOptions::inboxBytes/outboxBytes)",
                                                  what(), ring, most)));
  }
  // The policy's choice for ports: opening one on C to T is an invoke of C by the opener that T
  // must be allowed to handle (§15). What then travels on the port is not seen here.
  if (auto e = denied(PolicyAction::Invoke, h.channel, w.roleId, w.role, w.id, what)) return refuse(std::move(*e));
  if (h.target == kTargetMain) {
    return refuse(makeError(ErrorCode::NoTarget, what() + ": ports connect two windows"));
  }
  Conn* t = registry_.resolve(h.target, h.role);
  if (t == nullptr) {
    return refuse(makeError(ErrorCode::NoTarget, fmt::format("{}: no live window with {}", what(),
                                                                       registry_.describeTarget(h.target, h.role))), t);
  }
  if (t == &w) return refuse(makeError(ErrorCode::InvalidArgument, what() + ": a port to itself"), t);
  if (auto e = denied(PolicyAction::Handle, h.channel, t->roleId, t->role, w.id,
                      [&] { return what() + " to " + t->describe(); })) {
    return refuse(std::move(*e), t);
  }
  if (t->portChannels.count(h.channel) == 0) {
    return refuse(makeError(ErrorCode::NoHandler,
                                      fmt::format("{} to {}: no onPort listener", what(), t->describe())), t);
  }
  std::size_t mine = 0, theirs = 0;
  std::uint64_t myBlobs = 0, theirBlobs = 0, busBlobs = 0;  // arena bytes held, both directions
  for (auto& [id, p] : ports_) {
    const bool m = p.opener == w.id || p.acceptor == w.id, th = p.opener == t->id || p.acceptor == t->id;
    mine += m ? 1 : 0;
    theirs += th ? 1 : 0;
    myBlobs += m ? 2 * p.seg.blobBytes : 0;
    theirBlobs += th ? 2 * p.seg.blobBytes : 0;
    busBlobs += 2 * p.seg.blobBytes;
  }
  if (mine >= kMaxPortsPerWindow || theirs >= kMaxPortsPerWindow) {
    return refuse(makeError(ErrorCode::Full, fmt::format("{} to {}: a window may have {} ports", what(),
                                                                   t->describe(), kMaxPortsPerWindow)), t);
  }
  // The blob arenas (§17): what the limits leave, per direction, in whole pages.
  auto leftOf = [](std::uint64_t limit, std::uint64_t used) { return used >= limit ? 0 : limit - used; };
  const std::uint64_t left = std::min({leftOf(opts_.blobBytesPerWindow, myBlobs), leftOf(opts_.blobBytesPerWindow, theirBlobs),
                                       leftOf(opts_.blobBytesPerBus, busBlobs)}) / 2 / kBlobPage * kBlobPage;
  std::uint64_t blob = 0;
  if (blobAsked == 0) {
    blob = std::min(kDefaultPortBlobBytes, left);
    if (blob <= kBlobOverhead) blob = 0;  // nothing left: large messages are TooLarge on this port
    if (blob < kDefaultPortBlobBytes) {
      log_(LogLevel::Info, "{} to {}: blob arenas of {} bytes per direction instead of {} (what blobBytesPerWindow {} and "
           "blobBytesPerBus {} leave)", what(), t->describe(), blob, kDefaultPortBlobBytes, opts_.blobBytesPerWindow,
           opts_.blobBytesPerBus);
    }
  } else {
    if (blobAsked > kMaxPortBlobBytes) {
      return refuse(makeError(ErrorCode::InvalidArgument, fmt::format("{}: blob arenas of {} bytes asked, at most {}",
                                                                      what(), blobAsked, kMaxPortBlobBytes)), t);
    }
    blob = (blobAsked + kBlobPage - 1) / kBlobPage * kBlobPage;
    if (blob > left) {
      return refuse(makeError(ErrorCode::TooLarge,
                              fmt::format("{} to {}: blob arenas of {} bytes per direction asked, {} left within the "
                                          "limits (SupervisorOptions::blobBytesPerWindow {}, blobBytesPerBus {})",
                                          what(), t->describe(), blob, left, opts_.blobBytesPerWindow,
                                          opts_.blobBytesPerBus)), t);
    }
  }
  const std::uint64_t id = nextPortId_++;
  // The window segment's layout and code serve (wire/handshake): the opener's "inbox" and
  // "outbox" are the port's two directions; the acceptor sees them swapped.
  auto seg = createWindowSegment(opts_.bus, static_cast<std::uint32_t>(id), ring, ring, opts_.maxRecordBytes, blob);
  if (!seg) return refuse(makeError(seg.code(), what() + ": " + seg.error().message), t);
  PortLink p;
  p.id = id;
  p.opener = w.id;
  p.acceptor = t->id;
  p.openerRole = w.role;
  p.acceptorRole = t->role;
  p.channel = h.channel;
  p.openerReq = h.requestId;
  std::int64_t timeoutMs = 0;
  p.deadline = deadlineFor(h, monotonicNowNs(), timeoutMs);
  p.seg = std::move(*seg);
  // The sealed memfd before the frame that names it (the window's watchdog files it by id).
  if (auto s = sendControl(t->sock.get(), ControlType::PortFd, id, nullptr, p.seg.segment->fd()); !s) {
    return refuse(makeError(s.code(), fmt::format("{} to {}: {}", what(), t->describe(), s.error().message)), t);
  }
  FrameHeader offer = frameHeader(FrameKind::PortOffer, h.channel);
  offer.requestId = id;
  offer.source = w.id;
  offer.role = w.roleId;
  offer.target = t->id;
  auto r = writeToWindow(*t, [&] {
    return writeFrame(t->inbox, offer, [&](Builder& b) { fillWelcome(b, opts_.bus, w.id, w.role, p.seg, true, id); },
                      1024);
  });
  if (!r) {
    return refuse(makeError(r.code(), fmt::format("{} to {}: {}", what(), t->describe(), r.error().message)), t);
  }
  log_(LogLevel::Debug, "port {}: offered to {}", id, t->describe());
  ports_.emplace(id, std::move(p));
}

void Router::onPortAccept(Conn& w, const FrameHeader& h) {
  auto it = ports_.find(h.requestId);
  if (it == ports_.end() || it->second.accepted || it->second.acceptor != w.id) return;  // closed meanwhile
  PortLink& p = it->second;
  Conn* opener = registry_.live(p.opener);
  if (opener == nullptr) return closePort(p.id, kPortOpenerGone, std::nullopt);
  if (monotonicNowNs() >= p.deadline) {
    // The opener has given up (or is about to): the port is not handed over half-way.
    return closePort(p.id, kPortOpenTimedOut,
                     makeError(ErrorCode::Timeout, fmt::format("open port on '{}' to {} timed out",
                                                               registry_.nameOf(p.channel, p.opener), w.describe())));
  }
  FrameHeader reply = frameHeader(FrameKind::Reply, p.channel);
  reply.requestId = p.openerReq;
  reply.source = w.id;
  reply.role = w.roleId;
  Result<void> r = sendControl(opener->sock.get(), ControlType::PortFd, p.id, nullptr, p.seg.segment->fd());
  if (r) {
    r = writeToWindow(*opener, [&] {
      return writeFrame(opener->inbox, reply, [&](Builder& b) { fillWelcome(b, opts_.bus, w.id, w.role, p.seg, false, p.id); },
                        1024);
    });
  }
  if (!r) {
    log_(LogLevel::Warn, "port {}: cannot hand it to {}: {}", p.id, opener->describe(), r.error().message);
    return closePort(p.id, kPortOpenerGone, std::nullopt);
  }
  p.accepted = true;
  p.seg.segment->closeFd();  // both ends have their own
  log_(LogLevel::Debug, "port {}: {} ↔ {}", p.id, opener->describe(), w.describe());
  if (tracing()) record(portEvent(TraceKind::PortOpen, p, ErrorCode::Ok, ""));
}

void Router::onPortReject(Conn& w, const FrameView& f) {
  auto it = ports_.find(f.header.requestId);
  if (it == ports_.end() || it->second.accepted || it->second.acceptor != w.id) return;
  InPlaceMessage m;
  Error e = m.parse(f.payload, f.payloadBytes) ? decodeError(f.header, m)
                                               : Error{errorCodeFromWire(f.header.status), "refused"};
  closePort(it->first, kPortClosedByAcceptor, std::move(e));
}

void Router::onPortClose(Conn& w, const FrameHeader& h) {
  auto it = ports_.find(h.requestId);
  if (it == ports_.end() || (it->second.opener != w.id && it->second.acceptor != w.id)) return;
  const bool byOpener = it->second.opener == w.id;
  closePort(it->first, byOpener ? kPortClosedByOpener : kPortClosedByAcceptor,
            makeError(ErrorCode::TargetGone, fmt::format("open port on '{}' to {}: it closed the port before taking it",
                                                         registry_.nameOf(it->second.channel, it->second.opener),
                                                         w.describe())));
}

void Router::closePort(std::uint64_t id, std::uint32_t reason, const std::optional<Error>& openerError,
                       std::string_view detail) {
  auto it = ports_.find(id);
  if (it == ports_.end()) return;
  PortLink p = std::move(it->second);
  ports_.erase(it);
  if (p.route) {  // grantRoute set routeStats
    // What its caller counted stays in the stats (docs/architecture.md §19), and so does what it
    // counts from now on for its calls in flight, which fail at its end after this close.
    retiredRoutes_.push_back(RetiredRoute{p.opener, p.seg.segment, p.routeStats, p.slotChannels});
    if (retiredRoutes_.size() > kRetiredRoutes) {
      addRouteCounts(*retiredRoutes_.front().table, retiredRoutes_.front().slotChannels, routeFolded_);
      retiredRoutes_.pop_front();
    }
    if (auto r = routePorts_.find({p.opener, p.acceptor}); r != routePorts_.end() && r->second == id) routePorts_.erase(r);
  }
  std::uint32_t expected = kPortOpen;
  // SYNC POINT "port close" (window/port.cpp): release publishes the reason to both ends' acquire
  // loads; the first closer's reason stays. The acquire half reads the reason of an end that
  // closed first, which the trace reports: a PortClose may come from the peer that saw the word
  // (before the closer's own), and a corrupt ring is known only to the end that found it. The
  // two ends share the word, so either could misname the other: it is their word, not the
  // router's (a death or a revoke the router sees itself sets the word first).
  const bool first = closeWord(p.seg.segment->base())
                         .compare_exchange_strong(expected, reason, std::memory_order_acq_rel, std::memory_order_acquire);
  if (!first && expected >= kPortClosedByOpener && expected <= kPortOpenTimedOut) reason = expected;
  // Every word either end may park on; wakeAll's release increment orders the close word first.
  for (RingControl* c : {p.seg.inbox.control(), p.seg.outbox.control()}) {
    wakeAll(c->dataReady);
    wakeAll(c->spaceReady);
  }
  log_(LogLevel::Debug, "port {} closed: {}", id, portEndText(reason));
  // A direct route's port is the router's own path for calls the trace shows as such (§19): its
  // opening and closing are not events of the application's.
  if (tracing() && !p.route) {
    if (p.accepted) {
      std::string why = portEndText(reason);
      if (!detail.empty()) why += fmt::format(" ({})", detail);
      record(portEvent(TraceKind::PortClose, p, portEndStatus(reason), std::move(why)));
    } else {
      const ErrorCode code = openerError ? openerError->code
                             : reason == kPortOpenTimedOut ? ErrorCode::Timeout
                                                           : ErrorCode::TargetGone;
      record(portEvent(TraceKind::PortOpen, p, code, openerError ? openerError->message : portEndText(reason)));
    }
  }
  if (p.accepted) {
    recentPorts_.push_back(static_cast<const PortEnds&>(p));
    if (recentPorts_.size() > kRecentPorts) recentPorts_.pop_front();
  }
  if (p.accepted || !openerError) return;
  Conn* opener = registry_.live(p.opener);
  if (opener == nullptr) return;
  FrameHeader req{};
  req.channel = p.channel;
  req.requestId = p.openerReq;
  replyError(*opener, req, *openerError, false);
}

void Router::closePortsOf(const Conn& c) {
  std::vector<std::uint64_t> ids;
  for (auto& [id, p] : ports_) {
    if (p.opener == c.id || p.acceptor == c.id) ids.push_back(id);
  }
  for (auto id : ids) {
    const bool opener = ports_.at(id).opener == c.id;
    closePort(id, opener ? kPortOpenerGone : kPortAcceptorGone,
              makeError(ErrorCode::TargetGone, fmt::format("open port on '{}' to {}: the target {} before taking it",
                                                           registry_.nameOf(ports_.at(id).channel), c.describe(),
                                                           c.bad ? "was disconnected" : "closed")),
              c.doomed);
  }
  foldRetiredRoutes(c.id);  // it counts on them no more
}

std::vector<PortInfo> Router::ports() {
  std::lock_guard lk(mu_);
  return portsLocked();
}

std::vector<PortInfo> Router::portsLocked() {
  expirePortOffers();
  std::vector<PortInfo> out;
  out.reserve(ports_.size());
  for (auto& [id, p] : ports_) {
    out.push_back(PortInfo{id, p.opener, p.acceptor, registry_.nameOf(p.channel), p.accepted, p.route});
  }
  return out;
}

Result<void> Router::revokePort(std::uint64_t id) {
  std::lock_guard lk(mu_);
  if (ports_.count(id) == 0) return makeError(ErrorCode::NoTarget, fmt::format("no port {}", id));
  closePort(id, kPortRevoked, makeError(ErrorCode::TargetGone, fmt::format("port {} was revoked by the supervisor", id)));
  return {};
}

// ---- the trace of ports (docs/architecture.md §14 "Ports")

TraceEvent Router::portEvent(TraceKind kind, const PortEnds& p, ErrorCode status, std::string error) {
  TraceEvent e;
  e.kind = kind;
  e.startNs = e.endNs = monotonicNowNs();
  e.portId = p.id;
  e.channelId = p.channel;
  e.channel = registry_.statName(p.channel);
  e.sourceId = p.opener;
  e.sourceRole = p.openerRole;
  e.targetId = p.acceptor;
  e.targetRole = p.acceptorRole;
  e.status = status;
  e.error = std::move(error);
  return e;
}

void Router::tracePortRefused(const Conn& w, const FrameHeader& h, const Conn* t, const Error& e) {
  if (!tracing()) return;
  PortEnds ends;
  ends.opener = w.id;
  ends.openerRole = w.role;
  ends.channel = h.channel;
  if (t != nullptr) {
    ends.acceptor = t->id;
    ends.acceptorRole = t->role;
  } else if (h.target == kTargetByRole) {
    if (const std::string* role = registry_.roleName(h.role)) ends.acceptorRole = *role;
  } else if (h.target != kTargetMain) {
    ends.acceptor = h.target;  // the id asked for (no live window has it)
  }
  TraceEvent ev = portEvent(TraceKind::PortOpen, ends, e.code, e.message);
  ev.requestId = h.requestId;
  record(ev);
}

const Router::PortEnds* Router::portOf(std::uint64_t id, std::uint32_t windowId) const {
  const PortEnds* p = nullptr;
  if (auto it = ports_.find(id); it != ports_.end()) {
    p = &it->second;
  } else {
    for (const PortEnds& r : recentPorts_) {
      if (r.id == id) p = &r;
    }
  }
  return p != nullptr && (p->opener == windowId || p->acceptor == windowId) ? p : nullptr;
}

void Router::onPortTrace(Conn& w, const FrameView& f) {
  if (auto v = validatePayload(f.payload, f.payloadBytes); !v) return blame(w, f.header, "port trace", v.error());
  if (!tracing()) return;  // the last inspector left since the window looked at its trace word
  InPlaceMessage m;
  if (auto r = m.parse(f.payload, f.payloadBytes); !r || m.empty()) return doom(w, "malformed port trace frame", true);
  std::size_t dropped = 0;
  std::string why;
  try {
    for (auto r : m.reader().getRoot<schema::PortTrace>().getRecords()) {
      const PortEnds* p = portOf(r.getPortId(), w.id);
      const auto kind = static_cast<TraceKind>(r.getKind());
      if (p == nullptr || (kind != TraceKind::Invoke && kind != TraceKind::Send)) {
        ++dropped;
        why = p == nullptr ? fmt::format("port {} is not this window's", r.getPortId())
                           : fmt::format("kind {} is neither invoke nor send", r.getKind());
        continue;
      }
      // The window's own figures (its clock, ids, sizes, outcome) are its word about its own
      // call; who it talked to is the router's (the peer of the port it holds).
      const bool opener = p->opener == w.id;
      PortEnds ends = *p;
      if (!opener) {
        std::swap(ends.opener, ends.acceptor);
        std::swap(ends.openerRole, ends.acceptorRole);
      }
      ends.channel = r.getChannelId();
      const std::uint32_t status = r.getStatus();
      TraceEvent e = portEvent(kind, ends, status == 0 ? ErrorCode::Ok : errorCodeFromWire(status),
                               std::string(r.getError().cStr()).substr(0, kTraceErrorMax));
      if (e.channel.starts_with("#")) {
        // A port's ends intern no names: the window's is shown when it is the id's own (its hash).
        const std::string_view name(r.getChannel().cStr(), r.getChannel().size());
        if (!name.empty() && nameId(name) == e.channelId) e.channel = std::string(name);
      }
      e.startNs = r.getStartNs();
      e.endNs = std::max(r.getEndNs(), e.startNs);
      e.requestId = kind == TraceKind::Invoke ? r.getRequestId() : 0;
      e.traceId = r.getTraceId();
      e.requestBytes = r.getRequestBytes();
      e.replyBytes = kind == TraceKind::Invoke ? r.getReplyBytes() : 0;
      record(e);
    }
  } catch (const kj::Exception& e) {
    return doom(w, fmt::format("malformed port trace frame: {}", e.getDescription().cStr()), true);
  }
  if (dropped != 0) log_(LogLevel::Warn, "{}: dropped {} port trace records: {}", w.describe(), dropped, why);
}

}  // namespace shmbus::detail
