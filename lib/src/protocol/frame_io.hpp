// Writing frames into a ring and reading them back: the one place that knows the record body
// layout [FrameHeader][MessageTable][segments] (frame.hpp, message/message.hpp).
#pragma once

#include <capnp/message.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "message/message.hpp"
#include "protocol/frame.hpp"
#include "ring/ring.hpp"
#include "shmbus/message.hpp"

namespace shmbus::detail {

/// Smallest record body: a frame header and an empty message table.
inline constexpr std::size_t kMinFrameBody = sizeof(FrameHeader) + sizeof(MessageTable);

/// Claims space, writes `header`, builds the payload in place with `build` (empty: no payload)
/// and commits; notifies the consumer when `notify`. `payloadBytes` (optional) gets the payload's
/// size (message table + segments, what the reader's FrameView::payloadBytes will be) before the
/// commit publishes it (relaxed: whoever learns of the frame through the ring, however
/// indirectly, also sees the size; atomic, as the one who reads it may be another thread whose
/// synchronisation runs through another process). Errors: TooLarge, Full, Corrupt. Exceptions
/// thrown by `build` abort the claim and propagate.
Result<void> writeFrame(RingProducer& p, const FrameHeader& header, const BuildFn& build, std::size_t sizeHint = 0,
                        bool notify = true, std::atomic<std::size_t>* payloadBytes = nullptr);

/// Bytes of a message given as its segments (what writeFrameSegments copies after the table).
inline std::size_t messageBytes(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) noexcept {
  std::size_t words = 0;
  for (auto s : segments) words += s.size();
  return words * sizeof(capnp::word);
}

/// Writes `header` followed by a copy of the segments of `segments` (a heap-built message).
Result<void> writeFrameSegments(RingProducer& p, const FrameHeader& header,
                                kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, bool notify = true);

/// Writes `header` followed by a copy of `payload` (a MessageTable + segments span from another
/// ring: the supervisor's one routing copy).
Result<void> writeFrameCopy(RingProducer& p, const FrameHeader& header, const std::uint8_t* payload,
                            std::size_t payloadBytes, bool notify = true);

/// Writes an Error frame (kind Error, status = code) whose payload is bus.capnp ErrorInfo.
Result<void> writeErrorFrame(RingProducer& p, FrameHeader header, const Error& error, bool notify = true);

/// A frame as bytes, to be written later with writeFrameCopy (the router holds the outcome of a
/// call whose caller's inbox is full: docs/architecture.md §5 "Outcomes are never dropped").
struct HeldFrame {
  FrameHeader header{};
  std::vector<std::uint8_t> payload;  ///< what follows the header: the message table and segments
};

/// The frame writeFrameSegments writes, as a HeldFrame.
HeldFrame heldFrame(const FrameHeader& header, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments);

/// The frame writeErrorFrame writes to a ring whose largest record is `maxRecord`, as a HeldFrame.
HeldFrame heldErrorFrame(FrameHeader header, const Error& error, std::size_t maxRecord);

/// Decodes an Error frame's payload into an Error (a malformed payload still yields an Error
/// with the frame's status code).
Error decodeError(const FrameHeader& header, InPlaceMessage& payload);

/// A frame read from a ring: a copy of its header and a view of its payload bytes.
struct FrameView {
  FrameHeader header;
  const std::uint8_t* payload = nullptr;  ///< MessageTable + segments, in the ring
  std::size_t payloadBytes = 0;
  std::uint64_t end = 0;                  ///< ring position after the record (for release)
};

/// Splits a record into header copy and payload view. Errors: InvalidMessage (too short, or an
/// unknown kind).
Result<FrameView> parseFrame(const RecordView& record);

/// Builds the ErrorInfo of `e` into `b` (used for frames and for HandlerError replies).
void buildErrorInfo(capnp::MessageBuilder& b, const Error& e);

/// Error for an exception escaping a handler: HandlerError with the exception's type, message
/// and, where known, stack text.
Error handlerError(const std::string& what, std::exception_ptr ex);

}  // namespace shmbus::detail
