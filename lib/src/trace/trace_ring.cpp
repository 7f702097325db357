#include "trace/trace_ring.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include "segment/segment.hpp"
#include "common/errno_error.hpp"

namespace shmbus::detail {

namespace {
/// Records start on 16 bytes, so the space left before the ring's end always holds a padding
/// record's header.
constexpr std::uint64_t kTraceAlign = 16;
constexpr std::uint64_t alignRecord(std::uint64_t n) { return (n + kTraceAlign - 1) & ~(kTraceAlign - 1); }

// Record words are relaxed atomics on both sides (the seqlock of trace_ring.hpp): a reader racing
// the producer reads stale or torn values, never undefined behaviour, and discards them.
template <typename T>
void storeWord(std::uint8_t* p, T v) noexcept {
  std::atomic_ref<T>(*reinterpret_cast<T*>(p)).store(v, std::memory_order_relaxed);  // relaxed: seqlock
}
template <typename T>
T loadWord(const std::uint8_t* p) noexcept {
  // relaxed: seqlock; the reader's acquire fence and tailIntent re-check validate the copy.
  return std::atomic_ref<T>(*reinterpret_cast<T*>(const_cast<std::uint8_t*>(p))).load(std::memory_order_relaxed);
}

void storeRecordHeader(std::uint8_t* at, std::uint32_t length, std::uint32_t type, std::uint64_t seq) noexcept {
  storeWord<std::uint32_t>(at, length);
  storeWord<std::uint32_t>(at + 4, type);
  storeWord<std::uint64_t>(at + 8, seq);
}

}  // namespace

// ---- mapping

Result<TraceMapping> TraceMapping::map(int fd, std::size_t bytes) {
  void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return errnoError("mmap (trace ring)");
  TraceMapping t;
  t.header_ = static_cast<TraceRingHeader*>(m);
  t.bytes_ = bytes;
  return t;
}

TraceMapping::TraceMapping(TraceMapping&& o) noexcept
    : header_(std::exchange(o.header_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

TraceMapping& TraceMapping::operator=(TraceMapping&& o) noexcept {
  if (this != &o) {
    if (header_ != nullptr) ::munmap(header_, bytes_);
    header_ = std::exchange(o.header_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

TraceMapping::~TraceMapping() {
  if (header_ != nullptr) ::munmap(header_, bytes_);
}

// ---- producer

Result<TraceProducer> TraceProducer::create(std::size_t capacity) {
  const std::size_t cap = std::bit_ceil(std::max(capacity, kTraceMinCapacity));
  if (cap > (std::size_t{1} << 30)) {
    return makeError(ErrorCode::InvalidArgument, fmt::format("trace ring of {} bytes: at most 1 GiB", capacity));
  }
  TraceProducer p;
  // Sealed: an inspector gets this descriptor, and a shrunk file would SIGBUS the supervisor.
  const std::size_t bytes = sizeof(TraceRingHeader) + cap;
  auto fd = sealedMemfd("shmbus-trace", bytes);
  if (!fd) return fd.error();
  p.fd_ = std::move(*fd);
  auto m = TraceMapping::map(p.fd_.get(), bytes);
  if (!m) return m.error();
  p.map_ = std::move(*m);
  p.capacity_ = cap;
  // Written before the fd is handed to any reader (SCM_RIGHTS orders it); zero fields are the
  // empty ring.
  TraceRingHeader* h = p.map_.header();
  h->magic = kTraceMagic;
  h->version = kTraceVersion;
  h->capacity = static_cast<std::uint32_t>(cap);
  return p;
}

void TraceProducer::write(std::span<const std::uint8_t> body) noexcept {
  TraceRingHeader* const h = map_.header();
  if (h == nullptr) return;
  std::uint8_t* const data = map_.data();
  const std::size_t n = std::min(body.size(), kTraceMaxBody);
  const std::uint64_t length = sizeof(TraceRecordHeader) + n;
  const std::uint64_t aligned = alignRecord(length);
  std::uint64_t start = tail_;
  std::uint64_t index = start & (capacity_ - 1);
  const std::uint64_t toEnd = capacity_ - index;
  const bool wrap = aligned > toEnd;
  // SYNC POINT I (trace_ring.hpp): announce the end of what is about to be overwritten, then a
  // release fence so no record word below becomes visible before the intent.
  // relaxed + fence(release): pairs with the reader's fence(acquire) + tailIntent load.
  h->tailIntent.store(start + (wrap ? toEnd : 0) + aligned, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  if (wrap) {
    storeRecordHeader(data + index, static_cast<std::uint32_t>(toEnd), kTraceRecordPadding, 0);
    start += toEnd;
    index = 0;
  }
  std::uint8_t* at = data + index;
  storeRecordHeader(at, static_cast<std::uint32_t>(length), kTraceRecordData, ++seq_);
  const std::uint64_t chunk = capacity_ / 16;
  // The body as whole words; the last one is zero-padded.
  std::uint8_t* words = at + sizeof(TraceRecordHeader);
  for (std::size_t off = 0; off < n; off += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, body.data() + off, std::min<std::size_t>(8, n - off));
    storeWord<std::uint64_t>(words + off, w);
  }
  const bool firstInChunk = seq_ == 1 || start / chunk != lastStart_ / chunk;  // absolute chunk numbers
  lastStart_ = start;
  tail_ = start + aligned;
  if (firstInChunk) {
    // release: SYNC POINT T, like latest (a reader that jumps here reads a complete record).
    h->marks[(start / chunk) % 16].store(start, std::memory_order_release);
  }
  // SYNC POINT T: release pairs with the reader's acquire loads of latest and tail.
  h->latest.store(start, std::memory_order_release);
  h->tail.store(tail_, std::memory_order_release);
  notify(h->dataReady);
}

// ---- reader

Result<TraceReader> TraceReader::attach(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errnoError("fstat (trace ring)");
  const auto bytes = static_cast<std::size_t>(st.st_size);
  if (bytes < sizeof(TraceRingHeader) + kTraceMinCapacity || bytes > sizeof(TraceRingHeader) + (std::size_t{1} << 30)) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("not a trace ring: {} bytes", bytes));
  }
  // Read-write: a reader parks on the ring's futex word (its waiter count).
  auto m = TraceMapping::map(fd, bytes);
  if (!m) return m.error();
  TraceReader r;
  r.map_ = std::move(*m);
  TraceRingHeader* const h = r.map_.header();
  // The producer wrote the header before it handed the fd out; it is still checked (untrusted).
  const std::uint64_t cap = h->capacity;
  if (h->magic != kTraceMagic || h->version != kTraceVersion || !std::has_single_bit(cap) ||
      sizeof(TraceRingHeader) + cap != bytes) {
    return makeError(ErrorCode::InvalidMessage, "not a trace ring (magic, version or capacity)");
  }
  r.capacity_ = cap;
  // Start behind the newest complete record, knowing its sequence number, so every later gap
  // counts as lost (a ring never written yet starts at 0, before seq 1).
  for (int attempt = 0; attempt < 1024; ++attempt) {
    if (h->tail.load(std::memory_order_acquire) == 0) break;  // SYNC POINT T
    const std::uint64_t latest = h->latest.load(std::memory_order_acquire);  // SYNC POINT T
    const std::uint8_t* at = r.map_.data() + (latest & (cap - 1));
    const auto length = loadWord<std::uint32_t>(at);
    const auto seq = loadWord<std::uint64_t>(at + 8);
    // SYNC POINT I, as in next(): a record overwritten while it was read is read again.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (h->tailIntent.load(std::memory_order_relaxed) > latest + cap) continue;
    r.cursor_ = latest + alignRecord(length);
    r.lastSeq_ = seq;
    break;
  }
  return r;
}

bool TraceReader::ready() const noexcept {
  return map_.header()->tail.load(std::memory_order_acquire) > cursor_;  // SYNC POINT T
}

bool TraceReader::next(std::vector<std::uint8_t>& out) {
  auto lap = [&] { skipLapped(); };
  for (int attempt = 0; attempt < 1024; ++attempt) {
    const std::uint64_t tail = map_.header()->tail.load(std::memory_order_acquire);  // SYNC POINT T
    if (tail <= cursor_) return false;
    if (tail - cursor_ > capacity_) {
      lap();
      continue;
    }
    const std::uint64_t index = cursor_ & (capacity_ - 1);
    const std::uint8_t* at = map_.data() + index;
    const auto length = loadWord<std::uint32_t>(at);
    const auto type = loadWord<std::uint32_t>(at + 4);
    const auto seq = loadWord<std::uint64_t>(at + 8);
    const std::uint64_t aligned = alignRecord(length);
    const bool sane = length >= sizeof(TraceRecordHeader) && aligned <= capacity_ - index &&
                      length - sizeof(TraceRecordHeader) <= kTraceMaxBody;
    if (sane && type == kTraceRecordData) {
      const std::size_t n = length - sizeof(TraceRecordHeader);
      out.resize(n);
      const std::uint8_t* words = at + sizeof(TraceRecordHeader);
      for (std::size_t off = 0; off < n; off += 8) {
        const auto w = loadWord<std::uint64_t>(words + off);
        std::memcpy(out.data() + off, &w, std::min<std::size_t>(8, n - off));
      }
    }
    // SYNC POINT I: fence(acquire) + relaxed load pairs with the producer's intent store +
    // fence(release): a copy that read any word of a newer record sees that record's intent.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (map_.header()->tailIntent.load(std::memory_order_relaxed) > cursor_ + capacity_ || !sane) {
      lap();
      continue;
    }
    cursor_ += aligned;
    if (type != kTraceRecordData) continue;  // padding to the ring's end
    if (seq > lastSeq_ + 1) lost_ += seq - lastSeq_ - 1;
    lastSeq_ = seq;
    return true;
  }
  return false;  // a producer that keeps lapping this reader: try again later
}

void TraceReader::skipLapped() noexcept {
  // Overwritten before this reader got there. Every position below intent - capacity is (being)
  // overwritten; the oldest mark at or above it starts a record the producer has not reached.
  // relaxed: a stale intent only makes the mark chosen older; the copy is validated again.
  const std::uint64_t intent = map_.header()->tailIntent.load(std::memory_order_relaxed);
  const std::uint64_t floor = intent > capacity_ ? intent - capacity_ : 0;
  const std::uint64_t tail = map_.header()->tail.load(std::memory_order_acquire);  // SYNC POINT T
  std::uint64_t best = map_.header()->latest.load(std::memory_order_acquire);       // SYNC POINT T
  for (auto& m : map_.header()->marks) {
    const std::uint64_t pos = m.load(std::memory_order_acquire);  // SYNC POINT T (see write())
    if (pos >= floor && pos >= cursor_ && pos < tail && pos < best) best = pos;
  }
  cursor_ = std::max(best, cursor_);
}

WaitStatus TraceReader::wait(std::int64_t deadlineNs) {
  return spinThenPark(map_.header()->dataReady, [&] { return ready(); }, SpinPolicy{std::chrono::nanoseconds(0)}, deadlineNs);
}

}  // namespace shmbus::detail
