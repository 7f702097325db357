// Payload capture for the trace (docs/architecture.md §14, "Payloads"): the records of the
// payload ring, a second trace ring (trace_ring.hpp, the same broadcast buffer) whose memfd the
// router hands only to inspectors the policy lets read payloads; and which channels are captured.
//
// A record body, little endian:
//
//   0   part (u8: 1 request, 2 reply, 3 message)   1  reserved (u8)   2  reserved (u16)
//   4   fullBytes (u32): size of the whole message in Cap'n Proto's standard serialization
//   8   sourceId (u32): the sending or calling window (0 = main)
//   12  capturedBytes (u32): bytes that follow (fullBytes cut at the capture limit)
//   16  key (u64): a request: the caller's request id; a reply or message: the seq of the trace
//       event it belongs to (written right after it in the trace ring)
//   24  channelId (u64)
//   32  the message: segment table, then segments (capnp::messageToFlatArray's layout), cut
//
// A request is captured when the router routes it and its call's event comes when the call
// ends, so the inspector keys it by (caller, request id); a reply or one-way message is captured
// just before its event, keyed by that event's seq.
#pragma once

#include <capnp/common.h>
#include <kj/common.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "shmbus/error.hpp"
#include "shmbus/inspect.hpp"
#include "shmbus/supervisor.hpp"
#include "trace/trace_ring.hpp"

namespace shmbus::detail {

/// Which payload of an event a record holds. The values travel in the payload ring.
enum class PayloadPart : std::uint8_t {
  Request = 1,  ///< a call's request, keyed by (caller, request id)
  Reply = 2,    ///< a call's reply, keyed by its event's seq
  Message = 3,  ///< a one-way message's (send, sendTo, broadcast), keyed by its event's seq
};

/// Bytes of a payload record's header (before the message bytes).
inline constexpr std::size_t kPayloadRecordHeader = 32;

static_assert(kPayloadRecordHeader + kMaxPayloadCaptureBytes <= kTraceMaxBody, "a payload record fits a trace record");

/// A payload to capture, in either form the router meets: a window's, as it lies in the ring
/// record (message/message.hpp's MessageTable, then the segments; `windowForm` 8-byte aligned),
/// or the main process's segments. Views only: valid during the capture call.
struct PayloadView {
  const std::uint8_t* windowForm = nullptr;  ///< a window's payload, or null
  std::size_t windowBytes = 0;               ///< its bytes
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments;  ///< main's segments (windowForm null)

  /// False for the default (no payload to capture).
  bool any() const noexcept { return windowForm != nullptr || segments.size() != 0; }
};

/// Encodes one payload record into `out` (cleared first): the header above and at most
/// `maxBytes` bytes of the message in Cap'n Proto's standard serialization. A window's table is
/// re-read from `p` (the window may still be writing its ring: only sizes within `windowBytes`
/// are used). Errors: InvalidMessage (a window form without a valid table; nothing encoded).
/// Thread contract: pure.
Result<void> encodePayloadRecord(PayloadPart part, std::uint32_t sourceId, std::uint64_t key, std::uint64_t channelId,
                                 const PayloadView& p, std::size_t maxBytes, std::vector<std::uint8_t>& out);

/// One decoded payload record.
struct PayloadRecord {
  PayloadPart part = PayloadPart::Message;  ///< which payload
  std::uint32_t sourceId = 0;               ///< sending or calling window
  std::uint64_t key = 0;                    ///< request id (Request) or event seq (Reply, Message)
  std::uint64_t channelId = 0;              ///< the channel
  TracePayload payload;                     ///< the captured bytes and the whole size
};

/// Decodes a record body written by encodePayloadRecord. The body comes from shared memory any
/// inspector can write: every length is checked. Errors: InvalidMessage (short body, an unknown
/// part, captured bytes that disagree with the body or exceed fullBytes).
Result<PayloadRecord> decodePayloadRecord(std::span<const std::uint8_t> body);

/// Which channels' payloads the router captures (SupervisorOptions::payloadCapture): the byte
/// limit and the channel globs, with the answer per channel id cached (bounded: the cache is
/// dropped past 4096 ids). Thread contract: the router's mutex.
class CaptureFilter {
 public:
  /// Replaces the settings (already checked by checkPayloadCapture) and drops the cache.
  void set(PayloadCapture c);
  /// Bytes kept per payload; 0 = capture off.
  std::uint32_t maxBytes() const noexcept { return capture_.maxBytes; }
  /// Whether channel `id` is captured: `channels` is empty, or some glob of it matches
  /// (fnmatch(3)) the name `nameOf()` returns (the router's name for it, "#<hex>" when it has
  /// none), asked only when the answer is not cached.
  template <typename NameOf>
  bool matches(std::uint64_t id, NameOf&& nameOf) {
    if (capture_.channels.empty()) return true;
    if (auto it = cache_.find(id); it != cache_.end()) return it->second;
    return decide(id, nameOf());
  }

 private:
  bool decide(std::uint64_t id, const std::string& name);
  PayloadCapture capture_;
  std::unordered_map<std::uint64_t, bool> cache_;
};

/// Checks capture settings: maxBytes at most kMaxPayloadCaptureBytes, globs non-empty and at
/// most 256 characters. Errors: InvalidArgument naming the field.
Result<void> checkPayloadCapture(const PayloadCapture& c);

}  // namespace shmbus::detail
