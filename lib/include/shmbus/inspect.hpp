// libshmbus — the inspector: trace events of a running bus, read live from any process of the
// bus's user (the `shmbus-inspect` tool, or an application's own inspector window).
//
// The supervisor records one TraceEvent per message and call it routes or handles while at least
// one inspector is attached (docs/architecture.md §14). Events go into a bounded shared-memory
// trace ring per bus; an inspector reads it without stopping the bus, and one that falls behind
// loses the oldest events and is told how many (Inspector::lost()); the bus never waits for it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shmbus/error.hpp"
#include "shmbus/schema.hpp"
#include "shmbus/supervisor.hpp"

namespace shmbus {

/// What a trace event records. The numeric values travel in the trace ring; never renumber them.
enum class TraceKind : std::uint16_t {
  Send = 1,         ///< a one-way message window→main or window→window (sendTo)
  Invoke = 2,       ///< a call, one event when it ends (reply, error, timeout, cancel)
  Broadcast = 3,    ///< a broadcast by main (to all windows or a role): one event per broadcast
  Push = 4,         ///< a main→window one-way message
  Cancel = 5,       ///< a caller cancelled a call in flight
  WindowOpen = 6,   ///< a window registered (role, pid)
  WindowClose = 7,  ///< a window left: closed, died or was disconnected (reason in `error`)
  BadMessage = 8,   ///< a window was disconnected for a malformed frame or a corrupt ring
  /// A port was asked for (Window::openPort): status Ok once the acceptor took it, else why not
  /// (Denied, NoTarget, NoHandler, HandlerError, Full, Timeout, TargetGone, ...). Source = the
  /// opener, target = the acceptor (or the role asked for); `portId` set once the router gave one.
  PortOpen = 9,
  /// An accepted port ended: closed by either side, a window's close or death, a revoke, a
  /// corrupt ring, the supervisor stopping. Source = the opener, target = the acceptor; the
  /// reason in `error`; status Ok for a close() by either side, else TargetGone, Corrupt or
  /// BusClosed.
  PortClose = 10,
};

/// Stable lower-case name of a kind ("send", "invoke", ..., "window-open"). Never null.
const char* traceKindName(TraceKind kind) noexcept;

/// A captured payload (SupervisorOptions::payloadCapture): the message in Cap'n Proto's standard
/// serialization (a segment table, then the segments: what capnp::messageToFlatArray writes and
/// capnp::FlatArrayMessageReader reads), cut at the capture limit. The bytes come from the bus's
/// windows and through shared memory: read them with bounded capnp::ReaderOptions and expect
/// kj::Exception from a malformed or truncated message.
struct TracePayload {
  std::vector<std::uint8_t> bytes;  ///< the captured bytes (a prefix of the serialization)
  std::uint32_t fullBytes = 0;      ///< size of the whole serialization, bytes
  /// True when `bytes` is a cut prefix (the message was longer than the capture limit).
  bool truncated() const noexcept { return bytes.size() < fullBytes; }
};

/// One trace event. Window id 0 is the main process. Times are CLOCK_MONOTONIC ns (one clock for
/// every process on the machine); for one-way messages and window events startNs == endNs.
struct TraceEvent {
  TraceKind kind = TraceKind::Send;  ///< what happened
  std::uint64_t seq = 0;        ///< position in the bus's trace, from 1 (gaps = lost events)
  std::int64_t startNs = 0;     ///< when the router (a port's end: the caller) saw the message or call, ns
  std::int64_t endNs = 0;       ///< when the call ended (reply or error routed or read), ns
  std::uint64_t requestId = 0;  ///< the caller's request id (calls), else 0
  std::uint64_t traceId = 0;    ///< the flow this call belongs to (nested calls share it), else 0
  std::uint64_t channelId = 0;  ///< the channel's id
  std::string channel;          ///< the channel's name ("#<hex id>" when the router has no name)
  std::uint32_t sourceId = 0;   ///< sending/calling window (0 = main)
  std::string sourceRole;       ///< its role ("main" for the main process)
  std::uint32_t targetId = 0;   ///< receiving/called window (0 = main or none: a broadcast)
  std::string targetRole;       ///< its role, the role asked for, or "" (broadcast to all)
  ErrorCode status = ErrorCode::Ok;  ///< Ok, or what failed (Denied, NoTarget, Timeout, ...)
  std::string error;            ///< the error text, or a window event's reason
  std::uint32_t requestBytes = 0;  ///< payload bytes of the message or request
  std::uint32_t replyBytes = 0;    ///< payload bytes of the reply (calls)
  std::uint32_t pid = 0;           ///< window events: the window's pid
  /// The port the event is about (PortOpen, PortClose) or came over (an Invoke or Send recorded
  /// by a port's end: its times, status and sizes are that end's own), else 0.
  std::uint64_t portId = 0;
  /// The message's or the call's request payload, when captured and this inspector may read
  /// payloads (InspectOptions::payloads); else empty.
  std::optional<TracePayload> request;
  /// A call's reply payload (successful calls), when captured and readable; else empty.
  std::optional<TracePayload> reply;

  /// Duration of a call, ms (0 for one-way messages and window events). The difference wraps
  /// around instead of overflowing: times read from a corrupt trace record give a wrong figure,
  /// never undefined behaviour (found by the trace fuzz harness).
  double durationMs() const noexcept {
    return static_cast<double>(static_cast<std::int64_t>(static_cast<std::uint64_t>(endNs) -
                                                         static_cast<std::uint64_t>(startNs))) / 1e6;
  }
};

/// One line of human-readable text for `e` (what `shmbus-inspect tail` prints), e.g.
/// `invoke GetDashboardData  editor#3 → dashboard#2  0.042 ms  ok  (64 B → 128 B)`.
std::string toText(const TraceEvent& e);
/// One JSON object (no newline) with every field of `e` (JSON Lines for `tail --json`):
/// {"seq":1,"kind":"invoke","channel":"echo",...}. Strings are escaped per RFC 8259.
std::string toJson(const TraceEvent& e);

/// A Chrome trace-event JSON document of trace events: the format ui.perfetto.dev and
/// chrome://tracing open (`shmbus-inspect BUS record`, the dashboard demo's --trace).
/// Layout (docs/architecture.md §14): one process track per window, named "<role>#<id> (pid N)"
/// ("main" for the main process); a call is one slice on the caller's track and one on the
/// handler's (no handler track when the call never reached one: NoTarget, Denied...), each from
/// when the router saw the request to when the call ended, joined by a flow arrow (flow id = the
/// event's seq; args carry the trace id that nested calls share); a failed call's slices are
/// named "<channel> [<Code>]" and coloured "terrible"; one-way messages, broadcasts, cancels,
/// window events and port events are instants on the sender's (the window's, the opener's)
/// track; calls over a port are slices like routed ones (their args carry "port"). Slices that overlap without
/// nesting (concurrent calls of one window) go to extra threads of its track ("calls 2", ...),
/// so every thread's slices nest as the format requires. Times are µs from the earliest event.
/// Thread contract: one thread at a time.
class ChromeTrace {
 public:
  /// Adds one event (any order: json() sorts by start time). Its payload bytes are not kept.
  void add(const TraceEvent& e);
  /// Adds a string argument `name` (e.g. "request", "reply": a decoded payload) to the slices
  /// and instants of the event numbered `seq`; shown in the UI's details of the event.
  void addText(std::uint64_t seq, std::string name, std::string text);
  /// Events lost by the inspector that read these (Inspector::lost()), kept in the document's
  /// "otherData" so a reader knows the timeline has gaps.
  void setLost(std::uint64_t n) noexcept { lost_ = n; }
  /// Events added so far.
  std::size_t size() const noexcept { return events_.size(); }
  /// Events added per kind name (traceKindName: "invoke" → 12, ...).
  std::map<std::string, std::uint64_t> countsByKind() const;
  /// The document: {"displayTimeUnit":"ns","otherData":{...},"traceEvents":[...]}. O(n log n).
  std::string json() const;
  /// Writes json() to `path` (created or truncated). Errors: SystemError (errno text).
  Result<void> write(const std::string& path) const;

 private:
  std::vector<TraceEvent> events_;
  std::map<std::uint64_t, std::vector<std::pair<std::string, std::string>>> texts_;  // addText, by seq
  std::uint64_t lost_ = 0;
};

/// What a running bus looks like now (Inspector::snapshot(); `shmbus-inspect BUS windows|stats`).
struct BusSnapshot {
  /// One registered window.
  struct Window {
    std::uint32_t id = 0;             ///< window id
    std::string role;                 ///< its role
    std::int32_t pid = 0;             ///< its process
    bool spawned = false;             ///< started by Supervisor::spawn (else connected by path)
    Admission admission = Admission::Open;  ///< how it got its role (spawned, invited, open)
    std::uint32_t uid = 0;            ///< its user id (SO_PEERCRED)
    std::uint64_t inboxUsedBytes = 0; ///< bytes in its inbox it has not released yet (queue fill)
    std::uint64_t inboxBytes = 0;     ///< its inbox's capacity, bytes
    std::uint32_t pendingCalls = 0;   ///< calls it made that are in flight
  };
  std::vector<Window> windows;   ///< in registration order
  /// The bus's ports (Window::openPort), open or offered, by id: as Supervisor::ports().
  std::vector<PortInfo> ports;
  RouterStats stats;             ///< per channel counters and pending calls, as Supervisor::stats()
  std::uint32_t inspectors = 0;  ///< inspectors attached (this one included)
  bool truncated = false;        ///< a list was cut to its bound (256 windows, ports, channels, pending calls)
};

/// How an inspector attaches (Inspector::attach).
struct InspectOptions {
  std::string socketPath;  ///< the bus's socket ("" = the default for the bus name)
  /// Ask for captured payloads. The supervisor grants them only to a process of its own uid and
  /// while its policy says Policy::inspectPayloads; else the inspector gets events without
  /// payloads (Inspector::payloadsGranted() false).
  bool payloads = false;
};

/// A live reader of a bus's trace events. Attaching connects to the bus's socket (the
/// supervisor must be running and of the same user); the supervisor starts recording events
/// when the first inspector attaches and stops when the last one leaves (closes or dies).
/// Thread contract: one thread at a time per Inspector; any number of Inspectors per bus, in
/// any processes.
class Inspector {
 public:
  /// Attaches to `bus` (or to `socketPath` when not empty). Errors: InvalidArgument (bad bus
  /// name), BusClosed (no supervisor answers on the socket), Denied (refused: another user),
  /// InvalidMessage (the supervisor's answer is not a trace ring), SystemError.
  static Result<std::unique_ptr<Inspector>> attach(const std::string& bus, const std::string& socketPath = "");
  /// Attaches with `options` (payloads asked for or not); errors as attach(bus, socketPath).
  static Result<std::unique_ptr<Inspector>> attach(const std::string& bus, const InspectOptions& options);

  ~Inspector();
  Inspector(const Inspector&) = delete;
  Inspector& operator=(const Inspector&) = delete;

  /// The next event, waiting up to `timeout` (0 = do not wait; longer than kMaxTimeout: clamped).
  /// nullopt when none came in time. Errors: BusClosed once the supervisor is gone and every
  /// event it wrote has been read; InvalidArgument (negative timeout).
  /// Waiting: within 100 ms of the last event it polls the ring every 1 ms (so an event reaches
  /// it up to 1 ms late, and the router is never asked for a wake-up per event); after that it
  /// parks on the ring's futex word (no CPU on a quiet bus) and the next event wakes it.
  Result<std::optional<TraceEvent>> next(std::chrono::milliseconds timeout);

  /// Asks the supervisor for the registry and its counters, waiting up to `timeout` for the
  /// answer. Errors: BusClosed (the supervisor is gone), Timeout, InvalidMessage (a malformed
  /// answer).
  Result<BusSnapshot> snapshot(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

  /// Asks the supervisor for the contract schemas the bus keeps (announced by typed stubs of
  /// windows and of the main process, docs/architecture.md §6), waiting up to `timeout` for the
  /// answer, and loads them: every method of every contract by channel id, its params and
  /// results structs ready for capnp::DynamicStruct readers. The answer travels in a memfd (no
  /// packet limit); it is checked as the supervisor checked each announcement, and a contract
  /// that fails is left out. Errors: BusClosed (the supervisor is gone), Timeout,
  /// InvalidMessage (a malformed answer).
  Result<AnnouncedSchemas> schemas(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

  /// Events this inspector lost because it fell behind (the trace ring is bounded), so far.
  std::uint64_t lost() const noexcept;

  /// Whether the supervisor handed this inspector the payload ring (it asked, and the policy and
  /// its uid allow it). Payloads stay off while the policy later forbids them.
  bool payloadsGranted() const noexcept;
  /// Payload records this inspector could not use so far: lost because it fell behind,
  /// malformed (the payload ring is shared memory), or never matched to an event.
  std::uint64_t payloadsDropped() const noexcept;

  struct Impl;  ///< internal: the socket and the mapped trace ring

 private:
  explicit Inspector(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
