// The frame: the fixed POD header at the start of every ring record (docs/architecture.md §4), followed by a
// Cap'n Proto message in the layout of message/message.hpp. The supervisor routes on the header
// alone; it checks each payload's structure (validatePayload, docs/architecture.md §5 "Blame") but never
// interprets it.
//
//   0       2       4               8                               16
//   +-------+-------+---------------+-------------------------------+
//   | kind  | flags |    status     |          channel id           |
//   +-------+-------+---------------+-------------------------------+
//   |          request id           |    source     |    target     |
//   +-------------------------------+---------------+---------------+
//   |       role id (target/src)    |   deadline (CLOCK_MONOTONIC)  |
//   +-------------------------------+-------------------------------+
//   |           trace id            |     schema id (0 = untyped)   |
//   +-------------------------------+-------------------------------+  64 bytes
#pragma once

#include <cstdint>
#include <string_view>

#include "shmbus/channel.hpp"
#include "shmbus/error.hpp"

namespace shmbus::detail {

enum class FrameKind : std::uint16_t {
  Send = 1,         ///< one-way message: window → main, or routed window → window (target != 0)
  Invoke = 2,       ///< request expecting exactly one Reply or Error with the same request id
  Reply = 3,        ///< successful response; payload = the handler's results
  Error = 4,        ///< failed response; payload = bus.capnp ErrorInfo; status = ErrorCode
  Cancel = 5,       ///< caller → supervisor: the caller gave up on request id
  HandlerAdd = 6,   ///< window → supervisor: this window handles `channel` from now on
  HandlerRemove = 7,///< window → supervisor: this window no longer handles `channel`
  Intern = 8,       ///< the name behind an id (bus.capnp Intern); sent once per id and peer
  Listen = 9,       ///< window → supervisor: deliver bus events on `channel` (window-opened/closed)
  // Ports (docs/architecture.md §16). On a port's own rings only Send, Invoke, Reply, Error and
  // Cancel travel; these travel between a window and the supervisor.
  PortOpen = 10,    ///< window → supervisor: open a port on `channel` to `target`; answered like an
                    ///< Invoke (Reply: bus.capnp Welcome describing the port, Error: why not)
  PortOffer = 11,   ///< supervisor → target window: a port on `channel`, `requestId` = port id,
                    ///< payload bus.capnp Welcome (the segment's descriptor travels on the socket)
  PortAccept = 12,  ///< target window → supervisor: port `requestId` is mapped and taken
  PortReject = 13,  ///< target window → supervisor: port `requestId` refused (payload ErrorInfo)
  PortClose = 14,   ///< window → supervisor: this window closed port `requestId`
  PortListen = 15,  ///< window → supervisor: this window accepts ports on `channel` (onPort)
  PortUnlisten = 16,///< window → supervisor: it no longer does
  PortTrace = 17,   ///< window → supervisor: calls and sends its port ends made while tracing
                    ///< (payload bus.capnp PortTrace; docs/architecture.md §14 "Ports")
  Schema = 18,      ///< window → supervisor: a typed contract's schema (bus.capnp SchemaAnnouncement),
                    ///< once per contract and connection (docs/architecture.md §6)
  // Direct routes (docs/architecture.md §19): a port the supervisor opens between a caller and
  // the window its routed calls of `channel` went to.
  RouteOpen = 19,   ///< supervisor → target window: route port `requestId` (payload bus.capnp
                    ///< Welcome the first time, empty after) now carries `channel` from window
                    ///< `source` (role id `role`)
  RouteGrant = 20,  ///< supervisor → caller: calls and sends of `channel` to (`target`, `role`) may
                    ///< go over route port `requestId` (payload Welcome the first time);
                    ///< `status` = the channel's default timeout, ms; `source` = the stats slot
  RouteFence = 21,  ///< caller → supervisor → target (and on the route's own ring): the caller
                    ///< switched to route `requestId` here; `status` = the fence number
  RouteSync = 22,   ///< caller → supervisor → target: the caller wrote `status` records (mod 2^32)
                    ///< on route `requestId` before this point: read them before what follows
};
inline constexpr std::uint16_t kMaxFrameKind = 22;

/// Frame flags.
enum FrameFlags : std::uint16_t {
  kFlagNone = 0,
  /// Ports only (docs/architecture.md §17): the payload is not a message but a BlobDescriptor
  /// (blob/blob.hpp) naming a message in the sender's blob arena, read there in place.
  kFlagBlob = 1,
};

/// `target` values: 0 is the supervisor (main); kTargetByRole means "resolve `role`".
inline constexpr std::uint32_t kTargetMain = 0;
inline constexpr std::uint32_t kTargetByRole = 0xffffffffu;

struct FrameHeader {
  std::uint16_t kind;        ///< FrameKind
  std::uint16_t flags;       ///< FrameFlags
  std::uint32_t status;      ///< ErrorCode of an Error frame; of an Invoke, the caller's timeout in ms (0 = the
                             ///< channel's default), so a Timeout states what the caller asked for; 0 otherwise
  std::uint64_t channel;     ///< channel id
  std::uint64_t requestId;   ///< Invoke/Reply/Error/Cancel; 0 for one-way frames
  std::uint32_t source;      ///< sender window id, 0 = main; always overwritten by the supervisor
  std::uint32_t target;      ///< window id, kTargetMain, or kTargetByRole
  std::uint64_t role;        ///< target role id (kTargetByRole) on the way in; source role id on delivery
  std::int64_t deadlineNs;   ///< absolute CLOCK_MONOTONIC ns; 0 = none
  std::uint64_t traceId;     ///< correlates the hops of one call in traces
  std::uint64_t schemaId;    ///< typed contracts: fingerprint of the payload struct; 0 = untyped
};
static_assert(sizeof(FrameHeader) == 64);
static_assert(alignof(FrameHeader) == 8);

/// An error code read from the wire (a frame's status, a refused Welcome): the code itself when it
/// names a failure, else InvalidMessage (Ok or a number above kLastErrorCode: a hostile or newer peer).
inline ErrorCode errorCodeFromWire(std::uint32_t v) noexcept {
  return v == 0 || v > static_cast<std::uint32_t>(kLastErrorCode) ? ErrorCode::InvalidMessage
                                                                  : static_cast<ErrorCode>(v);
}

/// Reserved channels of bus events (pushed to windows that listen).
inline constexpr std::string_view kWindowOpened = "window-opened";
inline constexpr std::string_view kWindowClosed = "window-closed";
/// Window-local channel of SendFailure listeners (never on the wire). An undelivered one-way
/// message comes back to its sender as an Error frame with request id 0 on the message's channel.
inline constexpr std::string_view kSendFailed = "shmbus.send-failed";

}  // namespace shmbus::detail
