// The router's side of the main process's API: registry queries, pushes, broadcasts, main's own
// calls, policy, statistics (docs/architecture.md §2, §7).
#include "router/router.hpp"

#include <capnp/message.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "bus.capnp.h"
#include "call/callbacks.hpp"
#include "common/validate.hpp"
#include "endpoint/handler_run.hpp"
#include "protocol/frame_io.hpp"
#include "router/router_internal.hpp"

namespace shmbus::detail {

std::vector<WindowInfo> Router::windows() const {
  std::lock_guard lk(mu_);
  std::vector<WindowInfo> out;
  for (auto& [id, c] : registry_.all()) {
    if (c->live()) out.push_back(c->info());
  }
  return out;
}

std::optional<WindowInfo> Router::window(std::uint32_t id) const {
  std::lock_guard lk(mu_);
  auto it = registry_.all().find(id);
  if (it == registry_.all().end() || !it->second->live()) return std::nullopt;
  const Conn& c = *it->second;
  return c.info();
}

std::optional<WindowInfo> Router::findWindow(std::uint64_t roleId, std::uint64_t channel) const {
  std::lock_guard lk(mu_);
  for (auto& [id, c] : registry_.all()) {
    if (c->roleId != roleId || !c->live()) continue;
    if (channel != 0 && c->handled.count(channel) == 0) continue;
    return c->info();
  }
  return std::nullopt;
}

void Router::awaitRegistryChange(std::chrono::nanoseconds ns) {
  std::unique_lock lk(mu_);
  registryCv_.wait_for(lk, ns);
}

Error Router::windowBlobError(const Conn& t, Error e) const {
  if (e.code == ErrorCode::Full) {
    e.message = fmt::format("{}: the blob arena of {} holds {} bytes of earlier messages it has not released", e.message,
                            t.describe(), t.blobOut.bytesHeld());
  } else if (e.code == ErrorCode::TooLarge) {
    e.message += t.blobOut.valid() ? fmt::format(" (the blob arena of {} is {} bytes: SupervisorOptions::windowBlobBytes)",
                                                 t.describe(), t.blobOut.arenaBytes())
                                   : std::string(" (windows have no blob arena: SupervisorOptions::windowBlobBytes is 0)");
  }
  return e;
}

Result<void> Router::writeDescriptor(Conn& t, const FrameHeader& h, const BlobDescriptor& d) {
  auto w = writeFrameCopy(t.inbox, h, reinterpret_cast<const std::uint8_t*>(&d), sizeof d);
  if (!w) t.blobOut.dropLast();  // never sent: the window will not release it
  return w;
}

Result<void> Router::writeOutcomeBlob(Conn& caller, const FrameHeader& h, const BlobDescriptor& d) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(&d);
  auto w = writeOutcome(caller, [&] { return writeFrameCopy(caller.inbox, h, bytes, sizeof d); },
                        [&] { return HeldFrame{h, std::vector<std::uint8_t>(bytes, bytes + sizeof d)}; });
  if (!w) caller.blobOut.dropLast();  // neither written nor held: the window will not release it
  return w;
}

Result<void> Router::writeBuilt(Conn& t, FrameHeader h, const BuildFn& build, std::size_t hint) {
  auto r = writeFrame(t.inbox, h, build, hint);
  if (r || r.code() != ErrorCode::TooLarge) return r;
  if (!t.blobOut.valid()) return windowBlobError(t, r.error());
  auto d = tryBuildBlob(t.blobOut, build);  // the build runs again, in the arena (as a port's, §17)
  if (!d) return windowBlobError(t, d.error());
  h.flags |= kFlagBlob;
  return writeDescriptor(t, h, *d);
}

Result<void> Router::writeCopy(Conn& t, FrameHeader h, const std::uint8_t* payload, std::size_t bytes) {
  auto blob = blobIfLarge(t, h, bytes, [&] { return tryCopyBlob(t.blobOut, payload, bytes); });
  if (!blob) return blob.error();
  return *blob ? writeDescriptor(t, h, **blob) : writeFrameCopy(t.inbox, h, payload, bytes);
}

Result<void> Router::send(const Target& target, const Channel& channel, const BuildFn& build) {
  std::lock_guard lk(mu_);
  if (stopping()) return makeError(ErrorCode::BusClosed, "the supervisor stopped");
  Conn* t = registry_.resolve(target);
  if (t == nullptr) {
    return makeError(ErrorCode::NoTarget, fmt::format("send '{}': no live window with {}", channel.name, target.describe()));
  }
  FrameHeader h = frameHeader(FrameKind::Send, channel.id);
  h.schemaId = channel.schemaId;
  h.target = t->id;
  h.role = nameId(kMainRole);
  mainCallbacks_->rememberName(channel.id, channel.name);
  auto what = [&] { return fmt::format("send '{}' from main to {}", channel.name, t->describe()); };
  auto e = denied(PolicyAction::Send, channel.id, h.role, kMainRole, 0, what);
  if (!e) e = denied(PolicyAction::Receive, channel.id, t->roleId, t->role, 0, what);
  if (e) {
    counters_.error(channel.id, e->code);
    traceMessage(TraceKind::Push, 0, h, t->id, 0, &*e);
    return std::move(*e);
  }
  ++counters_.at(channel.id).messages;
  auto r = writeToWindow(*t, [&] { return writeBuilt(*t, h, build); });
  traceMessage(TraceKind::Push, 0, h, t->id, 0, r ? nullptr : &r.error());
  return r;
}

Result<BroadcastReport> Router::broadcast(const Channel& channel, const BuildFn& build, const BroadcastOptions& options) {
  capnp::MallocMessageBuilder mb;
  if (build) build(mb);
  auto segs = mb.getSegmentsForOutput();
  std::lock_guard lk(mu_);
  BroadcastReport report;
  FrameHeader h = frameHeader(FrameKind::Send, channel.id);
  h.schemaId = channel.schemaId;
  h.role = nameId(kMainRole);
  mainCallbacks_->rememberName(channel.id, channel.name);
  if (auto e = denied(PolicyAction::Send, channel.id, h.role, kMainRole, 0,
                      [&] { return fmt::format("broadcast '{}' from main", channel.name); })) {
    counters_.error(channel.id, e->code);
    traceMessage(TraceKind::Broadcast, 0, h, 0, 0, &*e);
    return std::move(*e);
  }
  auto has = [](const std::vector<std::string>& v, const std::string& r) {
    return std::find(v.begin(), v.end(), r) != v.end();
  };
  for (auto& [id, c] : registry_.all()) {
    if (!c->live()) continue;
    if (!options.roles.empty() && !has(options.roles, c->role)) continue;
    if (has(options.excludeRoles, c->role)) continue;
    auto& conn = *c;  // a lambda cannot capture a structured binding before clang 16 (P1091)
    if (auto e = denied(PolicyAction::Receive, channel.id, c->roleId, c->role, 0,
                        [&] { return fmt::format("broadcast '{}' from main to {}", channel.name, conn.describe()); })) {
      counters_.error(channel.id, e->code);
      report.failed.emplace_back(c->id, std::move(*e));
      continue;
    }
    FrameHeader out = h;
    out.target = c->id;
    // Too large for the window's ring: a copy in its blob arena (each window has its own).
    auto blob = blobIfLarge(conn, out, sizeof(MessageTable) + messageBytes(segs),
                            [&] { return tryCopyBlob(conn.blobOut, segs); });
    auto r = !blob ? Result<void>(blob.error()) : writeToWindow(conn, [&] {
      return *blob ? writeDescriptor(conn, out, **blob) : writeFrameSegments(conn.inbox, out, segs);
    });
    if (r) {
      ++report.delivered;
    } else if (r.code() == ErrorCode::TooLarge && !conn.blobOut.valid()) {
      return r.error();  // too large for every window alike
    } else {
      report.failed.emplace_back(c->id, r.error());
    }
  }
  counters_.at(channel.id).messages += report.delivered;
  if (tracing()) {
    h.target = kTargetMain;
    h.role = 0;
    if (options.roles.size() == 1) {
      h.target = kTargetByRole;
      h.role = nameId(options.roles[0]);
      registry_.addName(h.role, options.roles[0]);
    }
    Error partial;
    if (!report.failed.empty()) {
      partial = Error{report.failed.front().second.code,
                      fmt::format("{} delivered, {} failed: {}", report.delivered, report.failed.size(),
                                  report.failed.front().second.message)};
    }
    traceMessage(TraceKind::Broadcast, 0, h, 0, static_cast<std::uint32_t>(messageBytes(segs)),
                 report.failed.empty() ? nullptr : &partial, PayloadView{.segments = segs});
  }
  return report;
}

void Router::invoke(const Target& target, const Channel& channel, const BuildFn& build, const CallOptions& options,
                    const std::shared_ptr<CallState>& s) {
  std::lock_guard lk(mu_);
  mainCallbacks_->rememberName(channel.id, channel.name);
  auto fail = [&](ErrorCode code, std::string m) {
    counters_.error(channel.id, code);
    if (tracing()) {
      FrameHeader th = frameHeader(FrameKind::Invoke, channel.id);
      th.target = target.role.empty() ? target.windowId : kTargetByRole;
      th.role = target.role.empty() ? 0 : nameId(target.role);
      const Error e{code, m};
      traceMessage(TraceKind::Invoke, 0, th, 0, 0, &e);
    }
    completeCall(s, makeError(code, std::move(m)));
  };
  if (stopping()) return fail(ErrorCode::BusClosed, s->what() + ": the supervisor stopped");
  Conn* t = registry_.resolve(target);
  if (t == nullptr) return fail(ErrorCode::NoTarget, s->what() + ": no live window with " + target.describe());
  auto e = denied(PolicyAction::Invoke, channel.id, nameId(kMainRole), kMainRole, 0, [&] { return s->what(); });
  if (!e) e = denied(PolicyAction::Handle, channel.id, t->roleId, t->role, 0, [&] { return s->what(); });
  if (e) return fail(ErrorCode::Denied, std::move(e->message));
  if (t->handled.count(channel.id) == 0) return fail(ErrorCode::NoHandler, s->what() + ": no handler");
  ++counters_.at(channel.id).calls;
  Route p;
  p.targetId = t->id;
  p.channel = channel.id;
  p.start = monotonicNowNs();
  p.targetRole = t->roleId;
  p.traceId = traceIdFor(currentTraceId());
  FrameHeader h = frameHeader(FrameKind::Invoke, channel.id);
  h.schemaId = channel.schemaId;
  h.deadlineNs = options.timeout.count() > 0 ? deadlineAfter(p.start, options.timeout) : 0;
  p.deadline = deadlineFor(h, p.start, p.timeoutMs);
  // The waiter's own give-up time, in case no thread dispatches (Call::get()).
  s->deadlineNs = p.deadline + kLocalGraceNs;
  s->timeoutMs = p.timeoutMs;  // for the give-up's message
  p.state = s;
  h.deadlineNs = p.deadline;
  h.target = t->id;
  h.role = nameId(kMainRole);
  h.traceId = p.traceId;
  const std::uint64_t rid = routes_.add(std::move(p));
  s->requestId = rid;
  h.requestId = rid;
  auto r = writeToWindow(*t, [&] { return writeBuilt(*t, h, build, options.sizeHint); });
  if (!r) {
    Route gone = *routes_.take(rid);
    failCaller(gone, Error{r.code(), s->what() + ": " + r.error().message});
  }
}

void Router::cancelMainCall(const std::shared_ptr<CallState>& s) {
  {
    std::lock_guard lk(mu_);
    auto gone = routes_.takeIf([&](const Route& r) { return r.state == s; });
    for (const Route& r : gone) {
      sendCancel(r.targetId, r.routeId);
      counters_.error(r.channel, ErrorCode::Cancelled);
      traceCall(r, TraceKind::Cancel, ErrorCode::Cancelled, "cancelled by the caller", 0);
    }
  }
  completeCall(s, makeError(ErrorCode::Cancelled, s->what() + ": cancelled by the caller"));
}

void Router::setChannelTimeout(const Channel& channel, std::chrono::milliseconds timeout) {
  std::lock_guard lk(mu_);
  channelTimeoutMs_[channel.id] = timeout.count();
  mainCallbacks_->rememberName(channel.id, channel.name);
}

RouterStats Router::stats() const {
  std::lock_guard lk(mu_);
  return statsLocked();
}

RouterStats Router::statsLocked() const {
  RouterStats s;
  const std::int64_t now = monotonicNowNs();
  routes_.forEach([&](const Route& p) {
    s.pending.push_back({registry_.statName(p.channel), p.callerId, registry_.roleOf(p.callerId), p.targetId,
                         registry_.roleOf(p.targetId), static_cast<double>(now - p.start) / 1e6});
  });
  // Direct routes' counts (docs/architecture.md §19): closed ports' folded, open ports' live.
  std::map<std::uint64_t, RouterStats::ChannelStats> direct = routeFolded_;
  for (auto& [id, p] : ports_) {
    if (p.route) addRouteCounts(*p.routeStats, p.slotChannels, direct);
  }
  for (const RetiredRoute& r : retiredRoutes_) addRouteCounts(*r.table, r.slotChannels, direct);
  s.retiredRoutes = retiredRoutes_.size();
  for (auto& [ch, c] : counters_.channels()) {
    RouterStats::ChannelStats cs;
    cs.channel = registry_.statName(ch);
    cs.calls = c.calls;
    cs.messages = c.messages;
    cs.lateReplies = c.late;
    for (auto& [code, n] : c.errors) cs.errors[errorCodeName(code)] = n;
    if (auto d = direct.find(ch); d != direct.end()) {
      cs.directCalls = d->second.directCalls;
      cs.directMessages = d->second.directMessages;
      cs.calls += cs.directCalls;
      cs.messages += cs.directMessages;
      for (auto& [code, n] : d->second.errors) cs.errors[code] += n;
    }
    if (!c.latencyMs.empty()) {
      std::vector<double> v = c.latencyMs;
      std::sort(v.begin(), v.end());
      cs.p50Ms = v[(v.size() - 1) / 2];
      cs.p99Ms = v[std::min(v.size() - 1, static_cast<std::size_t>(static_cast<double>(v.size()) * 0.99))];
    }
    s.channels.push_back(std::move(cs));
  }
  std::sort(s.channels.begin(), s.channels.end(), [](auto& a, auto& b) { return a.channel < b.channel; });
  s.lateReplies = counters_.lateReplies;
  s.spoofedReplies = counters_.spoofedReplies;
  s.undeliverable = counters_.undeliverable;
  s.badMessages = counters_.badMessages;
  s.unansweredCalls = counters_.unanswered;
  s.handshakeTimeouts = counters_.handshakeTimeouts;
  s.refusedWindows = counters_.refusedWindows;
  s.overPendingLimit = counters_.overPendingLimit;
  s.policyDenials = counters_.policyDenials;
  return s;
}

}  // namespace shmbus::detail
