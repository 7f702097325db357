// The Window's state shared by its source files (window.cpp: handshake, facade, outbox, calls;
// window_inbox.cpp: the dispatch loop and what arrives in the inbox; port.cpp: ports, whose ends
// are this same state over a port's rings; route.cpp: direct routes). Its port parts are in
// port_side.hpp, its route grants in route_grants.hpp. docs/architecture.md §9, §16, §19.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "blob/blob.hpp"
#include "call/call.hpp"
#include "call/callbacks.hpp"
#include "common/grow_only_ids.hpp"
#include "common/validate.hpp"
#include "endpoint/call_wait.hpp"
#include "endpoint/endpoint_life.hpp"
#include "endpoint/handler_run.hpp"
#include "endpoint/pending_calls.hpp"
#include "log/log.hpp"
#include "protocol/frame_io.hpp"
#include "shmbus/inspect.hpp"
#include "shmbus/window.hpp"
#include "wait/reply_spin.hpp"
#include "wire/handshake.hpp"
#include "window/port_side.hpp"
#include "window/route_grants.hpp"

namespace shmbus {

namespace window_detail {
// Local fallback for calls without a timeout of their own: the supervisor applies the channel's
// default (5 s unless configured); this only bounds a wait on a supervisor that is alive but wedged.
inline constexpr std::int64_t kUnknownDeadlineFallbackNs = 60'000'000'000;
inline constexpr int kBatch = 64;
// Port trace records (docs/architecture.md §14 "Ports"): a batch goes to the supervisor at this
// many records, or this long after its first record, whichever comes first: at most one
// wake-up of the supervisor per batch, and an inspector sees a port's call within ~50 ms.
inline constexpr std::size_t kPortTraceBatch = 32;
inline constexpr std::int64_t kPortTraceDelayNs = 50'000'000;
}  // namespace window_detail

// This header is included by the window's own sources only (never by a public header): they
// use the library internals throughout, so it opens them here once.
using namespace detail;
using namespace window_detail;

struct Window::Impl : CallOwner {
  using FrameHeader = detail::FrameHeader;
  using FrameKind = detail::FrameKind;
  WindowOptions opts;
  std::string bus;
  Logger log;
  SpinPolicy spin;
  ReplySpin replySpin;  // learned spin per channel for this endpoint's callers (wait/reply_spin.hpp)
  Fd sock;
  WindowLink link;  // id, role, segment, inbox (dispatcher only), outbox (under outMu), cancel board
  std::mutex outMu;
  std::unordered_map<std::uint64_t, std::string> interned;  // id -> name sent in an Intern frame; guarded by outMu
  GrowOnlyIds announcedSchemas;  // interface ids announced (Schema frames); inserted under outMu

  std::atomic<bool> closed{false};
  mutable std::mutex closeMu;
  std::string closeReason;  // guarded by closeMu; set once, before `closed` turns true
  std::thread watchdog;
  std::thread dispatcher;

  DispatchGate gate;  // held by whichever thread dispatches
  std::atomic<std::thread::id> dispatchingThread{};
  /// Names the calling thread as `w`'s dispatching thread for its scope (the gate held), and
  /// restores the previous one after. seq_cst: pairs with a dropped reply's load
  /// (window_inbox.cpp, LeasedReply), a store-load pair: a thread that stopped dispatching must
  /// not read its own id back and skip the wake-up.
  struct DispatchingAs {
    explicit DispatchingAs(Impl& w)
        : w(w), prev(w.dispatchingThread.exchange(std::this_thread::get_id(), std::memory_order_seq_cst)) {}
    ~DispatchingAs() { w.dispatchingThread.store(prev, std::memory_order_seq_cst); }  // seq_cst: as above
    DispatchingAs(const DispatchingAs&) = delete;
    DispatchingAs& operator=(const DispatchingAs&) = delete;
    Impl& w;
    const std::thread::id prev;
  };
  std::shared_ptr<CallbackTable> callbacks = std::make_shared<CallbackTable>();
  PendingCalls pending;
  std::unordered_map<std::uint64_t, std::string> roleNames;  // dispatcher only

  // ---- ports (docs/architecture.md §16; port.cpp)

  using PortHub = window_detail::PortHub;
  std::shared_ptr<PortHub> hub;  // a window's; null on a port's endpoint

  using PortSide = window_detail::PortSide;
  std::unique_ptr<PortSide> port;  // set on a port's endpoint (Port::Impl)

  /// The blob arenas: a port's end's, or the window's own between it and the supervisor (§17).
  window_detail::BlobLink blobs;

  // ---- direct routes (docs/architecture.md §19; route.cpp)

  using RouteKey = window_detail::RouteKey;
  using RouteKeyHash = window_detail::RouteKeyHash;
  using RouteGrantEntry = window_detail::RouteGrantEntry;
  std::unordered_map<RouteKey, RouteGrantEntry, RouteKeyHash> routeGrants;  // guarded by outMu
  /// The route end of each target granted anything (key channel 0), guarded by outMu.
  std::unordered_map<RouteKey, std::shared_ptr<Impl>, RouteKeyHash> routeByTarget;
  /// routeGrants.size(), read without outMu (relaxed: a hint; the lookup under outMu decides).
  std::atomic<std::size_t> routeGrantCount{0};
  /// This window's route ends, both sides (guarded by gate: the dispatching thread).
  std::vector<std::shared_ptr<Impl>> routeEnds;

  /// The route end of port `portId`, or null (dispatching thread).
  std::shared_ptr<Impl> routeEnd(std::uint64_t portId) const;
  /// A RouteOpen (this window is the target) or RouteGrant (the caller) frame from the supervisor.
  void onRouteOpen(const FrameView& f, InPlaceMessage& msg);
  void onRouteGrant(const FrameView& f, InPlaceMessage& msg);
  /// A caller's fence, forwarded by the supervisor into this window's inbox.
  void onRouteFence(const FrameHeader& h);
  /// Maps the route end of port `portId` from the Welcome in `msg` (the fd from the watchdog).
  std::shared_ptr<Impl> attachRouteEnd(std::uint64_t portId, InPlaceMessage& msg, bool opener, std::uint64_t channel);
  /// Reads what the route ends have (each up to kBatch records, behind its fence gate), ends
  /// and drops the ended ones, expires their calls. Returns the records read.
  int dispatchRoutes(CallState* waiting, std::int64_t now);
  /// Parks on the inbox and every route end's ring at once (spinThenParkAny) until `until`.
  WaitStatus waitAll(std::int64_t until, const SpinPolicy& policy);
  /// The grant for (t, ch) when calls may go direct, its fence written (caller holds outMu).
  RouteGrantEntry* grantLocked(const Target& t, const Channel& ch);
  /// Before a routed Send or Invoke to `t` (caller holds outMu): when `t` has a route end with
  /// direct records written since the last sync, a RouteSync goes first, so the target reads
  /// them before this one; and the route's next direct record needs a new fence (§19).
  Result<void> syncRouteLocked(const Target& t);
  /// A caller's RouteSync in this window's inbox: reads its route up to the count it names.
  void onRouteSync(const FrameHeader& h);
  /// Drops `end`'s grants and the end itself (it ended).
  void dropRoute(const std::shared_ptr<Impl>& end);

  /// A port's endpoint: the close word in its segment's header is not 0 (acquire: pairs with the
  /// compare-exchange of whoever closed it; SYNC POINT "port close").
  bool portEnded() const noexcept {
    return port && closeWord(link.segment->base()).load(std::memory_order_acquire) != 0;
  }
  /// A port's endpoint saw its close word set by the peer or the supervisor: ends it here.
  void onPortEnded();
  /// The PortOffer frame of a port another window opened to this one (window dispatcher).
  void onPortOffer(const FrameView& f, InPlaceMessage& msg);
  /// Closes every port of this window (the window closes).
  void closePorts();
  /// A port's endpoint read garbage from its peer's ring: ends the port with Corrupt.
  void endPortCorrupt(const Error& e);
  /// Records a call or send of a port's end for the trace (kind Invoke or Send) in the batch of
  /// the window of `hub` (gone: dropped).
  static void tracePort(const std::weak_ptr<PortHub>& hub, PortTraceRecord rec);
  /// A send on this port end (a port's, or a direct route's for its window), recorded for the
  /// trace while an inspector is attached; a Corrupt ring ends the port. `payloadBytes` as sendImpl.
  Result<void> portSend(const Target& t, const Channel& channel, const BuildFn& build,
                        std::atomic<std::size_t>* payloadBytes = nullptr);
  /// The onEnd hook of a call made over this port's end while tracing (CallState::onEnd).
  std::function<void(const CallState&, const Result<Message>&)> portCallTracer(const FrameHeader& h,
                                                                                 std::string channel);
  /// Sends the window's batch of port trace records as one PortTrace frame (caller holds
  /// hub->mu; this window's outbox, no wait: a full outbox drops the batch).
  static void flushPortTraceLocked(PortHub& hub);
  /// Ends a port's endpoint for `reason` (a PortCloseReason) unless it ended already: sets the
  /// close word (first writer wins), wakes the peer, fails pending calls with `code`, tells the
  /// supervisor when this side ended it (`tell`), and runs the close listeners on this thread.
  void endPort(std::uint32_t reason, ErrorCode code, const std::string& text, bool tell);

  /// True when the caller of request `requestId` posted its cancel on the board this endpoint
  /// reads: the router's for a window, the peer's for a port (wire/cancel_board.hpp).
  bool cancelPosted(std::uint64_t requestId) const noexcept {
    return port ? port->peerCancels->contains(requestId) : link.cancels->contains(requestId);
  }

  /// Cancel state of one handler call: the caller's board post (the router's, or a port's
  /// peer's), a Cancel frame (async handlers that outlive their callback), the bus closing, or
  /// the deadline.
  struct Probe final : CancelProbe {
    const Impl* w = nullptr;
    std::uint64_t requestId = 0;
    std::int64_t deadlineNs = 0;
    std::atomic<bool> flag{false};
    bool cancelled() const noexcept override {
      // acquire: pairs with the release stores of onCancelFrame() and markClosed().
      return flag.load(std::memory_order_acquire) || w->closed.load(std::memory_order_acquire) ||
             w->cancelPosted(requestId) || (deadlineNs != 0 && monotonicNowNs() >= deadlineNs) ||
             w->portEnded();  // a port's end, seen before its dispatcher (busy in this handler) sees it
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

  /// Shared with the async handlers' Responders, which may outlive this endpoint
  /// (endpoint/endpoint_life.hpp): ended first thing in the destructor.
  std::shared_ptr<EndpointLife> life = std::make_shared<EndpointLife>();

  ~Impl() override {
    life->end();
    callbacks->clearHooks();
  }

  std::string busClosedMessage() const {
    std::lock_guard lk(closeMu);
    return closeReason.empty() ? fmt::format("bus '{}' is closed", bus) : closeReason;
  }

  // ---- outbox

  Result<void> writeOutLocked(const FrameHeader& h, const BuildFn& build, std::size_t hint, std::int64_t waitUntil,
                              std::atomic<std::size_t>* payloadBytes = nullptr) {
    // A channel whose last message needed a blob skips the ring's attempt (BlobLink::first);
    // writeBlobLocked checks for a closed end itself.
    if (blobsFor(h) && blobs.first(h.channel)) return writeBlobLocked(h, build, payloadBytes);
    for (;;) {
      if (closed.load(std::memory_order_acquire)) return makeError(closeCode(), busClosedMessage());
      auto r = writeFrame(link.outbox, h, build, hint, true, payloadBytes);
      if (!r && r.code() == ErrorCode::TooLarge) {
        // Too large for the ring: built again in the blob arena (§17).
        if (blobsFor(h)) return writeBlobLocked(h, build, payloadBytes);
        return tooLargeHint(r.error());
      }
      // relaxed: read by this window's own routed writes (RouteSync), ordered by its outMu or
      // by program order (the writer's thread).
      if (r && port && port->routeOwner != nullptr) port->written.fetch_add(1, std::memory_order_relaxed);
      if (r || r.code() != ErrorCode::Full || waitUntil == 0) return r;
      if (waitForSpace(waitUntil) == WaitStatus::Timeout) return r;
    }
  }

  // ---- blobs (docs/architecture.md §17; port.cpp)

  /// `e` (TooLarge from the ring) with why no blob arena took it: a port's end or a window the
  /// supervisor gave none (a window's frames and its direct routes' have them unless
  /// SupervisorOptions::windowBlobBytes is 0).
  Error tooLargeHint(Error e) const {
    if (port && port->routeOwner == nullptr) {
      e.message += "; this port has no blob arena (PortOptions::blobBytes: the supervisor's limits "
                   "SupervisorOptions::blobBytesPerWindow and blobBytesPerBus left none when it opened)";
    } else {
      e.message += "; this window has no blob arena (SupervisorOptions::windowBlobBytes is 0)";
    }
    return e;
  }

  /// An end with blob arenas: a port's, or a window's.
  bool hasBlobs() const noexcept { return blobs.in != nullptr; }
  /// Whether frame `h` may travel as a blob: a send, invoke or reply of an end with arenas (a
  /// port's, a direct route's, a window's; to another window the supervisor copies the message
  /// into the target's arena: the target maps only its own segment). Control frames (fences,
  /// cancels, names) never do, even on a channel whose last message was a blob (BlobLink::first).
  bool blobsFor(const FrameHeader& h) const noexcept {
    return hasBlobs() && (h.kind == static_cast<std::uint16_t>(FrameKind::Send) ||
                          h.kind == static_cast<std::uint16_t>(FrameKind::Invoke) ||
                          h.kind == static_cast<std::uint16_t>(FrameKind::Reply));
  }

  /// Builds `build`'s message in this end's blob arena and sends its descriptor (caller holds
  /// outMu). Waits for the peer's releases, and then for ring room for the descriptor, until the
  /// frame's deadline or the port's callTimeout. Errors: TooLarge, Full, the end's close code.
  Result<void> writeBlobLocked(const FrameHeader& h, const BuildFn& build, std::atomic<std::size_t>* payloadBytes);
  /// Copies the message `segments` into the blob arena and sends its descriptor (caller holds
  /// outMu): a handler's reply too large for the ring. Errors: as writeBlobLocked.
  Result<void> writeBlobSegmentsLocked(const FrameHeader& h,
                                       kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments);
  /// The payload of `f`: its bytes in the ring or, for a kFlagBlob frame on a port, the message
  /// its descriptor names in the peer's arena (`blob` then set to its record, which the caller
  /// releases when done). Errors: InvalidMessage (a bad descriptor, or kFlagBlob off a port).
  Result<std::pair<const std::uint8_t*, std::size_t>> payloadOf(const FrameView& f, BlobRecordHeader*& blob);
  /// What the outgoing arena holds, after reclaiming (Port::blobStats, Window::blobStats; takes outMu).
  BlobStats blobStats();
  /// Releases a record of the peer's arena read through payloadOf.
  void releaseBlobIn(BlobRecordHeader* blob) noexcept {
    releaseBlob(blob, reinterpret_cast<BlobControl*>(blobs.in));
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

  /// The name this window interned for `id` (a channel it wrote on), or "" (takes outMu).
  std::string internedName(std::uint64_t id) {
    std::lock_guard lk(outMu);
    auto it = interned.find(id);
    return it == interned.end() ? std::string() : it->second;
  }

  /// Sends the name behind `id` once (caller holds outMu). A name is checked (NameKind::Role or
  /// Channel) the first time only: once interned, it passed. Errors: InvalidArgument.
  Result<void> internLocked(std::uint64_t nameIdValue, std::string_view name, bool isRole);

  /// Interns the channel and the target's role of a message (caller holds outMu).
  Result<void> internFor(const Target& t, const Channel& ch, std::uint64_t roleId) {
    // A port's peer needs no names (its handlers name their own channels); only the check.
    if (port) return ch.name.empty() ? Result<void>{} : validateName(NameKind::Channel, ch.name);
    if (auto r = internLocked(ch.id, ch.name, false); !r) return r;
    if (!t.role.empty()) return internLocked(roleId, t.role, true);
    return {};
  }

  /// Interns the name of a channel this window now handles (its callback table has it), so the
  /// supervisor's policy can judge the HandlerAdd that follows (takes outMu).
  void internHandled(std::uint64_t channel) {
    const std::string name = callbacks->name(channel);
    if (name.empty()) return;
    std::lock_guard lk(outMu);
    (void)internLocked(channel, name, false);  // a bad name is not sent: the default judges it
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

  /// Sends one message on `ch` to `t` (the supervisor's main process when `t` is main): over a
  /// granted direct route when there is one (§19), else routed through the outbox. Errors: as
  /// Window::send and sendTo. `payloadBytes` (optional): the message's payload size once written.
  Result<void> sendImpl(const Target& t, const Channel& ch, const BuildFn& build,
                        std::atomic<std::size_t>* payloadBytes = nullptr);

  /// `routeErrors` (a direct route's call, §19): the stats slot's errors, counted when it fails.
  /// `refused` (a direct route's call): when the request cannot be written (the route's ring
  /// full, the route ended, ...), set to true and the call left incomplete, for the caller to
  /// make routed instead; nothing was sent.
  Call invokeImpl(const Target& t, const Channel& ch, const BuildFn& build, const CallOptions& o,
                  FrameKind kind = FrameKind::Invoke, std::atomic<std::uint64_t>* routeErrors = nullptr,
                  bool* refused = nullptr);

  // ---- calls

  Error localTimeout(const CallState& s) const {
    return makeError(ErrorCode::Timeout,
                     fmt::format("{} timed out after {} ms (no answer from {})", s.what(),
                                 s.timeoutMs > 0 ? s.timeoutMs : kUnknownDeadlineFallbackNs / 1'000'000,
                                 !port ? "the supervisor"
                                       : port->routeOwner != nullptr ? "the target over its direct route"
                                                                     : "the port's peer"));
  }

  void expireLocal(std::int64_t now) {
    for (auto& s : pending.takeExpired(now)) completeCall(s, localTimeout(*s));
  }

  // The waitForCall endpoint contract (endpoint/call_wait.hpp) for a call of endpoint `end`,
  // waited for by dispatching `owner`: the endpoint itself, or for a direct route's end the
  // window that reads the end's ring beside its inbox (§19), so a waiting handler still serves
  // calls to its window.
  struct WaitAdapter {
    Impl& end;
    Impl& owner;
    DispatchGate& gate() { return owner.gate; }
    void dispatchRound(std::int64_t until, CallState* s) {
      DispatchingAs as(owner);
      owner.dispatchOnce(until, s);
    }
    // acquire: pairs with markClosed's release store.
    bool closed() const { return end.closed.load(std::memory_order_acquire) || owner.closed.load(std::memory_order_acquire); }
    Result<Message> closedResult(const std::shared_ptr<CallState>& s) {
      return makeError(end.closeCode(), fmt::format("{}: {}", s->what(), end.busClosedMessage()));
    }
    void giveUp(const std::shared_ptr<CallState>&) { end.expireLocal(monotonicNowNs()); }
  };
  Result<Message> waitFor(const std::shared_ptr<CallState>& s) override {
    WaitAdapter a{*this, port && port->routeOwner != nullptr ? *port->routeOwner : *this};
    return waitForCall(s, a);
  }

  void cancel(const std::shared_ptr<CallState>& s) override {
    const bool wasPending = pending.take(s->requestId) != nullptr;
    completeCall(s, makeError(ErrorCode::Cancelled, s->what() + ": cancelled by the caller"));
    if (!wasPending) return;
    if (port) {
      // No router on a port: this end posts on its own board for the peer's running sync
      // handler, before the frame as the router does (§11, §16). outMu: the board's one writer.
      std::lock_guard lk(outMu);
      port->ownCancels->post(s->requestId);
    }
    // Behind its Invoke on the same ring: the router (a port's peer) never sees a Cancel before
    // its call.
    control(FrameKind::Cancel, 0, s->requestId);
  }

  // ---- dispatch

  /// Reads and handles up to kBatch records; parks until something arrives or `deadline` when
  /// there was nothing. `waiting` (optional) is a call whose completion ends the wait early.
  void dispatchOnce(std::int64_t deadline, CallState* waiting = nullptr);

  void advanceHead();

  /// The spin of a dispatch round's inbox wait at `now`: the window's own, or longer while the
  /// call `waiting` has a learned spin left (docs/architecture.md §4, "Learned reply spin").
  SpinPolicy waitPolicy(const CallState* waiting, std::int64_t now) const noexcept {
    if (waiting == nullptr || waiting->spinUntilNs - now <= spin.spin.count()) return spin;
    return SpinPolicy{std::chrono::nanoseconds(waiting->spinUntilNs - now)};
  }

  static void markReleased(Lease& l, std::uint64_t end);

  void handleRecord(const RecordView& rec);

  void onIntern(InPlaceMessage& msg);

  void onCancelFrame(std::uint64_t requestId);

  CallContext contextFor(const FrameHeader& h, std::string& channelName);

  void onPush(const FrameView& f, InPlaceMessage& msg);
  /// An Error frame with request id 0: a one-way message of this window was not delivered.
  void onSendFailed(const FrameView& f, InPlaceMessage& msg);

  /// Writes an Error frame for request `req`, waiting for outbox space up to its deadline.
  Result<void> writeError(FrameHeader h, const Error& e, std::int64_t deadline);

  void replyError(const FrameHeader& req, const Error& e);

  void onInvoke(const FrameView& f, InPlaceMessage& msg);

  /// Completes a pending call from a Reply/Error record whose payload is `payload` (payloadOf).
  /// Returns true when the record is now leased to a Message (released when that Message dies),
  /// and then takes `blob` too (set to null).
  bool onReply(const FrameView& f, const RecordView& rec,
               const Result<std::pair<const std::uint8_t*, std::size_t>>& payload, BlobRecordHeader*& blob);


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
        if (!wr && wr.code() == ErrorCode::TooLarge && w_.blobsFor(r)) wr = w_.writeBlobSegmentsLocked(r, segs);
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

  // ---- lifecycle

  /// Ends this endpoint: pending calls fail with `code` (a window: BusClosed; a port: why it
  /// ended). Returns false when it had ended already.
  bool markClosed(const std::string& reason, ErrorCode code = ErrorCode::BusClosed) {
    {
      std::lock_guard lk(closeMu);
      if (closed.load(std::memory_order_acquire)) return false;
      closeReason = reason;
      closeCode_ = code;
      closed.store(true, std::memory_order_release);  // pairs with the acquire loads of `closed`
    }
    for (auto& s : pending.takeAll()) {
      completeCall(s, makeError(code, fmt::format("{}: {}", s->what(), reason)));
    }
    if (link.inbox.valid()) wakeAll(link.inbox.control()->dataReady);
    if (link.outbox.valid()) wakeAll(link.outbox.control()->spaceReady);
    return true;
  }

  /// The code calls get once this endpoint has ended (BusClosed for a window).
  ErrorCode closeCode() const {
    std::lock_guard lk(closeMu);
    return closeCode_;
  }
  ErrorCode closeCode_ = ErrorCode::BusClosed;  // guarded by closeMu

  /// Dispatches until closed (Window::run, the port's start()).
  void runLoop() {
    std::lock_guard g(gate);
    DispatchingAs as(*this);
    while (!closed.load(std::memory_order_acquire)) dispatchOnce(kNoDeadline);
  }

  /// One dispatch round of at most `timeout` (Window::poll, Port::poll). When another thread
  /// dispatches, waits up to `timeout` for the gate and returns without dispatching if it stays
  /// taken (a dispatch thread holds it for good). Errors: the end's code, InvalidArgument
  /// (negative timeout).
  Result<void> pollFor(std::chrono::milliseconds timeout, const char* what) {
    if (closed.load(std::memory_order_acquire)) return makeError(closeCode(), busClosedMessage());
    auto wait = checkWaitTimeout(timeout, what);
    if (!wait) return wait.error();
    const std::int64_t until = deadlineAfter(monotonicNowNs(), *wait);
    if (std::unique_lock g(gate, *wait); g.owns_lock()) {
      DispatchingAs as(*this);
      dispatchOnce(until);
    }
    if (closed.load(std::memory_order_acquire)) return makeError(closeCode(), busClosedMessage());
    return {};
  }

  void watch() {
    for (;;) {
      pollfd p[2] = {{sock.get(), POLLIN, 0}, {hub->traceKick.get(), POLLIN, 0}};
      const int r = ::poll(p, hub->traceKick ? 2 : 1, portTraceWait());
      if (r < 0 && errno == EINTR) continue;
      if (closed.load(std::memory_order_acquire)) return;
      if ((p[1].revents & POLLIN) != 0) {
        std::uint64_t n = 0;
        [[maybe_unused]] auto got = ::read(hub->traceKick.get(), &n, sizeof n);
      }
      if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        if (portTraceWait() == 0) {
          std::lock_guard lk(hub->mu);
          flushPortTraceLocked(*hub);
        }
        continue;
      }
      auto pkt = recvPacket(sock.get());
      if (!pkt || pkt->hangup) {
        markClosed(fmt::format("the supervisor of bus '{}' is gone", bus));
        closePorts();
        return;
      }
      // After the Welcome only the descriptors of ports travel supervisor → window here.
      auto h = parseControlHeader(*pkt);
      if (h && h->type == static_cast<std::uint32_t>(ControlType::PortFd) && !pkt->fds.empty()) {
        std::lock_guard lk(hub->mu);
        hub->fds[h->value] = std::move(pkt->fds[0]);
        hub->cv.notify_all();
      }
    }
  }

  /// The watchdog's poll timeout, ms: -1 while no port trace record waits, else what is left of
  /// kPortTraceDelayNs since the batch's first record (0: flush now).
  int portTraceWait() {
    std::lock_guard lk(hub->traceMu);
    if (hub->traceBatch.empty()) return -1;
    const std::int64_t left = hub->traceSince + kPortTraceDelayNs - monotonicNowNs();
    return left <= 0 ? 0 : static_cast<int>((left + 999'999) / 1'000'000);
  }

  void close(const std::string& reason) {
    if (hub && !closed.load(std::memory_order_acquire)) {  // acquire: pairs with markClosed
      // What its ports and direct routes recorded for the trace goes out while the outbox is
      // still written (§14 "Ports"): a window that closes within the batch's 50 ms loses nothing.
      std::lock_guard lk(hub->mu);
      flushPortTraceLocked(*hub);
    }
    markClosed(reason);
    closePorts();
    if (sock) ::shutdown(sock.get(), SHUT_RDWR);
    if (watchdog.joinable() && watchdog.get_id() != std::this_thread::get_id()) watchdog.join();
    if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
  }
};


/// One end of port `info.portId` for window `w`, mapped from `fd` and listed in w's hub
/// (port.cpp; a Port's, or a direct route's, §19). Errors: as Segment::map and attachLink.
Result<std::shared_ptr<Window::Impl>> mapPortEnd(Window::Impl& w, const WelcomeInfo& info, const Fd& fd, bool opener,
                                                 std::string channel, std::chrono::milliseconds callTimeout);
/// The descriptor of port `portId` the watchdog filed (waits up to 1 s for it). Errors: SystemError.
Result<Fd> takePortFd(Window::Impl::PortHub& hub, std::uint64_t portId);

}  // namespace shmbus
