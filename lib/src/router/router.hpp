// The router: the supervisor's control plane and message switch (docs/architecture.md, "Router").
//
// It accepts windows on the bus socket, runs the supervisor's side of the handshake, reads every
// window's outbox, routes frames between windows by their headers alone (checking each payload's
// structure: docs/architecture.md §5 "Blame"), enforces deadlines, fails calls whose target dies,
// keeps the registry and the statistics, and hands what is meant for the main process to a
// MainPort (the supervisor's own endpoint) without ever running user code itself. So a main-process handler that takes seconds never holds up routing.
//
// Thread contract: every public method is thread-safe (one mutex, mu_). dispatchOnce may run on
// several threads at once (the dispatch thread and, while a main callback runs long, the lane's
// standby): rounds serialise on mu_, which is released while a round parks in epoll.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <tuple>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blob/blob.hpp"
#include "call/call.hpp"
#include "control/bus_lock.hpp"
#include "log/log.hpp"
#include "policy/policy_engine.hpp"
#include "protocol/frame_io.hpp"
#include "router/invites.hpp"
#include "router/registry.hpp"
#include "router/routes.hpp"
#include "router/schema_store.hpp"
#include "shmbus/inspect.hpp"
#include "shmbus/schema.hpp"
#include "shmbus/supervisor.hpp"
#include "spawn/spawn.hpp"
#include "trace/payload_capture.hpp"
#include "trace/trace_ring.hpp"
#include "wait/wait.hpp"
#include "wire/handshake.hpp"

namespace shmbus::detail {

class CallbackTable;

/// Work for the main process, produced by the router (a one-way message, a call to a handler, a
/// bus event). The payload is either read in place from the sender's outbox record (`pinnedConn`
/// set: the router keeps that record until Router::unpin) or owned by `held`.
struct HandlerSlot;

/// A record of a window's blob arena that the main process reads in place (docs/architecture.md
/// §17): released to the window (releaseBlob) when the last holder drops it; holds the window's
/// segment mapped until then, even after the window is gone. Thread contract: any thread.
struct HeldBlob {
  HeldBlob(BlobRecordHeader* r, BlobControl* c, std::shared_ptr<Segment> s)
      : record(r), control(c), segment(std::move(s)) {}
  ~HeldBlob() { releaseBlob(record, control); }
  HeldBlob(const HeldBlob&) = delete;
  HeldBlob& operator=(const HeldBlob&) = delete;
  BlobRecordHeader* const record;
  BlobControl* const control;
  const std::shared_ptr<Segment> segment;
};

struct MainJob {
  enum class Kind : std::uint8_t { Listen, Invoke };
  Kind kind = Kind::Listen;
  FrameHeader header{};           ///< the frame as the window wrote it (channel, schema id, ...)
  std::uint32_t sourceId = 0;     ///< sending window
  std::string sourceRole;
  std::string channelName;
  const std::uint8_t* payload = nullptr;  ///< MessageTable + segments
  std::size_t payloadBytes = 0;
  std::shared_ptr<HeldMessage> held;      ///< owner of the payload when not in place
  /// Invoke run in place: the handler the router looked up when it routed the call (the main
  /// endpoint then does not look it up again). Null for a queued job, which looks its handler up
  /// when it runs (the handler may have changed meanwhile).
  std::shared_ptr<HandlerSlot> slot;
  std::uint64_t routeId = 0;      ///< Invoke: the route whose deadline the router enforces
  std::int64_t deadlineNs = 0;    ///< Invoke: absolute CLOCK_MONOTONIC ns
  std::int64_t timeoutMs = 0;     ///< Invoke: the caller's timeout, for messages
  std::uint32_t pinnedConn = 0;   ///< in place: the window whose outbox record holds the payload
  /// A blob (docs/architecture.md §17): the record of the window's arena that holds the payload,
  /// read in place whether the job runs in place or queued; released when the job's last copy
  /// goes.
  std::shared_ptr<HeldBlob> blob;

  /// Makes the job independent of the window's ring record (for a job that is queued): copies the
  /// payload into `held`, unless it is a blob (kept in place). Errors: InvalidMessage.
  Result<void> detach();
};

/// The main process as the router sees it (implemented by the supervisor's MainEndpoint).
class MainPort {
 public:
  virtual ~MainPort() = default;
  /// Takes a main-bound job. With `inPlaceOk` it may keep the job in place and return true: the
  /// router then pins the record, ends its round, and the thread that called dispatchOnce runs the
  /// job after it returns (Router::unpin when done). Otherwise it must detach() or drop the job.
  virtual bool deliver(MainJob& job, bool inPlaceOk) = 0;
  /// The main-process handler of route `routeId` should stop: its caller cancelled, timed out or
  /// went away (CallContext::cancelled() turns true).
  virtual void cancelMain(std::uint64_t routeId) = 0;
  /// Runs `fn` (user code: a Call's then-callback) on the main process's callback lane.
  virtual void post(std::function<void()> fn) = 0;
};

/// The options the router needs from SupervisorOptions.
struct RouterOptions {
  std::string bus;
  std::string socketPath;
  /// The policy at start: SupervisorOptions' allowedRoles, invitedRoles and inviteOnly as one
  /// model (policyFromOptions); Supervisor::setPolicy replaces it.
  Policy policy;
  std::vector<uid_t> allowedUids;         ///< SupervisorOptions::allowedUids
  std::uint32_t inboxBytes = 1u << 20;
  std::uint32_t outboxBytes = 1u << 20;
  std::uint32_t maxRecordBytes = 1u << 18;
  std::uint64_t blobBytesPerWindow = 1ull << 30;  ///< SupervisorOptions::blobBytesPerWindow
  std::uint64_t blobBytesPerBus = 4ull << 30;     ///< SupervisorOptions::blobBytesPerBus
  std::uint64_t windowBlobBytes = 64ull << 20;    ///< SupervisorOptions::windowBlobBytes (4 KiB multiple)
  bool directRoutes = false;                      ///< SupervisorOptions::directRoutes
  std::chrono::nanoseconds spin{std::chrono::microseconds(4)};
  LogLevel logLevel = LogLevel::Warn;
  std::size_t traceRingBytes = kTraceDefaultCapacity;
  PayloadCapture payloadCapture;  ///< SupervisorOptions::payloadCapture (checked)
  std::chrono::milliseconds handshakeTimeout{5000};  ///< SupervisorOptions::handshakeTimeout
  std::uint32_t maxWindows = 1024;                   ///< SupervisorOptions::maxWindows
  std::uint32_t maxPendingCalls = 8192;              ///< SupervisorOptions::maxPendingCalls
};

class Router {
 public:
  /// Takes the bus's lock (one supervisor per bus: control/bus_lock.hpp), replaces a stale socket,
  /// listens, and removes stale segment names. Errors: Denied (another supervisor runs the bus),
  /// SystemError.
  static Result<std::unique_ptr<Router>> create(RouterOptions o, MainPort& main,
                                                std::shared_ptr<CallbackTable> mainCallbacks);
  ~Router();

  const std::string& socketPath() const noexcept { return path_; }
  const RouterOptions& options() const noexcept { return opts_; }

  /// One round: drains every outbox; when nothing was there, spins briefly, then parks in epoll
  /// (sockets, doorbell, deadline timer, wake) until an event or `deadline`. `mayInline`: whether
  /// the calling thread runs main-process callbacks itself (MainPort::deliver).
  void dispatchOnce(std::int64_t deadline, bool mayInline);
  /// Ends a parked dispatchOnce early (an eventfd write).
  void wake();
  /// True once stop() began.
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  /// Registers a spawned child's socket (role pre-authenticated).
  WindowInfo addSpawned(Fd sock, const std::string& role, pid_t pid);
  /// A one-time token for `role`, good for `ttl` (already checked: positive, clamped) from now
  /// (Supervisor::invite). Errors: Full, SystemError, BusClosed (stopping).
  Result<std::string> invite(const std::string& role, std::chrono::milliseconds ttl);
  /// Full when the bus has SupervisorOptions::maxWindows windows (registered or registering), or
  /// `role` has its policy's maxWindows.
  Result<void> checkWindowCap(const std::string& role) const;
  std::vector<WindowInfo> windows() const;
  std::optional<WindowInfo> window(std::uint32_t id) const;
  /// A live window with `roleId` (that handles `channel`, when non-zero), if any.
  std::optional<WindowInfo> findWindow(std::uint64_t roleId, std::uint64_t channel) const;
  /// Waits (without dispatching) up to `ns` for the registry to change.
  void awaitRegistryChange(std::chrono::nanoseconds ns);

  /// Main → window push. Errors: NoTarget, Full, TooLarge, BusClosed.
  Result<void> send(const Target& target, const Channel& channel, const BuildFn& build);
  /// Main → windows broadcast. Errors: TooLarge.
  Result<BroadcastReport> broadcast(const Channel& channel, const BuildFn& build, const BroadcastOptions& options);
  /// Main → window call; completes `s` (its then-callback runs through MainPort::post).
  void invoke(const Target& target, const Channel& channel, const BuildFn& build, const CallOptions& options,
              const std::shared_ptr<CallState>& s);
  /// Cancels main's call `s` at its target.
  void cancelMainCall(const std::shared_ptr<CallState>& s);

  /// A main-process handler's outcome for route `routeId`: writes the Reply (`segments`, schema
  /// `replySchemaId`) or the Error to the caller, unless the route already ended (then the reply is
  /// late: dropped and counted).
  void replyFromMain(std::uint64_t routeId, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                     std::uint64_t replySchemaId);
  void failFromMain(std::uint64_t routeId, Error e);
  /// A main-process responder was dropped without replying (counted; the caller times out).
  void countUnanswered(std::uint64_t channel);
  /// Releases a record pinned for an in-place main job (MainJob::pinnedConn).
  void unpin(std::uint32_t connId);

  /// Ports between windows (Supervisor::ports); offers past their deadline are closed first.
  std::vector<PortInfo> ports();
  /// Supervisor::revokePort. Errors: NoTarget.
  Result<void> revokePort(std::uint64_t id);

  /// Replaces the policy in force (already validated); logs what changed (Info). Every frame
  /// read after it is decided by the new rules (docs/architecture.md §15).
  void setPolicy(Policy policy);
  /// Supervisor::setPolicy(channel, ChannelPolicy): the rule for exactly `channel`, first in order.
  void setChannelCallers(const Channel& channel, const std::vector<std::string>& callers);
  /// Supervisor::nameChannels (names checked by the caller): trusted names for these ids.
  void nameChannels(std::span<const Channel> channels);
  /// The policy in force.
  Policy policy() const;
  /// Supervisor::setPayloadCapture (already checked): the next message read follows it.
  void setPayloadCapture(PayloadCapture capture);
  /// Supervisor::announceSchema: the main process's typed stubs give their contract's schema
  /// straight to the store (router_schemas.cpp; checked like a window's, kept in preference to
  /// one). Errors: InvalidMessage, Full (the bus's kMaxSchemaBytesPerBus).
  Result<void> announceSchema(const ContractSchema& contract);
  void setChannelTimeout(const Channel& channel, std::chrono::milliseconds timeout);
  RouterStats stats() const;

  /// Disconnects every window (their calls fail with BusClosed), fails main's pending calls and
  /// removes the socket. Call once, with no dispatchOnce running.
  void stop();
  /// Marks the router stopping and wakes parked rounds (before joining dispatch threads).
  void beginStop();
  Reaper& reaper() noexcept { return reaper_; }
  const Logger& log() const noexcept { return log_; }

 private:
  Router(RouterOptions o, MainPort& main, std::shared_ptr<CallbackTable> mainCallbacks);

  // Everything below runs under mu_.
  void epollAdd(int fd, std::uint64_t tag);
  void acceptAll();
  /// accept() failed with EMFILE/ENFILE: accepts the next pending connection through the spare
  /// descriptor and closes it. False when there was none (or no spare).
  bool shedConnection();
  void expireHandshakes();
  void armHandshakeTimer();
  Result<void> windowCapLocked(const Conn* except) const;
  /// Full when `role` has its policy's maxWindows windows (registered, registering past their
  /// Hello, or spawned), `except` not counted.
  Result<void> roleCapLocked(const std::string& role, const Conn* except) const;
  /// Makes the socket file mode 0666 when other uids may connect (allowedUids or the policy's
  /// uids: they must reach it to be told yes or no, and SO_PEERCRED at accept guards it), else
  /// 0600. Under mu_ (or before the router runs).
  void setSocketMode() const;
  /// Whether connections from `uid` are accepted: this process's own uid, allowedUids, or the
  /// policy's uids. Under mu_.
  bool uidAllowed(uid_t uid) const;
  /// The role a window without spawn() asks for in its Hello, by the registration policy
  /// (docs/architecture.md §5): its admission (Open or Invited), or Denied with the reason.
  Result<Admission> admit(const Conn& c, const HelloRequest& hello);
  void onConnReadable(std::uint32_t id);
  void onHello(Conn& c, const Packet& pkt);
  void onMapped(Conn& c);
  // ---- the trace (router_trace.cpp, docs/architecture.md §14); all under mu_
  /// An inspector asks for the trace ring: created on first use, its memfd sent back, with the
  /// payload ring's when `flags` asks for payloads (kInspectPayloads) and the policy and the
  /// inspector's uid allow it.
  void onInspect(Conn& c, std::uint64_t flags);
  /// An inspector asks for a snapshot: the registry and the counters, as bus.capnp BusSnapshot.
  void onSnapshot(Conn& c);
  RouterStats statsLocked() const;
  /// True while an inspector is attached: events are recorded only then.
  bool tracing() const noexcept { return inspectors_ > 0; }
  /// The flow id of a new call: the caller's when it sent one, else a fresh one.
  std::uint64_t traceIdFor(std::uint64_t fromCaller) noexcept { return fromCaller != 0 ? fromCaller : nextTraceId_++; }
  void record(const TraceEvent& e);
  /// A call ended (reply, error, timeout, target gone, cancel); `reply`: its payload, captured
  /// when capturing().
  void traceCall(const Route& r, TraceKind kind, ErrorCode status, std::string_view error, std::uint32_t replyBytes,
                 PayloadView reply = {});
  /// A one-way message (send, push, broadcast) or a call refused before it was routed;
  /// `payload`: the message's, captured when capturing().
  void traceMessage(TraceKind kind, std::uint32_t sourceId, const FrameHeader& h, std::uint32_t targetId,
                    std::uint32_t bytes, const Error* e, PayloadView payload = {});
  /// Whether payloads of `channel` go into the payload ring: an inspector that may read them is
  /// attached, the policy still lets them (Policy::inspectPayloads) and capture_ selects it.
  /// One load while no such inspector is attached.
  bool capturing(std::uint64_t channel);
  /// Writes `p` into the payload ring when capturing(channel) (payload_capture.hpp: `key` is
  /// the caller's request id for a request, else the seq of the event written next). Inline
  /// test first: a routed call pays one load and branch while no payload reader is attached.
  void capturePayload(PayloadPart part, std::uint32_t sourceId, std::uint64_t key, std::uint64_t channel,
                      const PayloadView& p) {
    if (payloadReaders_ != 0) captureIfSelected(part, sourceId, key, channel, p);
  }
  void captureIfSelected(PayloadPart part, std::uint32_t sourceId, std::uint64_t key, std::uint64_t channel,
                         const PayloadView& p);
  /// A window registered, left or was cut off.
  void traceWindow(TraceKind kind, const Conn& c, const std::string& reason);
  /// Writes every window segment's trace word (traceWord): 1 while tracing(), else 0. Called
  /// when the first inspector attaches and when the last one leaves. O(windows).
  void setTraceWords();
  /// A PortTrace frame from `w` (docs/architecture.md §14 "Ports"): a malformed payload cuts `w`
  /// off (blame); each record of a port `w` holds (open, or among the last kRecentPorts closed)
  /// becomes a TraceEvent whose target is the port's other end as the router knows it; other
  /// records are dropped with one log line per frame (Warn). Nothing is written while no
  /// inspector is attached.
  void onPortTrace(Conn& w, const FrameView& f);
  void doom(Conn& c, std::string reason, bool bad);
  void reapDoomed();
  void drainClosing(Conn& c);
  void disconnect(std::uint32_t id);
  void emitWindowEvent(std::string_view channel, const Conn& c, const std::string& reason);
  void expireDeadlines();
  void failCaller(const Route& r, Error e);
  void sendCancel(std::uint32_t targetId, std::uint64_t routeId);
  Error timeoutError(const Route& r);
  template <typename W>
  Result<void> writeToWindow(Conn& target, W&& write);
  // ---- blobs into a window's arena (router_main.cpp, docs/architecture.md §17); under mu_
  /// Writes `build`'s message to `t`'s inbox as frame `h`: in the ring, or, when too large for
  /// it, built again in `t`'s blob arena (no wait) and sent as its descriptor (kFlagBlob).
  /// Errors: as writeFrame; TooLarge (the window has no arena, or the message is larger than it),
  /// Full (the window has not released enough of what it was sent there).
  Result<void> writeBuilt(Conn& t, FrameHeader h, const BuildFn& build, std::size_t hint = 0);
  /// Writes the message `payload` (`bytes` of table + segments, as a ring payload) to `t`'s
  /// inbox as frame `h`: in the ring, or a copy in `t`'s blob arena when too large for it (a
  /// window's large message to another window: the target maps only its own segment). Errors:
  /// as writeBuilt.
  Result<void> writeCopy(Conn& t, FrameHeader h, const std::uint8_t* payload, std::size_t bytes);
  /// For a message of `bytes` (table + segments) to `t`: none when it fits `t`'s inbox ring;
  /// else `copy()` (tryCopyBlob into t.blobOut) and `h` becomes its descriptor frame (kFlagBlob).
  /// Errors: as writeBuilt.
  template <typename Copy>
  Result<std::optional<BlobDescriptor>> blobIfLarge(Conn& t, FrameHeader& h, std::size_t bytes, Copy&& copy);
  /// Writes the descriptor frame `h` of `d` (just committed in `t`'s arena) into `t`'s inbox; a
  /// descriptor not written gives its record back. Errors: as writeFrameCopy.
  Result<void> writeDescriptor(Conn& t, const FrameHeader& h, const BlobDescriptor& d);
  /// Writes the outcome `h` of one of `caller`'s calls whose payload is the descriptor `d` (just
  /// committed in `caller`'s arena; `h` flagged kFlagBlob) as writeOutcome does: written, or held
  /// for flushHeld; one neither written nor held gives its record back. Errors: as writeOutcome.
  Result<void> writeOutcomeBlob(Conn& caller, const FrameHeader& h, const BlobDescriptor& d);
  /// `e` (TooLarge or Full from `t`'s blob arena) said as the window's.
  Error windowBlobError(const Conn& t, Error e) const;
  /// Writes the outcome (reply or error) of one of `caller`'s own calls with `write`; when its
  /// inbox is full, or frames are already held for it, keeps `held()` (a HeldFrame) to be written
  /// in order by flushHeld once it has room (docs/architecture.md §5 "Outcomes are never
  /// dropped"). Errors: as writeToWindow, and Full when what is held for the window would exceed
  /// its inbox's capacity (the outcome is then lost: the caller's own timer ends the call).
  template <typename W, typename H>
  Result<void> writeOutcome(Conn& caller, W&& write, H&& held);
  /// Writes what is held for each window, oldest first, while its inbox has room. A few loads
  /// when nothing is held.
  void flushHeld();
  void internRole(Conn& target, std::uint64_t roleId);
  // ---- policy (router_policy.cpp, docs/architecture.md §15); all under mu_
  /// Whether `roleId` may do `a` on `channel`. When not: counted (RouterStats::policyDenials),
  /// logged (Warn), and the Denied error returned, "<what()>: denied by policy (role 'r' may not
  /// <a> '<channel>', rule at line N | the default)".
  template <typename What>
  std::optional<Error> denied(PolicyAction a, std::uint64_t channel, std::uint64_t roleId, std::string_view role,
                              std::uint32_t callerId, What&& what);
  /// The channel's trusted name (verified by its hash, or the main process's own), if known.
  std::optional<std::string> policyName(std::uint64_t channel) const;
  /// A window's handler registration for a channel its role may not handle: told to the window
  /// (an Error frame with request id 0, Denied) and logged; calls to it get Denied.
  void onHandlerAdd(Conn& w, const FrameHeader& h);
  /// A window's message larger than its role's maxMessageBytes: the TooLarge error, else none.
  std::optional<Error> overLimit(const Conn& w, const FrameHeader& h, std::size_t payloadBytes);
  /// An invoke of `payloadBytes` from `w` past its calls or bytes in flight (the bus's
  /// maxPendingCalls, its role's maxPendingCalls and maxBytesInFlight): the Full error, counted
  /// in overPendingLimit; else none.
  std::optional<Error> overInFlight(const Conn& w, const FrameHeader& h, std::size_t payloadBytes);
  std::int64_t deadlineFor(const FrameHeader& h, std::int64_t now, std::int64_t& timeoutMs) const;
  /// Answers request `req` of `w` with `e` (counted; traced as an Invoke when `traced`).
  void replyError(Conn& w, const FrameHeader& req, Error e, bool traced = true);
  void process(Conn& w, const RecordView& rec);
  /// The frame kinds process() handles, for `f` as parsed (or with a blob's payload).
  void processFrame(Conn& w, const FrameView& f);
  /// A kFlagBlob frame of `w` (docs/architecture.md §17): a send, invoke or reply whose
  /// descriptor names a valid record of `w`'s arena; points `f`'s payload at the record's
  /// message, clears the flag and sets frameBlob_. Anything else cuts `w` off (false): its own
  /// code sends no other blob frame, so a bad one was written by something else.
  bool openBlob(Conn& w, FrameView& f);
  void onIntern(Conn& w, const FrameView& f);

  // ---- announced schemas (router_schemas.cpp, docs/architecture.md §6); all under mu_
  /// A Schema frame from `w`: within the window's bytes, copied, checked and kept; a refusal is
  /// logged (Warn) and changes nothing else.
  void onSchema(Conn& w, const FrameView& f);
  /// An inspector asks for the schemas: a bus.capnp SchemaSet in a memfd.
  void onSchemas(Conn& c);
  SchemaStore schemas_;  // announced schemas; they outlive their announcers
  /// A one-way message from `w` that cannot be delivered: counted, logged, and reported back to
  /// `w` as an Error frame with request id 0 (dropped when `w`'s inbox is full: counted only).
  void undelivered(Conn& w, const FrameHeader& h, const Error& e, bool logIt = true);
  /// `w` wrote a payload that failed validatePayload (`what`: send, invoke, reply): it is cut off
  /// as a bad message (disconnect() kills a spawned window). docs/architecture.md §5, "Blame".
  void blame(Conn& w, const FrameHeader& h, std::string_view what, const Error& e);
  void onSend(Conn& w, const FrameView& f);
  void onInvoke(Conn& w, const FrameView& f);
  void invokeMain(Conn& w, const FrameView& f, std::int64_t now);
  void onReply(Conn& w, const FrameView& f);
  void onCancel(Conn& w, const FrameHeader& h);
  MainJob jobFor(Conn& w, const FrameView& f, MainJob::Kind kind);
  /// Takes route `routeId` for a main handler's outcome: none when it already ended or its
  /// deadline passed (counted late; the caller gets Timeout).
  std::optional<Route> takeMainOutcome(std::uint64_t routeId);
  bool deliverToMain(Conn& w, MainJob& job);
  std::size_t drain();
  bool anyData();

  // ---- ports (router_ports.cpp, docs/architecture.md §16); all under mu_
  /// A port: its segment stays mapped here so the router can close it for both ends (the close
  /// word and a wake-up of every ring word) when a window dies or it is revoked.
  /// Who a port connects, kept after it ended too (recentPorts_) for the trace.
  struct PortEnds {
    std::uint64_t id = 0;
    std::uint32_t opener = 0, acceptor = 0;
    std::string openerRole, acceptorRole;
    std::uint64_t channel = 0;
  };
  struct PortLink : PortEnds {
    std::uint64_t openerReq = 0;  // the PortOpen's request id, answered when accepted
    std::int64_t deadline = 0;    // the opener's deadline for the answer
    bool accepted = false;
    WindowSegment seg;  // seg.segment->fd() until both ends have it; seg.blobBytes: arena bytes per direction (§17)
    // A direct route's port (router_routes.cpp, docs/architecture.md §19).
    bool route = false;
    bool openerMapped = false, acceptorMapped = false;  // a Welcome reached that end
    RouteStatsTable* routeStats = nullptr;              // in seg; written by the opener
    std::vector<std::uint64_t> slotChannels;            // slot i of routeStats: this channel
    std::set<std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>> grants;  // (target, role, channel)
  };
  void onPortOpen(Conn& w, const FrameView& f);
  void onPortAccept(Conn& w, const FrameHeader& h);
  void onPortReject(Conn& w, const FrameView& f);
  void onPortClose(Conn& w, const FrameHeader& h);
  /// Ends `id` with `reason` (wire/handshake.hpp PortCloseReason): the close word, a wake-up of
  /// both ends, and, for a port not yet accepted, `openerError` to the opener.
  /// `detail` (optional) is added to the trace event's reason (a window's disconnect reason).
  void closePort(std::uint64_t id, std::uint32_t reason, const std::optional<Error>& openerError,
                 std::string_view detail = {});
  /// A refused open (no port yet) as a PortOpen event: `w` asked `h`, `t` the target when known.
  void tracePortRefused(const Conn& w, const FrameHeader& h, const Conn* t, const Error& e);
  /// The event of port `p` (source the opener, target the acceptor), `kind` and outcome set.
  TraceEvent portEvent(TraceKind kind, const PortEnds& p, ErrorCode status, std::string error);
  /// Port `id` if `windowId` is one of its ends: open, or among the last kRecentPorts ended.
  const PortEnds* portOf(std::uint64_t id, std::uint32_t windowId) const;
  /// Ports as Supervisor::ports() lists them (under mu_).
  std::vector<PortInfo> portsLocked();
  /// Every port of window `id` (it is gone).
  void closePortsOf(const Conn& c);
  /// Closes the offered ports whose opener's deadline passed (kPortOpenTimedOut). O(ports).
  void expirePortOffers();

  // ---- direct routes (router_routes.cpp, docs/architecture.md §19); all under mu_
  /// After `w`'s routed call or send `h` was written to `t`'s inbox: grants `w` a direct route of
  /// h.channel to h's target (target, role) over the route port of (w, t), opened on first use.
  /// Does nothing when routes are off, already granted, or not allowed (policy limits, caps);
  /// a grant that cannot be written is simply not made (the call went routed anyway).
  void grantRoute(Conn& w, const FrameHeader& h, Conn& t);
  /// `w` switched to its route port h.requestId (RouteFence) or back (RouteSync): forwards the
  /// frame to the target, held when its inbox is full (a lost fence would stall the route).
  void onRouteFence(Conn& w, const FrameHeader& h);
  /// Closes every route port (the policy changed): calls in flight on them fail with TargetGone.
  void closeRoutes(std::string_view why);
  /// Adds what a route port's caller counted (`table`, slot i for `slotChannels[i]`) to `into`
  /// (by channel).
  static void addRouteCounts(const RouteStatsTable& table, const std::vector<std::uint64_t>& slotChannels,
                             std::map<std::uint64_t, RouterStats::ChannelStats>& into);
  /// A route port that ended while its caller may still count on it: calls in flight on it fail
  /// at the caller after the close (TargetGone) and count their errors into its table then, so
  /// the table stays mapped and is read live until the caller goes (closePortsOf) or more than
  /// kRetiredRoutes are kept (the oldest first); then it is folded into routeFolded_.
  struct RetiredRoute {
    std::uint32_t opener = 0;
    std::shared_ptr<Segment> segment;  // keeps `table` mapped
    const RouteStatsTable* table = nullptr;
    std::vector<std::uint64_t> slotChannels;
  };
  static constexpr std::size_t kRetiredRoutes = 64;
  std::deque<RetiredRoute> retiredRoutes_;
  /// Folds the retired routes whose caller is `opener` into routeFolded_.
  void foldRetiredRoutes(std::uint32_t opener);
  /// route ports by (caller, target window)
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t> routePorts_;
  /// What closed route ports counted once folded, by channel (RouterStats: calls, messages, errors).
  std::map<std::uint64_t, RouterStats::ChannelStats> routeFolded_;
  std::map<std::uint64_t, PortLink> ports_;
  std::uint64_t nextPortId_ = 1;
  /// Ports ended lately, newest last, at most kRecentPorts: a window's port end flushes its last
  /// trace records when it sees the end, after the router has closed the port.
  std::deque<PortEnds> recentPorts_;

  RouterOptions opts_;
  Logger log_;
  MainPort& main_;
  std::shared_ptr<CallbackTable> mainCallbacks_;
  std::string path_;
  BusLock busLock_;  // held from create() until stop(): before listenFd_, released after it
  Fd listenFd_, epollFd_, doorbellFd_, timerFd_, wakeFd_, handshakeTimerFd_;
  Fd spareFd_;  // /dev/null, held so that a process out of descriptors can still shed a connection
  // Connections that have not finished their handshake, by deadline (accept order keeps them
  // sorted: one timeout for all). Entries of connections that finished or went are skipped.
  std::deque<std::pair<std::int64_t, std::uint32_t>> handshakes_;
  SpinPolicy spin_;

  mutable std::mutex mu_;
  std::condition_variable registryCv_;
  Registry registry_;
  RouteTable routes_;
  RouterCounters counters_;
  PolicyEngine policy_;
  std::unordered_map<std::uint64_t, std::int64_t> channelTimeoutMs_;
  std::vector<WaitWord*> armed_;  // dispatchOnce: the outboxes armed for one park (reused)
  bool mayInline_ = false;        // the current round's thread runs main jobs in place
  // The blob of the frame process() handles now (openBlob): shared with the main job made of it
  // (jobFor); released when the frame and the job are done with it. process() never nests (main
  // jobs run after the round, other threads' rounds wait for mu_), so one slot serves.
  std::shared_ptr<HeldBlob> frameBlob_;
  bool endRound_ = false;         // a main job was taken in place: end the round
  std::size_t holding_ = 0;       // windows with held outcomes (Conn::held non-empty)
  bool anyDoomed_ = false;        // doom() ran since reapDoomed() last found every doomed window gone
  std::atomic<bool> stopping_{false};
  std::optional<TraceProducer> trace_;   // created when the first inspector attaches
  std::uint32_t inspectors_ = 0;         // connections in state Inspector
  std::optional<TraceProducer> payloadRing_;  // created when the first payload reader attaches
  std::uint32_t payloadReaders_ = 0;     // inspectors holding the payload ring (Conn::payloadReader)
  CaptureFilter capture_;                // SupervisorOptions::payloadCapture
  std::vector<std::uint8_t> payloadBuf_; // encodePayloadRecord's scratch (reused)
  std::uint64_t nextTraceId_ = 1;
  std::vector<std::uint8_t> traceBuf_;   // encodeTraceEvent's scratch (reused)
  Reaper reaper_;
  InviteStore invites_;  // Supervisor::invite's tokens
};

}  // namespace shmbus::detail
