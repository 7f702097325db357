// Control-socket packets between a window and the supervisor (docs/architecture.md §5).
// Every packet starts with a ControlHeader; Hello and Welcome carry a Cap'n Proto flat array
// (bus.capnp) after it. The supervisor treats every packet as hostile: sizes are checked, the
// flat array is read with bounded ReaderOptions.
#pragma once

#include <cstdint>

namespace shmbus::detail {

enum class ControlType : std::uint32_t {
  Hello = 1,    ///< window → supervisor: bus.capnp Hello
  Welcome = 2,  ///< supervisor → window: bus.capnp Welcome (+ the doorbell eventfd)
  Mapped = 3,   ///< window → supervisor: segment mapped; the window is live
  Cancel = 4,   ///< supervisor → window: `value` = request id whose caller gave up (or timed out)
  Inspect = 5,  ///< inspector → supervisor (instead of Hello): attach to the bus's trace ring;
                ///< `value`: flags (kInspectPayloads)
  TraceRing = 6,  ///< supervisor → inspector: `value` = bytes of the trace ring, its memfd attached,
                  ///< then the payload ring's when granted (a refusal is a Welcome with an error)
  Snapshot = 7,   ///< inspector → supervisor: a request (no payload); supervisor → inspector: the
                  ///< answer, bus.capnp BusSnapshot
  PortFd = 8,     ///< supervisor → window: `value` = port id, the port segment's descriptor attached
                  ///< (sent before the PortOffer frame or the PortOpen reply that names the port)
  Schemas = 9,    ///< inspector → supervisor: a request (no payload); supervisor → inspector: `value` =
                  ///< bytes of a bus.capnp SchemaSet in the memfd attached (any size: no packet limit)
};
inline constexpr ControlType kLastControlType = ControlType::Schemas;

/// Inspect's `value` bit: the inspector asks for the payload ring (docs/architecture.md §14).
inline constexpr std::uint64_t kInspectPayloads = 1;

struct ControlHeader {
  std::uint32_t type;   ///< ControlType
  std::uint32_t reserved;
  std::uint64_t value;
};
static_assert(sizeof(ControlHeader) == 16);

/// Layout of a window's segment, computed by the supervisor and sent in Welcome:
/// [SegmentHeader 64 B][inbox RingControl][inbox data][outbox RingControl][outbox data].
inline constexpr const char* kEnvFd = "SHMBUS_FD";
inline constexpr const char* kEnvBus = "SHMBUS_BUS";
inline constexpr const char* kEnvRole = "SHMBUS_ROLE";
/// An invitation token (Supervisor::invite) for Window::connect when WindowOptions::token is empty.
inline constexpr const char* kEnvToken = "SHMBUS_TOKEN";

}  // namespace shmbus::detail
