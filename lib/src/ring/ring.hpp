// Producer and consumer of a shared-memory SPSC record ring (layout: ring_layout.hpp).
//
// Positions are monotonic 64-bit byte counters; the buffer index is `pos & (capacity - 1)`.
// Each side keeps a process-local cached copy of the other side's index (rigtorp/SPSCQueue's
// `readIdxCache_`), so the producer touches the consumer's cache line only when its cached view
// says the ring is full.
//
// Two ways to consume, one ring protocol:
//  - latency (tryRead / wait): the consumer discovers records by their committed length, as
//    Aeron's `aeron_spsc_rb_read` does, and never reads the producer's index. A record is visible
//    the moment its length store lands; a spinning consumer polls the line being written.
//  - throughput (tryReadPublished / waitPublished): the consumer reads only below the tail the
//    producer publishes once per batch (notifyConsumer), so it never polls a line the producer is
//    still writing: one index transfer per batch instead of contended record lines (the batched
//    index publication of Vyukov's and Thompson's SPSC queues; Aeron's `aeron_spsc_rb_read`
//    batch limit does the same on the consumer side).
//
// The common operations (tryClaim, commit, tryRead, hasData) are inline with their rare branches
// (wrap, restart, refresh of head, errors) out of line, so a record costs a few tens of instructions.
//
// Hostile peers: nothing read from shared memory is trusted. The producer validates `head`
// against its own tail; the consumer validates every record length and type against the buffer
// bounds. A violation is reported as ErrorCode::Corrupt and no access leaves [data, data+capacity).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "ring/ring_layout.hpp"
#include "shmbus/error.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

/// Sizes of one ring, agreed out of band (never read back from shared memory).
struct RingGeometry {
  std::size_t capacity = 1u << 20;    ///< data bytes; a power of two, >= 4 KiB
  std::size_t maxRecord = 1u << 18;   ///< largest record, header included; <= capacity / 2
  /// Producer-only knob, bytes (0 = off; else a multiple of 8 in [64, capacity / 2]). When the
  /// producer's tail is at least this far into the buffer and the ring is nearly empty (what is
  /// unreleased, at most 4 KiB, plus the new record fits before the tail's offset; checked at most
  /// once per `restartWindow` bytes and per 4 records produced, one load of head each), it pads to
  /// the end of the buffer and restarts at offset 0. Request/response traffic then keeps reusing
  /// the same few cache lines, hot in both cores, instead of sweeping the whole buffer
  /// (bench/ring_bench, 256: PingPong/ring_spin/64 281 -> 173 ns, /1024 577 -> 333 ns, together
  /// with the other changes of bench/README.md). The price: until the consumer reads past that
  /// padding, only the bytes before it are free, so a producer that bursts into a sleeping
  /// consumer meets Full after about the restart offset instead of `capacity` bytes. Suits rings
  /// whose producer waits for space (claim()) and whose consumer is prompt.
  std::size_t restartWindow = 0;
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

inline constexpr std::size_t kRecordHeaderBytes = sizeof(RecordHeader);

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
  /// SYNC POINT "record" pairs with the consumer's acquire load of the length. A latency
  /// consumer (tryRead) sees it at once; a batch consumer (tryReadPublished) only after the next
  /// notifyConsumer(). Does not wake the consumer: call notifyConsumer() after a batch (or use
  /// publish()).
  void commit(Claim& c, std::size_t bodyBytes);

  /// Gives up a claim: nothing is published, and the `touchedBytes` of body written so far are
  /// re-zeroed so the space is free again (the invariant the next claim relies on).
  void abort(Claim& c, std::size_t touchedBytes);

  /// commit() then notifyConsumer().
  void publish(Claim& c, std::size_t bodyBytes) { commit(c, bodyBytes); notifyConsumer(); }

  /// Publishes the tail (everything committed so far) to batch consumers, then wakes a parked
  /// consumer: one store to the producer's own line, a fence and one load when none is parked.
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
  /// tryClaim's rare cases: TooLarge, a wrap (padding), a restart, a stale cached head, Full.
  Result<Claim> claimSlow(std::size_t bodyBytes);
  /// commit's rare case: the claim starts after a padding record, committed here first.
  void commitPadding(const Claim& c) noexcept;
  /// Body bytes a record at `pos` can hold: up to `maxBody`, the buffer end and the cached head.
  /// Requires `pos - headCache_ + kHeader <= capacity`.
  std::size_t roomAt(std::uint64_t pos, std::size_t maxBody) const noexcept;

  RingControl* control_ = nullptr;
  std::uint8_t* data_ = nullptr;
  RingGeometry geometry_{};
  std::uint64_t mask_ = 0;
  std::uint64_t tail_ = 0;       // process-local: next record position
  std::uint64_t headCache_ = 0;  // process-local cached copy of control_->head
  std::uint64_t nextRestartCheck_ = UINT64_MAX;  // tail at which the restart check runs next
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

  /// Batch-mode read: the next data record below the tail the producer last published
  /// (notifyConsumer), or nullopt when everything published has been read. Never touches a record
  /// the producer may still be writing (no contended lines while streaming). Same errors as
  /// tryRead, plus Corrupt for a published tail beyond the ring or an uncommitted record below it.
  /// Do not mix with tryRead on one consumer unless the producer publishes after every commit.
  Result<std::optional<RecordView>> tryReadPublished();

  /// True when a record (or padding) is committed at the read position. Acquire load; cheap.
  /// Used as the predicate of a spin-then-park wait.
  bool hasData() const noexcept;

  /// True when the producer has published a tail beyond the read position. Acquire load of the
  /// producer's index line (which moves once per batch).
  bool hasPublished() const noexcept;

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

  /// Like wait(), for a batch consumer: spins on the producer's published tail (one line that
  /// changes once per batch) rather than on the next record, then parks until notifyConsumer().
  template <typename Stop>
  WaitStatus waitPublished(std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop);

  std::uint64_t readPos() const noexcept { return readPos_; }
  /// The ring's geometry (capacity, maxRecord).
  const RingGeometry& geometry() const noexcept { return geometry_; }
  std::uint64_t head() const noexcept { return head_; }
  bool valid() const noexcept { return control_ != nullptr; }
  RingControl* control() const noexcept { return control_; }

 private:
  /// tryRead's rare cases: padding, an aborted record, a record that fails validation.
  Result<std::optional<RecordView>> readSlow();
  /// tryReadPublished's rare cases: a new published tail, padding, validation failures.
  Result<std::optional<RecordView>> readPublishedSlow();
  /// The common case of both reads: a non-empty data record of `length` bytes at readPos_,
  /// within the bounds, returned and stepped over. Returns false (nothing changed) otherwise.
  bool takeData(std::int32_t length, std::optional<RecordView>& out) noexcept;
  /// Validates the record header at readPos_ (`length` != 0 was read with acquire) and advances
  /// past it; nullopt for padding or an aborted record (the caller reads on).
  Result<std::optional<RecordView>> step(std::int32_t length);
  /// memset(0) of ring positions [from, to) (to - from <= capacity; may wrap once).
  void zero(std::uint64_t from, std::uint64_t to) noexcept;
  /// releaseTo's zeroing when [head_, pos) wraps or holds a padding record.
  void zeroSlow(std::uint64_t pos) noexcept;

  RingControl* control_ = nullptr;
  std::uint8_t* data_ = nullptr;
  RingGeometry geometry_{};
  std::uint64_t mask_ = 0;
  std::uint64_t readPos_ = 0;    // process-local: next record to read
  std::uint64_t head_ = 0;       // process-local copy of what we published
  std::uint64_t tailCache_ = 0;  // process-local: the producer's last published tail (batch mode)
  std::uint64_t padPos_ = UINT64_MAX;  // position of the last padding record read (its body stays zero)
};

// ---------------------------------------------------------------------------------------------
// Inline fast paths

inline Result<Claim> RingProducer::tryClaim(std::size_t bodyBytes) {
  const std::uint64_t index = tail_ & mask_;
  const std::size_t recordBytes = alignUp(kRecordHeaderBytes + bodyBytes, kRecordAlign);
  // The common case in one test: fits (no TooLarge, which also rules out size_t overflow), fits
  // before the buffer end (no wrap), fits by the cached head (no refresh), no restart check due.
  if (bodyBytes <= geometry_.maxRecord - kRecordHeaderBytes && recordBytes <= geometry_.capacity - index &&
      tail_ + recordBytes - headCache_ <= geometry_.capacity && tail_ < nextRestartCheck_) [[likely]] {
    return Result<Claim>(std::in_place, data_ + index + kRecordHeaderBytes, recordBytes - kRecordHeaderBytes, tail_,
                         std::size_t{0}, true);
  }
  return claimSlow(bodyBytes);
}

inline void RingProducer::commit(Claim& c, std::size_t bodyBytes) {
  SHMBUS_ASSERT(c.active && bodyBytes <= c.bodyCapacity, "commit of an inactive claim or beyond its capacity");
  if (c.padBytes != 0) [[unlikely]] commitPadding(c);
  RecordHeader* h = headerAt(data_, c.pos & mask_);
  h->type = kRecordData;
  // release: SYNC POINT "record": the body and type written above become visible to a consumer
  // that reads this length with acquire (RingConsumer::tryRead / step).
  h->length.store(static_cast<std::int32_t>(kRecordHeaderBytes + bodyBytes), std::memory_order_release);
  tail_ = c.pos + alignUp(kRecordHeaderBytes + bodyBytes, kRecordAlign);
  c.active = false;
}

inline void RingProducer::notifyConsumer() noexcept {
  // release: SYNC POINT "tail" pairs with RingConsumer::tryReadPublished's / hasPublished's
  // acquire load: every record committed before this store is visible to a batch consumer.
  control_->tail.store(tail_, std::memory_order_release);
  notify(control_->dataReady, notifyEventFd_);
}

inline bool RingConsumer::hasData() const noexcept {
  if (readPos_ - head_ >= geometry_.capacity) return false;  // everything held: no room for news
  const auto* h = headerAt(data_, readPos_ & mask_);
  // acquire: SYNC POINT "record".
  return h->length.load(std::memory_order_acquire) != 0;
}

inline void RingConsumer::releaseTo(std::uint64_t pos) noexcept {
  if (pos <= head_ || pos > readPos_) return;
  // Zero [head_, pos) so the producer finds free space zeroed (its records' lengths read 0 until
  // committed). Common case: one contiguous range with no padding record in it.
  const std::uint64_t index = head_ & mask_;
  const std::uint64_t n = pos - head_;
  const bool contiguous = n <= geometry_.capacity - index && !(padPos_ >= head_ && padPos_ < pos);
  if (contiguous && n <= 512) [[likely]] {
    // A small release (one request or reply): 8-byte stores, not a call to libc's memset, whose
    // 64-byte vector stores straddle the lines this record shares with its neighbours. Plain
    // stores, published by the head store below; the empty asm keeps GCC from turning the loop
    // back into a memset call.
    auto* p = reinterpret_cast<std::uint64_t*>(data_ + index);
    for (std::uint64_t i = 0; i < n / 8; ++i) {
      p[i] = 0;
      asm volatile("" ::: "memory");
    }
  } else if (contiguous) {
    std::memset(data_ + index, 0, n);
  } else {
    zeroSlow(pos);
  }
  head_ = pos;
  // release: SYNC POINT "head" pairs with RingProducer::refreshHead's acquire load: the zeroes
  // above are visible before the producer may reuse the space.
  control_->head.store(pos, std::memory_order_release);
  notify(control_->spaceReady);
}

inline bool RingConsumer::hasPublished() const noexcept {
  // acquire: SYNC POINT "tail" (pairs with RingProducer::notifyConsumer's release store).
  return control_->tail.load(std::memory_order_acquire) > readPos_;
}

inline bool RingConsumer::takeData(std::int32_t length, std::optional<RecordView>& out) noexcept {
  const std::uint64_t index = readPos_ & mask_;
  const auto* h = headerAt(data_, index);
  const std::size_t aligned = alignUp(static_cast<std::uint32_t>(length), kRecordAlign);
  // A non-empty data record inside the bounds (everything else goes the slow way).
  if (h->type == kRecordData && length > static_cast<std::int32_t>(kRecordHeaderBytes) &&
      static_cast<std::size_t>(length) <= geometry_.maxRecord && aligned <= geometry_.capacity - index) [[likely]] {
    const std::uint64_t pos = readPos_;
    readPos_ = pos + aligned;
    out.emplace(RecordView{data_ + index + kRecordHeaderBytes, static_cast<std::size_t>(length) - kRecordHeaderBytes,
                           pos, pos + aligned});
    return true;
  }
  return false;
}

inline Result<std::optional<RecordView>> RingConsumer::tryRead() {
  if (readPos_ - head_ < geometry_.capacity) [[likely]] {
    const auto* h = headerAt(data_, readPos_ & mask_);
    // acquire: SYNC POINT "record" pairs with RingProducer::commit's release store; the body
    // and type written before it are visible now. Read once: the producer may be hostile.
    const std::int32_t length = h->length.load(std::memory_order_acquire);
    Result<std::optional<RecordView>> r(std::in_place);
    if (length == 0 || takeData(length, *r)) [[likely]] return r;
  }
  return readSlow();
}

inline Result<std::optional<RecordView>> RingConsumer::tryReadPublished() {
  if (readPos_ < tailCache_ && readPos_ - head_ < geometry_.capacity) [[likely]] {
    const auto* h = headerAt(data_, readPos_ & mask_);
    // acquire: SYNC POINT "record" (below the published tail it is committed; read once).
    const std::int32_t length = h->length.load(std::memory_order_acquire);
    Result<std::optional<RecordView>> r(std::in_place);
    if (length != 0 && takeData(length, *r)) [[likely]] return r;
  }
  return readPublishedSlow();
}

template <typename Stop>
Result<Claim> RingProducer::claim(std::size_t bodyBytes, std::int64_t deadlineNs, const SpinPolicy& policy,
                                  Stop&& stop) {
  // One named result returned on every path (NRVO): a Claim copied through a temporary costs
  // store-forwarding stalls on the hot path.
  Result<Claim> c = tryClaim(bodyBytes);
  while (!c.ok() && c.code() == ErrorCode::Full) {
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
    if (stopped) {
      c = makeError(ErrorCode::BusClosed, "ring closed while waiting for space");
      break;
    }
    c = tryClaim(bodyBytes);
    if (status == WaitStatus::Timeout) break;
  }
  return c;
}

template <typename Stop>
WaitStatus RingConsumer::wait(std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop) {
  return spinThenPark(control_->dataReady, [&] { return hasData() || stop(); }, policy, deadlineNs);
}

template <typename Stop>
WaitStatus RingConsumer::waitPublished(std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop) {
  return spinThenPark(control_->dataReady, [&] { return hasPublished() || stop(); }, policy, deadlineNs);
}

}  // namespace shmbus::detail
