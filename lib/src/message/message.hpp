// Cap'n Proto messages built directly in a claimed ring record and read in place.
//
// Body layout of a message inside a record (after any caller prefix such as the frame header):
//
//   +-----------------------------+  offset 0 (8-byte aligned)
//   | MessageTable (32 bytes)     |  segment count and the word count of each segment
//   +-----------------------------+
//   | segment 0 words             |  segments are contiguous, in order
//   | segment 1 words ...         |
//   +-----------------------------+
//
// The table is fixed-size so segment 0 can start before the final segment count is known; it is
// read with capnp::SegmentArrayMessageReader (docs/architecture.md §13: FlatArray- or SegmentArrayMessageReader).
// A message that fits its claim is one segment: no copy, no heap allocation, no memset when the
// ring's free space is known to be zero (the consumer zeroes what it consumed).
#pragma once

#include <capnp/message.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "ring/ring.hpp"
#include "shmbus/error.hpp"

namespace shmbus::detail {

inline constexpr std::size_t kMaxSegments = 7;

struct MessageTable {
  std::uint32_t segmentCount;                     ///< 0 = no message (empty payload)
  std::uint32_t segmentWords[kMaxSegments];       ///< words of each segment, in order
};
static_assert(sizeof(MessageTable) == 32);

/// Thrown (through Cap'n Proto's builder code) when a message outgrows its claim. Converted to a
/// Result error (TooLarge or Full) by whoever started the build; never escapes the library.
struct ClaimExhausted : std::runtime_error {
  ClaimExhausted(ErrorCode c, const std::string& m) : std::runtime_error(m), code(c) {}
  ErrorCode code;
};

/// Throws ClaimExhausted for builder `b`, out of space for a segment of `minimumSize` words:
/// TooLarge when the words Cap'n Proto has used plus that segment, with `fixedBytes` (headers and
/// the segment table), exceed `limit`, or when the claim already spans the limit
/// (`claimSpansLimit`: a new claim would be laid out the same way); else Full, since a larger
/// claim made once the consumer has freed space may hold the message. `space` names where the
/// message goes in the error ("the ring", "the blob arena").
[[noreturn]] void throwClaimExhausted(capnp::MessageBuilder& b, std::size_t minimumSize, std::size_t fixedBytes,
                                      std::size_t limit, bool claimSpansLimit, const char* space);

/// A capnp::MessageBuilder whose segments are carved out of one ring Claim, starting `offset`
/// bytes into the claim's body. Segment 0 takes the rest of the claim (or, when the producer must
/// zero, a first chunk that doubles on demand). When the claim is exhausted it tries to extend it
/// in place, then throws ClaimExhausted. Lifetime: must not outlive the claim.
/// Thread contract: single thread, like any MessageBuilder.
class RingMessageBuilder final : public capnp::MessageBuilder {
 public:
  RingMessageBuilder(RingProducer& producer, Claim& claim, std::size_t offset);
  ~RingMessageBuilder() override = default;

  kj::ArrayPtr<capnp::word> allocateSegment(capnp::uint minimumSize) override;

  /// Writes the table and returns the body bytes used (offset + table + segments, with the last
  /// segment trimmed to what Cap'n Proto used). Call once, after building.
  std::size_t finish();

  /// Body bytes handed out so far (what abort must re-zero).
  std::size_t touched() const noexcept { return cursor_; }

 private:
  /// Throws ClaimExhausted for a segment of `minimumSize` words the claim cannot give: TooLarge
  /// when no claim could hold the message, else Full.
  [[noreturn]] void throwExhausted(std::size_t minimumSize);

  RingProducer& producer_;
  Claim& claim_;
  std::size_t offset_;
  std::size_t cursor_;  // body offset of the next free byte
  std::size_t nextChunkWords_;
  std::uint32_t count_ = 0;
  std::array<capnp::word*, kMaxSegments> starts_{};
  std::array<std::uint32_t, kMaxSegments> sizes_{};
};

/// parse() then traverse(): the check the router makes of every payload a window writes
/// (docs/architecture.md §5, "Blame"). Errors: InvalidMessage.
Result<void> validatePayload(const std::uint8_t* data, std::size_t bytes);

/// Default limits for reading an untrusted message: traversal of at most 8x the message size
/// (re-reading fields counts again, docs/architecture.md §13) plus 64 Ki words, nesting 64.
capnp::ReaderOptions readerOptionsFor(std::size_t messageWords);

/// A message read in place from a body span laid out by RingMessageBuilder. Holds no copy.
/// Validation here is structural (table and sizes within the span); Cap'n Proto validates
/// pointers lazily and throws kj::Exception on malformed data.
class InPlaceMessage {
 public:
  InPlaceMessage() = default;
  InPlaceMessage(const InPlaceMessage&) = delete;
  InPlaceMessage& operator=(const InPlaceMessage&) = delete;

  /// Parses the table at `data` (8-byte aligned) of `bytes`. Errors: InvalidMessage.
  Result<void> parse(const std::uint8_t* data, std::size_t bytes);

  bool empty() const noexcept { return count_ == 0; }
  std::size_t words() const noexcept { return words_; }
  /// The parsed segments, in order (none for an empty message); views into the parsed span.
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments() const noexcept {
    return kj::arrayPtr(segments_.data(), count_);
  }
  /// The reader; only valid after a successful parse of a non-empty message.
  capnp::MessageReader& reader();
  /// Reads the whole parsed message once, the way a receiver may: every pointer from the root
  /// down (Cap'n Proto's own traversal, capnp::AnyPointer::Reader::targetSize), within the
  /// reader's traversal and nesting limits (readerOptionsFor). O(message words). An empty
  /// message is valid. Errors: InvalidMessage with Cap'n Proto's description (an out-of-bounds
  /// or mistyped pointer, nesting deeper than 64, a traversal past the limit).
  /// The bytes may be in a ring a hostile process still writes: the answer is about what was
  /// read, and a receiver's own reads stay bounds-checked whatever it says.
  Result<void> traverse();

 private:
  std::array<kj::ArrayPtr<const capnp::word>, kMaxSegments> segments_{};
  std::uint32_t count_ = 0;
  std::size_t words_ = 0;
  std::optional<capnp::SegmentArrayMessageReader> reader_;
};

}  // namespace shmbus::detail
