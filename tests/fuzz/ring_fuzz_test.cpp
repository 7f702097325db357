// Fuzzing the ring's trust boundary: a consumer and a producer facing scribbled shared memory must
// report Corrupt (or carry on) and never touch memory outside the ring. Every ring here lies
// between PROT_NONE guard pages (RingSegment), so an access out of bounds crashes the test.
#include <doctest/doctest.h>
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <new>
#include <random>
#include <string>

#include "record_pattern.hpp"
#include "ring/ring.hpp"
#include "shm_test.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
constexpr RingGeometry kGeometry{16384, 2048};
constexpr std::size_t kMaxBody = kGeometry.maxRecord - sizeof(RecordHeader);

/// Writes `n` random bytes at `p` (plain stores: racing the other processes is the point).
void scribble(std::uint8_t* p, std::size_t n, std::mt19937_64& rng) {
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(rng());
}

/// One random mutation of a ring: random bytes anywhere in the control block or the data, or a
/// plausible record header or index (which reaches deeper than noise does).
void mutate(const RingArea& ring, std::mt19937_64& rng) {
  auto* control = reinterpret_cast<std::uint8_t*>(ring.control);
  const std::uint64_t r = rng();
  const std::size_t at = (r >> 8) % ring.geometry.capacity;
  switch (r % 8) {
    case 0:
      scribble(control + (r >> 8) % (sizeof(RingControl) - 8), 1 + (r >> 40) % 8, rng);
      break;
    case 1: {  // an index near the real one, sometimes misaligned
      auto& index = (r >> 20) & 1 ? ring.control->head : ring.control->tail;
      index.store(index.load(std::memory_order_relaxed) + (rng() % 64) - 16, std::memory_order_relaxed);
      break;
    }
    case 2:
    case 3: {  // a plausible header: small or edge length, data or padding type
      auto* h = reinterpret_cast<RecordHeader*>(ring.data + (at & ~std::size_t{7}));
      const std::int32_t lengths[] = {0, 4, 8, 9, static_cast<std::int32_t>(rng() % 4096),
                                      static_cast<std::int32_t>(kGeometry.maxRecord),
                                      static_cast<std::int32_t>(kGeometry.capacity), -8,
                                      static_cast<std::int32_t>(kGeometry.capacity - (at & ~std::size_t{7}))};
      h->type = rng() % 3 == 0 ? static_cast<std::uint32_t>(rng()) : kRecordData + rng() % 2;
      h->length.store(lengths[rng() % std::size(lengths)], std::memory_order_release);
      break;
    }
    default:
      scribble(ring.data + at, std::min<std::size_t>(1 + (r >> 40) % 16, ring.geometry.capacity - at), rng);
      break;
  }
}

/// Reads every byte of a record: if its view pointed outside the ring, this would fault.
std::uint64_t touch(const RecordView& v) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < v.bodyBytes; ++i) sum += v.body[i];
  return sum;
}

/// Counters the three processes share (in the segment's scratch area, never scribbled).
struct Shared {
  std::atomic<bool> stop;
  std::atomic<std::uint64_t> records;
  std::atomic<std::uint64_t> corrupt;
  std::atomic<std::uint64_t> published;
  std::atomic<std::uint64_t> producerCorrupt;
  std::atomic<std::uint64_t> scribbles;
};
static_assert(sizeof(Shared) <= RingSegment::kScratchBytes);
}  // namespace

TEST_CASE("a consumer facing a ring scribbled by a third process gets only records or Corrupt, within the ring") {
  const auto budget = std::chrono::milliseconds(countFromEnv("SHMBUS_FUZZ_MS", 3000));
  RingSegment seg = RingSegment::create(kGeometry, 1, "fuzz3");
  const RingArea ring = seg.ring();
  auto* shared = new (seg.scratch()) Shared{};

  Child producer = Child::fork([&] {
    std::mt19937_64 rng(11);
    RingProducer p = ring.producer();
    for (std::uint64_t seq = 0; !shared->stop.load(std::memory_order_relaxed); ++seq) {
      const std::size_t n = recordSize(seq, kMaxBody);
      auto c = rng() % 4 == 0 ? p.tryClaimUpTo(n, kMaxBody) : p.tryClaim(n);
      if (c.code() == ErrorCode::Corrupt) {
        shared->producerCorrupt.fetch_add(1, std::memory_order_relaxed);
        p = ring.producer();  // attach again, wherever the scribbled indices say
        continue;
      }
      if (!c) {
        childCheck(c.code() == ErrorCode::Full, "producer: " + c.error().toString());
        sched_yield();
        continue;
      }
      childCheck(ring.contains(c->body, c->bodyCapacity), "a claim outside the ring");
      writeRecord(c->body, n, seq);
      p.publish(*c, n);
      shared->published.fetch_add(1, std::memory_order_relaxed);
    }
  });
  Child scribbler = Child::fork([&] {
    std::mt19937_64 rng(22);
    while (!shared->stop.load(std::memory_order_relaxed)) {
      mutate(ring, rng);
      shared->scribbles.fetch_add(1, std::memory_order_relaxed);
      // Bursts of mutations, then quiet stretches in which records flow again.
      for (std::uint64_t i = rng() % 4 == 0 ? rng() % 20'000 : 0; i > 0; --i) cpuRelax();
      if (rng() % 16 == 0) sched_yield();
    }
  });
  Child consumer = Child::fork([&] {
    std::mt19937_64 rng(33);
    RingConsumer c = ring.consumer();
    std::uint64_t sum = 0;
    const std::int64_t end = deadlineIn(budget);
    while (monotonicNowNs() < end) {
      auto r = c.tryRead();
      if (!r) {
        childCheck(r.code() == ErrorCode::Corrupt, "consumer: " + r.error().toString());
        shared->corrupt.fetch_add(1, std::memory_order_relaxed);
        if (rng() % 2 == 0) c.releaseAll();  // zeroes what it read: must stay inside the ring too
        c = ring.consumer();                  // attach again at the (scribbled) head
        continue;
      }
      if (!r->has_value()) {
        c.releaseAll();
        if (rng() % 8 == 0) {
          (void)c.wait(deadlineIn(std::chrono::microseconds(200)), SpinPolicy{}, [] { return false; });
        }
        continue;
      }
      childCheck(ring.contains((*r)->body, (*r)->bodyBytes), "a record outside the ring");
      sum += touch(**r);
      shared->records.fetch_add(1, std::memory_order_relaxed);
      if (rng() % 4 == 0) c.releaseTo((*r)->end);
    }
    std::fprintf(stderr, "consumer checksum %llu\n", static_cast<unsigned long long>(sum));
  });

  const auto limit = budget + std::chrono::seconds(30);
  CHECK(consumer.join(std::chrono::duration_cast<std::chrono::milliseconds>(limit)) == 0);
  shared->stop.store(true);
  CHECK(producer.join(std::chrono::seconds(20)) == 0);
  CHECK(scribbler.join(std::chrono::seconds(20)) == 0);
  MESSAGE("records " << shared->records.load() << ", consumer Corrupt " << shared->corrupt.load() << ", published "
                     << shared->published.load() << ", producer Corrupt " << shared->producerCorrupt.load()
                     << ", scribbles " << shared->scribbles.load());
  // The run exercised both outcomes on both sides.
  CHECK(shared->records.load() > 0);
  CHECK(shared->corrupt.load() > 0);
  CHECK(shared->producerCorrupt.load() > 0);
}

TEST_CASE("a consumer over random ring contents gets records inside the ring or Corrupt") {
  RingSegment seg = RingSegment::create(kGeometry, 1, "fuzzc");
  const RingArea ring = seg.ring();
  std::mt19937_64 rng(44);
  std::uint64_t records = 0;
  std::uint64_t corrupt = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::memset(ring.data, 0, ring.geometry.capacity);
    const std::uint64_t head = rng() % 4 == 0 ? rng() : rng() % (4 * kGeometry.capacity);
    ring.control->head.store(head);
    // A chain of records from the head on, mostly plausible, then some noise.
    std::size_t at = head & (kGeometry.capacity - 1) & ~std::size_t{7};
    for (int k = rng() % 24; k > 0; --k) {
      auto* h = reinterpret_cast<RecordHeader*>(ring.data + at);
      const std::size_t toEnd = kGeometry.capacity - at;
      const std::uint64_t kind = rng() % 10;
      std::int64_t length = 8 + static_cast<std::int64_t>(rng() % kMaxBody);
      if (kind == 0) length = static_cast<std::int64_t>(toEnd);
      if (kind == 1) length = static_cast<std::int64_t>(rng() % (2 * kGeometry.capacity)) - 64;
      h->type = kind < 7 ? kRecordData : kind < 9 ? kRecordPadding : static_cast<std::uint32_t>(rng());
      h->length.store(static_cast<std::int32_t>(length));
      at = (at + alignUp(static_cast<std::size_t>(length > 8 ? length : 8), 8)) & (kGeometry.capacity - 1);
    }
    for (int m = rng() % 8; m > 0; --m) mutate(ring, rng);
    RingConsumer c = ring.consumer();
    for (int step = 0; step < 64; ++step) {
      auto r = c.tryRead();
      if (!r) {
        REQUIRE(r.code() == ErrorCode::Corrupt);
        ++corrupt;
        break;
      }
      if (!r->has_value()) break;
      REQUIRE(ring.contains((*r)->body, (*r)->bodyBytes));
      (void)touch(**r);
      ++records;
      if (rng() % 2 == 0) c.releaseTo((*r)->end);
    }
    c.releaseAll();
  }
  MESSAGE("records " << records << ", Corrupt " << corrupt);
  CHECK(records > 0);
  CHECK(corrupt > 0);
}

TEST_CASE("a producer reading a scribbled head gets Corrupt or a claim inside the ring, never writes outside") {
  RingSegment seg = RingSegment::create(kGeometry, 1, "fuzzp");
  const RingArea ring = seg.ring();
  std::mt19937_64 rng(55);
  RingProducer p = ring.producer();
  std::uint64_t claims = 0;
  std::uint64_t corrupt = 0;
  for (int i = 0; i < 200'000; ++i) {
    const std::uint64_t r = rng();
    switch (r % 8) {
      case 0:  // anything at all
        ring.control->head.store(rng());
        break;
      case 1:  // near the producer's tail, sometimes misaligned
        ring.control->head.store(p.tail() - (rng() % (2 * kGeometry.capacity)) + rng() % 16);
        break;
      case 2:  // a consumer that released everything
        ring.control->head.store(p.tail());
        break;
      case 3:  // attach again over scribbled indices
        ring.control->tail.store(rng() % 2 ? rng() : p.tail() + rng() % 64);
        p = ring.producer();
        break;
      default:
        break;
    }
    const std::size_t n = rng() % (kMaxBody + 1);
    auto c = r % 3 == 0 ? p.tryClaimUpTo(n, rng() % (2 * kMaxBody)) : p.tryClaim(n);
    if (!c) {
      REQUIRE((c.code() == ErrorCode::Full || c.code() == ErrorCode::Corrupt || c.code() == ErrorCode::TooLarge));
      if (c.code() == ErrorCode::Corrupt) {
        ++corrupt;
        p = ring.producer();
      }
      continue;
    }
    ++claims;
    if (rng() % 2 == 0) (void)p.extend(*c, rng() % (2 * kMaxBody));
    REQUIRE(ring.contains(c->body - sizeof(RecordHeader), c->bodyCapacity + sizeof(RecordHeader)));
    std::memset(c->body, 0x5a, c->bodyCapacity);  // the whole claim is writable
    if (rng() % 4 == 0) {
      p.abort(*c, c->bodyCapacity);
    } else {
      p.commit(*c, rng() % (c->bodyCapacity + 1));  // padding and header writes stay inside too
    }
  }
  MESSAGE("claims " << claims << ", Corrupt " << corrupt);
  CHECK(claims > 0);
  CHECK(corrupt > 0);
}
