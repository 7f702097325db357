// The router's frame handling: what windows write into their outboxes (sends, invokes, replies,
// cancels, interns), calls to main-process handlers and their outcomes, deadlines
// (docs/architecture.md §2, §3, §10, §11).
#include "router/router.hpp"

#include <capnp/message.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "bus.capnp.h"
#include "call/callbacks.hpp"
#include "common/validate.hpp"
#include "protocol/frame_io.hpp"
#include "router/router_internal.hpp"
#include "wire/cancel_board.hpp"

namespace shmbus::detail {

namespace {
constexpr std::size_t kMaxOwnNames = 1u << 12;  // per window (Conn::ownNames)

/// A reply to a call of the main process read in place from the replier's blob arena, which it
/// keeps (and the record unreleased) for as long as the reply's Message lives (§17).
struct BlobMessage final : HeldMessage {
  std::shared_ptr<HeldBlob> blob;
};

Result<std::shared_ptr<HeldMessage>> heldInPlace(const FrameView& f, std::shared_ptr<HeldBlob> blob) {
  auto m = std::make_shared<BlobMessage>();
  if (auto r = m->msg.parse(f.payload, f.payloadBytes); !r) return r.error();
  m->blob = std::move(blob);
  return std::shared_ptr<HeldMessage>(std::move(m));
}
}  // namespace

void Router::expireDeadlines() {
  for (const Route& r : routes_.takeExpired(monotonicNowNs())) {
    failCaller(r, timeoutError(r));
    sendCancel(r.targetId, r.routeId);
  }
}

void Router::failCaller(const Route& r, Error e) {
  counters_.error(r.channel, e.code);
  traceCall(r, TraceKind::Invoke, e.code, e.message, 0);
  if (r.state) {
    completeCall(r.state, std::move(e));
    return;
  }
  Conn* caller = registry_.live(r.callerId);
  if (caller == nullptr) return;
  FrameHeader h{};
  h.channel = r.channel;
  h.requestId = r.callerReq;
  auto w = writeOutcome(*caller, [&] { return writeErrorFrame(caller->inbox, h, e); },
                        [&] { return heldErrorFrame(h, e, caller->inbox.geometry().maxRecord); });
  // The caller's own fallback timer ends the call if the error can be neither written nor held.
  if (!w) log_(LogLevel::Warn, "could not deliver '{}' to window {}: {}", e.toString(), r.callerId, w.error().message);
}

void Router::sendCancel(std::uint32_t targetId, std::uint64_t routeId) {
  if (targetId == kTargetMain) return main_.cancelMain(routeId);
  Conn* t = registry_.find(targetId);
  if (t == nullptr || t->state != Conn::State::Live) return;
  // The board first (a handler already running sees it at once), then the frame behind the
  // Invoke on the same ring (wire/cancel_board.hpp).
  t->cancels->post(routeId);
  FrameHeader h = frameHeader(FrameKind::Cancel, 0);
  h.requestId = routeId;
  (void)writeFrame(t->inbox, h, {}, 0);
}

Error Router::timeoutError(const Route& r) {
  const std::string target = r.targetId == kTargetMain ? std::string("main")
                             : registry_.live(r.targetId) ? registry_.live(r.targetId)->describe()
                                                          : fmt::format("window {}", r.targetId);
  return makeError(ErrorCode::Timeout, fmt::format("invoke '{}' to {} timed out after {} ms",
                                                   registry_.nameOf(r.channel, r.callerId), target, r.timeoutMs));
}


void Router::internRole(Conn& target, std::uint64_t roleId) {
  if (target.knownRoles.count(roleId)) return;
  const std::string* name = registry_.roleName(roleId);
  if (name == nullptr) return;
  auto r = writeFrame(target.inbox, frameHeader(FrameKind::Intern, roleId), [&](Builder& b) {
    auto i = b.initRoot<schema::Intern>();
    i.setId(roleId);
    i.setName(*name);
    i.setIsRole(true);
  }, 256, false);
  if (r) target.knownRoles.insert(roleId);
}

std::int64_t Router::deadlineFor(const FrameHeader& h, std::int64_t now, std::int64_t& timeoutMs) const {
  if (h.deadlineNs != 0) {
    // The header is the sender's (Window::Impl::invokeImpl writes its now + at most kMaxTimeout):
    // clamped, so that neither a hostile value nor the arithmetic below can overflow.
    const std::int64_t deadline = clampPeerDeadline(h.deadlineNs, now);
    // The caller's own figure when it sent one (what it waited since it called, not since the
    // frame got here); else what is left of it.
    timeoutMs = h.status != 0 ? std::min<std::int64_t>(h.status, kMaxTimeout.count())
                              : (deadline - now + 500'000) / 1'000'000;
    return deadline;
  }
  auto it = channelTimeoutMs_.find(h.channel);
  timeoutMs = it != channelTimeoutMs_.end() ? it->second : kDefaultTimeout.count();
  return deadlineAfter(now, std::chrono::milliseconds(timeoutMs));
}

void Router::replyError(Conn& w, const FrameHeader& req, Error e, bool traced) {
  counters_.error(req.channel, e.code);
  if (traced) traceMessage(TraceKind::Invoke, w.id, req, 0, 0, &e);
  FrameHeader h{};
  h.channel = req.channel;
  h.requestId = req.requestId;
  (void)writeToWindow(w, [&] { return writeErrorFrame(w.inbox, h, e); });
}

void Router::process(Conn& w, const RecordView& rec) {
  auto f = parseFrame(rec);
  if (!f) return doom(w, f.error().message, true);
  if ((f->header.flags & kFlagBlob) == 0) return processFrame(w, *f);
  if (!openBlob(w, *f)) return;
  processFrame(w, *f);
  frameBlob_.reset();  // released here unless a main job shares it
}

bool Router::openBlob(Conn& w, FrameView& f) {
  const FrameHeader& h = f.header;
  const bool message = h.kind == static_cast<std::uint16_t>(FrameKind::Send) ||
                       h.kind == static_cast<std::uint16_t>(FrameKind::Invoke) ||
                       h.kind == static_cast<std::uint16_t>(FrameKind::Reply);
  if (!message || w.blobIn == nullptr) {
    doom(w, fmt::format("a blob frame of kind {}: {}", h.kind,
                        w.blobIn == nullptr ? "the window has no blob arena"
                                            : "only a window's sends, invokes and replies travel as blobs"),
         true);
    return false;
  }
  if (f.payloadBytes != sizeof(BlobDescriptor)) {
    doom(w, fmt::format("a blob frame of {} payload bytes (a descriptor is {})", f.payloadBytes, sizeof(BlobDescriptor)),
         true);
    return false;
  }
  BlobDescriptor d;
  std::memcpy(&d, f.payload, sizeof d);  // copied before use: the window may write it meanwhile
  auto v = checkBlobDescriptor(d, w.blobIn, w.blobInBytes);
  if (!v) {
    if (h.kind == static_cast<std::uint16_t>(FrameKind::Invoke)) {
      replyError(w, h, Error{ErrorCode::InvalidMessage, fmt::format("invoke '{}' from {}: {}", registry_.nameOf(h.channel, w.id),
                                                                    w.describe(), v.error().message)});
    }
    doom(w, "blob frame: " + v.error().message, true);
    return false;
  }
  f.payload = v->message;
  f.payloadBytes = v->bytes;
  // From here on the frame is its message, wherever it lies: what the router forwards is flagged
  // again only if it goes as a blob again (blobIfLarge), into the receiver's own arena.
  f.header.flags &= static_cast<std::uint16_t>(~kFlagBlob);
  frameBlob_ = std::make_shared<HeldBlob>(v->record, reinterpret_cast<BlobControl*>(w.blobIn), w.seg);
  return true;
}

void Router::processFrame(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  switch (static_cast<FrameKind>(h.kind)) {
    case FrameKind::Intern: return onIntern(w, f);
    case FrameKind::HandlerAdd: return onHandlerAdd(w, h);
    case FrameKind::HandlerRemove: w.handled.erase(h.channel); return;
    case FrameKind::Listen: w.listens.insert(h.channel); return;
    case FrameKind::Send: return onSend(w, f);
    case FrameKind::Invoke: return onInvoke(w, f);
    case FrameKind::Reply:
    case FrameKind::Error: return onReply(w, f);
    case FrameKind::Cancel: return onCancel(w, h);
    case FrameKind::PortOpen: return onPortOpen(w, f);
    case FrameKind::PortAccept: return onPortAccept(w, h);
    case FrameKind::PortReject: return onPortReject(w, f);
    case FrameKind::PortClose: return onPortClose(w, h);
    case FrameKind::PortListen: w.portChannels.insert(h.channel); return;
    case FrameKind::PortUnlisten: w.portChannels.erase(h.channel); return;
    case FrameKind::PortOffer: return doom(w, "a PortOffer frame is not for the supervisor", true);
    case FrameKind::PortTrace: return onPortTrace(w, f);
    case FrameKind::Schema: return onSchema(w, f);
    case FrameKind::RouteFence:
    case FrameKind::RouteSync: return onRouteFence(w, h);
    case FrameKind::RouteOpen:
    case FrameKind::RouteGrant: return doom(w, "a route's RouteOpen or RouteGrant frame is not for the supervisor", true);
  }
  // Every kind above returns; parseFrame refuses numbers above kMaxFrameKind. This catches a
  // number that names no kind (a gap, should one ever be left) as bad as one above it.
  doom(w, fmt::format("frame kind {} is not for the supervisor", h.kind), true);
}

void Router::onIntern(Conn& w, const FrameView& f) {
  InPlaceMessage m;
  if (auto r = m.parse(f.payload, f.payloadBytes); !r || m.empty()) return doom(w, "malformed intern frame", true);
  try {
    auto i = m.reader().getRoot<schema::Intern>();
    std::string name = i.getName();
    // The window checked its names before it sent them (Window::Impl::internLocked): a name that
    // breaks the rule was written by something else.
    if (auto v = validateName(i.getIsRole() ? NameKind::Role : NameKind::Channel, name); !v) {
      return doom(w, "intern frame: " + v.error().message, true);
    }
    if (i.getId() != nameId(name)) {
      // Typed channel ids do not hash from their names: keep the name for this window's own
      // messages only (see Conn::ownNames), and as a stats label.
      if (!i.getIsRole()) {
        registry_.addStatLabel(i.getId(), name);
        if (w.ownNames.size() < kMaxOwnNames) w.ownNames.emplace(i.getId(), std::move(name));
      }
      return;
    }
    registry_.addName(i.getId(), std::move(name));
  } catch (const kj::Exception& e) {
    doom(w, std::string("malformed intern frame: ") + e.getDescription().cStr(), true);
  }
}

MainJob Router::jobFor(Conn& w, const FrameView& f, MainJob::Kind kind) {
  MainJob job;
  job.kind = kind;
  job.header = f.header;
  job.sourceId = w.id;
  job.sourceRole = w.role;
  job.channelName = registry_.nameOf(f.header.channel, w.id);
  job.payload = f.payload;
  job.payloadBytes = f.payloadBytes;
  job.pinnedConn = w.id;
  job.blob = frameBlob_;
  return job;
}

bool Router::deliverToMain(Conn& w, MainJob& job) {
  if (!main_.deliver(job, mayInline_)) return false;
  // Taken in place: keep the record (and the Conn) until Router::unpin, end this round.
  // drain() set pinPos to this record (or an older one still in use) before process().
  ++w.pinDepth;
  endRound_ = true;
  return true;
}

void Router::undelivered(Conn& w, const FrameHeader& h, const Error& e, bool logIt) {
  ++counters_.undeliverable;
  counters_.error(h.channel, e.code);
  traceMessage(TraceKind::Send, w.id, h, 0, 0, &e);
  if (logIt) log_(LogLevel::Warn, "{}", e.toString());
  FrameHeader back{};
  back.channel = h.channel;
  back.target = h.target;
  back.role = h.role;
  back.requestId = 0;  // request id 0: the sender's own one-way message (Window::onSendFailed)
  (void)writeToWindow(w, [&] { return writeErrorFrame(w.inbox, back, e); });  // full too: counted above
}

void Router::blame(Conn& w, const FrameHeader& h, std::string_view what, const Error& e) {
  doom(w, fmt::format("malformed payload of {} '{}': {}", what, registry_.nameOf(h.channel, w.id), e.message), true);
}

void Router::onSend(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  if (auto v = validatePayload(f.payload, f.payloadBytes); !v) return blame(w, h, "send", v.error());
  if (auto e = overLimit(w, h, f.payloadBytes)) return undelivered(w, h, *e);
  auto what = [&] { return fmt::format("send '{}' from {}", registry_.nameOf(h.channel, w.id), w.describe()); };
  // Denials are logged by denied() itself: undelivered() does not log them again.
  if (auto e = denied(PolicyAction::Send, h.channel, w.roleId, w.role, w.id, what)) return undelivered(w, h, *e, false);
  if (h.target == kTargetMain) {
    if (auto e = denied(PolicyAction::Receive, h.channel, nameId(kMainRole), kMainRole, w.id,
                        [&] { return what() + " to main"; })) {
      return undelivered(w, h, *e, false);
    }
    ++counters_.at(h.channel).messages;
    traceMessage(TraceKind::Send, w.id, h, 0, static_cast<std::uint32_t>(f.payloadBytes), nullptr,
                 PayloadView{f.payload, f.payloadBytes});
    if (mainCallbacks_->listenerCount(h.channel) == 0) {
      ++counters_.undeliverable;
      log_(LogLevel::Debug, "send '{}' from {} has no listener", registry_.statName(h.channel), w.describe());
      return;
    }
    MainJob job = jobFor(w, f, MainJob::Kind::Listen);
    deliverToMain(w, job);
    return;
  }
  Conn* t = registry_.resolve(h.target, h.role);
  if (t == nullptr) {
    return undelivered(w, h, makeError(ErrorCode::NoTarget, fmt::format("send '{}' from {}: no live window with {}",
                                                                        registry_.nameOf(h.channel, w.id), w.describe(),
                                                                        registry_.describeTarget(h.target, h.role))));
  }
  if (auto e = denied(PolicyAction::Receive, h.channel, t->roleId, t->role, w.id,
                      [&] { return what() + " to " + t->describe(); })) {
    return undelivered(w, h, *e, false);
  }
  FrameHeader out = h;
  out.source = w.id;
  out.role = w.roleId;
  out.target = t->id;
  out.requestId = 0;
  internRole(*t, w.roleId);
  auto r = writeToWindow(*t, [&] { return writeCopy(*t, out, f.payload, f.payloadBytes); });
  if (!r) {
    return undelivered(w, h, makeError(r.code(), fmt::format("send '{}' from {} to {} not delivered: {}",
                                                             registry_.nameOf(h.channel, w.id), w.describe(),
                                                             t->describe(), r.error().message)));
  }
  ++counters_.at(h.channel).messages;
  traceMessage(TraceKind::Send, w.id, out, t->id, static_cast<std::uint32_t>(f.payloadBytes), nullptr,
               PayloadView{f.payload, f.payloadBytes});
  grantRoute(w, h, *t);
}

void Router::onInvoke(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  if (routes_.byCaller(w.id, h.requestId) != 0) return doom(w, "request id reused while pending", true);
  ++counters_.at(h.channel).calls;
  if (auto v = validatePayload(f.payload, f.payloadBytes); !v) {
    replyError(w, h, Error{ErrorCode::InvalidMessage, fmt::format("invoke '{}' from {}: {}", registry_.nameOf(h.channel, w.id),
                                                                  w.describe(), v.error().message)});
    return blame(w, h, "invoke", v.error());
  }
  if (auto e = overInFlight(w, h, f.payloadBytes)) return replyError(w, h, std::move(*e));
  const std::int64_t now = monotonicNowNs();
  if (auto e = overLimit(w, h, f.payloadBytes)) return replyError(w, h, std::move(*e));
  auto what = [&] { return fmt::format("invoke '{}' from {}", registry_.nameOf(h.channel, w.id), w.describe()); };
  if (auto e = denied(PolicyAction::Invoke, h.channel, w.roleId, w.role, w.id, what)) return replyError(w, h, std::move(*e));
  if (h.target == kTargetMain) {
    if (auto e = denied(PolicyAction::Handle, h.channel, nameId(kMainRole), kMainRole, w.id,
                        [&] { return what() + " to main"; })) {
      return replyError(w, h, std::move(*e));
    }
    return invokeMain(w, f, now);
  }
  Conn* t = registry_.resolve(h.target, h.role);
  if (t == nullptr) {
    return replyError(w, h, makeError(ErrorCode::NoTarget, fmt::format("invoke '{}': no live window with {}",
                                                                       registry_.nameOf(h.channel, w.id),
                                                                       registry_.describeTarget(h.target, h.role))));
  }
  if (auto e = denied(PolicyAction::Handle, h.channel, t->roleId, t->role, w.id,
                      [&] { return what() + " to " + t->describe(); })) {
    return replyError(w, h, std::move(*e));
  }
  if (t->handled.count(h.channel) == 0) {
    return replyError(w, h, makeError(ErrorCode::NoHandler, fmt::format("invoke '{}' to {}: no handler",
                                                                        registry_.nameOf(h.channel, w.id),
                                                                        t->describe())));
  }
  Route p;
  p.callerId = w.id;
  p.callerReq = h.requestId;
  p.targetId = t->id;
  p.channel = h.channel;
  p.start = now;
  p.deadline = deadlineFor(h, now, p.timeoutMs);
  p.callerRole = w.roleId;
  p.targetRole = t->roleId;
  p.traceId = traceIdFor(h.traceId);
  p.requestBytes = static_cast<std::uint32_t>(f.payloadBytes);
  FrameHeader out = h;
  out.source = w.id;
  out.role = w.roleId;
  out.target = t->id;
  out.deadlineNs = p.deadline;
  out.traceId = p.traceId;
  const std::uint64_t rid = routes_.add(std::move(p));
  out.requestId = rid;
  capturePayload(PayloadPart::Request, w.id, h.requestId, h.channel, PayloadView{f.payload, f.payloadBytes});
  internRole(*t, w.roleId);
  auto r = writeToWindow(*t, [&] { return writeCopy(*t, out, f.payload, f.payloadBytes); });
  if (!r) {
    Route gone = *routes_.take(rid);
    failCaller(gone, Error{r.code(), fmt::format("invoke '{}' to {}: {}", registry_.nameOf(h.channel, w.id),
                                                 t->describe(), r.error().message)});
    return;
  }
  grantRoute(w, h, *t);
}

void Router::invokeMain(Conn& w, const FrameView& f, std::int64_t now) {
  const FrameHeader& h = f.header;
  auto slot = mainCallbacks_->handler(h.channel);
  auto what = [&] { return fmt::format("invoke '{}' to main", registry_.nameOf(h.channel, w.id)); };
  if (!slot) return replyError(w, h, makeError(ErrorCode::NoHandler, what() + ": no handler"));
  if (slot->schemaId != 0 && h.schemaId != 0 && slot->schemaId != h.schemaId) {
    return replyError(w, h, makeError(ErrorCode::InvalidMessage,
                                      fmt::format("{}: request schema {:016x} does not match the handler's {:016x}",
                                                  what(), h.schemaId, slot->schemaId)));
  }
  // The router keeps the deadline of a call to main like any other: the caller gets Timeout at
  // its deadline even while the handler still runs (its reply is then late).
  Route p;
  p.callerId = w.id;
  p.callerReq = h.requestId;
  p.targetId = kTargetMain;
  p.channel = h.channel;
  p.start = now;
  p.deadline = deadlineFor(h, now, p.timeoutMs);
  p.callerRole = w.roleId;
  p.traceId = traceIdFor(h.traceId);
  p.requestBytes = static_cast<std::uint32_t>(f.payloadBytes);
  MainJob job = jobFor(w, f, MainJob::Kind::Invoke);
  job.header.traceId = p.traceId;
  job.deadlineNs = p.deadline;
  job.timeoutMs = p.timeoutMs;
  job.routeId = routes_.add(std::move(p));
  job.slot = std::move(slot);
  capturePayload(PayloadPart::Request, w.id, h.requestId, h.channel, PayloadView{f.payload, f.payloadBytes});
  deliverToMain(w, job);
}

std::optional<Route> Router::takeMainOutcome(std::uint64_t routeId) {
  auto p = routes_.take(routeId);
  if (!p) {
    // The call ended first (deadline, cancel, caller gone): a late reply, dropped and counted.
    ++counters_.lateReplies;
    return std::nullopt;
  }
  const std::int64_t now = monotonicNowNs();
  if (now >= p->deadline) {
    // The handler outran the caller's deadline before the timer had its turn: the call has
    // timed out all the same and this outcome is late.
    ++counters_.lateReplies;
    ++counters_.at(p->channel).late;
    failCaller(*p, timeoutError(*p));
    return std::nullopt;
  }
  counters_.at(p->channel).sample(static_cast<double>(now - p->start) / 1e6);
  return p;
}

void Router::replyFromMain(std::uint64_t routeId, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                           std::uint64_t replySchemaId) {
  std::lock_guard lk(mu_);
  auto p = takeMainOutcome(routeId);
  if (!p) return;
  Conn* caller = registry_.live(p->callerId);
  if (caller == nullptr) return;
  FrameHeader r = frameHeader(FrameKind::Reply, p->channel);
  r.requestId = p->callerReq;
  r.schemaId = replySchemaId;
  r.role = nameId(kMainRole);
  // The event goes into the trace before the caller can see the reply (docs/architecture.md §14:
  // an inspector never learns of a call after its caller did); a reply that then cannot be
  // written adds the failure as a second event.
  if (tracing()) {
    traceCall(*p, TraceKind::Invoke, ErrorCode::Ok, "", static_cast<std::uint32_t>(messageBytes(segments)),
              PayloadView{.segments = segments});
  }
  // Too large for the caller's ring: copied into its blob arena, the descriptor is the outcome.
  auto blob = blobIfLarge(*caller, r, sizeof(MessageTable) + messageBytes(segments),
                          [&] { return tryCopyBlob(caller->blobOut, segments); });
  if (!blob) {
    return failCaller(*p, Error{blob.code(), fmt::format("invoke '{}' to main: the reply could not be written: {}",
                                                         registry_.nameOf(p->channel, p->callerId), blob.error().message)});
  }
  auto wr = *blob ? writeOutcomeBlob(*caller, r, **blob)
                  : writeOutcome(*caller, [&] { return writeFrameSegments(caller->inbox, r, segments); },
                                 [&] { return heldFrame(r, segments); });
  if (!wr) {
    failCaller(*p, Error{wr.code(), fmt::format("invoke '{}' to main: the reply could not be written: {}",
                                                registry_.nameOf(p->channel, p->callerId), wr.error().message)});
  }
}

void Router::failFromMain(std::uint64_t routeId, Error e) {
  std::lock_guard lk(mu_);
  if (auto p = takeMainOutcome(routeId)) failCaller(*p, std::move(e));
}

void Router::countUnanswered(std::uint64_t channel) {
  std::lock_guard lk(mu_);
  ++counters_.unanswered;
  log_(LogLevel::Warn, "a handler of '{}' dropped its responder without replying (the caller times out)",
       registry_.statName(channel));
}

void Router::unpin(std::uint32_t connId) {
  std::lock_guard lk(mu_);
  Conn* c = registry_.find(connId);
  if (c == nullptr) return;
  if (--c->pinDepth == 0) c->outbox.releaseAll();
  reapDoomed();
}

void Router::onReply(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  const Route* found = routes_.find(h.requestId);
  if (auto v = validatePayload(f.payload, f.payloadBytes); !v) {
    // The caller learns why its call failed; the replier is cut off (its other calls: TargetGone).
    if (found != nullptr && found->targetId == w.id) {
      Route p = *routes_.take(h.requestId);
      failCaller(p, Error{ErrorCode::InvalidMessage,
                          fmt::format("invoke '{}' to {}: the reply was malformed: {}",
                                      registry_.nameOf(p.channel, p.callerId), w.describe(), v.error().message)});
    }
    return blame(w, h, "reply", v.error());
  }
  if (found == nullptr) {
    ++counters_.lateReplies;
    ++counters_.at(h.channel).late;
    return;
  }
  if (found->targetId != w.id) {
    ++counters_.spoofedReplies;
    log_(LogLevel::Warn, "dropped a reply to route {} from {}: the call was routed to window {}", h.requestId,
         w.describe(), found->targetId);
    return;
  }
  const std::int64_t now = monotonicNowNs();
  Route p = *routes_.take(h.requestId);
  if (now >= p.deadline) {
    // The deadline passed before this reply was read (the timer had not had its turn yet): the
    // call has timed out all the same, and the reply is late. The target has answered, so it
    // needs no Cancel.
    ++counters_.lateReplies;
    ++counters_.at(p.channel).late;
    return failCaller(p, timeoutError(p));
  }
  counters_.at(p.channel).sample(static_cast<double>(now - p.start) / 1e6);
  const bool isError = h.kind == static_cast<std::uint16_t>(FrameKind::Error);
  if (p.state) {  // a call made by the main process
    // A blob is read in place, held for as long as the reply's Message lives; else a copy.
    auto held = frameBlob_ ? heldInPlace(f, frameBlob_) : copyMessage(f.payload, f.payloadBytes);
    if (!held) return failCaller(p, held.error());
    if (isError) return failCaller(p, decodeError(h, (*held)->msg));
    traceCall(p, TraceKind::Invoke, ErrorCode::Ok, "", static_cast<std::uint32_t>(f.payloadBytes));
    completeCall(p.state, Message(std::move(*held), h.schemaId));
    return;
  }
  if (isError) counters_.error(p.channel, static_cast<ErrorCode>(h.status));
  Conn* caller = registry_.live(p.callerId);
  if (caller == nullptr) return;
  FrameHeader out = h;
  out.source = w.id;
  out.role = w.roleId;
  out.target = caller->id;
  out.requestId = p.callerReq;
  // Traced before the caller can see the outcome (as replyFromMain).
  if (tracing()) {
    if (isError) {
      InPlaceMessage m;
      const Error e = m.parse(f.payload, f.payloadBytes) ? decodeError(h, m) : Error{errorCodeFromWire(h.status), ""};
      traceCall(p, TraceKind::Invoke, e.code, e.message, 0);
    } else {
      traceCall(p, TraceKind::Invoke, ErrorCode::Ok, "", static_cast<std::uint32_t>(f.payloadBytes),
                PayloadView{f.payload, f.payloadBytes});
    }
  }
  // Too large for the caller's ring (the replier's blob): a copy in the caller's arena.
  auto blob = blobIfLarge(*caller, out, f.payloadBytes, [&] { return tryCopyBlob(caller->blobOut, f.payload, f.payloadBytes); });
  if (!blob) {
    return failCaller(p, Error{blob.code(), fmt::format("invoke '{}' to {}: the reply could not be delivered: {}",
                                                        registry_.nameOf(p.channel, p.callerId), w.describe(),
                                                        blob.error().message)});
  }
  auto r = *blob ? writeOutcomeBlob(*caller, out, **blob)
                 : writeOutcome(*caller, [&] { return writeFrameCopy(caller->inbox, out, f.payload, f.payloadBytes); },
                                [&] { return HeldFrame{out, std::vector<std::uint8_t>(f.payload, f.payload + f.payloadBytes)}; });
  if (!r) {
    failCaller(p, Error{r.code(), fmt::format("invoke '{}' to {}: the reply could not be delivered: {}",
                                              registry_.nameOf(p.channel, p.callerId), w.describe(),
                                              r.error().message)});
  }
}

void Router::onCancel(Conn& w, const FrameHeader& h) {
  const std::uint64_t rid = routes_.byCaller(w.id, h.requestId);
  if (rid == 0) return;
  Route p = *routes_.take(rid);
  counters_.error(p.channel, ErrorCode::Cancelled);
  traceCall(p, TraceKind::Cancel, ErrorCode::Cancelled, "cancelled by the caller", 0);
  sendCancel(p.targetId, p.routeId);
}

}  // namespace shmbus::detail
