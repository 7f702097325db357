// A window's dispatch loop and what arrives in its inbox: pushes, calls to its handlers, replies
// to its calls, cancels (docs/architecture.md §9, §11).
#include <kj/exception.h>

#include "bus.capnp.h"
#include "window/window_impl.hpp"

namespace shmbus {

using namespace detail;
using namespace window_detail;

void Window::Impl::dispatchOnce(std::int64_t deadline, CallState* waiting) {
  // Two passes at most: a wait that ends because a record came reads it in this round rather
  // than returning to the caller's loop first (a reply is handled one clock read and one round's
  // bookkeeping sooner, docs/architecture.md §10). The second pass never waits.
  for (int pass = 0; pass < 2; ++pass) {
    if (portEnded()) return onPortEnded();
    int n = 0;
    // Ring position of the first record of this batch not given back yet, and how much a batch
    // reads before it gives its records back (see below).
    std::uint64_t from = link.inbox.readPos();
    const std::uint64_t giveBackAt = link.inbox.geometry().capacity / 8;
    while (n < kBatch) {
      auto r = link.inbox.tryRead();
      if (!r) {
        if (port) return endPortCorrupt(r.error());
        markClosed(fmt::format("the inbox of window {} is corrupt: {}", link.id, r.error().message));
        return;
      }
      if (!*r) break;
      const RecordView& rec = **r;
      handleRecord(rec);
      ++n;
      // A batch gives its records back at its end, except that once it has read an eighth of the
      // ring it gives them back at once: a producer pacing itself by our replies (a stream's
      // credits, docs/architecture.md §18) then finds the room the replies promised, not up to
      // kBatch large records still held behind them.
      if (rec.end - from >= giveBackAt) {
        advanceHead();
        from = rec.end;
      }
      if (waiting != nullptr && isDone(*waiting)) break;
    }
    advanceHead();
    const std::int64_t now = monotonicNowNs();
    // A window's direct route ends are read in the same round (docs/architecture.md §19).
    if (!routeEnds.empty()) n += dispatchRoutes(waiting, now);
    expireLocal(now);
    if (n > 0 || pass > 0 || closed.load(std::memory_order_acquire)) return;
    std::int64_t until = std::min(deadline, pending.nextExpiry());
    for (const auto& e : routeEnds) until = std::min(until, e->pending.nextExpiry());
    if (until <= now) return;
    const WaitStatus st = !routeEnds.empty() ? waitAll(until, waitPolicy(waiting, now))
                                             : link.inbox.wait(until, waitPolicy(waiting, now), [&] {
      // acquire: pairs with markClosed's / the lease release's release stores; a port's close word
      // is set before its closer's wakeAll (SYNC POINT "port close").
      return closed.load(std::memory_order_acquire) || lease->dirty.load(std::memory_order_acquire) || portEnded();
    });
    advanceHead();
    if (portEnded()) return onPortEnded();
    if (st != WaitStatus::Ready || closed.load(std::memory_order_acquire)) return;  // acquire: as above
  }
}

void Window::Impl::advanceHead() {
  // Nothing was released since the last look: no lock (docs/architecture.md §10). acquire: pairs
  // with markReleased's store under the lease mutex and the reply holder's release store; a
  // release this misses sets `dirty` after, and the dispatcher's wait predicate sees it.
  if (!lease->dirty.load(std::memory_order_acquire)) return;
  std::uint64_t to = 0;
  {
    std::lock_guard lk(lease->mu);
    lease->dirty.store(false, std::memory_order_relaxed);  // relaxed: we hold the lock that orders it
    while (!lease->held.empty() && lease->held.front().second) {
      to = lease->held.front().first;
      lease->held.pop_front();
    }
  }
  if (to != 0) link.inbox.releaseTo(to);
}

void Window::Impl::markReleased(Lease& l, std::uint64_t end) {
  std::lock_guard lk(l.mu);
  // `held` is in ring order (record ends only grow) and released entries stay until the next
  // advanceHead pops them; the record released is nearly always the newest (a callback that just
  // returned): search from the back, not over a batch's worth of released ones per record.
  for (auto it = l.held.rbegin(); it != l.held.rend() && it->first >= end; ++it) {
    if (it->first == end) {
      it->second = true;
      break;
    }
  }
  // relaxed: under the lease mutex, which advanceHead takes before it pops; its lock-free first
  // look may miss this store only when the record is released by another thread, and that
  // thread then stores `dirty` with release and wakes a parked dispatcher (LeasedReply).
  l.dirty.store(true, std::memory_order_relaxed);
}

void Window::Impl::handleRecord(const RecordView& rec) {
  {
    std::lock_guard lk(lease->mu);
    lease->held.emplace_back(rec.end, false);
  }
  bool leased = false;
  BlobRecordHeader* blob = nullptr;  // a blob read from the peer's arena: released below unless leased
  auto f = parseFrame(rec);
  if (f && f->header.kind == static_cast<std::uint16_t>(FrameKind::Reply) && f->header.requestId != 0) {
    // A reply is parsed once, by onReply, into the holder that leases its record (a malformed one
    // fails its call with InvalidMessage).
    leased = onReply(*f, rec, payloadOf(*f, blob), blob);
  } else if (f) {
    InPlaceMessage msg;
    auto payload = payloadOf(*f, blob);
    auto parsed = payload ? msg.parse(payload->first, payload->second) : Result<void>(payload.error());
    const auto kind = static_cast<FrameKind>(f->header.kind);
    if (!parsed) {
      if (kind == FrameKind::Invoke) replyError(f->header, parsed.error());
    } else if (port && port->routeOwner != nullptr && !port->opener &&
               (kind == FrameKind::Send || kind == FrameKind::Invoke) && port->allowed.count(f->header.channel) == 0) {
      // A direct route carries only the channels the supervisor granted on it (§19): a caller
      // that writes another one bypasses the policy.
      if (kind == FrameKind::Invoke) {
        replyError(f->header, makeError(ErrorCode::Denied, fmt::format("channel {:016x} was not granted on direct route {}",
                                                                       f->header.channel, port->id)));
      }
    } else if (port) {
      // A port's peer is another window: only the patterns travel here, anything else is ignored
      // (no names to learn, no offers, no undelivered reports: a peer cannot grow our tables).
      switch (kind) {
        case FrameKind::RouteFence:
          // A direct route's fence marker (§19): what follows waits for the caller's fence
          // through the supervisor, so nothing sent direct overtakes what went routed before.
          if (port->routeOwner != nullptr && !port->opener) port->gateFence = std::max(port->gateFence, f->header.status);
          break;
        case FrameKind::Send: onPush(*f, msg); break;
        case FrameKind::Invoke: onInvoke(*f, msg); break;
        case FrameKind::Cancel: onCancelFrame(f->header.requestId); break;
        case FrameKind::Reply:
        case FrameKind::Error:
          if (f->header.requestId != 0) leased = onReply(*f, rec, payload, blob);
          break;
        default: break;
      }
    } else {
      switch (kind) {
        case FrameKind::PortOffer: onPortOffer(*f, msg); break;
        case FrameKind::RouteOpen: onRouteOpen(*f, msg); break;
        case FrameKind::RouteGrant: onRouteGrant(*f, msg); break;
        case FrameKind::RouteFence: onRouteFence(f->header); break;
        case FrameKind::RouteSync: onRouteSync(f->header); break;
        case FrameKind::Intern: onIntern(msg); break;
        case FrameKind::Send: onPush(*f, msg); break;
        case FrameKind::Invoke: onInvoke(*f, msg); break;
        case FrameKind::Cancel: onCancelFrame(f->header.requestId); break;
        case FrameKind::Error:
          if (f->header.requestId == 0) {  // a one-way message of ours came back undelivered
            onSendFailed(*f, msg);
            break;
          }
          leased = onReply(*f, rec, payload, blob);
          break;
        case FrameKind::Reply: leased = onReply(*f, rec, payload, blob); break;
        default: break;
      }
    }
  }
  if (!leased) markReleased(*lease, rec.end);
  // The listeners and handlers have returned (an async handler copied what it keeps): the peer
  // may reuse the blob.
  if (blob != nullptr) releaseBlobIn(blob);
}

void Window::Impl::onIntern(InPlaceMessage& msg) {
  try {
    auto i = msg.reader().getRoot<schema::Intern>();
    if (i.getIsRole()) roleNames[i.getId()] = i.getName();
  } catch (const kj::Exception&) {
  }
}

void Window::Impl::onCancelFrame(std::uint64_t requestId) {
  std::lock_guard lk(asyncMu);
  if (auto it = asyncRunning.find(requestId); it != asyncRunning.end()) {
    it->second->flag.store(true, std::memory_order_release);  // pairs with Probe::cancelled()
  }
}

CallContext Window::Impl::contextFor(const FrameHeader& h, std::string& channelName) {
  CallContext ctx;
  if (port) {
    // Who wrote into a port's ring is known from the supervisor, not from the frame.
    ctx.sourceWindowId = port->peerId;
    ctx.sourceRole = port->peerRole;
  } else {
    ctx.sourceWindowId = h.source;
    auto it = roleNames.find(h.role);
    ctx.sourceRole = h.source == 0 ? std::string_view("main")
                                   : (it != roleNames.end() ? std::string_view(it->second) : std::string_view());
  }
  channelName = callbacks->name(h.channel);
  ctx.channel = channelName;
  ctx.channelId = h.channel;
  ctx.requestId = h.requestId;
  ctx.deadlineNs = h.deadlineNs;
  ctx.traceId = h.traceId;
  return ctx;
}

void Window::Impl::onPush(const FrameView& f, InPlaceMessage& msg) {
  auto listeners = callbacks->takeListeners(f.header.channel);
  if (listeners.empty()) return;
  std::string name;
  CallContext ctx = contextFor(f.header, name);
  runListeners(listeners, Message(&msg, f.header.schemaId), ctx, log);
}

void Window::Impl::onSendFailed(const FrameView& f, InPlaceMessage& msg) {
  auto listeners = callbacks->takeListeners(Channel(kSendFailed).id);
  std::string name = callbacks->name(f.header.channel);
  if (name.empty()) name = internedName(f.header.channel);
  if (name.empty()) name = fmt::format("#{:016x}", f.header.channel);
  if (listeners.empty()) {
    const Error e = decodeError(f.header, msg);
    log(LogLevel::Warn, "a one-way message was not delivered: {}", e.toString());
    return;
  }
  CallContext ctx;
  ctx.channel = name;
  ctx.channelId = f.header.channel;
  runListeners(listeners, Message(&msg, 0), ctx, log);
}

Result<void> Window::Impl::writeError(FrameHeader h, const Error& e, std::int64_t deadline) {
  h.kind = static_cast<std::uint16_t>(FrameKind::Error);
  std::lock_guard lk(outMu);
  for (;;) {
    if (closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, busClosedMessage());
    auto r = writeErrorFrame(link.outbox, h, e);
    if (r || r.code() != ErrorCode::Full) return r;
    if (waitForSpace(deadline != 0 ? deadline : monotonicNowNs() + 1'000'000'000) == WaitStatus::Timeout) return r;
  }
}

void Window::Impl::replyError(const FrameHeader& req, const Error& e) {
  FrameHeader h{};
  h.channel = req.channel;
  h.requestId = req.requestId;
  (void)writeError(h, e, req.deadlineNs);
}

void Window::Impl::onInvoke(const FrameView& f, InPlaceMessage& msg) {
  FrameHeader h = f.header;
  // A port's peer stamps its own deadline: cut to [now, now + kMaxTimeout] as the router does.
  if (port && h.deadlineNs != 0) h.deadlineNs = clampPeerDeadline(h.deadlineNs, monotonicNowNs());
  auto slot = callbacks->handler(h.channel);
  std::string name;
  CallContext ctx = contextFor(h, name);
  // Only error paths name the call: format it on demand, not once per call.
  auto what = [&] {
    if (port && port->routeOwner != nullptr) {
      return fmt::format("invoke '{}' on window {} (role '{}') over direct route {}", name, link.id, link.role, port->id);
    }
    return port ? fmt::format("invoke '{}' on port {} of window {} (role '{}')", name, port->id, link.id, link.role)
                : fmt::format("invoke '{}' on window {} (role '{}')", name, link.id, link.role);
  };
  if (!slot) return replyError(h, makeError(ErrorCode::NoHandler, fmt::format("{}: no handler", what())));
  if (slot->schemaId != 0 && h.schemaId != 0 && slot->schemaId != h.schemaId) {
    return replyError(h, makeError(ErrorCode::InvalidMessage,
                                   fmt::format("{}: request schema {:016x} does not match the handler's {:016x} "
                                               "(the two sides were compiled from different contract versions)",
                                               what(), h.schemaId, slot->schemaId)));
  }
  const Message request(&msg, h.schemaId);
  if (!slot->async) {
    Probe probe;
    probe.w = this;
    probe.requestId = h.requestId;
    probe.deadlineNs = h.deadlineNs;
    ctx.cancelProbe = &probe;
    OutboxSink sink(*this, h, slot->replySchemaId, std::string(), probe);
    runHandler(*slot, request, ctx, what, sink, {});
    return;
  }
  // An async handler's Responder outlives this call: its probe lives with its sink, and Cancel
  // frames reach it through asyncRunning until the last Responder copy is gone.
  struct OwnedProbe {
    Probe probe;
    Impl* w = nullptr;
    std::shared_ptr<const EndpointLife> life;  // the Responder may outlive the window
    ~OwnedProbe() {
      life->ifAlive([&] {
        std::lock_guard lk(w->asyncMu);
        w->asyncRunning.erase(probe.requestId);
      });
    }
  };
  auto owned = std::make_shared<OwnedProbe>();
  owned->w = this;
  owned->life = life;
  owned->probe.w = this;
  owned->probe.requestId = h.requestId;
  owned->probe.deadlineNs = h.deadlineNs;
  {
    std::lock_guard lk(asyncMu);
    asyncRunning[h.requestId] = &owned->probe;
  }
  ctx.cancelProbe = &owned->probe;
  struct AsyncSink final : ReplySink {
    std::shared_ptr<OwnedProbe> owned;
    OutboxSink inner;
    AsyncSink(std::shared_ptr<OwnedProbe> o, OutboxSink i) : owned(std::move(o)), inner(std::move(i)) {}
    Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> s) override { return inner.reply(s); }
    Result<void> fail(const Error& e) override { return inner.fail(e); }
    void unanswered() override { inner.unanswered(); }
    bool cancelled() const noexcept override { return inner.cancelled(); }
  };
  OutboxSink unused(*this, h, slot->replySchemaId, std::string(), owned->probe);
  runHandler(*slot, request, ctx, what, unused, [&] {
    return std::make_shared<GuardedSink>(
        life, std::make_shared<AsyncSink>(owned, OutboxSink(*this, h, slot->replySchemaId, what(), owned->probe)));
  });
}

namespace {
/// A reply read in place: its inbox record stays reserved until the last Message holding it is
/// gone (one allocation per reply: the holder and its release state together).
struct LeasedReply final : HeldMessage {
  std::weak_ptr<Window::Impl::Lease> lease;
  std::uint64_t end = 0;
  RingControl* ctl = nullptr;
  std::shared_ptr<Segment> seg;  // keeps the mapping while the window closes under a held reply
  const std::atomic<std::thread::id>* dispatcher = nullptr;
  BlobRecordHeader* blob = nullptr;  // a blob reply's record in the peer's arena (§17)
  BlobControl* blobControl = nullptr;

  ~LeasedReply() override {
    // The mapping is still ours (seg): the peer may reuse the blob, whether or not the port lives.
    if (blob != nullptr) releaseBlob(blob, blobControl);
    auto l = lease.lock();
    if (!l) return;
    Window::Impl::markReleased(*l, end);
    // release: pairs with the dispatcher's acquire load in its wait predicate.
    l->dirty.store(true, std::memory_order_release);
    // SYNC POINT W (wait.hpp): a dispatcher parked on the inbox re-checks `dirty` after announcing
    // itself, so a wake-up (a system call) is needed only when one is parked; a reply dropped
    // while nobody waits (the common case: the caller drops it after get()) costs no syscall.
    // seq_cst: pairs with the dispatcher's exchange in WaitAdapter::dispatchRound (a thread that
    // stopped dispatching must not read its own id back and skip the wake-up).
    if (dispatcher->load(std::memory_order_seq_cst) != std::this_thread::get_id()) notify(ctl->dataReady);
  }
};
}  // namespace

bool Window::Impl::onReply(const FrameView& f, const RecordView& rec,
                           const Result<std::pair<const std::uint8_t*, std::size_t>>& payload, BlobRecordHeader*& blob) {
  std::shared_ptr<CallState> s = pending.take(f.header.requestId);
  if (!s) return false;  // cancelled or timed out locally: dropped
  // One clock read serves the learned spin and a port's deadline check.
  const std::int64_t now = port || s->sentNs != 0 ? monotonicNowNs() : 0;
  if (s->sentNs != 0) replySpin.observe(s->spinChannel, now - s->sentNs);
  // A port keeps its calls' deadlines itself (no router): an answer read at or after the deadline
  // is late, as the router judges a window's.
  if (port && now >= s->deadlineNs) {
    completeCall(s, localTimeout(*s));
    return false;
  }
  if (f.header.kind == static_cast<std::uint16_t>(FrameKind::Error)) {
    InPlaceMessage m;
    if (payload) (void)m.parse(payload->first, payload->second);
    completeCall(s, decodeError(f.header, m));
    return false;
  }
  auto held = std::make_shared<LeasedReply>();
  if (auto parsed = payload ? held->msg.parse(payload->first, payload->second) : Result<void>(payload.error());
      !parsed) {
    completeCall(s, parsed.error());
    return false;
  }
  if (blob != nullptr) {
    held->blob = std::exchange(blob, nullptr);
    held->blobControl = reinterpret_cast<BlobControl*>(blobs.in);
  }
  held->lease = lease;
  held->end = rec.end;
  held->ctl = link.inbox.control();
  held->seg = link.segment;
  held->dispatcher = &dispatchingThread;
  s->replyBytes = static_cast<std::uint32_t>(payload->second);  // for a traced call's onEnd
  completeCall(s, Message(std::move(held), f.header.schemaId));
  return true;
}

}  // namespace shmbus
