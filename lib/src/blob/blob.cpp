#include "blob/blob.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace shmbus::detail {

namespace {
constexpr std::size_t kWord = sizeof(capnp::word);
constexpr std::size_t kFirstChunkWords = (256u << 10) / kWord;
// Below this many bytes a memset is cheaper than a system call.
constexpr std::size_t kPunchMin = 64u << 10;

constexpr std::uint64_t alignUp64(std::uint64_t n, std::uint64_t a) { return (n + a - 1) / a * a; }

Error bad(const std::string& what) { return makeError(ErrorCode::InvalidMessage, "blob descriptor: " + what); }
}  // namespace

Result<BlobView> checkBlobDescriptor(const BlobDescriptor& d, std::uint8_t* arena, std::size_t arenaBytes) {
  if (arena == nullptr || arenaBytes < kBlobOverhead) return bad("this port has no blob arena");
  if (d.reserved != 0 || d.reserved2 != 0) return bad("reserved fields are not zero");
  if (d.offset % kBlobAlign != 0 || d.offset < sizeof(BlobControl)) {
    return bad(fmt::format("offset {} is not a 64-byte aligned record position", d.offset));
  }
  // Written so that no sum can overflow: offset <= arenaBytes - header, then bytes within the rest.
  if (d.offset > arenaBytes - sizeof(BlobRecordHeader) ||
      d.bytes > arenaBytes - sizeof(BlobRecordHeader) - d.offset) {
    return bad(fmt::format("record at {} of {} bytes overruns the arena of {} bytes", d.offset, d.bytes, arenaBytes));
  }
  if (d.bytes < sizeof(MessageTable) || d.bytes % kWord != 0) {
    return bad(fmt::format("{} message bytes are not a segment table and whole words", d.bytes));
  }
  auto* record = reinterpret_cast<BlobRecordHeader*>(arena + d.offset);
  // Plain read, copied once: the ring's SYNC POINT "record" ordered the sender's write before the
  // descriptor; a hostile sender changing it later only fails its own message.
  std::uint32_t generation = 0;
  std::memcpy(&generation, reinterpret_cast<const std::uint8_t*>(record) + offsetof(BlobRecordHeader, generation),
              sizeof generation);
  if (d.generation == 0 || generation != d.generation) {
    return bad(fmt::format("generation {} does not match the record's {}", d.generation, generation));
  }
  return BlobView{record, arena + d.offset + sizeof(BlobRecordHeader), static_cast<std::size_t>(d.bytes)};
}

void releaseBlob(BlobRecordHeader* record, BlobControl* control) noexcept {
  // release: SYNC POINT "blob release": this side's reads of the record happen before the sender,
  // whose BlobProducer::reclaim loads the flag with acquire, zeroes and reuses it.
  record->released.store(1, std::memory_order_release);
  // release: SYNC POINT "blob release" (the sender's wait predicate loads it with acquire).
  control->releases.fetch_add(1, std::memory_order_release);
  notify(control->released);
}

BlobProducer::BlobProducer(std::uint8_t* arena, std::size_t arenaBytes, Fd file, std::uint64_t fileOffset,
                           std::size_t warmBytes)
    : arena_(arena),
      bytes_(arenaBytes),
      span_(arenaBytes - sizeof(BlobControl)),
      file_(std::move(file)),
      fileOffset_(fileOffset),
      warmBytes_(file_ ? warmBytes : 0) {
  SHMBUS_ASSERT(arenaBytes > kBlobOverhead && arenaBytes % kBlobPage == 0, "bad blob arena size");
  SHMBUS_ASSERT(fileOffset % kBlobPage == 0, "blob arena not page aligned in its file");
}

void BlobProducer::zeroFree(std::uint8_t* p, std::size_t n) const noexcept {
  if (n == 0) return;
  if (!file_) {
    zero(p, n);
    return;
  }
  // The pages holding the range's first and last bytes are memset without asking: they are the
  // ones a builder writes first (a segment's head, the end of a filled blob), and two lseeks cost
  // more than a page's memset. Only the pages between them are looked up.
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t headEnd = std::min<std::uintptr_t>(alignUp64(begin + 1, kBlobPage), begin + n);
  const std::uintptr_t tailBegin = std::max<std::uintptr_t>((begin + n - 1) / kBlobPage * kBlobPage, headEnd);
  std::memset(p, 0, headEnd - begin);
  std::memset(reinterpret_cast<void*>(tailBegin), 0, begin + n - tailBegin);
  const auto base = reinterpret_cast<std::uintptr_t>(arena_);
  const std::uint64_t from = headEnd - base, to = tailBegin - base;
  if (from >= to) return;
  if (!dataRunsValid_) {  // no map of the file's data: every byte may be
    std::memset(arena_ + from, 0, to - from);
    return;
  }
  for (const auto& [a, b] : dataRuns_) {  // few runs: the arena is sparse
    const std::uint64_t lo = std::max(a, from), hi = std::min(b, to);
    if (lo < hi) std::memset(arena_ + lo, 0, hi - lo);
  }
}

bool BlobProducer::refreshDataRuns() noexcept {
  struct stat st {};
  if (::fstat(file_.get(), &st) != 0) return false;
  if (dataRunsBlocks_ == st.st_blocks) return true;
  // Blocks counted before the scan: a page allocated meanwhile makes the next look scan again.
  dataRuns_.clear();
  const off_t first = static_cast<off_t>(fileOffset_), last = static_cast<off_t>(fileOffset_ + bytes_);
  for (off_t pos = first; pos < last;) {
    const off_t data = ::lseek(file_.get(), pos, SEEK_DATA);
    if (data < 0 && errno == ENXIO) break;  // no data from pos to the end of the file
    if (data < 0) return false;             // a file system without SEEK_DATA
    if (data >= last) break;
    off_t hole = ::lseek(file_.get(), data, SEEK_HOLE);
    if (hole < 0 || hole > last) hole = last;
    dataRuns_.emplace_back(static_cast<std::uint64_t>(data - first), static_cast<std::uint64_t>(hole - first));
    pos = hole;
  }
  dataRunsBlocks_ = st.st_blocks;
  return true;
}

void BlobProducer::retire(std::uint64_t pos, std::size_t n) noexcept {
  if (n == 0) return;
  if (pos % span_ + n <= warmBytes_) return;  // kept: zeroFree clears it when it is claimed again
  zero(at(pos), n);
  dataRunsBlocks_ = -1;  // pages punched out: the map of the file's data is stale
}

void BlobProducer::zero(std::uint8_t* p, std::size_t n) noexcept {
  if (n < kPunchMin) {
    std::memset(p, 0, n);
    return;
  }
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = alignUp64(begin, kBlobPage);
  const std::uintptr_t last = (begin + n) / kBlobPage * kBlobPage;
  std::memset(p, 0, first - begin);
  // MADV_REMOVE frees the pages of the shared file (reads then see zeroes); if the kernel refuses
  // (another file system), the memset does the same, keeping the pages.
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_REMOVE) != 0) {
    std::memset(reinterpret_cast<void*>(first), 0, last - first);
  }
  std::memset(reinterpret_cast<void*>(last), 0, begin + n - last);
}

std::size_t BlobProducer::reclaim() noexcept {
  std::size_t n = 0;
  while (!held_.empty()) {
    const Held& h = held_.front();
    if (!h.dropped) {
      auto* record = reinterpret_cast<BlobRecordHeader*>(at(h.pos));
      // acquire: SYNC POINT "blob release" (pairs with releaseBlob's release store).
      if (record->released.load(std::memory_order_acquire) == 0) break;
    }
    retire(h.pos, h.touched);
    if (h.touched != 0) --messages_;
    head_ = h.end;
    held_.pop_front();
    ++n;
  }
  if (held_.empty()) head_ = tail_;
  return n;
}

Result<BlobClaim> BlobProducer::claim(std::size_t minBody) {
  if (minBody > maxMessage()) {
    return makeError(ErrorCode::TooLarge, fmt::format("message of at least {} bytes; the blob arena holds at most {}",
                                                      minBody, maxMessage()));
  }
  reclaim();
  // The map of the file's data, once per claim (after reclaim's punches): what is written into
  // the claim's range after this look is the peer's concurrent doing, which no look could stop.
  if (file_) dataRunsValid_ = refreshDataRuns();
  if (held_.empty()) {
    // Empty: start over at the arena's front, so the whole arena is one run.
    tail_ = head_ = alignUp64(tail_, span_);
  }
  const std::uint64_t index = tail_ % span_;
  const std::uint64_t free = span_ - (tail_ - head_);
  const std::uint64_t beforeEnd = std::min<std::uint64_t>(span_ - index, free);
  const std::uint64_t skip = span_ - index;
  const std::uint64_t atFront = index != 0 && free > skip ? free - skip : 0;
  const bool wrap = atFront > beforeEnd;
  const std::uint64_t run = wrap ? atFront : beforeEnd;
  if (run < sizeof(BlobRecordHeader) + minBody) {
    return makeError(ErrorCode::Full, fmt::format("the blob arena has no run of {} bytes free now ({} held)",
                                                  sizeof(BlobRecordHeader) + minBody, bytesHeld()));
  }
  BlobClaim c;
  c.owner = this;
  c.pos = wrap ? tail_ + skip : tail_;
  c.skip = wrap ? skip : 0;
  c.body = at(c.pos) + sizeof(BlobRecordHeader);
  c.capacity = static_cast<std::size_t>(run - sizeof(BlobRecordHeader));
  return c;
}

BlobDescriptor BlobProducer::commit(const BlobClaim& c, std::size_t usedBytes) {
  SHMBUS_ASSERT(usedBytes <= c.capacity && usedBytes >= sizeof(MessageTable), "blob commit beyond its claim");
  if (c.skip != 0) held_.push_back(Held{tail_, tail_ + c.skip, 0, true});
  if (++generation_ == 0) generation_ = 1;
  auto* record = reinterpret_cast<BlobRecordHeader*>(at(c.pos));
  // relaxed, and plain stores below: the ring's commit (SYNC POINT "record") publishes them with
  // the descriptor. The flag is cleared here because the peer may have written into free space.
  record->released.store(0, std::memory_order_relaxed);
  record->generation = generation_;
  record->bytes = usedBytes;
  const std::uint64_t recordBytes = alignUp64(sizeof(BlobRecordHeader) + usedBytes, kBlobAlign);
  held_.push_back(Held{c.pos, c.pos + recordBytes, sizeof(BlobRecordHeader) + usedBytes, false});
  tail_ = c.pos + recordBytes;
  ++messages_;
  highWater_ = std::max(highWater_, bytesHeld());
  return BlobDescriptor{c.pos % span_ + sizeof(BlobControl), usedBytes, generation_, 0, 0};
}

void BlobProducer::abort(const BlobClaim& c, std::size_t touched) noexcept {
  retire(c.pos + sizeof(BlobRecordHeader), touched);
}

void BlobProducer::dropLast() noexcept {
  if (held_.empty()) return;
  held_.back().dropped = true;
  reclaim();
}

BlobMessageBuilder::BlobMessageBuilder(const BlobClaim& claim, std::size_t maxMessage)
    : claim_(claim), maxMessage_(maxMessage), cursor_(sizeof(MessageTable)), nextChunkWords_(kFirstChunkWords) {
  SHMBUS_ASSERT(claim.capacity >= sizeof(MessageTable), "blob claim smaller than a segment table");
  std::memset(claim_.body, 0, sizeof(MessageTable));
}

kj::ArrayPtr<capnp::word> BlobMessageBuilder::allocateSegment(capnp::uint minimumSize) {
  if (count_ == kMaxSegments) throwExhausted(minimumSize);
  const std::size_t available = (claim_.capacity - cursor_) / kWord;
  std::size_t words = std::max<std::size_t>(minimumSize, nextChunkWords_);
  // The table holds kMaxSegments segments: grow at least to twice what this one needed, so that a
  // message of many large fields (a list of 64 MiB Data chunks) packs several into one segment
  // instead of running out of segments (Cap'n Proto fills the newest segment first).
  nextChunkWords_ = std::max(nextChunkWords_ * 4, words * 2);
  if (count_ + 1 == kMaxSegments) words = std::max<std::size_t>(minimumSize, available);  // the last slot
  if (words > available) {
    if (minimumSize > available) throwExhausted(minimumSize);
    words = available;
  }
  auto* start = claim_.body + cursor_;
  claim_.owner->zeroFree(start, words * kWord);  // kept pages, and the peer may have written there
  sizes_[count_++] = static_cast<std::uint32_t>(words);
  cursor_ += words * kWord;
  return kj::arrayPtr(reinterpret_cast<capnp::word*>(start), words);
}

void BlobMessageBuilder::throwExhausted(std::size_t minimumSize) {
  throwClaimExhausted(*this, minimumSize, sizeof(MessageTable), maxMessage_, claim_.capacity >= maxMessage_,
                      "the blob arena");
}

std::size_t BlobMessageBuilder::finish() {
  auto segs = getSegmentsForOutput();
  SHMBUS_ASSERT(segs.size() == count_, "segment count mismatch");
  MessageTable table{};
  table.segmentCount = count_;
  for (std::uint32_t i = 0; i < count_; ++i) table.segmentWords[i] = sizes_[i];
  if (count_ != 0) table.segmentWords[count_ - 1] = static_cast<std::uint32_t>(segs[count_ - 1].size());
  std::memcpy(claim_.body, &table, sizeof table);
  if (count_ == 0) return sizeof(MessageTable);
  return static_cast<std::size_t>(reinterpret_cast<const std::uint8_t*>(segs[count_ - 1].end()) - claim_.body);
}

std::size_t copyBlobSegments(const BlobClaim& claim, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  MessageTable table{};
  table.segmentCount = static_cast<std::uint32_t>(segments.size());
  std::uint8_t* out = claim.body + sizeof(MessageTable);
  for (std::size_t i = 0; i < segments.size(); ++i) {
    table.segmentWords[i] = static_cast<std::uint32_t>(segments[i].size());
    std::memcpy(out, segments[i].begin(), segments[i].size() * kWord);
    out += segments[i].size() * kWord;
  }
  std::memcpy(claim.body, &table, sizeof table);
  return static_cast<std::size_t>(out - claim.body);
}

Result<BlobDescriptor> tryBuildBlob(BlobProducer& arena, const std::function<void(capnp::MessageBuilder&)>& build) {
  auto c = arena.claim(sizeof(MessageTable));
  if (!c) return c.error();
  BlobMessageBuilder mb(*c, arena.maxMessage());
  try {
    if (build) build(mb);
  } catch (const ClaimExhausted& e) {
    arena.abort(*c, mb.touched());
    return makeError(e.code, e.what());
  } catch (...) {
    arena.abort(*c, mb.touched());
    throw;
  }
  return arena.commit(*c, mb.finish());
}

Result<BlobDescriptor> tryCopyBlob(BlobProducer& arena, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  if (segments.size() > kMaxSegments) {
    return makeError(ErrorCode::TooLarge, fmt::format("message of {} segments (max {})", segments.size(), kMaxSegments));
  }
  std::size_t bytes = sizeof(MessageTable);
  for (const auto& seg : segments) bytes += seg.size() * kWord;
  auto c = arena.claim(bytes);
  if (!c) return c.error();
  return arena.commit(*c, copyBlobSegments(*c, segments));
}

Result<BlobDescriptor> tryCopyBlob(BlobProducer& arena, const std::uint8_t* message, std::size_t bytes) {
  auto c = arena.claim(bytes);
  if (!c) return c.error();
  std::memcpy(c->body, message, bytes);
  return arena.commit(*c, bytes);
}

}  // namespace shmbus::detail
