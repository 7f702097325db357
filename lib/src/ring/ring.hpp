// Producer and consumer of a shared-memory SPSC record ring (layout: ring_layout.hpp).
//
// Positions are monotonic 64-bit byte counters; the buffer index is `pos & (capacity - 1)`.
// Each side keeps a process-local cached copy of the other side's index (rigtorp/SPSCQueue's
// `readIdxCache_`), so the producer touches the consumer's cache line only when its cached view
// says the ring is full, and the consumer never reads the producer's index at all (it discovers
// records by their committed length, as Aeron's `aeron_spsc_rb_read` does).
//
// Hostile peers: nothing read from shared memory is trusted. The producer validates `head`
// against its own tail; the consumer validates every record length and type against the buffer
// bounds. A violation is reported as ErrorCode::Corrupt and no access leaves [data, data+capacity).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "ring/ring_layout.hpp"
#include "shmbus/error.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

/// Sizes of one ring, agreed out of band (never read back from shared memory).
struct RingGeometry {
  std::size_t capacity = 1u << 20;    ///< data bytes; a power of two, >= 4 KiB
  std::size_t maxRecord = 1u << 18;   ///< largest record, header included; <= capacity / 2
};

/// Checks a geometry; returns an error naming the bad field.
Result<void> validateGeometry(const RingGeometry& g);

/// A reservation of contiguous ring space for one record, from RingProducer::tryClaim.
struct Claim {
  std::uint8_t* body = nullptr;  ///< first body byte (just after the 8-byte record header)
  std::size_t bodyCapacity = 0;  ///< body bytes reserved
  std::uint64_t pos = 0;         ///< ring position of the record header
  std::size_t padBytes = 0;      ///< padding record to commit first (wrap), 0 if none
  bool active = false;
};

/// The producing side of a ring. Single producer: one thread at a time (callers serialise).
/// Process contract: exactly one process produces into a given ring.
class RingProducer {
 public:
  RingProducer() = default;
  /// `control` and `data` point into a mapped segment; `data` holds `geometry.capacity` bytes.
  /// `zeroOnClaim`: the consumer is not trusted to leave free space zeroed, so Claim users that
  /// need zeroed space must zero it themselves (MessageBuilder checks this flag).
  RingProducer(RingControl* control, std::uint8_t* data, RingGeometry geometry, bool zeroOnClaim = false,
               int notifyEventFd = -1);

  /// Reserves `bodyBytes` contiguous bytes. Errors: TooLarge (header + body > maxRecord),
  /// Full (not enough free space now), Corrupt (the consumer's head is impossible).
  /// Nothing is visible to the consumer until commit(). Never blocks.
  Result<Claim> tryClaim(std::size_t bodyBytes);

  /// Reserves the largest contiguous space between `minBody` and `maxBody` body bytes (clamped to
  /// the maximum record), for a record whose final size is not known yet (a Cap'n Proto message
  /// built in place). That space may lie after a wrap (the claim then carries padding), so in an
  /// empty ring the claim always reaches the maximum. Same errors as tryClaim(minBody).
  Result<Claim> tryClaimUpTo(std::size_t minBody, std::size_t maxBody);

  /// Like tryClaim, but on Full spins then parks on the ring's space word until `deadlineNs`
  /// (absolute CLOCK_MONOTONIC ns, kNoDeadline for ever); then returns Full. `stop` (optional)
  /// is polled after every wake-up; when it returns true the wait ends with BusClosed.
  template <typename Stop>
  Result<Claim> claim(std::size_t bodyBytes, std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop);

  /// Grows an active claim in place to `bodyBytes` if the space after it is free and contiguous
  /// and the record stays <= maxRecord. Returns false (claim unchanged) otherwise.
  bool extend(Claim& c, std::size_t bodyBytes);

  /// Publishes the claimed record with `bodyBytes` (<= bodyCapacity) of body. Release store:
  /// SYNC POINT "record" pairs with the consumer's acquire load of the length.
  /// Does not wake the consumer: call notifyConsumer() after a batch (or use publish()).
  void commit(Claim& c, std::size_t bodyBytes);

  /// Gives up a claim: nothing is published, and the `touchedBytes` of body written so far are
  /// re-zeroed so the space is free again (the invariant the next claim relies on).
  void abort(Claim& c, std::size_t touchedBytes);

  /// commit() then notifyConsumer().
  void publish(Claim& c, std::size_t bodyBytes) { commit(c, bodyBytes); notifyConsumer(); }

  /// Wakes a parked consumer; a fence and one load when none is parked.
  void notifyConsumer() noexcept;

  /// Free bytes by the cached view of head (may under-report).
  std::size_t freeBytesCached() const noexcept { return geometry_.capacity - (tail_ - headCache_); }

  const RingGeometry& geometry() const noexcept { return geometry_; }
  bool zeroOnClaim() const noexcept { return zeroOnClaim_; }
  bool valid() const noexcept { return control_ != nullptr; }
  std::uint64_t tail() const noexcept { return tail_; }
  /// The shared control block (its spaceReady word is where a producer waits for room).
  RingControl* control() const noexcept { return control_; }

 private:
  Result<void> refreshHead();
  /// Body bytes a record at `pos` can hold: up to `maxBody`, the buffer end and the cached head.
  /// Requires `pos - headCache_ + kHeader <= capacity`.
  std::size_t roomAt(std::uint64_t pos, std::size_t maxBody) const noexcept;

  RingControl* control_ = nullptr;
  std::uint8_t* data_ = nullptr;
  RingGeometry geometry_{};
  std::uint64_t mask_ = 0;
  std::uint64_t tail_ = 0;       // process-local: next record position
  std::uint64_t headCache_ = 0;  // process-local cached copy of control_->head
  bool zeroOnClaim_ = false;
  int notifyEventFd_ = -1;
};

/// A committed record as seen by the consumer. `body` points into the ring (zero copy) and stays
/// valid until the consumer releases past `end`.
struct RecordView {
  const std::uint8_t* body = nullptr;
  std::size_t bodyBytes = 0;
  std::uint64_t pos = 0;  ///< position of the record header
  std::uint64_t end = 0;  ///< position just past the (aligned) record
};

/// The consuming side of a ring. Single consumer: one thread at a time.
class RingConsumer {
 public:
  RingConsumer() = default;
  RingConsumer(RingControl* control, std::uint8_t* data, RingGeometry geometry);

  /// The next committed data record after the last one read (padding is skipped), or nullopt
  /// when none is committed yet. Does not free anything: records stay valid until release().
  /// Errors: Corrupt (a length or type that cannot be); after Corrupt the ring is unusable.
  Result<std::optional<RecordView>> tryRead();

  /// True when a record (or padding) is committed at the read position. Acquire load; cheap.
  /// Used as the predicate of a spin-then-park wait.
  bool hasData() const noexcept;

  /// Zeroes every byte in [head, pos) and publishes head = pos (release, SYNC POINT "head":
  /// pairs with the producer's acquire load of head), then wakes a producer waiting for space.
  /// `pos` must be the `end` of a record already read. Batch: call once per batch of records.
  void releaseTo(std::uint64_t pos) noexcept;

  /// Releases everything read so far.
  void releaseAll() noexcept { releaseTo(readPos_); }

  /// Spins then parks until a record is committed or `deadlineNs`. `stop` is polled after each
  /// wake-up (return true to end the wait early, e.g. on peer death).
  template <typename Stop>
  WaitStatus wait(std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop);

  std::uint64_t readPos() const noexcept { return readPos_; }
  std::uint64_t head() const noexcept { return head_; }
  bool valid() const noexcept { return control_ != nullptr; }
  RingControl* control() const noexcept { return control_; }

 private:
  RingControl* control_ = nullptr;
  std::uint8_t* data_ = nullptr;
  RingGeometry geometry_{};
  std::uint64_t mask_ = 0;
  std::uint64_t readPos_ = 0;  // process-local: next record to read
  std::uint64_t head_ = 0;     // process-local copy of what we published
};

template <typename Stop>
Result<Claim> RingProducer::claim(std::size_t bodyBytes, std::int64_t deadlineNs, const SpinPolicy& policy,
                                  Stop&& stop) {
  for (;;) {
    auto c = tryClaim(bodyBytes);
    if (c.ok() || c.code() != ErrorCode::Full) return c;
    bool stopped = false;
    const std::uint64_t seenHead = headCache_;  // tryClaim just refreshed it
    auto status = spinThenPark(
        control_->spaceReady,
        [&] {
          if (stop()) { stopped = true; return true; }
          // acquire: SYNC POINT "head" (pairs with RingConsumer::releaseTo's release store).
          // Any movement of head is worth another tryClaim (which re-validates it).
          return control_->head.load(std::memory_order_acquire) != seenHead;
        },
        policy, deadlineNs);
    if (stopped) return makeError(ErrorCode::BusClosed, "ring closed while waiting for space");
    if (status == WaitStatus::Timeout) return tryClaim(bodyBytes);
  }
}

template <typename Stop>
WaitStatus RingConsumer::wait(std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop) {
  return spinThenPark(control_->dataReady, [&] { return hasData() || stop(); }, policy, deadlineNs);
}

}  // namespace shmbus::detail
