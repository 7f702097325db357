#include "message/message.hpp"

#include <capnp/any.h>
#include <fmt/format.h>

#include <cstring>

namespace shmbus::detail {

namespace {
constexpr std::size_t kWord = sizeof(capnp::word);
constexpr std::size_t kFirstZeroedChunkWords = 128;  // 1 KiB: a small message zeroes little
}  // namespace

RingMessageBuilder::RingMessageBuilder(RingProducer& producer, Claim& claim, std::size_t offset)
    : producer_(producer),
      claim_(claim),
      offset_(offset),
      cursor_(offset + sizeof(MessageTable)),
      nextChunkWords_(kFirstZeroedChunkWords) {
  SHMBUS_ASSERT(offset % kWord == 0, "message offset must be word aligned");
  SHMBUS_ASSERT(cursor_ <= claim.bodyCapacity, "claim smaller than the message table");
  if (producer_.zeroOnClaim()) std::memset(claim_.body + offset_, 0, sizeof(MessageTable));
}

kj::ArrayPtr<capnp::word> RingMessageBuilder::allocateSegment(capnp::uint minimumSize) {
  if (count_ == kMaxSegments) {
    // Out of segment slots. When the claim already spans the maximum record no claim can do
    // better: TooLarge. Otherwise the claim grew in small steps (extend() succeeding a little at
    // a time while the consumer freed space) and a fresh, larger claim may hold the message:
    // Full, so the caller waits for space and builds again.
    if (sizeof(RecordHeader) + claim_.bodyCapacity >= producer_.geometry().maxRecord) {
      throw ClaimExhausted(ErrorCode::TooLarge, fmt::format("message needs more than {} segments", kMaxSegments));
    }
    throw ClaimExhausted(ErrorCode::Full, fmt::format("message needs more than {} segments of this claim; a larger "
                                                      "claim may hold it once the ring has more room", kMaxSegments));
  }
  std::size_t words = 0;
  const std::size_t available = (claim_.bodyCapacity - cursor_) / kWord;
  if (producer_.zeroOnClaim()) {
    words = std::max<std::size_t>(minimumSize, nextChunkWords_);
    nextChunkWords_ *= 2;
  } else {
    words = std::max<std::size_t>(minimumSize, available);  // free space is already zero
  }
  if (words > available && !producer_.extend(claim_, cursor_ + words * kWord)) {
    if (minimumSize <= available) {
      words = available;
    } else {
      throwExhausted(minimumSize);
    }
  }
  auto* start = reinterpret_cast<capnp::word*>(claim_.body + cursor_);
  if (producer_.zeroOnClaim()) std::memset(start, 0, words * kWord);
  starts_[count_] = start;
  sizes_[count_] = static_cast<std::uint32_t>(words);
  ++count_;
  cursor_ += words * kWord;
  return kj::arrayPtr(start, words);
}

void RingMessageBuilder::throwExhausted(std::size_t minimumSize) {
  // The space handed out but unused at the end of the earlier segments does not count: a larger
  // claim may hold the message.
  const std::size_t maxRecord = producer_.geometry().maxRecord;
  throwClaimExhausted(*this, minimumSize, sizeof(RecordHeader) + offset_ + sizeof(MessageTable), maxRecord,
                      sizeof(RecordHeader) + claim_.bodyCapacity >= maxRecord, "the ring");
}

void throwClaimExhausted(capnp::MessageBuilder& b, std::size_t minimumSize, std::size_t fixedBytes, std::size_t limit,
                         bool claimSpansLimit, const char* space) {
  std::size_t usedWords = minimumSize;
  for (auto segment : b.getSegmentsForOutput()) usedWords += segment.size();
  const std::size_t need = fixedBytes + usedWords * kWord;
  if (need > limit || claimSpansLimit) {
    throw ClaimExhausted(ErrorCode::TooLarge, fmt::format("message needs at least {} bytes; {}'s maximum record is "
                                                          "{} bytes", need, space, limit));
  }
  throw ClaimExhausted(ErrorCode::Full, fmt::format("message needs at least {} bytes; {} has no more contiguous room "
                                                    "now", need, space));
}

std::size_t RingMessageBuilder::finish() {
  auto segs = getSegmentsForOutput();
  SHMBUS_ASSERT(segs.size() == count_, "segment count mismatch");
  auto* table = reinterpret_cast<MessageTable*>(claim_.body + offset_);
  table->segmentCount = count_;
  for (std::uint32_t i = 0; i < count_; ++i) table->segmentWords[i] = sizes_[i];
  if (count_ == 0) return offset_ + sizeof(MessageTable);
  // The last segment is trimmed to what was used; the unused words after it stay zero and are
  // not part of the record. Earlier segments keep their allocated size (they are contiguous).
  table->segmentWords[count_ - 1] = static_cast<std::uint32_t>(segs[count_ - 1].size());
  const auto* end = segs[count_ - 1].end();
  return static_cast<std::size_t>(reinterpret_cast<const std::uint8_t*>(end) - claim_.body);
}

capnp::ReaderOptions readerOptionsFor(std::size_t messageWords) {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = messageWords * 8 + (64u << 10);
  o.nestingLimit = 64;
  return o;
}

Result<void> InPlaceMessage::parse(const std::uint8_t* data, std::size_t bytes) {
  reader_.reset();
  count_ = 0;
  words_ = 0;
  if (bytes < sizeof(MessageTable) || (reinterpret_cast<std::uintptr_t>(data) % kWord) != 0) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("message of {} bytes has no segment table", bytes));
  }
  MessageTable table;
  std::memcpy(&table, data, sizeof table);  // copy before use: the producer may be hostile
  if (table.segmentCount > kMaxSegments) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("message claims {} segments (max {})",
                                                            table.segmentCount, kMaxSegments));
  }
  const auto* words = reinterpret_cast<const capnp::word*>(data + sizeof(MessageTable));
  const std::size_t availableWords = (bytes - sizeof(MessageTable)) / kWord;
  std::size_t at = 0;
  for (std::uint32_t i = 0; i < table.segmentCount; ++i) {
    const std::size_t n = table.segmentWords[i];
    if (n > availableWords - at) {
      return makeError(ErrorCode::InvalidMessage,
                       fmt::format("message segment {} of {} words overruns the record ({} words left)", i, n,
                                   availableWords - at));
    }
    segments_[i] = kj::arrayPtr(words + at, n);
    at += n;
  }
  if (table.segmentCount > 0 && segments_[0].size() == 0) {
    return makeError(ErrorCode::InvalidMessage, "message segment 0 is empty");
  }
  count_ = table.segmentCount;
  words_ = at;
  if (count_ > 0) reader_.emplace(kj::arrayPtr(segments_.data(), count_), readerOptionsFor(at));
  return {};
}

capnp::MessageReader& InPlaceMessage::reader() {
  SHMBUS_REQUIRE(reader_.has_value(), "the message is empty");
  return *reader_;
}

Result<void> InPlaceMessage::traverse() {
  if (!reader_) return {};
  try {
    (void)reader_->getRoot<capnp::AnyPointer>().targetSize();
    return {};
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed message: ") + e.getDescription().cStr());
  }
}

Result<void> validatePayload(const std::uint8_t* data, std::size_t bytes) {
  InPlaceMessage m;
  if (auto r = m.parse(data, bytes); !r) return r;
  return m.traverse();
}

}  // namespace shmbus::detail
