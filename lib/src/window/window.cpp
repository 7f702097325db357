// The Window facade: a client process's endpoint (docs/architecture.md, "Window"). The handshake
// is wire/, pending calls and blocking waits are endpoint/, handler running is endpoint/; this file
// holds the window's rings and its dispatch loop.
#include "shmbus/window.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "bus.capnp.h"
#include "call/call.hpp"
#include "call/callbacks.hpp"
#include "control/control_protocol.hpp"
#include "endpoint/call_wait.hpp"
#include "endpoint/handler_run.hpp"
#include "endpoint/pending_calls.hpp"
#include "log/log.hpp"
#include "protocol/frame_io.hpp"
#include "wire/handshake.hpp"

namespace shmbus {

using namespace detail;

namespace {
// Local fallback for calls without a timeout of their own: the supervisor applies the channel's
// default (5 s unless configured); this only bounds a wait on a supervisor that is alive but wedged.
constexpr std::int64_t kUnknownDeadlineFallbackNs = 60'000'000'000;
constexpr int kBatch = 64;
}  // namespace

struct Window::Impl final : CallOwner {
  WindowOptions opts;
  std::string bus;
  Logger log;
  SpinPolicy spin;
  Fd sock;
  WindowLink link;  // id, role, segment, inbox (dispatcher only), outbox (under outMu), cancel board
  std::mutex outMu;
  std::unordered_set<std::uint64_t> interned;  // guarded by outMu

  std::atomic<bool> closed{false};
  mutable std::mutex closeMu;
  std::string closeReason;  // guarded by closeMu; set once, before `closed` turns true
  std::thread watchdog;
  std::thread dispatcher;

  std::recursive_mutex gate;  // held by whichever thread dispatches
  std::atomic<std::thread::id> dispatchingThread{};
  std::shared_ptr<CallbackTable> callbacks = std::make_shared<CallbackTable>();
  PendingCalls pending;
  std::unordered_map<std::uint64_t, std::string> roleNames;  // dispatcher only

  /// Cancel state of one handler call: the router's board, a Cancel frame (async handlers that
  /// outlive their callback), the bus closing, or the deadline.
  struct Probe final : CancelProbe {
    const Impl* w = nullptr;
    std::uint64_t requestId = 0;
    std::int64_t deadlineNs = 0;
    std::atomic<bool> flag{false};
    bool cancelled() const noexcept override {
      // acquire: pairs with the release stores of onCancelFrame() and markClosed().
      return flag.load(std::memory_order_acquire) || w->closed.load(std::memory_order_acquire) ||
             w->link.cancels->contains(requestId) || (deadlineNs != 0 && monotonicNowNs() >= deadlineNs);
    }
  };
  std::mutex asyncMu;
  std::unordered_map<std::uint64_t, Probe*> asyncRunning;  // guarded by asyncMu

  // In-order release of inbox records (a reply held by a Message keeps its record reserved).
  struct Lease {
    std::mutex mu;
    std::deque<std::pair<std::uint64_t, bool>> held;  // (record end, released)
    std::atomic<bool> dirty{false};
  };
  std::shared_ptr<Lease> lease = std::make_shared<Lease>();

  ~Impl() override { callbacks->clearHooks(); }

  std::string busClosedMessage() const {
    std::lock_guard lk(closeMu);
    return closeReason.empty() ? fmt::format("bus '{}' is closed", bus) : closeReason;
  }

  // ---- outbox

  Result<void> writeOutLocked(const FrameHeader& h, const BuildFn& build, std::size_t hint, std::int64_t waitUntil) {
    for (;;) {
      if (closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, busClosedMessage());
      auto r = writeFrame(link.outbox, h, build, hint);
      if (r || r.code() != ErrorCode::Full || waitUntil == 0) return r;
      if (waitForSpace(waitUntil) == WaitStatus::Timeout) return r;
    }
  }

  Result<void> writeOut(const FrameHeader& h, const BuildFn& build, std::size_t hint, std::int64_t waitUntil) {
    std::lock_guard lk(outMu);
    return writeOutLocked(h, build, hint, waitUntil);
  }

  WaitStatus waitForSpace(std::int64_t deadline) {
    const std::uint64_t seen = link.outbox.control()->head.load(std::memory_order_acquire);  // SYNC POINT "head"
    return spinThenPark(
        link.outbox.control()->spaceReady,
        [&] {
          // acquire: SYNC POINT "head" (RingConsumer::releaseTo); any progress is worth a retry.
          return closed.load(std::memory_order_acquire) ||
                 link.outbox.control()->head.load(std::memory_order_acquire) != seen;
        },
        spin, deadline);
  }

  /// Sends the name behind `id` once (caller holds outMu).
  void internLocked(std::uint64_t nameIdValue, std::string_view name, bool isRole) {
    // Nothing is written once closed: the supervisor reads this ring no more.
    if (closed.load(std::memory_order_acquire)) return;  // acquire: pairs with markClosed
    if (name.empty() || !interned.insert(nameIdValue).second) return;
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(FrameKind::Intern);
    h.channel = nameIdValue;
    auto r = writeFrame(link.outbox, h, [&](Builder& b) {
      auto i = b.initRoot<schema::Intern>();
      i.setId(nameIdValue);
      i.setName(std::string(name.substr(0, 256)));
      i.setIsRole(isRole);
    }, 512);
    if (!r) interned.erase(nameIdValue);  // try again with the next message
  }

  void control(FrameKind kind, std::uint64_t channel, std::uint64_t requestId = 0) {
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(kind);
    h.channel = channel;
    h.requestId = requestId;
    (void)writeOut(h, {}, 0, monotonicNowNs() + 1'000'000'000);
  }

  FrameHeader headerFor(FrameKind kind, const Target& t, const Channel& ch) {
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(kind);
    h.channel = ch.id;
    h.schemaId = ch.schemaId;
    if (!t.role.empty()) {
      h.target = kTargetByRole;
      h.role = nameId(t.role);
    } else {
      h.target = t.windowId;
    }
    return h;
  }

  Result<void> sendImpl(const Target& t, const Channel& ch, const BuildFn& build) {
    FrameHeader h = headerFor(FrameKind::Send, t, ch);
    std::lock_guard lk(outMu);
    internLocked(ch.id, ch.name, false);
    if (!t.role.empty()) internLocked(h.role, t.role, true);
    return writeOutLocked(h, build, 0, 0);
  }

  Call invokeImpl(const Target& t, const Channel& ch, const BuildFn& build, const CallOptions& o) {
    auto s = std::make_shared<CallState>();
    s->owner = this;
    s->what = fmt::format("invoke '{}' to {}", ch.name, t.describe());
    s->timeoutMs = o.timeout.count();
    const auto timeout = o.timeout.count() > 0 ? o.timeout : std::chrono::milliseconds(0);
    FrameHeader h = headerFor(FrameKind::Invoke, t, ch);
    // A zero timeout asks the supervisor for the channel's default (Supervisor::setChannelTimeout),
    // which this window does not know; its local fallback then waits kUnknownDeadlineFallbackNs.
    const std::int64_t now = monotonicNowNs();
    h.deadlineNs = timeout.count() > 0 ? now + std::chrono::nanoseconds(timeout).count() : 0;
    h.status = static_cast<std::uint32_t>(std::min<std::int64_t>(timeout.count(), UINT32_MAX));
    s->deadlineNs = (h.deadlineNs != 0 ? h.deadlineNs : now + kUnknownDeadlineFallbackNs) + kLocalGraceNs;
    h.requestId = pending.add(s);
    Result<void> r;
    {
      std::lock_guard lk(outMu);
      internLocked(ch.id, ch.name, false);
      if (!t.role.empty()) internLocked(h.role, t.role, true);
      r = writeOutLocked(h, build, o.sizeHint, 0);
    }
    if (!r) {
      pending.take(s->requestId);
      Error err = r.error();
      err.message = fmt::format("{}: {}", s->what, err.message);
      completeCall(s, std::move(err));
    }
    return Call(s);
  }

  // ---- calls

  void expireLocal(std::int64_t now) {
    for (auto& s : pending.takeExpired(now)) {
      completeCall(s, makeError(ErrorCode::Timeout,
                                fmt::format("{} timed out after {} ms (no answer from the supervisor)", s->what,
                                            s->timeoutMs > 0 ? s->timeoutMs : kUnknownDeadlineFallbackNs / 1'000'000)));
    }
  }

  // The waitForCall endpoint contract (endpoint/call_wait.hpp).
  struct WaitAdapter {
    Impl& i;
    std::recursive_mutex& gate() { return i.gate; }
    void dispatchRound(std::int64_t until, CallState* s) {
      const auto prev = i.dispatchingThread.exchange(std::this_thread::get_id());
      i.dispatchOnce(until, s);
      i.dispatchingThread.store(prev);
    }
    bool closed() const { return i.closed.load(std::memory_order_acquire); }
    Result<Message> closedResult(const std::shared_ptr<CallState>& s) {
      return makeError(ErrorCode::BusClosed, fmt::format("{}: {}", s->what, i.busClosedMessage()));
    }
    void giveUp(const std::shared_ptr<CallState>&) { i.expireLocal(monotonicNowNs()); }
  };
  Result<Message> waitFor(const std::shared_ptr<CallState>& s) override {
    WaitAdapter a{*this};
    return waitForCall(s, a);
  }

  void cancel(const std::shared_ptr<CallState>& s) override {
    const bool wasPending = pending.take(s->requestId) != nullptr;
    completeCall(s, makeError(ErrorCode::Cancelled, s->what + ": cancelled by the caller"));
    // Behind its Invoke on the same ring: the router never sees a Cancel before its call.
    if (wasPending) control(FrameKind::Cancel, 0, s->requestId);
  }

  // ---- dispatch

  /// Reads and handles up to kBatch records; parks until something arrives or `deadline` when
  /// there was nothing. `waiting` (optional) is a call whose completion ends the wait early.
  void dispatchOnce(std::int64_t deadline, CallState* waiting = nullptr) {
    int n = 0;
    while (n < kBatch) {
      auto r = link.inbox.tryRead();
      if (!r) {
        markClosed(fmt::format("the inbox of window {} is corrupt: {}", link.id, r.error().message));
        return;
      }
      if (!*r) break;
      handleRecord(**r);
      ++n;
      if (waiting != nullptr) {
        std::lock_guard lk(waiting->mu);
        if (waiting->result) break;
      }
    }
    advanceHead();
    const std::int64_t now = monotonicNowNs();
    expireLocal(now);
    if (n > 0 || closed.load(std::memory_order_acquire)) return;
    const std::int64_t until = std::min(deadline, pending.nextExpiry());
    if (until <= now) return;
    link.inbox.wait(until, spin, [&] {
      // acquire: pairs with markClosed's / the lease release's release stores.
      return closed.load(std::memory_order_acquire) || lease->dirty.load(std::memory_order_acquire);
    });
    advanceHead();
  }

  void advanceHead() {
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

  static void markReleased(Lease& l, std::uint64_t end) {
    std::lock_guard lk(l.mu);
    for (auto& e : l.held) {
      if (e.first == end) {
        e.second = true;
        break;
      }
    }
  }

  void handleRecord(const RecordView& rec) {
    {
      std::lock_guard lk(lease->mu);
      lease->held.emplace_back(rec.end, false);
    }
    bool leased = false;
    auto f = parseFrame(rec);
    if (f) {
      InPlaceMessage msg;
      auto parsed = msg.parse(f->payload, f->payloadBytes);
      const auto kind = static_cast<FrameKind>(f->header.kind);
      if (!parsed) {
        if (kind == FrameKind::Invoke) replyError(f->header, parsed.error());
      } else {
        switch (kind) {
          case FrameKind::Intern: onIntern(msg); break;
          case FrameKind::Send: onPush(*f, msg); break;
          case FrameKind::Invoke: onInvoke(*f, msg); break;
          case FrameKind::Cancel: onCancelFrame(f->header.requestId); break;
          case FrameKind::Reply:
          case FrameKind::Error: leased = onReply(*f, rec); break;
          default: break;
        }
      }
    }
    if (!leased) markReleased(*lease, rec.end);
  }

  void onIntern(InPlaceMessage& msg) {
    try {
      auto i = msg.reader().getRoot<schema::Intern>();
      if (i.getIsRole()) roleNames[i.getId()] = i.getName();
    } catch (const kj::Exception&) {
    }
  }

  void onCancelFrame(std::uint64_t requestId) {
    std::lock_guard lk(asyncMu);
    if (auto it = asyncRunning.find(requestId); it != asyncRunning.end()) {
      it->second->flag.store(true, std::memory_order_release);  // pairs with Probe::cancelled()
    }
  }

  CallContext contextFor(const FrameHeader& h, std::string& channelName) {
    CallContext ctx;
    ctx.sourceWindowId = h.source;
    auto it = roleNames.find(h.role);
    ctx.sourceRole = h.source == 0 ? std::string_view("main")
                                   : (it != roleNames.end() ? std::string_view(it->second) : std::string_view());
    channelName = callbacks->name(h.channel);
    ctx.channel = channelName;
    ctx.channelId = h.channel;
    ctx.requestId = h.requestId;
    ctx.deadlineNs = h.deadlineNs;
    return ctx;
  }

  void onPush(const FrameView& f, InPlaceMessage& msg) {
    auto listeners = callbacks->takeListeners(f.header.channel);
    if (listeners.empty()) return;
    std::string name;
    CallContext ctx = contextFor(f.header, name);
    runListeners(listeners, Message(&msg, f.header.schemaId), ctx, log);
  }

  /// Writes an Error frame for request `req`, waiting for outbox space up to its deadline.
  Result<void> writeError(FrameHeader h, const Error& e, std::int64_t deadline) {
    h.kind = static_cast<std::uint16_t>(FrameKind::Error);
    std::lock_guard lk(outMu);
    for (;;) {
      if (closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, busClosedMessage());
      auto r = writeErrorFrame(link.outbox, h, e);
      if (r || r.code() != ErrorCode::Full) return r;
      if (waitForSpace(deadline != 0 ? deadline : monotonicNowNs() + 1'000'000'000) == WaitStatus::Timeout) return r;
    }
  }

  void replyError(const FrameHeader& req, const Error& e) {
    FrameHeader h{};
    h.channel = req.channel;
    h.requestId = req.requestId;
    (void)writeError(h, e, req.deadlineNs);
  }

  /// A handler's outcome for one request goes into the outbox (from any thread).
  class OutboxSink final : public ReplySink {
   public:
    OutboxSink(Impl& w, const FrameHeader& req, std::uint64_t replySchemaId, std::string what, Probe& probe)
        : w_(w), what_(std::move(what)), probe_(probe) {
      h_.channel = req.channel;
      h_.requestId = req.requestId;
      h_.schemaId = replySchemaId;
      deadline_ = req.deadlineNs;
    }
    Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segs) override {
      FrameHeader r = h_;
      r.kind = static_cast<std::uint16_t>(FrameKind::Reply);
      std::lock_guard lk(w_.outMu);
      for (;;) {
        if (w_.closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, w_.busClosedMessage());
        auto wr = writeFrameSegments(w_.link.outbox, r, segs);
        if (wr) return wr;
        if (wr.code() != ErrorCode::Full ||
            w_.waitForSpace(deadline_ != 0 ? deadline_ : monotonicNowNs() + 1'000'000'000) == WaitStatus::Timeout) {
          // The reply cannot be sent (too large, or the outbox stayed full): fail the call instead.
          Error e = wr.error();
          e.message = fmt::format("{}: the reply could not be written: {}", what_, e.message);
          FrameHeader eh = h_;
          eh.schemaId = 0;
          (void)writeErrorFrame(w_.link.outbox, eh, e);
          return wr;
        }
      }
    }
    Result<void> fail(const Error& e) override {
      FrameHeader eh = h_;
      eh.schemaId = 0;
      return w_.writeError(eh, e, deadline_);
    }
    void unanswered() override {
      w_.log(LogLevel::Warn, "{}: the handler dropped its responder without replying (the caller times out)", what_);
    }
    bool cancelled() const noexcept override { return probe_.cancelled(); }

   private:
    Impl& w_;
    FrameHeader h_{};
    std::int64_t deadline_ = 0;
    std::string what_;
    Probe& probe_;
  };

  void onInvoke(const FrameView& f, InPlaceMessage& msg) {
    const FrameHeader& h = f.header;
    auto slot = callbacks->handler(h.channel);
    std::string name;
    CallContext ctx = contextFor(h, name);
    // Only error paths name the call: format it on demand, not once per call.
    auto what = [&] { return fmt::format("invoke '{}' on window {} (role '{}')", name, link.id, link.role); };
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
      ~OwnedProbe() {
        std::lock_guard lk(w->asyncMu);
        w->asyncRunning.erase(probe.requestId);
      }
    };
    auto owned = std::make_shared<OwnedProbe>();
    owned->w = this;
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
      return std::make_shared<AsyncSink>(owned, OutboxSink(*this, h, slot->replySchemaId, what(), owned->probe));
    });
  }

  /// Completes a pending call from a Reply/Error record. Returns true when the record is now
  /// leased to a Message (released when that Message dies).
  bool onReply(const FrameView& f, const RecordView& rec) {
    std::shared_ptr<CallState> s = pending.take(f.header.requestId);
    if (!s) return false;  // cancelled or timed out locally: dropped
    if (f.header.kind == static_cast<std::uint16_t>(FrameKind::Error)) {
      InPlaceMessage m;
      (void)m.parse(f.payload, f.payloadBytes);
      completeCall(s, decodeError(f.header, m));
      return false;
    }
    auto held = std::make_shared<HeldMessage>();
    if (auto parsed = held->msg.parse(f.payload, f.payloadBytes); !parsed) {
      completeCall(s, parsed.error());
      return false;
    }
    const std::uint64_t end = rec.end;
    std::weak_ptr<Lease> weakLease = lease;
    RingControl* ctl = link.inbox.control();
    auto seg = link.segment;
    const auto dispatcherId = &dispatchingThread;
    held->release = [weakLease, end, ctl, seg, dispatcherId] {
      auto l = weakLease.lock();
      if (!l) return;
      markReleased(*l, end);
      // release: pairs with the dispatcher's acquire load in its wait predicate.
      l->dirty.store(true, std::memory_order_release);
      if (dispatcherId->load() != std::this_thread::get_id()) wakeAll(ctl->dataReady);
    };
    completeCall(s, Message(std::move(held), f.header.schemaId));
    return true;
  }

  // ---- lifecycle

  void markClosed(const std::string& reason) {
    {
      std::lock_guard lk(closeMu);
      if (closed.load(std::memory_order_acquire)) return;
      closeReason = reason;
      closed.store(true, std::memory_order_release);  // pairs with the acquire loads of `closed`
    }
    for (auto& [rid, s] : pending.takeAll()) {
      completeCall(s, makeError(ErrorCode::BusClosed, fmt::format("{}: {}", s->what, reason)));
    }
    if (link.inbox.valid()) wakeAll(link.inbox.control()->dataReady);
    if (link.outbox.valid()) wakeAll(link.outbox.control()->spaceReady);
  }

  void watch() {
    for (;;) {
      pollfd p{sock.get(), POLLIN, 0};
      const int r = ::poll(&p, 1, -1);
      if (r < 0 && errno == EINTR) continue;
      if (closed.load(std::memory_order_acquire)) return;
      auto pkt = recvPacket(sock.get());
      if (!pkt || pkt->hangup) {
        markClosed(fmt::format("the supervisor of bus '{}' is gone", bus));
        return;
      }
      // Nothing else travels supervisor → window on the socket after the Welcome.
    }
  }

  void close(const std::string& reason) {
    markClosed(reason);
    if (sock) ::shutdown(sock.get(), SHUT_RDWR);
    if (watchdog.joinable() && watchdog.get_id() != std::this_thread::get_id()) watchdog.join();
    if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
  }
};

// ---------------------------------------------------------------------------------------------

namespace {

Result<std::unique_ptr<Window::Impl>> handshake(Fd sock, WindowOptions opts, const std::string& bus, bool spawned) {
  auto impl = std::make_unique<Window::Impl>();
  impl->opts = opts;
  impl->bus = bus;
  impl->spin.spin = opts.spin;
  impl->sock = std::move(sock);
  auto link = helloAndWelcome(impl->sock.get(), HelloParams{opts.role, opts.inboxBytes, opts.outboxBytes, spawned},
                              bus, opts.connectTimeout);
  if (!link) return link.error();
  impl->link = std::move(*link);
  impl->log = Logger{"window", fmt::format("{}/{}#{}", bus, impl->link.role, impl->link.id), opts.logLevel};
  impl->roleNames[nameId("main")] = "main";
  Window::Impl* raw = impl.get();
  impl->callbacks->setHooks(
      [raw](std::uint64_t ch, bool present) { raw->control(present ? FrameKind::HandlerAdd : FrameKind::HandlerRemove, ch); },
      [raw](std::uint64_t ch) {
        if (ch == nameId(kWindowOpened) || ch == nameId(kWindowClosed)) raw->control(FrameKind::Listen, ch);
      });
  impl->watchdog = std::thread([raw] { raw->watch(); });
  return impl;
}

}  // namespace

Window::Window(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Window::~Window() {
  if (impl_) impl_->close(fmt::format("window {} is closed", impl_->link.id));
}

Result<std::unique_ptr<Window>> Window::connect(WindowOptions options) {
  std::string bus = options.bus;
  if (bus.empty()) {
    if (const char* b = std::getenv(kEnvBus)) bus = b;
  }
  if (auto v = validateBusName(bus); !v) return v.error();
  SHMBUS_REQUIRE(!options.role.empty(), "WindowOptions::role must name the role to claim");
  std::string path = options.socketPath;
  if (path.empty()) {
    auto p = socketPath(bus);
    if (!p) return p.error();
    path = *p;
  }
  auto fd = connectSeqpacket(path);
  if (!fd) return fd.error();
  auto impl = handshake(std::move(*fd), std::move(options), bus, false);
  if (!impl) return impl.error();
  return std::unique_ptr<Window>(new Window(std::move(*impl)));
}

bool Window::spawned() noexcept { return std::getenv(kEnvFd) != nullptr; }

Result<std::unique_ptr<Window>> Window::fromSpawn(WindowOptions options) {
  const char* fdText = std::getenv(kEnvFd);
  SHMBUS_REQUIRE(fdText != nullptr, "Window::fromSpawn outside a process started by Supervisor::spawn");
  const int fd = std::atoi(fdText);
  if (options.bus.empty()) {
    if (const char* b = std::getenv(kEnvBus)) options.bus = b;
  }
  if (const char* r = std::getenv(kEnvRole)) options.role = r;
  ::unsetenv(kEnvFd);  // a grandchild must not reuse it
  auto impl = handshake(Fd(fd), options, options.bus, true);
  if (!impl) return impl.error();
  return std::unique_ptr<Window>(new Window(std::move(*impl)));
}

std::uint32_t Window::id() const noexcept { return impl_->link.id; }
const std::string& Window::role() const noexcept { return impl_->link.role; }
const std::string& Window::bus() const noexcept { return impl_->bus; }

Result<void> Window::send(const Channel& channel, const BuildFn& build) {
  return impl_->sendImpl(Target::main(), channel, build);
}

Result<void> Window::sendTo(const Target& target, const Channel& channel, const BuildFn& build) {
  return impl_->sendImpl(target, channel, build);
}

Call Window::invoke(const Channel& channel, const BuildFn& build, CallOptions options) {
  return impl_->invokeImpl(Target::main(), channel, build, options);
}

Call Window::invokeIn(const Target& target, const Channel& channel, const BuildFn& build, CallOptions options) {
  SHMBUS_REQUIRE(!target.isMain(), "invokeIn needs a role or window id; use invoke() for the main process");
  return impl_->invokeImpl(target, channel, build, options);
}

Registration Window::on(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), false);
}

Registration Window::once(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), true);
}

Registration Window::handle(const Channel& channel, Handler handler) {
  return impl_->callbacks->setHandler(channel, std::move(handler));
}

Registration Window::handleAsync(const Channel& channel, AsyncHandler handler) {
  return impl_->callbacks->setAsyncHandler(channel, std::move(handler));
}

void Window::run() {
  std::lock_guard g(impl_->gate);
  const auto prev = impl_->dispatchingThread.exchange(std::this_thread::get_id());
  while (!impl_->closed.load(std::memory_order_acquire)) impl_->dispatchOnce(kNoDeadline);
  impl_->dispatchingThread.store(prev);
}

Result<void> Window::poll(std::chrono::milliseconds timeout) {
  if (impl_->closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, impl_->busClosedMessage());
  std::lock_guard g(impl_->gate);
  const auto prev = impl_->dispatchingThread.exchange(std::this_thread::get_id());
  impl_->dispatchOnce(monotonicNowNs() + std::chrono::nanoseconds(timeout).count());
  impl_->dispatchingThread.store(prev);
  if (impl_->closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, impl_->busClosedMessage());
  return {};
}

void Window::startDispatchThread() {
  SHMBUS_REQUIRE(!impl_->dispatcher.joinable(), "the dispatch thread is already running");
  impl_->dispatcher = startDispatcher(impl_->gate, [this] { run(); });
}

void Window::close() { impl_->close(fmt::format("window {} is closed", impl_->link.id)); }

bool Window::closed() const noexcept { return impl_->closed.load(std::memory_order_acquire); }

}  // namespace shmbus
