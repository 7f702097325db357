// libshmbus — the supervisor: the main process's side of the bus (docs/architecture.md).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/channel.hpp"
#include "shmbus/error.hpp"
#include "shmbus/log.hpp"
#include "shmbus/message.hpp"
#include "shmbus/policy.hpp"
#include "shmbus/validate.hpp"

namespace shmbus {

struct ContractSchema;  // shmbus/schema.hpp

/// Largest PayloadCapture::maxBytes, bytes.
inline constexpr std::uint32_t kMaxPayloadCaptureBytes = 16 * 1024;

/// Which message payloads the trace captures for inspectors (docs/architecture.md §14,
/// "Payloads"). Off by default. Captured: the payloads windows write (send, sendTo, a call's
/// request, a window's reply), the main process's replies and broadcasts; not the main process's
/// pushes and calls. Only an inspector that asked for payloads and that the policy lets read
/// them (Policy::inspectPayloads, same uid as the supervisor) gets them; while none is attached
/// nothing is captured or copied.
struct PayloadCapture {
  /// Bytes kept of each payload (its Cap'n Proto standard serialization: segment table, then
  /// segments); a longer payload is cut there and flagged truncated (TracePayload). 0 = capture
  /// off. At most kMaxPayloadCaptureBytes.
  std::uint32_t maxBytes = 0;
  /// fnmatch(3) globs of the channel names captured ("Dashboard.*"); empty = every channel.
  /// A channel the supervisor knows no name of is matched as "#<hex id>".
  std::vector<std::string> channels;
};

/// How a supervisor is created (Supervisor::create). Sizes in bytes, times as typed.
struct SupervisorOptions {
  std::string bus;  ///< bus name, 1..64 characters of [A-Za-z0-9_-] (NameKind::Bus, shmbus/validate.hpp)
  /// Roles a window connecting by socket path may claim (each checked as NameKind::Role); empty =
  /// any role (same uid only). The role "main" names the main process and is never given to a
  /// window by path, even when listed here (connect: Denied).
  /// Spawned windows get their role from spawn() and are not limited by this list, nor are
  /// windows that present a valid invitation token (invite()).
  std::vector<std::string> allowedRoles;
  /// Roles that are not open for registration by path: only spawn() or a valid invitation token
  /// (invite(), WindowOptions::token) gives them, so no process can claim them by connecting
  /// (each checked as NameKind::Role). A connect without a token gets Denied. Empty (the
  /// default) = every role that allowedRoles allows is open.
  std::vector<std::string> invitedRoles;
  /// Every role needs spawn() or a valid invitation token: nothing is open by path (connect
  /// without a token: Denied). Default false (the roles of allowedRoles minus invitedRoles are
  /// open).
  bool inviteOnly = false;
  /// User ids allowed to connect besides this process's own (checked with SO_PEERCRED on every
  /// connection, windows and inspectors alike). A connection from any other uid gets Denied
  /// (its connect says so) and is closed. The default runtime directory is mode 0700, so a
  /// window of another uid reaches the bus only through a socketPath in a directory it can
  /// search; with allowedUids non-empty the socket file itself is made mode 0666 (the uid check
  /// is what guards it). Role rules apply to these windows as to any.
  std::vector<uid_t> allowedUids;
  std::string socketPath;                   ///< empty = the runtime dir's `shmbus-BUS.sock`
  std::uint32_t inboxBytes = 1u << 20;      ///< default inbox capacity per window (power of two)
  std::uint32_t outboxBytes = 1u << 20;     ///< default outbox capacity per window (power of two)
  std::uint32_t maxRecordBytes = 1u << 18;  ///< largest record (frame header + message), bytes
  /// Most blob arena bytes (both directions of every port, docs/architecture.md §17) the ports
  /// of one window may hold at once, as opener or acceptor. A port whose PortOptions::blobBytes
  /// is 0 (the default) gets what is left, clamped (0 left: no arenas, and a message larger than
  /// the ring is TooLarge as without blobs); one that asks more than is left fails to open with
  /// TooLarge naming the limit. The arenas are sparse: memory goes to the pages blobs touched
  /// (PortOptions::blobBytes says which stay until the port closes).
  std::uint64_t blobBytesPerWindow = 1ull << 30;
  /// Most blob arena bytes of all the bus's ports at once; as blobBytesPerWindow.
  std::uint64_t blobBytesPerBus = 4ull << 30;
  /// Size in bytes of each of the two blob arenas in every window's own segment, and in every
  /// direct route's port (rounded up to 4 KiB; 0 = none; at most 64 GiB, else InvalidArgument).
  /// A message larger than the ring it would take is built or copied there and read in place by
  /// its receiver, which releases it when its listener or handler returns (a reply: when its
  /// Message is dropped): a window's send, invoke and reply, main's send, invoke, broadcast and
  /// reply to a window (docs/architecture.md §17). A window's large message to another window is
  /// copied once by the supervisor into the target's arena, then goes over the direct route's
  /// arenas. Larger than the arena is TooLarge; an arena the receiver has not released enough of
  /// is Full for the supervisor (it never waits) and waited for by a window. The arenas are
  /// sparse: memory goes to the pages blobs touched, and a sender keeps at most half an arena of
  /// them for blobs no longer held. Not counted in blobBytesPerWindow or blobBytesPerBus (ports'
  /// arenas).
  std::uint64_t windowBlobBytes = 64ull << 20;
  /// Direct routes (docs/architecture.md §19), on by default: once a window's routed call or send
  /// of a channel reached a window (by role or id), the supervisor opens a port between the two
  /// (a route port: a ring pair as large as the two windows' inboxes) and the caller's later calls
  /// and sends of that channel to that target go over it without waking the supervisor. Order per
  /// (caller, target) is kept across the switch (fence and sync records); deadlines, cancel and
  /// TargetGone work as routed; a send the route cannot take goes routed; RouterStats counts the
  /// calls (directCalls) and inspectors see them (batched by the caller's end, within ~50 ms).
  /// Not granted to roles with policy limits (RoleRule maxPendingCalls, maxBytesInFlight,
  /// maxMessageBytes), which the supervisor enforces per call, nor while an inspector captures
  /// the channel's payloads; at most 16 per caller. A policy change closes every route port
  /// (calls in flight on them fail with TargetGone). Memory: each route holds its ring pair until
  /// one of its windows goes (up to 16 × 2 inboxes per window). false: every call passes the
  /// supervisor; per call: CallOptions::direct.
  bool directRoutes = true;
  /// Spin budget of the dispatch loop before it parks in epoll, ns. 0 = park at once.
  std::chrono::nanoseconds spin{std::chrono::microseconds(4)};
  /// Bytes of the trace ring inspectors read (shmbus/inspect.hpp; rounded up to a power of two,
  /// at least 64 KiB). Created when the first inspector attaches; events are recorded only while
  /// one is attached.
  std::size_t traceRingBytes = 4u << 20;
  /// Payload capture for inspectors (off by default); the payload ring is as large as the trace
  /// ring. Supervisor::setPayloadCapture changes it later. Checked by create (InvalidArgument).
  PayloadCapture payloadCapture;
  /// Ceiling of this supervisor's log records (the sink is shmbus/log.hpp's).
  LogLevel logLevel = LogLevel::Warn;
  /// How many main-process callbacks (handlers, listeners, then-callbacks) may run at once.
  /// 1 (the default) runs them one at a time in arrival order; N > 1 adds N - 1 worker threads
  /// and callbacks may then run concurrently and out of order. Routing never waits for them.
  unsigned callbackThreads = 1;
  /// A connection that has not finished its handshake (Hello → Welcome → Mapped) this long after
  /// it was accepted is closed, logged (warn) and counted (RouterStats::handshakeTimeouts), so
  /// silent connections cannot hold descriptors. Spawned windows are exempt (spawn() started
  /// them). Must be positive; longer than kMaxTimeout is clamped.
  std::chrono::milliseconds handshakeTimeout{5000};
  /// Most windows on the bus at once (registered, registering, or spawned and not yet connected).
  /// A window past it gets Full from its connect (or spawn() returns Full), counted in
  /// RouterStats::refusedWindows. At most 64 further connections are held just long enough to
  /// tell them so; beyond those, a connection is closed unheard (its connect sees BusClosed).
  /// Must be at least 1.
  std::uint32_t maxWindows = 1024;
  /// Most calls one window may have in flight through the router at once (window→main and
  /// routed, counted from when the router reads the Invoke until the call ends). The next invoke
  /// fails at once with Full ("window ... has N calls in flight"), counted in
  /// RouterStats::overPendingLimit, so a window that fires calls at a slow handler cannot grow
  /// the router's tables without bound. A role's RoleRule::maxPendingCalls can lower it for the
  /// windows of that role. Must be at least 1.
  std::uint32_t maxPendingCalls = 8192;
};

/// How a window got its role (WindowInfo::admission).
enum class Admission : std::uint8_t {
  Open,     ///< connected by socket path to a role open for registration (SupervisorOptions)
  Invited,  ///< connected by socket path with a valid invitation token (Supervisor::invite)
  Spawned,  ///< started by Supervisor::spawn over a pre-authenticated socket
};

/// "open", "invited" or "spawned". Thread contract: pure; any thread.
const char* toString(Admission a) noexcept;

/// A registered window.
struct WindowInfo {
  std::uint32_t id = 0;   ///< window id given by the supervisor (> 0)
  std::string role;       ///< the window's role
  pid_t pid = 0;          ///< its process id (SO_PEERCRED, or spawn()'s child)
  bool spawned = false;  ///< started by spawn() (role pre-authenticated): admission == Spawned
  Admission admission = Admission::Open;  ///< how it got its role
  uid_t uid = 0;          ///< its user id (SO_PEERCRED; a spawned window: the supervisor's own)
};

/// A port between two windows (Window::openPort; docs/architecture.md §16).
struct PortInfo {
  std::uint64_t id = 0;        ///< the port's id (> 0), as Port::id() on both sides
  std::uint32_t opener = 0;    ///< the window that opened it
  std::uint32_t acceptor = 0;  ///< the window it was opened to
  std::string channel;         ///< the channel it was opened on ("#<hex id>" when unnamed)
  bool accepted = false;       ///< false while the acceptor's onPort listener has not taken it
  /// A direct route's port (docs/architecture.md §19): opened by the supervisor itself between a
  /// caller (`opener`) and the window its routed calls went to (`acceptor`); `channel` names the
  /// first channel routed over it.
  bool route = false;
};

/// Roles a broadcast goes to: all windows, or only `roles`, minus `excludeRoles`.
struct BroadcastOptions {
  std::vector<std::string> roles;         ///< only windows of these roles (empty = every role)
  std::vector<std::string> excludeRoles;  ///< never windows of these roles
};

/// What a broadcast did: windows reached, and the ones whose inbox refused (Full) it.
struct BroadcastReport {
  std::size_t delivered = 0;                             ///< windows whose inbox took the message
  std::vector<std::pair<std::uint32_t, Error>> failed;   ///< (window id, why) for the others
};

/// Access policy of one channel, for the shorthand Supervisor::setPolicy(channel, ChannelPolicy):
/// the roles that may send or invoke it (empty = every role).
struct ChannelPolicy {
  std::vector<std::string> callers;  ///< roles allowed to send or invoke (empty = every role)
};

/// Snapshot of the supervisor's router (Supervisor::stats()).
struct RouterStats {
  /// One call in flight.
  struct Pending {
    std::string channel;         ///< channel name (typed channels by their method name)
    std::uint32_t sourceId = 0;  ///< caller window id (0 = main)
    std::string sourceRole;      ///< caller role
    std::uint32_t targetId = 0;  ///< target window id (0 = a main-process handler)
    std::string targetRole;      ///< target role
    double waitingMs = 0;        ///< how long it has waited so far, ms
  };
  /// Counters of one channel.
  struct ChannelStats {
    std::string channel;            ///< channel name (typed channels by their method name)
    std::uint64_t calls = 0;        ///< invokes routed or handled (window→main, window→window, main→window)
    std::uint64_t messages = 0;     ///< one-way sends, pushes and broadcast deliveries
    std::map<std::string, std::uint64_t> errors;  ///< by error code name
    std::uint64_t lateReplies = 0;  ///< replies that came after the call ended (dropped)
    /// Of `calls` and `messages`, those that went over a direct route (docs/architecture.md §19):
    /// counted by the caller in shared memory and read here, without a wake-up per call; their
    /// errors are in `errors`, their latency is not in p50Ms/p99Ms (routed calls only).
    std::uint64_t directCalls = 0;
    std::uint64_t directMessages = 0;  ///< one-way sends over a direct route
    double p50Ms = 0;               ///< latency of completed calls, over the last 4096
    double p99Ms = 0;               ///< 99th percentile of the same samples, ms
  };
  std::vector<Pending> pending;        ///< calls in flight now
  std::vector<ChannelStats> channels;  ///< per channel, sorted by name
  std::uint64_t lateReplies = 0;       ///< replies that came after their call ended, all channels
  std::uint64_t spoofedReplies = 0;   ///< replies from a window the call was not routed to (dropped)
  std::uint64_t undeliverable = 0;    ///< one-way messages that found no target or no listener
  /// Windows cut off (spawned ones killed) for a corrupt ring, a malformed frame or a malformed
  /// payload (docs/architecture.md §5, "Blame").
  std::uint64_t badMessages = 0;
  std::uint64_t unansweredCalls = 0;  ///< main-process Responders dropped without a reply (callers timed out)
  std::uint64_t handshakeTimeouts = 0;  ///< connections closed: no handshake within SupervisorOptions::handshakeTimeout
  /// Connections refused at SupervisorOptions::maxWindows, or closed at once because the
  /// supervisor's process had no file descriptor left (EMFILE/ENFILE).
  std::uint64_t refusedWindows = 0;
  /// Invokes refused with Full: their window had its cap of calls in flight
  /// (SupervisorOptions::maxPendingCalls, or its role's RoleRule::maxPendingCalls) or of request
  /// bytes in flight (RoleRule::maxBytesInFlight).
  std::uint64_t overPendingLimit = 0;
  /// What the policy refused (shmbus/policy.hpp): sends, calls, pushes, broadcasts, broadcast
  /// deliveries and handler registrations (each reported Denied to whoever made it), and messages
  /// over their role's RoleRule::maxMessageBytes (TooLarge).
  std::uint64_t policyDenials = 0;
  /// Direct routes' ports that ended while their caller lives (at most 64): the supervisor keeps
  /// each one's segment mapped to read the counters of the calls that were in flight on it, which
  /// its caller counts when they fail after the end (docs/architecture.md §19), until the caller
  /// goes.
  std::uint64_t retiredRoutes = 0;
};

/// SupervisorOptions' admission fields as a Policy: default admission "invited" when inviteOnly or
/// allowedRoles is set (else "open"), allowedRoles open unless inviteOnly, invitedRoles invited;
/// channel rules none, default decision allow. Supervisor::create starts with it.
/// Thread contract: pure; any thread.
Policy policyFromOptions(const SupervisorOptions& options);

/// The supervisor. Create one per bus in the main process.
///
/// Thread contract: every method may be called from any thread. Main-process callbacks
/// (on/once/handle/handleAsync, Call::then) run on the callback lane, never while the router holds
/// its lock: normally on the dispatching thread right after its routing round (run()/poll()/
/// startDispatchThread(), or a thread blocked in Call::get() while nobody else dispatches), on a
/// worker when callbackThreads > 1. While a callback runs longer than about 1 ms, a standby thread
/// routes meanwhile, so a slow handler or listener delays no routed call, deadline or death.
/// The router only works while something dispatches.
class Supervisor {
 public:
  /// Takes the bus (one supervisor per bus), listens on its socket and removes stale segment names
  /// of dead supervisors of this bus. A socket file left by a supervisor that died is replaced;
  /// the socket of a live one is never touched (its windows notice nothing).
  /// Errors: Denied when another live supervisor (of any process, this one included) runs the bus
  /// on that socket path: the message names the bus, that supervisor's pid and the socket;
  /// InvalidArgument (bus name, allowedRoles, invitedRoles, ring sizes, handshakeTimeout,
  /// maxWindows, windowBlobBytes: the message states the rule); SystemError.
  static Result<std::unique_ptr<Supervisor>> create(SupervisorOptions options);

  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  /// The bus name.
  const std::string& bus() const noexcept;
  /// The socket windows connect to (SupervisorOptions::socketPath or the default).
  const std::string& socketPath() const noexcept;

  /// Starts `argv` (argv[0] is looked up in PATH) as a window with `role`, over a
  /// pre-authenticated socket ($SHMBUS_FD, $SHMBUS_BUS, $SHMBUS_ROLE); `env` entries "K=V" are
  /// added. Returns at once with the window's id and pid; the window is live once it connects
  /// (waitForRole). `role` is checked as NameKind::Role ("main" itself is allowed here: spawn is
  /// how a window gets it). A spawned window that writes a bad message (a corrupt ring, a
  /// malformed frame or payload) is killed with SIGKILL, where a connected one is only cut off.
  /// Errors: InvalidArgument (bad role), Full (SupervisorOptions::maxWindows reached, or the
  /// role's RoleRule::maxWindows), SystemError (fork/exec).
  Result<WindowInfo> spawn(const std::string& role, const std::vector<std::string>& argv,
                           const std::vector<std::string>& env = {});

  /// A one-time invitation for a window to register with `role` by socket path, even when the
  /// role is not open for registration (SupervisorOptions::invitedRoles, inviteOnly) or not in
  /// allowedRoles: the returned token (128 random bits from getrandom(2), as 32 lowercase hex
  /// digits) goes to the window (WindowOptions::token, or $SHMBUS_TOKEN in its environment). It
  /// is good for one registration, with `role` only, until `ttl` has passed (counted from now
  /// on CLOCK_MONOTONIC; longer than kMaxTimeout: clamped); a window that presents it for
  /// another role, late, or a second time gets Denied. Treat the token as a password: the
  /// library never logs it nor puts it in an error. `role` is checked as NameKind::Role ("main"
  /// is allowed here, as for spawn()). At most 65536 invitations are outstanding at once.
  /// Errors: InvalidArgument (bad role; ttl not positive), Full (too many outstanding
  /// invitations), SystemError (getrandom), BusClosed (the supervisor stopped).
  Result<std::string> invite(std::string_view role, std::chrono::milliseconds ttl);

  /// Dispatches until a live window with `role` exists or `timeout` passes (0: look once; longer
  /// than kMaxTimeout: clamped). Errors: Timeout; InvalidArgument (bad role, negative timeout).
  Result<WindowInfo> waitForRole(const std::string& role, std::chrono::milliseconds timeout);

  /// Dispatches until a live window with `role` handles `channel` (its handler registration has
  /// reached the supervisor) or `timeout` passes. Use it before the first call to a freshly spawned
  /// window: calls to a window without a handler fail fast with NoHandler. Errors: as waitForRole.
  Result<WindowInfo> waitForHandler(const std::string& role, const Channel& channel, std::chrono::milliseconds timeout);

  /// Registered live windows, in registration order.
  std::vector<WindowInfo> windows() const;
  /// The window with `id`, if live.
  std::optional<WindowInfo> window(std::uint32_t id) const;

  /// Ports between windows, open or offered, by id. Thread contract: any thread.
  std::vector<PortInfo> ports() const;
  /// Closes port `id` for both windows: their pending calls on it fail with TargetGone and their
  /// close listeners run (an offered port's opener gets TargetGone). Errors: NoTarget (no such
  /// port). Thread contract: any thread.
  Result<void> revokePort(std::uint64_t id);

  /// Listener for Window::send (listeners accumulate).
  Registration on(const Channel& channel, Listener listener);
  /// Like on(), removed before its first run.
  Registration once(const Channel& channel, Listener listener);
  /// Listens for windows that finished registering (typed form of on("window-opened")).
  Registration onWindowOpened(WindowEventListener listener);
  /// Listens for windows that closed, died or were disconnected, with the reason (typed form of
  /// on("window-closed")).
  Registration onWindowClosed(WindowEventListener listener);
  /// Handler for Window::invoke; the last registered wins. The reply is built in a scratch arena
  /// and copied once into the caller's inbox when the handler returns. The router enforces the
  /// caller's deadline while the handler runs: the caller gets Timeout at its deadline, and a
  /// reply that comes later is dropped and counted as late.
  Registration handle(const Channel& channel, Handler handler);
  /// Asynchronous handler for Window::invoke: it gets a Responder and may reply later from any
  /// thread (shmbus/coro.hpp builds co_await handlers on it). The last registered wins.
  Registration handleAsync(const Channel& channel, AsyncHandler handler);

  /// Push to one window (by id or role). Built in place in its inbox. Errors: InvalidArgument (a
  /// bad role or channel name), NoTarget, Denied (the policy does not let "main" send the channel
  /// or the window's role receive it), Full, TooLarge, BusClosed (supervisor stopped).
  Result<void> send(const Target& target, const Channel& channel, const BuildFn& build = {});

  /// Push to every live window matching `options` (built once, copied to each inbox).
  /// A full inbox fails for that window only (reported), and so does a window whose role the
  /// policy does not let receive the channel (Denied in BroadcastReport::failed). Errors:
  /// TooLarge; Denied (the policy does not let "main" send the channel); InvalidArgument (a bad
  /// channel name or a bad role in `options`).
  Result<BroadcastReport> broadcast(const Channel& channel, const BuildFn& build = {},
                                    const BroadcastOptions& options = {});

  /// Call a window's handler (`Window::handle`). Errors through the Call, as Window::invoke
  /// (InvalidArgument for a bad role, channel name or negative timeout included; Denied when the
  /// policy does not let "main" invoke the channel or the window's role handle it).
  Call invoke(const Target& target, const Channel& channel, const BuildFn& build = {}, CallOptions options = {});

  /// Shorthand editing the policy in force (setPolicy(Policy)): the rule for exactly `channel`
  /// (its name as the pattern, put first so that it wins over globs) lets `policy.callers` and
  /// the main process send and invoke it (empty callers: every role); others get Denied. Leaves
  /// handle and receive to later rules or the default. Thread contract: any thread.
  void setPolicy(const Channel& channel, ChannelPolicy policy);

  /// Replaces the whole policy at once (shmbus/policy.hpp, docs/architecture.md §15): admission
  /// of roles connecting by path, per-role window caps and message limits, which roles may send,
  /// invoke, handle and receive each channel. Every frame the router reads afterwards is decided
  /// by it (pending calls keep running; windows already registered keep their role even when
  /// their admission is now "invited" or their role over its cap). It replaces what
  /// SupervisorOptions' allowedRoles, invitedRoles and inviteOnly said (policyFromOptions).
  /// Errors: InvalidArgument (validatePolicy; the policy in force is kept). Thread contract:
  /// any thread; atomic for the router (no frame sees half of it).
  Result<void> setPolicy(Policy policy);

  /// The policy in force (a copy). Thread contract: any thread.
  Policy policy() const;

  /// Tells the router the names of typed channels, so that policy rules (whose patterns speak
  /// of names) can decide them: a typed channel's id derives from its interface and method, so
  /// the name a window interns cannot be checked, and an id nobody trusted named is decided by
  /// Policy::defaultDecision (docs/architecture.md §15 "Names"). Pass a contract's generated
  /// `XChannels::all()` (capnpc-shmbus); a channel the main process already uses (handle, invoke,
  /// send) is named already. The first name given for an id stays. Errors: InvalidArgument for a
  /// name that breaks NameKind::Channel (nothing is named then). Thread contract: any thread.
  Result<void> nameChannels(std::span<const Channel> channels);

  /// Gives the router a typed contract's schema for inspectors (docs/architecture.md §6), once
  /// per contract: later calls with the same interface return at once. The main process's typed
  /// stubs call it when a typed handler or listener is registered or a typed client is first
  /// used. Main's schema of a contract is kept in preference to one a window announced; it
  /// names nothing for the policy (nameChannels does). Errors: InvalidMessage (a schema the
  /// check refuses), Full (the bus keeps kMaxSchemaBytesPerBus already); a failed announcement
  /// is not tried again. Thread contract: any thread.
  Result<void> announceSchema(const ContractSchema& contract);

  /// Switches payload capture on, off or to other channels (SupervisorOptions::payloadCapture);
  /// every message the router reads afterwards follows it. Errors: InvalidArgument (maxBytes over
  /// kMaxPayloadCaptureBytes, an empty or overlong glob; the settings in force are kept).
  /// Thread contract: any thread.
  Result<void> setPayloadCapture(PayloadCapture capture);

  /// Default timeout of calls on `channel` when the caller gives none (CallOptions::timeout 0).
  /// Must be positive (UsageError otherwise); longer than kMaxTimeout is clamped.
  void setChannelTimeout(const Channel& channel, std::chrono::milliseconds timeout);

  /// Router snapshot: pending calls and per-channel counters and latency percentiles.
  RouterStats stats() const;

  /// Dispatches until stop().
  void run();
  /// Dispatches what is ready, waiting up to `timeout` for the first event (0: do not wait;
  /// clamped to kMaxTimeout). While another thread dispatches (startDispatchThread(), run(),
  /// another poll()), it waits up to `timeout` for that thread to stop and returns without
  /// dispatching if it does not. Errors: BusClosed; InvalidArgument (negative timeout).
  Result<void> poll(std::chrono::milliseconds timeout);
  /// Runs run() on a background thread until stop(). Returns once that thread dispatches: from
  /// then on callbacks run on it only. Not from inside a callback.
  void startDispatchThread();
  /// Stops dispatching, disconnects every window (their calls fail with BusClosed) and removes the
  /// socket. Idempotent; the destructor calls it.
  void stop();

  struct Impl;

 private:
  explicit Supervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
