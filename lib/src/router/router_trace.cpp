// The router's trace: inspectors attach over the control socket and get the trace ring's memfd;
// while one is attached, every message and call the router routes or hands to main is recorded
// as a TraceEvent (docs/architecture.md §14).
#include <fmt/format.h>

#include "router/router.hpp"
#include "router/router_internal.hpp"
#include "trace/trace_event.hpp"
#include "wire/handshake.hpp"

namespace shmbus::detail {

void Router::onInspect(Conn& c) {
  if (c.state != Conn::State::AwaitHello || c.spawned) return doom(c, "an inspect request from a window", true);
  if (!trace_) {
    auto t = TraceProducer::create(opts_.traceRingBytes);
    if (!t) {
      sendWelcomeError(c.sock.get(), t.error());
      return doom(c, "no trace ring: " + t.error().message, false);
    }
    trace_ = std::move(*t);
  }
  if (auto r = sendControl(c.sock.get(), ControlType::TraceRing, trace_->mappedBytes(), nullptr, trace_->fd()); !r) {
    return doom(c, r.error().message, false);
  }
  c.state = Conn::State::Inspector;
  c.role = "inspector";
  ++inspectors_;
  log_(LogLevel::Info, "inspector {} attached (pid {}); {} attached", c.id, c.pid, inspectors_);
}

void Router::record(TraceEvent& e) {
  encodeTraceEvent(e, traceBuf_);
  trace_->write(traceBuf_);
}

void Router::traceCall(const Route& r, TraceKind kind, ErrorCode status, std::string_view error,
                       std::uint32_t replyBytes) {
  if (!tracing()) return;
  TraceEvent e;
  e.kind = kind;
  e.startNs = r.start;
  e.endNs = monotonicNowNs();
  e.requestId = r.callerReq;
  e.traceId = r.traceId;
  e.channelId = r.channel;
  e.channel = registry_.statName(r.channel);
  e.sourceId = r.callerId;
  e.sourceRole = r.callerId == 0 ? std::string(kMainRole) : registry_.roleOf(r.callerId);
  if (e.sourceRole.empty() && registry_.roleName(r.callerRole)) e.sourceRole = *registry_.roleName(r.callerRole);
  e.targetId = r.targetId;
  e.targetRole = r.targetId == 0 ? std::string(kMainRole) : registry_.roleOf(r.targetId);
  if (e.targetRole.empty() && registry_.roleName(r.targetRole)) e.targetRole = *registry_.roleName(r.targetRole);
  e.status = status;
  e.error = std::string(error);
  e.requestBytes = r.requestBytes;
  e.replyBytes = replyBytes;
  record(e);
}

void Router::traceMessage(TraceKind kind, std::uint32_t sourceId, const FrameHeader& h, std::uint32_t targetId,
                          std::uint32_t bytes, const Error* err) {
  if (!tracing()) return;
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
