// The router's trace: inspectors attach over the control socket and get the trace ring's memfd;
// while one is attached, every message and call the router routes or hands to main is recorded
// as a TraceEvent (docs/architecture.md §14).
#include <capnp/message.h>
#include <fmt/format.h>
#include <unistd.h>

#include <unordered_map>

#include "bus.capnp.h"

#include "router/router.hpp"
#include "control/control_protocol.hpp"
#include "router/router_internal.hpp"
#include "trace/trace_event.hpp"
#include "wire/handshake.hpp"

namespace shmbus::detail {

void Router::onInspect(Conn& c, std::uint64_t flags) {
  if (c.state != Conn::State::AwaitHello || c.spawned) return doom(c, "an inspect request from a window", true);
  auto ring = [&](std::optional<TraceProducer>& r, const char* what) {
    if (r) return true;
    auto t = TraceProducer::create(opts_.traceRingBytes);
    if (!t) {
      sendWelcomeError(c.sock.get(), t.error());
      doom(c, fmt::format("no {}: {}", what, t.error().message), false);
      return false;
    }
    r = std::move(*t);
    return true;
  };
  if (!ring(trace_, "trace ring")) return;
  // Payloads only to the supervisor's own user (an allowedUids inspector sees events only), and
  // only while the policy says so: the payload ring's memfd is the whole permission.
  const bool wants = (flags & kInspectPayloads) != 0;
  const bool grant = wants && policy_.policy().inspectPayloads && c.uid == ::geteuid();
  if (wants && !grant) {
    log_(LogLevel::Info, "inspector {} (pid {}, uid {}) gets no payloads: {}", c.id, c.pid, static_cast<long>(c.uid),
         c.uid != ::geteuid() ? "another uid" : "the policy does not set inspectPayloads");
  }
  if (grant && !ring(payloadRing_, "payload ring")) return;
  if (auto r = sendControl(c.sock.get(), ControlType::TraceRing, trace_->mappedBytes(), nullptr, trace_->fd(),
                           grant ? payloadRing_->fd() : -1);
      !r) {
    return doom(c, r.error().message, false);
  }
  c.state = Conn::State::Inspector;
  c.role = "inspector";
  if (++inspectors_ == 1) setTraceWords();
  c.payloadReader = grant;
  if (grant) ++payloadReaders_;
  log_(LogLevel::Info, "inspector {} attached (pid {}{}); {} attached", c.id, c.pid, grant ? ", payloads" : "",
       inspectors_);
}

void Router::setTraceWords() {
  const std::uint32_t on = tracing() ? 1 : 0;
  for (auto& [id, w] : registry_.all()) {
    // relaxed: a hint to the window's port ends, publishing nothing else: their records travel
    // on the outbox (SYNC POINT "record"), and onPortTrace checks tracing() itself. A call that
    // ends while the word flips may or may not be recorded.
    if (w->seg) traceWord(w->seg->base()).store(on, std::memory_order_relaxed);
  }
}

void Router::setPayloadCapture(PayloadCapture capture) {
  std::lock_guard lk(mu_);
  capture_.set(std::move(capture));
}

bool Router::capturing(std::uint64_t channel) {
  return payloadReaders_ != 0 && capture_.maxBytes() != 0 && policy_.policy().inspectPayloads &&
         capture_.matches(channel, [&] { return registry_.statName(channel); });
}

void Router::captureIfSelected(PayloadPart part, std::uint32_t sourceId, std::uint64_t key, std::uint64_t channel,
                               const PayloadView& p) {
  if (!capturing(channel)) return;
  // A window's payload was validated before it got here; a table that no longer parses (the
  // window rewrote its ring meanwhile) is simply not captured.
  if (encodePayloadRecord(part, sourceId, key, channel, p, capture_.maxBytes(), payloadBuf_)) {
    payloadRing_->write(payloadBuf_);
  }
}

void Router::onSnapshot(Conn& c) {
  if (c.state != Conn::State::Inspector) return doom(c, "a snapshot request before attaching as an inspector", true);
  constexpr std::size_t kMaxRows = 256;  // keeps the answer within one control packet
  const RouterStats stats = statsLocked();
  capnp::MallocMessageBuilder mb;
  auto snap = mb.initRoot<schema::BusSnapshot>();
  bool truncated = false;
  auto bounded = [&](std::size_t n) {
    truncated = truncated || n > kMaxRows;
    return static_cast<unsigned>(std::min(n, kMaxRows));
  };
  std::vector<const Conn*> live;
  for (auto& [id, w] : registry_.all()) {
    if (w->state == Conn::State::Live) live.push_back(w.get());
  }
  std::unordered_map<std::uint32_t, std::uint32_t> callsBy;  // calls in flight by caller window
  routes_.forEach([&](const Route& r) { ++callsBy[r.callerId]; });
  auto windows = snap.initWindows(bounded(live.size()));
  for (unsigned i = 0; i < windows.size(); ++i) {
    const Conn& w = *live[i];
    auto row = windows[i];
    row.setId(w.id);
    row.setRole(w.role);
    row.setPid(w.pid);
    row.setSpawned(w.spawned);
    row.setAdmission(static_cast<std::uint8_t>(w.admission));
    row.setUid(static_cast<std::uint32_t>(w.uid));
    // relaxed: a display figure; the window may move head at any time (and may scribble it).
    const std::uint64_t head = w.inbox.control()->head.load(std::memory_order_relaxed);
    const std::uint64_t tail = w.inbox.control()->tail.load(std::memory_order_relaxed);
    row.setInboxUsed(tail >= head ? tail - head : 0);
    row.setInboxBytes(w.inbox.geometry().capacity);
    const auto calls = callsBy.find(w.id);
    row.setPendingCalls(calls != callsBy.end() ? calls->second : 0);
  }
  const std::vector<PortInfo> ports = portsLocked();
  auto portRows = snap.initPorts(bounded(ports.size()));
  for (unsigned i = 0; i < portRows.size(); ++i) {
    auto row = portRows[i];
    row.setId(ports[i].id);
    row.setOpener(ports[i].opener);
    row.setAcceptor(ports[i].acceptor);
    row.setChannel(ports[i].channel);
    row.setAccepted(ports[i].accepted);
    row.setRoute(ports[i].route);
  }
  auto channels = snap.initChannels(bounded(stats.channels.size()));
  for (unsigned i = 0; i < channels.size(); ++i) {
    const auto& cs = stats.channels[i];
    auto row = channels[i];
    row.setName(cs.channel);
    row.setCalls(cs.calls);
    row.setMessages(cs.messages);
    row.setLate(cs.lateReplies);
    row.setP50Ms(cs.p50Ms);
    row.setP99Ms(cs.p99Ms);
    auto errs = row.initErrors(static_cast<unsigned>(cs.errors.size()));
    unsigned k = 0;
    for (const auto& [code, n] : cs.errors) {
      errs[k].setCode(code);
      errs[k++].setCount(n);
    }
  }
  auto pending = snap.initPending(bounded(stats.pending.size()));
  for (unsigned i = 0; i < pending.size(); ++i) {
    const auto& p = stats.pending[i];
    auto row = pending[i];
    row.setChannel(p.channel);
    row.setSourceId(p.sourceId);
    row.setSourceRole(p.sourceRole);
    row.setTargetId(p.targetId);
    row.setTargetRole(p.targetRole);
    row.setWaitingMs(p.waitingMs);
  }
  snap.setLateReplies(stats.lateReplies);
  snap.setSpoofedReplies(stats.spoofedReplies);
  snap.setUndeliverable(stats.undeliverable);
  snap.setBadMessages(stats.badMessages);
  snap.setUnansweredCalls(stats.unansweredCalls);
  snap.setInspectors(inspectors_);
  snap.setTruncated(truncated);
  if (auto r = sendControl(c.sock.get(), ControlType::Snapshot, 0, &mb); !r) doom(c, r.error().message, false);
}

void Router::record(const TraceEvent& e) {
  encodeTraceEvent(e, traceBuf_);
  trace_->write(traceBuf_);
}

void Router::traceCall(const Route& r, TraceKind kind, ErrorCode status, std::string_view error,
                       std::uint32_t replyBytes, PayloadView reply) {
  if (!tracing()) return;
  if (reply.any()) capturePayload(PayloadPart::Reply, r.callerId, trace_->written() + 1, r.channel, reply);
  TraceEvent e;
  e.kind = kind;
  e.startNs = r.start;
  e.endNs = monotonicNowNs();
  e.requestId = r.callerReq;
  e.traceId = r.traceId;
  e.channelId = r.channel;
  e.channel = registry_.statName(r.channel);
  // By the role ids the route kept: the windows may be gone by now (TargetGone, a caller left).
  auto roleOf = [&](std::uint32_t id, std::uint64_t roleId) {
    if (id == 0) return std::string(kMainRole);
    const std::string* name = registry_.roleName(roleId);
    return name != nullptr ? *name : std::string();
  };
  e.sourceId = r.callerId;
  e.sourceRole = roleOf(r.callerId, r.callerRole);
  e.targetId = r.targetId;
  e.targetRole = roleOf(r.targetId, r.targetRole);
  e.status = status;
  e.error = std::string(error);
  e.requestBytes = r.requestBytes;
  e.replyBytes = replyBytes;
  record(e);
}

void Router::traceMessage(TraceKind kind, std::uint32_t sourceId, const FrameHeader& h, std::uint32_t targetId,
                          std::uint32_t bytes, const Error* err, PayloadView payload) {
  if (!tracing()) return;
  if (payload.any()) capturePayload(PayloadPart::Message, sourceId, trace_->written() + 1, h.channel, payload);
  TraceEvent e;
  e.kind = kind;
  e.startNs = e.endNs = monotonicNowNs();
  e.requestId = kind == TraceKind::Invoke ? h.requestId : 0;
  e.traceId = h.traceId;
  e.channelId = h.channel;
  e.channel = registry_.statName(h.channel);
  e.sourceId = sourceId;
  e.sourceRole = sourceId == 0 ? std::string(kMainRole) : registry_.roleOf(sourceId);
  e.targetId = targetId;
  if (targetId != 0) {
    e.targetRole = registry_.roleOf(targetId);
  } else if (h.target == kTargetByRole) {
    if (const std::string* role = registry_.roleName(h.role)) e.targetRole = *role;
  } else if (h.target == kTargetMain && kind != TraceKind::Broadcast) {
    e.targetRole = kMainRole;
  }
  if (err != nullptr) {
    e.status = err->code;
    e.error = err->message;
  }
  e.requestBytes = bytes;
  record(e);
}

void Router::traceWindow(TraceKind kind, const Conn& c, const std::string& reason) {
  if (!tracing()) return;
  TraceEvent e;
  e.kind = kind;
  e.startNs = e.endNs = monotonicNowNs();
  e.sourceId = c.id;
  e.sourceRole = c.role;
  e.pid = static_cast<std::uint32_t>(c.pid);
  e.error = reason;
  record(e);
}

}  // namespace shmbus::detail
