#include "ring/ring.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace shmbus::detail {

namespace {
constexpr std::size_t kHeader = sizeof(RecordHeader);
/// Unreleased bytes a restart tolerates (RingGeometry::restartWindow): about one record in flight.
constexpr std::uint64_t kRestartSlack = 4096;
/// Records between two restart checks at least (each check loads head: a cache-line transfer).
constexpr std::uint64_t kRestartEveryRecords = 4;

}  // namespace

Result<void> validateGeometry(const RingGeometry& g) {
  if (g.capacity < 4096 || (g.capacity & (g.capacity - 1)) != 0 || g.capacity > (1ull << 30)) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("ring capacity {} bytes must be a power of two in [4 KiB, 1 GiB]", g.capacity));
  }
  if (g.maxRecord < 64 || g.maxRecord > g.capacity / 2 || g.maxRecord % kRecordAlign != 0) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("ring max record {} bytes must be a multiple of 8 in [64, capacity/2 = {}]",
                                 g.maxRecord, g.capacity / 2));
  }
  if (g.restartWindow != 0 &&
      (g.restartWindow < 64 || g.restartWindow > g.capacity / 2 || g.restartWindow % kRecordAlign != 0)) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("ring restart window {} bytes must be 0 or a multiple of 8 in [64, capacity/2 = {}]",
                                 g.restartWindow, g.capacity / 2));
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Producer

RingProducer::RingProducer(RingControl* control, std::uint8_t* data, RingGeometry geometry, bool zeroOnClaim,
                           int notifyEventFd)
    : control_(control),
      data_(data),
      geometry_(geometry),
      mask_(geometry.capacity - 1),
      zeroOnClaim_(zeroOnClaim),
      notifyEventFd_(notifyEventFd) {
  SHMBUS_REQUIRE(validateGeometry(geometry).ok(), validateGeometry(geometry).error().message);
  // acquire: SYNC POINT "head"; a producer attaching to a ring in use starts where it stands.
  // Both indices come from shared memory: a misaligned one would put a record header across the
  // end of the buffer (a wrap padding header at capacity - 4), so start on a record boundary.
  headCache_ = control_->head.load(std::memory_order_acquire) & ~std::uint64_t{kRecordAlign - 1};
  // relaxed: informational index, written only by this producer.
  tail_ = control_->tail.load(std::memory_order_relaxed);
  if (tail_ < headCache_ || tail_ - headCache_ > geometry_.capacity || (tail_ & (kRecordAlign - 1)) != 0) {
    tail_ = headCache_;
  }
  // The published tail lags the last commit by up to one batch (commit does not publish it), so
  // walk forward over records committed after it: writing there would overwrite unread records.
  // Bounded by the ring; stops at the first free (zero) header or anything that is not a record.
  while (tail_ - headCache_ < geometry_.capacity) {
    const std::uint64_t index = tail_ & mask_;
    const RecordHeader* h = headerAt(data_, index);
    // acquire: SYNC POINT "record" (a previous producer's commit).
    const std::int32_t length = h->length.load(std::memory_order_acquire);
    const std::size_t toEnd = geometry_.capacity - index;
    const std::size_t aligned = alignUp(static_cast<std::uint32_t>(length), kRecordAlign);
    if (length < static_cast<std::int32_t>(kHeader) || aligned > toEnd ||
        aligned > geometry_.capacity - (tail_ - headCache_)) {
      break;
    }
    tail_ += aligned;
  }
  if (geometry_.restartWindow != 0) nextRestartCheck_ = tail_ + geometry_.restartWindow;
}

Result<void> RingProducer::refreshHead() {
  // acquire: SYNC POINT "head" pairs with RingConsumer::releaseTo's release store, so the zeroes
  // the consumer wrote before publishing head are visible before we write over them.
  const std::uint64_t h = control_->head.load(std::memory_order_acquire);
  if (h < headCache_ || h > tail_ || (h & (kRecordAlign - 1)) != 0) {
    return makeError(ErrorCode::Corrupt,
                     fmt::format("ring head {} is impossible (cached head {}, tail {})", h, headCache_, tail_));
  }
  headCache_ = h;
  return {};
}

Result<Claim> RingProducer::claimSlow(std::size_t bodyBytes) {
  SHMBUS_ASSERT(control_ != nullptr, "producer not attached");
  if (bodyBytes > geometry_.maxRecord - kHeader) {
    return makeError(ErrorCode::TooLarge, fmt::format("record of {} bytes exceeds the ring's maximum of {} bytes",
                                                      bodyBytes + kHeader, geometry_.maxRecord));
  }
  const std::size_t recordBytes = alignUp(kHeader + bodyBytes, kRecordAlign);
  const std::uint64_t index = tail_ & mask_;
  const std::size_t toEnd = geometry_.capacity - index;
  std::size_t padBytes = recordBytes > toEnd ? toEnd : 0;
  if (tail_ >= nextRestartCheck_) {
    // Restart (RingGeometry::restartWindow): at most one check (one load of head, a cache-line
    // transfer) per window of bytes produced and per kRestartEveryRecords records of this size.
    if (padBytes == 0 && index >= geometry_.restartWindow && recordBytes <= index) {
      if (auto r = refreshHead(); !r) return r.error();
      // Restart when what is still unreleased plus this record fits before the current offset
      // (so the padding costs no space the ring would otherwise have): "nearly empty", which a
      // request/response ring is whenever its consumer has not yet released the last request.
      if ((tail_ - headCache_) + recordBytes <= index && tail_ - headCache_ <= kRestartSlack) padBytes = toEnd;
    }
    // Counted from where this record starts (after the padding, if any).
    nextRestartCheck_ = tail_ + padBytes + std::max<std::uint64_t>(geometry_.restartWindow, kRestartEveryRecords * recordBytes);
  }
  const std::size_t total = padBytes + recordBytes;
  if (tail_ + total - headCache_ > geometry_.capacity) {
    if (auto r = refreshHead(); !r) return r.error();
    if (tail_ + total - headCache_ > geometry_.capacity) {
      return makeError(ErrorCode::Full,
                       fmt::format("ring full: {} bytes needed, {} free", total, freeBytesCached()));
    }
  }
  Claim c;
  c.pos = tail_ + padBytes;
  c.padBytes = padBytes;
  c.body = data_ + (c.pos & mask_) + kHeader;
  c.bodyCapacity = recordBytes - kHeader;
  c.active = true;
  return c;
}

Result<Claim> RingProducer::tryClaimUpTo(std::size_t minBody, std::size_t maxBody) {
  maxBody = std::min(maxBody, geometry_.maxRecord - kHeader);
  if (minBody > maxBody) return tryClaim(minBody);  // reports TooLarge
  auto c = tryClaim(minBody);
  if (!c) return c;
  // Grow to what is free and contiguous after the record (records never wrap).
  c->bodyCapacity = std::max(c->bodyCapacity, roomAt(c->pos, maxBody));
  // When the end of the buffer cuts the room short, the claim can never grow past it: a message
  // larger than that room would fail with Full even in an empty ring (waiting frees nothing). If a
  // wrap leaves more room, pad to the end and claim from offset 0 instead.
  if (c->padBytes == 0 && geometry_.capacity - (c->pos & mask_) - kHeader < maxBody) {
    if (auto r = refreshHead(); !r) return r.error();
    c->bodyCapacity = std::max(c->bodyCapacity, roomAt(c->pos, maxBody));
    const std::size_t pad = geometry_.capacity - (tail_ & mask_);
    if (tail_ + pad + kHeader - headCache_ <= geometry_.capacity) {
      const std::size_t wrapped = roomAt(tail_ + pad, maxBody);
      if (wrapped > c->bodyCapacity) {
        c->pos = tail_ + pad;
        c->padBytes = pad;
        c->body = data_ + kHeader;
        c->bodyCapacity = wrapped;
      }
    }
  }
  return c;
}

std::size_t RingProducer::roomAt(std::uint64_t pos, std::size_t maxBody) const noexcept {
  const std::size_t toEnd = geometry_.capacity - (pos & mask_) - kHeader;
  const std::size_t free = geometry_.capacity - (pos - headCache_) - kHeader;
  return std::min({maxBody, toEnd, free}) & ~std::size_t{kRecordAlign - 1};
}

bool RingProducer::extend(Claim& c, std::size_t bodyBytes) {
  SHMBUS_ASSERT(c.active, "extend of an inactive claim");
  if (bodyBytes <= c.bodyCapacity) return true;
  if (bodyBytes > geometry_.maxRecord - kHeader) return false;
  const std::size_t recordBytes = alignUp(kHeader + bodyBytes, kRecordAlign);
  if ((c.pos & mask_) + recordBytes > geometry_.capacity) return false;  // records never wrap
  const std::uint64_t end = c.pos + recordBytes;
  if (end - headCache_ > geometry_.capacity) {
    if (!refreshHead()) return false;
    if (end - headCache_ > geometry_.capacity) return false;
  }
  c.bodyCapacity = recordBytes - kHeader;
  return true;
}

void RingProducer::commitPadding(const Claim& c) noexcept {
  RecordHeader* pad = headerAt(data_, tail_ & mask_);
  pad->type = kRecordPadding;
  // release: SYNC POINT "record" (pairs with RingConsumer::tryRead's acquire load). Only the
  // header is written: the padding's body is free space and stays zero.
  pad->length.store(static_cast<std::int32_t>(c.padBytes), std::memory_order_release);
}

void RingProducer::abort(Claim& c, std::size_t touchedBytes) {
  SHMBUS_ASSERT(c.active, "abort of an inactive claim");
  c.active = false;
  // Nothing was published (not even the wrap padding: the next claim recomputes it), so restoring
  // the invariant "free space is zero" over what was written is all an abort needs.
  std::memset(c.body, 0, std::min(touchedBytes, c.bodyCapacity));
}

// ---------------------------------------------------------------------------------------------
// Consumer

RingConsumer::RingConsumer(RingControl* control, std::uint8_t* data, RingGeometry geometry)
    : control_(control), data_(data), geometry_(geometry), mask_(geometry.capacity - 1) {
  SHMBUS_REQUIRE(validateGeometry(geometry).ok(), validateGeometry(geometry).error().message);
  // relaxed: we are the only writer of head; a consumer attaching to a used ring resumes there.
  head_ = readPos_ = control_->head.load(std::memory_order_relaxed) & ~std::uint64_t{kRecordAlign - 1};
}

Result<std::optional<RecordView>> RingConsumer::step(std::int32_t length) {
  Result<std::optional<RecordView>> r(std::in_place);
  if (takeData(length, *r)) return r;  // a plain data record
  const std::uint64_t index = readPos_ & mask_;
  const std::uint32_t type = headerAt(data_, index)->type;
  const std::size_t toEnd = geometry_.capacity - index;
  if (type == kRecordPadding) {
    if (length < 0 || static_cast<std::size_t>(length) != toEnd) {
      return makeError(ErrorCode::Corrupt, fmt::format("padding record of {} bytes at offset {} must run to the "
                                                       "end of the ring ({} bytes)", length, index, toEnd));
    }
    padPos_ = readPos_;
    readPos_ += toEnd;
    return r;
  }
  if (type != kRecordData) {
    return makeError(ErrorCode::Corrupt, fmt::format("record type {} at offset {} is unknown", type, index));
  }
  if (length != static_cast<std::int32_t>(kHeader)) {
    return makeError(ErrorCode::Corrupt,
                     fmt::format("record length {} at offset {} is out of bounds (max {}, {} bytes to the end)",
                                 length, index, geometry_.maxRecord, toEnd));
  }
  readPos_ += kHeader;  // an aborted claim (empty body): nothing to deliver
  return r;
}

Result<std::optional<RecordView>> RingConsumer::readSlow() {
  for (;;) {
    if (readPos_ - head_ >= geometry_.capacity) return std::optional<RecordView>{};
    // acquire: SYNC POINT "record" pairs with RingProducer::commit's / commitPadding's release
    // store. Read once: the producer may be hostile.
    const std::int32_t length = headerAt(data_, readPos_ & mask_)->length.load(std::memory_order_acquire);
    if (length == 0) return std::optional<RecordView>{};
    auto r = step(length);
    if (!r || r->has_value()) return r;
  }
}

Result<std::optional<RecordView>> RingConsumer::readPublishedSlow() {
  for (;;) {
    if (readPos_ >= tailCache_) {
      // acquire: SYNC POINT "tail" pairs with RingProducer::notifyConsumer's release store: every
      // record below it is committed and its bytes are visible.
      const std::uint64_t t = control_->tail.load(std::memory_order_acquire);
      if (t <= readPos_) return std::optional<RecordView>{};
      if (t - head_ > geometry_.capacity) {
        return makeError(ErrorCode::Corrupt, fmt::format("published tail {} is impossible (head {}, capacity {})", t,
                                                         head_, geometry_.capacity));
      }
      tailCache_ = t;
    }
    if (readPos_ - head_ >= geometry_.capacity) return std::optional<RecordView>{};
    // acquire: SYNC POINT "record" (as in readSlow; below the published tail it is committed).
    const std::int32_t length = headerAt(data_, readPos_ & mask_)->length.load(std::memory_order_acquire);
    if (length == 0) {
      return makeError(ErrorCode::Corrupt, fmt::format("no record at offset {} below the published tail {}",
                                                       readPos_ & mask_, tailCache_));
    }
    auto r = step(length);
    if (!r || r->has_value()) return r;
  }
}

void RingConsumer::zero(std::uint64_t from, std::uint64_t to) noexcept {
  const std::uint64_t index = from & mask_;
  const std::uint64_t n = to - from;
  const std::uint64_t first = std::min<std::uint64_t>(n, geometry_.capacity - index);
  std::memset(data_ + index, 0, first);
  if (n > first) std::memset(data_, 0, n - first);
}

void RingConsumer::zeroSlow(std::uint64_t pos) noexcept {
  // A padding record in the range keeps its body: the producer wrote only its header, so the rest
  // is still zero (a restart pads most of the ring; zeroing it would cost a sweep of the buffer).
  if (padPos_ >= head_ && padPos_ < pos) {
    zero(head_, padPos_ + kHeader);
    zero(padPos_ + (geometry_.capacity - (padPos_ & mask_)), pos);
  } else {
    zero(head_, pos);
  }
}

}  // namespace shmbus::detail
