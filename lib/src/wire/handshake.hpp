// The handshake of both sides over the control socket (docs/architecture.md, "Wire").
//
//   window                                   supervisor (router)
//   Hello{role, pid, ring sizes,  ────────▶  checks uid, role (policy, token) and sizes, creates
//         invitation token}                  the segment (a sealed memfd, segment/segment.hpp)
//                                 ◀────────  Welcome{id, role, segment name, layout} + doorbell fd
//                                            + segment fd (then closed by the supervisor)
//   maps the segment (from its fd)
//   Mapped                        ────────▶  the window is live
//
// Segment layout, computed here for both sides:
//   [SegmentHeader 64 B][CancelBoard 512 B][inbox RingControl + data][outbox RingControl + data]
// A port's segment has the same layout; its ends read the board's 512 bytes as PortCancelBoards,
// one board per direction (wire/cancel_board.hpp, docs/architecture.md §16).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>

#include "control/control_protocol.hpp"
#include "control/socket.hpp"
#include "ring/ring.hpp"
#include "segment/segment.hpp"
#include "shmbus/error.hpp"
#include "wire/cancel_board.hpp"

namespace capnp {
class MessageBuilder;
}

namespace shmbus::detail {

/// The Cap'n Proto words after a control packet's ControlHeader, copied to aligned storage
/// (std::uint64_t: clang's capnp::word is not copyable, so no vector of it). The caller checked
/// that the packet holds at least a header.
std::vector<std::uint64_t> bodyWords(const Packet& pkt);
/// `words` as Cap'n Proto words (a view; `words` must outlive it).
kj::ArrayPtr<const capnp::word> wordsOf(const std::vector<std::uint64_t>& words);
/// Reader limits for a control message: nesting 8, traversal `traversalWords` (Hello and Welcome
/// are a few hundred bytes; an inspector's BusSnapshot fills up to one 64 KiB packet).
capnp::ReaderOptions boundedControlReader(std::uint64_t traversalWords = 4096);

/// Sends one control packet: a ControlHeader, then `mb` as a flat array (optional), with
/// optional descriptors (-1 = none). Errors: BusClosed, SystemError.
Result<void> sendControl(int sock, ControlType type, std::uint64_t value, capnp::MessageBuilder* mb = nullptr,
                         int fd = -1, int fd2 = -1);

// ---- supervisor side

/// What a Hello asked for.
struct HelloRequest {
  std::string role;
  std::string token;              ///< an invitation token (Supervisor::invite), "" = none
  std::uint32_t inboxBytes = 0;   ///< 0 = the supervisor's default
  std::uint32_t outboxBytes = 0;
};

/// Parses a Hello packet (untrusted: bounded reader). Errors: InvalidMessage.
Result<HelloRequest> parseHello(const Packet& pkt);

/// Ring sizes are powers of two in [4 KiB, 64 MiB]. Errors: InvalidMessage naming them.
Result<void> checkRingSizes(std::uint32_t inboxBytes, std::uint32_t outboxBytes);

/// Where the parts of a window's segment lie (bytes from its start).
struct SegmentLayout {
  std::uint64_t boardOffset = 0, inboxOffset = 0, outboxOffset = 0, totalBytes = 0;
  /// A port's blob arenas (docs/architecture.md §17), after the rings, page aligned: the one
  /// written by the inbox's producer first, then the outbox's; 0 when there are none.
  std::uint64_t inboxBlobOffset = 0, outboxBlobOffset = 0;
  /// A route port's RouteStatsTable (docs/architecture.md §19), after everything else; 0 = none.
  std::uint64_t routeStatsOffset = 0;
};
/// The layout of a segment with rings of `inboxBytes` and `outboxBytes` capacity and, for a port,
/// two blob arenas of `blobBytes` each (a multiple of 4 KiB; 0 = none).
/// `routeStats`: a route port's, with a RouteStatsTable.
SegmentLayout segmentLayout(std::uint32_t inboxBytes, std::uint32_t outboxBytes, std::uint64_t blobBytes = 0,
                            bool routeStats = false) noexcept;

/// Counters of one channel of a direct route (docs/architecture.md §19), in the route port's
/// segment: written by the caller's end (relaxed increments, one writer thread at a time or
/// several: each is an atomic add) and read by the supervisor when it reports stats. Untrusted:
/// a hostile caller can only misreport its own calls.
struct RouteStatsSlot {
  std::atomic<std::uint64_t> calls;
  std::atomic<std::uint64_t> messages;
  std::atomic<std::uint64_t> errors[16];  ///< by ErrorCode value (1..kLastErrorCode)
};
/// The channels of one route port (slot i: the i-th channel granted on it).
inline constexpr std::size_t kRouteSlots = 32;
struct RouteStatsTable {
  RouteStatsSlot slots[kRouteSlots];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// A window's segment, created and laid out by the supervisor.
struct WindowSegment {
  /// A sealed memfd (segment->name(): diagnostics, /proc/<pid>/maps); segment->fd() until the
  /// creator closes it.
  std::shared_ptr<Segment> segment;
  RingProducer inbox;
  RingConsumer outbox;
  CancelBoard* cancels = nullptr;
  std::uint64_t inboxOffset = 0, outboxOffset = 0, boardOffset = 0;
  std::uint32_t inboxBytes = 0, outboxBytes = 0, maxRecord = 0;
  std::uint64_t inboxBlobOffset = 0, outboxBlobOffset = 0, blobBytes = 0;  ///< a port's arenas (§17)
  std::uint64_t routeStatsOffset = 0;  ///< a route port's RouteStatsTable (§19); 0 = none
};

/// Creates the segment of window `id` on `bus` (rings of the given capacities; records up to
/// min(maxRecordBytes, capacity / 2)) and, for a port, two sparse blob arenas of `blobBytes`
/// each (a multiple of 4 KiB; the file is ftruncate'd, so untouched arena pages use no memory).
/// The segment is a sealed memfd (segment/segment.hpp) whose descriptor it keeps for sendWelcome
/// or a PortFd packet. Errors: SystemError.
Result<WindowSegment> createWindowSegment(const std::string& bus, std::uint32_t id, std::uint32_t inboxBytes,
                                          std::uint32_t outboxBytes, std::uint32_t maxRecordBytes,
                                          std::uint64_t blobBytes = 0, bool routeStats = false);

/// Writes a Welcome describing `seg` into `mb`: for a window (`swapped` false, `portId` 0), or for
/// one end of a port (docs/architecture.md §16): `id` and `role` are then the peer's, and the
/// acceptor's (`swapped`) inbox is the opener's outbox.
void fillWelcome(capnp::MessageBuilder& mb, const std::string& bus, std::uint32_t id, const std::string& role,
                 const WindowSegment& seg, bool swapped, std::uint64_t portId);

/// Sends the Welcome for `seg` with the doorbell eventfd and the segment's sealed memfd (the
/// window maps that one: any uid can). `seg.segment->fd()` must still be open (the caller closes
/// it once sent). Errors: as sendControl (BusClosed when the window hung up, SystemError).
Result<void> sendWelcome(int sock, const std::string& bus, std::uint32_t id, const std::string& role,
                         const WindowSegment& seg, int doorbellFd);

/// Sends a failed Welcome carrying `e` (the window's connect returns it).
void sendWelcomeError(int sock, const Error& e);

// ---- window side

/// What a window asks for in its Hello.
struct HelloParams {
  std::string role;  ///< ignored by the supervisor for spawned windows
  std::uint32_t inboxBytes = 0;
  std::uint32_t outboxBytes = 0;
  bool spawned = false;
  std::string token;  ///< an invitation token (WindowOptions::token), "" = none
};

/// The window's end of a finished handshake.
struct WindowLink {
  std::uint32_t id = 0;
  std::string role;
  Fd doorbell;
  std::shared_ptr<Segment> segment;
  RingConsumer inbox;
  RingProducer outbox;
  const CancelBoard* cancels = nullptr;
  /// The blob arenas the Welcome named (docs/architecture.md §17; 0: none): the one this side
  /// writes, the peer's, and the size of each. For a window's own segment, `segmentFd` is then
  /// the segment's descriptor, kept for the producer of its arena (helloAndWelcome).
  std::uint64_t blobOutOffset = 0, blobInOffset = 0, blobBytes = 0;
  Fd segmentFd;
};

/// What a Welcome says, decoded but not yet checked against the mapped segment.
struct WelcomeInfo {
  std::uint32_t id = 0;
  std::string role;
  std::string segmentName;
  RingGeometry inbox, outbox;
  std::uint64_t inboxOffset = 0, outboxOffset = 0, boardOffset = 0;
  std::uint64_t portId = 0;  ///< a port's description (docs/architecture.md §16); 0 for a window
  /// A port's blob arenas (§17): the one this side writes, the one the peer writes, and the size
  /// of each (0: none).
  std::uint64_t blobOutOffset = 0, blobInOffset = 0, blobBytes = 0;
  std::uint64_t routeStatsOffset = 0;  ///< a route port's RouteStatsTable (§19); 0 = none
};

/// Decodes a Welcome message (untrusted: the caller's reader bounds it). A refusal comes back as
/// its error. Errors: InvalidMessage (malformed), or the refusal's code.
Result<WelcomeInfo> readWelcome(capnp::MessageReader& reader);

/// Fills `link` (id, role, segment, rings, cancel board) from `w` over the mapped `seg`, after
/// checkWelcomeLayout. `zeroOnClaim`: the producer zeroes what it claims (a peer that does not
/// zero what it consumed cannot then corrupt what this side builds); `doorbellFd` >= 0: the
/// outbox also rings that eventfd. Errors: InvalidMessage (layout outside the segment).
Result<void> attachLink(WindowLink& link, const WelcomeInfo& w, Segment seg, bool zeroOnClaim, int doorbellFd);

// ---- ports (docs/architecture.md §16)

/// Why a port ended: the value of its segment's close word (closeWord, SegmentHeader::linkClosed).
/// The first closer's value stays; a value outside this list came from a hostile peer.
enum PortCloseReason : std::uint32_t {
  kPortOpen = 0,
  kPortClosedByOpener = 1,    ///< the opener's close() (or its Port was dropped)
  kPortClosedByAcceptor = 2,  ///< the acceptor's close()
  kPortOpenerGone = 3,        ///< the opener's window closed, died or was cut off
  kPortAcceptorGone = 4,      ///< the acceptor's window closed, died or was cut off
  kPortRevoked = 5,           ///< Supervisor::revokePort
  kPortBusStopped = 6,        ///< the supervisor stopped
  kPortCorruptAtOpener = 7,   ///< the opener found the acceptor's ring corrupt
  kPortCorruptAtAcceptor = 8, ///< the acceptor found the opener's ring corrupt
  kPortOpenTimedOut = 9,      ///< the opener gave up before the acceptor took the port
};

/// Default capacity of each of a port's rings (PortOptions::ringBytes 0).
inline constexpr std::uint32_t kDefaultPortRingBytes = 64u << 10;

/// Why a port ended, worded for the side `opener` ("the peer closed it", "the peer's window is
/// gone", ...); any other value is "it was closed (reason N)".
std::string portCloseText(std::uint32_t reason, bool opener);

/// Why a port ended, worded for a third party (the supervisor's log, the trace's PortClose):
/// "closed by the opener", "the acceptor's window closed or died", ...
std::string portEndText(std::uint32_t reason);

/// The status a PortClose event gives `reason`: Ok for a close() by either side, Corrupt for a
/// corrupt ring, BusClosed when the supervisor stopped, else TargetGone.
ErrorCode portEndStatus(std::uint32_t reason) noexcept;

/// Decodes a Welcome packet (untrusted: bounded reader). A refusal comes back as its error (an
/// unknown code as InvalidMessage). Errors: BusClosed (no body: the supervisor hung up),
/// InvalidMessage (malformed), or the refusal's code.
Result<WelcomeInfo> parseWelcome(const Packet& pkt, const std::string& bus);

/// Checks that the rings and the cancel board of `w` are valid geometries lying inside a segment
/// of `segmentBytes`, 64-byte aligned. Errors: InvalidMessage.
Result<void> checkWelcomeLayout(const WelcomeInfo& w, std::size_t segmentBytes);

/// Control packet types a peer may send: the header of `pkt` when it has one and its type is
/// known. Errors: InvalidMessage (short, or an unknown type, named).
Result<ControlHeader> parseControlHeader(const Packet& pkt);

/// Runs the window's side of the handshake on `sock`. Errors: Timeout (no Welcome within
/// `timeout`), BusClosed, Denied / InvalidMessage (the supervisor's refusal), SystemError.
Result<WindowLink> helloAndWelcome(int sock, const HelloParams& p, const std::string& bus,
                                   std::chrono::milliseconds timeout);

}  // namespace shmbus::detail
