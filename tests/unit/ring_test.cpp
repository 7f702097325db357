// Unit tests of the SPSC record ring (lib/src/ring): one process drives both sides by hand.
#include "ring/ring.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "ring_test_util.hpp"
#include "shm_test.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using shmbus::test::RingFixture;

namespace {
constexpr std::size_t kHdr = sizeof(RecordHeader);

const RecordHeader* headerAt(const RingFixture& f, std::uint64_t pos) {
  return reinterpret_cast<const RecordHeader*>(f.ring.data + (pos & f.mask()));
}
}  // namespace

TEST_CASE("a valid geometry passes validation and a bad capacity or maximum record is rejected") {
  CHECK(validateGeometry({1u << 20, 1u << 18}).ok());
  CHECK(validateGeometry({4096, 64}).ok());
  CHECK(validateGeometry({4096, 2048}).ok());
  CHECK(validateGeometry({1u << 30, 1u << 29}).ok());

  for (std::size_t cap : {std::size_t{0}, std::size_t{2048}, std::size_t{4095}, std::size_t{4096 + 8},
                          std::size_t{3} << 12, std::size_t{1} << 31}) {
    CAPTURE(cap);
    auto r = validateGeometry({cap, 64});
    CHECK(r.code() == ErrorCode::InvalidMessage);
    CHECK(r.error().message.find("capacity") != std::string::npos);
  }
  for (std::size_t max : {std::size_t{0}, std::size_t{56}, std::size_t{100}, std::size_t{2056}, std::size_t{4096}}) {
    CAPTURE(max);
    auto r = validateGeometry({4096, max});
    CHECK(r.code() == ErrorCode::InvalidMessage);
    CHECK(r.error().message.find("max record") != std::string::npos);
  }

  RingFixture f;
  CHECK_THROWS_AS(RingProducer(f.ring.control, f.ring.data, RingGeometry{4000, 64}), UsageError);
  CHECK_THROWS_AS(RingConsumer(f.ring.control, f.ring.data, RingGeometry{4096, 4096}), UsageError);
}

TEST_CASE("records come out in order with their bytes, 8-byte aligned, and released space is zero again") {
  RingFixture f;
  const std::vector<std::size_t> sizes = {1, 7, 8, 9, 100, 1016, 3};
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (i == 5) {  // make room for the largest one
      CHECK(f.drain().size() == 5);
      f.consumer.releaseAll();
    }
    f.put(sizes[i], static_cast<std::uint8_t>(i + 1));
  }
  auto records = f.drain();
  REQUIRE(records.size() == 2);
  for (std::size_t k = 0; k < records.size(); ++k) {
    const auto& v = records[k];
    const std::size_t i = k + 5;
    CHECK(v.bodyBytes == sizes[i]);
    CHECK(reinterpret_cast<std::uintptr_t>(v.body) % 8 == 0);
    CHECK(v.end == v.pos + alignUp(kHdr + sizes[i], 8));
    CHECK(f.ring.contains(v.body, v.bodyBytes));
    for (std::size_t b = 0; b < v.bodyBytes; ++b) REQUIRE(v.body[b] == i + 1);
  }
  CHECK_FALSE(f.consumer.hasData());
  f.consumer.releaseAll();
  CHECK(f.ring.control->head.load() == f.producer.tail());
  CHECK(f.ring.allZero());
}

TEST_CASE("a committed record with an empty body takes 8 bytes and is skipped by the consumer") {
  // Documents current behaviour: the consumer treats a bare header as "nothing to deliver" (frames
  // always carry a header, so the bus never publishes one).
  RingFixture f;
  auto empty = f.producer.tryClaim(0);
  REQUIRE(empty.ok());
  CHECK(empty->bodyCapacity == 0);
  f.producer.commit(*empty, 0);
  CHECK(f.producer.tail() == 8);
  CHECK(f.consumer.hasData());
  f.put(5, 9);
  auto records = f.drain();
  REQUIRE(records.size() == 1);
  CHECK(records[0].bodyBytes == 5);
  CHECK(records[0].pos == 8);
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());
}

TEST_CASE("a record larger than the maximum is rejected with TooLarge and nothing is written") {
  RingFixture f;  // maxRecord 1024: the largest body is 1016 bytes
  for (std::size_t body : {std::size_t{1017}, std::size_t{1024}, std::size_t{4096},
                           std::numeric_limits<std::size_t>::max()}) {
    CAPTURE(body);
    auto c = f.producer.tryClaim(body);
    CHECK(c.code() == ErrorCode::TooLarge);
    CHECK(c.error().message.find("1024") != std::string::npos);
    CHECK(f.producer.tryClaimUpTo(body, body).code() == ErrorCode::TooLarge);
  }
  CHECK(f.ring.allZero());
  CHECK(f.producer.tail() == 0);

  f.put(1016, 0x5a);
  auto records = f.drain();
  REQUIRE(records.size() == 1);
  CHECK(records[0].bodyBytes == 1016);
  CHECK(records[0].end == 1024);
}

TEST_CASE("a full ring reports Full until the consumer releases space") {
  RingFixture f;
  for (int i = 0; i < 4; ++i) f.put(1016, static_cast<std::uint8_t>(i));  // 4 x 1024 = the whole ring
  CHECK(f.producer.freeBytesCached() == 0);
  auto full = f.producer.tryClaim(1);
  CHECK(full.code() == ErrorCode::Full);
  CHECK(f.producer.tryClaimUpTo(1, 1000).code() == ErrorCode::Full);

  // Reading is not releasing: the producer still sees a full ring.
  auto records = f.drain();
  CHECK(records.size() == 4);
  CHECK(f.producer.tryClaim(1).code() == ErrorCode::Full);
  CHECK_FALSE(f.consumer.hasData());  // the consumer holds the whole ring: nothing new can be there

  f.consumer.releaseTo(records[0].end);
  CHECK(f.producer.tryClaim(1016).ok());
  CHECK(f.producer.tryClaim(1).ok());
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());
}

TEST_CASE("a record that does not fit before the end of the buffer follows a padding record to the end") {
  RingFixture f;
  f.advanceTo(4096 - 24);

  auto c = f.producer.tryClaim(40);  // 48 bytes of record, 24 before the end
  REQUIRE(c.ok());
  CHECK(c->padBytes == 24);
  CHECK(c->pos == f.producer.tail() + 24);
  CHECK(c->body == f.ring.data + kHdr);  // the record starts the buffer again
  std::memset(c->body, 0x11, 40);
  const std::uint64_t padPos = f.producer.tail();
  f.producer.commit(*c, 40);

  const RecordHeader* pad = headerAt(f, padPos);
  CHECK(pad->length.load() == 24);
  CHECK(pad->type == kRecordPadding);

  auto records = f.drain();
  REQUIRE(records.size() == 1);  // the padding is skipped
  CHECK(records[0].body == f.ring.data + kHdr);
  CHECK(records[0].bodyBytes == 40);
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());
}

TEST_CASE("a record that fits the end of the buffer exactly needs no padding") {
  RingFixture f;
  f.advanceTo(4096 - 48);
  auto c = f.producer.tryClaim(40);
  REQUIRE(c.ok());
  CHECK(c->padBytes == 0);
  CHECK(c->body == f.ring.data + 4096 - 40);
  f.producer.commit(*c, 40);
  CHECK((f.producer.tail() & f.mask()) == 0);
  CHECK(f.drain().size() == 1);
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());
}

TEST_CASE("a wrapping record needs free space for its padding too") {
  RingFixture f;
  f.advanceTo(48);
  for (int i = 0; i < 3; ++i) f.put(1016);
  f.put(944);  // the consumer holds [48, 4072): 24 bytes free before the end, 48 after the wrap
  CHECK((f.producer.tail() & f.mask()) == 4096 - 24);
  CHECK(f.drain().size() == 4);
  CHECK(f.producer.tryClaim(48).code() == ErrorCode::Full);  // 24 + 56 > 72 free
  auto c = f.producer.tryClaim(40);                            // 24 + 48 = 72: exactly fits
  REQUIRE(c.ok());
  CHECK(c->padBytes == 24);
  f.producer.commit(*c, 40);
  CHECK(f.producer.tryClaim(1).code() == ErrorCode::Full);
  CHECK(f.drain().size() == 1);
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());
}

TEST_CASE("records of every size survive many laps around the ring and leave it zeroed") {
  RingFixture f;
  std::uint64_t seq = 0;
  std::uint64_t expect = 0;
  std::size_t laps = 0;
  for (std::size_t size = 1; size <= 1016; size += (size < 64 ? 1 : 37)) {
    for (int k = 0; k < 5; ++k) {
      auto c = f.producer.tryClaim(size);
      if (c.code() == ErrorCode::Full) {
        for (const auto& v : f.drain()) {
          REQUIRE(v.bodyBytes >= 1);
          REQUIRE(f.ring.contains(v.body, v.bodyBytes));
          REQUIRE(v.body[0] == static_cast<std::uint8_t>(expect));
          REQUIRE(v.body[v.bodyBytes - 1] == static_cast<std::uint8_t>(expect));
          ++expect;
        }
        f.consumer.releaseAll();
        c = f.producer.tryClaim(size);
      }
      REQUIRE_MESSAGE(c.ok(), c.error().toString());
      std::memset(c->body, static_cast<std::uint8_t>(seq), size);
      f.producer.commit(*c, size);
      ++seq;
    }
    laps = f.producer.tail() / 4096;
  }
  for (const auto& v : f.drain()) {
    REQUIRE(v.body[0] == static_cast<std::uint8_t>(expect));
    ++expect;
  }
  f.consumer.releaseAll();
  CHECK(expect == seq);
  CHECK(laps >= 10);
  CHECK(f.ring.allZero());
}

TEST_CASE("an aborted claim publishes nothing and leaves its space zeroed for the next claim") {
  RingFixture f;
  SUBCASE("in the middle of the buffer") {
    auto c = f.producer.tryClaim(100);
    REQUIRE(c.ok());
    std::memset(c->body, 0xee, 100);
    f.producer.abort(*c, 100);
    CHECK_FALSE(c->active);
    CHECK(f.ring.allZero());
    CHECK_FALSE(f.consumer.hasData());
    auto again = f.producer.tryClaim(8);
    REQUIRE(again.ok());
    CHECK(again->pos == 0);
  }
  SUBCASE("a wrapping claim leaves no padding behind") {
    f.advanceTo(4096 - 24);
    auto c = f.producer.tryClaim(100);
    REQUIRE(c.ok());
    CHECK(c->padBytes == 24);
    std::memset(c->body, 0xee, c->bodyCapacity);
    f.producer.abort(*c, 1'000'000);  // more than the claim: clamped to it
    CHECK(f.ring.allZero());
    CHECK_FALSE(f.consumer.hasData());
    auto small = f.producer.tryClaim(8);  // fits before the end now
    REQUIRE(small.ok());
    CHECK(small->padBytes == 0);
    CHECK((small->pos & f.mask()) == 4096 - 24);
    f.producer.commit(*small, 8);
    CHECK(f.drain().size() == 1);
  }
}

TEST_CASE("tryClaimUpTo reserves the contiguous free space up to the maximum record") {
  RingFixture f;
  SUBCASE("an empty ring gives the maximum record") {
    auto c = f.producer.tryClaimUpTo(16, 1'000'000);
    REQUIRE(c.ok());
    CHECK(c->bodyCapacity == 1016);
    f.producer.abort(*c, 0);
  }
  SUBCASE("the caller's maximum bounds the claim") {
    auto c = f.producer.tryClaimUpTo(16, 200);
    REQUIRE(c.ok());
    CHECK(c->bodyCapacity == 200);
    f.producer.abort(*c, 0);
  }
  SUBCASE("space the consumer still holds bounds the claim") {
    f.put(1016);
    f.put(1016);
    f.put(1016);
    f.put(504);  // 512 bytes free at the end
    auto c = f.producer.tryClaimUpTo(8, 1016);
    REQUIRE(c.ok());
    CHECK(c->bodyCapacity == 512 - kHdr);
    std::memset(c->body, 1, c->bodyCapacity);
    f.producer.commit(*c, c->bodyCapacity);  // the whole claim is usable
    CHECK(f.producer.tryClaimUpTo(1, 8).code() == ErrorCode::Full);
    CHECK(f.drain().size() == 5);
    f.consumer.releaseAll();
    CHECK(f.ring.allZero());
  }
  SUBCASE("a minimum above the maximum record is TooLarge and a minimum that does not fit is Full") {
    CHECK(f.producer.tryClaimUpTo(1017, 2000).code() == ErrorCode::TooLarge);
    for (int i = 0; i < 3; ++i) f.put(1016);
    f.put(504);
    CHECK(f.producer.tryClaimUpTo(1016, 1016).code() == ErrorCode::Full);
  }
}

TEST_CASE("tryClaimUpTo near the end of the buffer wraps when more room is free after the wrap") {
  // Records never wrap, so a claim cut short by the end of the buffer can never grow: without the
  // wrap, in an empty ring, a message needing more than the bytes before the end would fail with
  // Full for ever (waiting frees nothing).
  RingFixture f;
  SUBCASE("an empty ring") {
    f.advanceTo(4096 - 64);
    auto c = f.producer.tryClaimUpTo(8, 1016);
    REQUIRE(c.ok());
    REQUIRE(c->bodyCapacity == 1016);
    CHECK(c->padBytes == 64);
    CHECK(c->body == f.ring.data + kHdr);
    std::memset(c->body, 7, 1016);
    f.producer.commit(*c, 1016);
    auto records = f.drain();
    REQUIRE(records.size() == 1);
    CHECK(records[0].bodyBytes == 1016);
    f.consumer.releaseAll();
    CHECK(f.ring.allZero());
  }
  SUBCASE("but keeps the room before the end when it is the larger") {
    f.advanceTo(256);
    for (int i = 0; i < 3; ++i) f.put(1016);
    f.put(248);  // the consumer holds [256, 3584): 512 bytes before the end, 256 after the wrap
    CHECK(f.drain().size() == 4);
    auto c = f.producer.tryClaimUpTo(8, 1016);
    REQUIRE(c.ok());
    CHECK(c->padBytes == 0);
    CHECK(c->bodyCapacity == 512 - kHdr);
    f.producer.abort(*c, 0);
  }
}

TEST_CASE("extend grows a claim in place within the maximum record, the buffer end and free space") {
  RingFixture f;
  SUBCASE("in place, up to the maximum record") {
    auto c = f.producer.tryClaim(8);
    REQUIRE(c.ok());
    CHECK(f.producer.extend(*c, 4));  // already big enough
    CHECK(c->bodyCapacity == 8);
    CHECK(f.producer.extend(*c, 500));
    CHECK(c->bodyCapacity == 504);
    CHECK_FALSE(f.producer.extend(*c, 1017));
    CHECK(c->bodyCapacity == 504);
    CHECK(f.producer.extend(*c, 1016));
    std::memset(c->body, 3, 1016);
    f.producer.commit(*c, 1016);
    CHECK(f.drain()[0].bodyBytes == 1016);
  }
  SUBCASE("never across the end of the buffer") {
    f.advanceTo(4096 - 64);
    auto c = f.producer.tryClaim(8);
    REQUIRE(c.ok());
    CHECK(f.producer.extend(*c, 56));
    CHECK_FALSE(f.producer.extend(*c, 57));
    CHECK(c->bodyCapacity == 56);
    f.producer.abort(*c, 0);
  }
  SUBCASE("never over space the consumer holds, but again once it is released") {
    f.advanceTo(2048);
    for (int i = 0; i < 3; ++i) f.put(1016);
    f.put(504);  // the consumer holds [2048, 4096) and [0, 1536)
    auto c = f.producer.tryClaim(8);
    REQUIRE(c.ok());
    CHECK(f.producer.extend(*c, 504));  // up to index 2048
    CHECK_FALSE(f.producer.extend(*c, 505));
    CHECK(c->bodyCapacity == 504);
    CHECK(f.drain().size() == 4);
    f.consumer.releaseAll();
    CHECK(f.producer.extend(*c, 1016));  // extend re-reads the head
    f.producer.abort(*c, 0);
  }
}

TEST_CASE("a batch of records is consumed in place and released with one releaseTo") {
  RingFixture f;
  for (int i = 0; i < 10; ++i) f.put(200, static_cast<std::uint8_t>(i + 1));
  auto batch = f.drain();
  REQUIRE(batch.size() == 10);
  CHECK(f.ring.control->head.load() == 0);  // reading does not release

  f.consumer.releaseTo(batch[4].end);
  CHECK(f.ring.control->head.load() == batch[4].end);
  CHECK(f.consumer.head() == batch[4].end);
  for (std::uint64_t p = 0; p < batch[4].end; ++p) REQUIRE(f.ring.data[p] == 0);
  for (std::size_t i = 5; i < 10; ++i) {  // records not released are intact
    for (std::size_t b = 0; b < batch[i].bodyBytes; ++b) REQUIRE(batch[i].body[b] == i + 1);
  }

  f.consumer.releaseTo(batch[2].end);                   // behind head: ignored
  f.consumer.releaseTo(f.consumer.readPos() + 8);       // beyond what was read: ignored
  CHECK(f.consumer.head() == batch[4].end);

  f.consumer.releaseAll();
  CHECK(f.consumer.head() == batch[9].end);
  CHECK(f.ring.allZero());
  auto c = f.producer.tryClaim(1016);
  CHECK(c.ok());
}

TEST_CASE("a producer and a consumer attaching to a ring in use resume where it stands") {
  RingFixture f;
  for (int i = 0; i < 3; ++i) f.put(100, static_cast<std::uint8_t>(i));
  auto first = f.consumer.tryRead();
  REQUIRE(first.ok());
  REQUIRE(first->has_value());
  f.consumer.releaseAll();

  RingConsumer consumer2 = f.ring.consumer();
  RingProducer producer2 = f.ring.producer();
  CHECK(consumer2.readPos() == (*first)->end);
  CHECK(producer2.tail() == f.producer.tail());
  auto c = producer2.tryClaim(100);
  REQUIRE(c.ok());
  std::memset(c->body, 3, 100);
  producer2.commit(*c, 100);
  for (int i = 1; i < 4; ++i) {
    auto r = consumer2.tryRead();
    REQUIRE(r.ok());
    REQUIRE(r->has_value());
    CHECK((*r)->body[0] == i);
  }
}

TEST_CASE("the consumer reports Corrupt for an impossible record header and stays put") {
  RingFixture f;
  f.put(100, 1);
  auto* h = reinterpret_cast<RecordHeader*>(f.ring.data);
  SUBCASE("unknown type") { h->type = 7; }
  SUBCASE("negative length") { h->length.store(-8); }
  SUBCASE("length shorter than the header") { h->length.store(4); }
  SUBCASE("length beyond the maximum record") { h->length.store(1032); }
  SUBCASE("padding that does not run to the end of the buffer") { h->type = kRecordPadding; }
  SUBCASE("a record that crosses the end of the buffer") {
    f.advanceTo(4096 - 64);
    f.put(56, 2);
    h = reinterpret_cast<RecordHeader*>(f.ring.data + 4096 - 64);
    h->length.store(72);
  }
  const std::uint64_t before = f.consumer.readPos();
  auto r = f.consumer.tryRead();
  CHECK(r.code() == ErrorCode::Corrupt);
  CHECK_FALSE(r.error().message.empty());
  CHECK(f.consumer.readPos() == before);
  CHECK(f.consumer.tryRead().code() == ErrorCode::Corrupt);
}

TEST_CASE("the producer reports Corrupt for an impossible consumer head") {
  RingFixture f;
  for (int i = 0; i < 4; ++i) f.put(1016);  // full: the next claim must read the head
  SUBCASE("head beyond the producer's tail") { f.ring.control->head.store(4096 + 1024); }
  SUBCASE("head misaligned") { f.ring.control->head.store(1020); }
  SUBCASE("head moving backwards") {
    f.drain();
    f.consumer.releaseTo(2048);
    f.put(1016);  // reads head 2048
    f.put(1016);
    f.ring.control->head.store(1024);
  }
  auto c = f.producer.tryClaim(1016);
  CHECK(c.code() == ErrorCode::Corrupt);
  CHECK(c.error().message.find("head") != std::string::npos);
}

TEST_CASE("a producer attaching to a scribbled control block starts on a record boundary") {
  RingFixture f;
  SUBCASE("misaligned tail") { f.ring.control->tail.store(4); }
  SUBCASE("misaligned head and tail") {
    f.ring.control->head.store(12);
    f.ring.control->tail.store(12);
  }
  RingProducer p = f.ring.producer();
  CHECK(p.tail() % 8 == 0);
  // A lap of 8-byte records, the head following the tail as a consumer would: from a misaligned
  // position the wrap padding would be written 4 bytes past the end (into the guard page).
  for (int i = 0; i < 1200; ++i) {
    auto c = p.tryClaim(0);
    if (!c) {  // Full, or Corrupt for the scribbled head: the consumer "releases" everything
      f.ring.control->head.store(p.tail() & ~std::uint64_t{7});
      c = p.tryClaim(0);
    }
    REQUIRE_MESSAGE(c.ok(), c.error().toString());
    p.commit(*c, 0);
  }
}

TEST_CASE("claim waits for space and wakes when the consumer releases") {
  RingFixture f;
  for (int i = 0; i < 4; ++i) f.put(1016);
  for (SpinPolicy policy : {SpinPolicy{std::chrono::nanoseconds(0)}, SpinPolicy{}}) {
    std::atomic<bool> started{false};
    Result<Claim> got = makeError(ErrorCode::Ok, "");
    std::thread producer([&] {
      started = true;
      got = test::claimWithin(f.producer, 1016, policy, std::chrono::seconds(10));
    });
    while (!started) std::this_thread::yield();
    auto batch = f.drain();
    f.consumer.releaseTo(batch.front().end);
    producer.join();
    REQUIRE_MESSAGE(got.ok(), got.error().toString());
    f.producer.commit(*got, 1016);
  }
}

TEST_CASE("claim on a full ring gives Full at its deadline and BusClosed when stopped") {
  RingFixture f;
  for (int i = 0; i < 4; ++i) f.put(1016);
  const std::int64_t start = monotonicNowNs();
  auto c = f.producer.claim(8, start + 20'000'000, SpinPolicy{}, [] { return false; });
  CHECK(c.code() == ErrorCode::Full);
  CHECK(monotonicNowNs() - start >= 20'000'000);
  CHECK(f.ring.control->spaceReady.waiters.load() == 0);

  auto stopped = f.producer.claim(8, kNoDeadline, SpinPolicy{}, [] { return true; });
  CHECK(stopped.code() == ErrorCode::BusClosed);
  CHECK(f.producer.claim(2000, kNoDeadline, SpinPolicy{}, [] { return false; }).code() == ErrorCode::TooLarge);
}

TEST_CASE("the consumer's wait times out on an empty ring and wakes when a record is published") {
  RingFixture f;
  const std::int64_t start = monotonicNowNs();
  CHECK(f.consumer.wait(start + 20'000'000, SpinPolicy{}, [] { return false; }) == WaitStatus::Timeout);
  CHECK(monotonicNowNs() - start >= 20'000'000);

  std::atomic<bool> parked{false};
  WaitStatus status = WaitStatus::Timeout;
  std::thread consumer([&] {
    parked = true;
    status = test::waitForData(f.consumer, SpinPolicy{std::chrono::nanoseconds(0)}, std::chrono::seconds(10))
                 ? WaitStatus::Ready
                 : WaitStatus::Timeout;
  });
  while (!parked) std::this_thread::yield();
  auto c = f.producer.tryClaim(8);
  REQUIRE(c.ok());
  f.producer.publish(*c, 8);
  consumer.join();
  CHECK(status == WaitStatus::Ready);
  CHECK(f.drain().size() == 1);
}

TEST_CASE("restartWindow: a producer that finds the ring empty past the window restarts at offset 0") {
  RingFixture f({4096, 1024, 512});
  // 6 records of 100 bytes (112 with the header) reach 672 >= 512: the 6th claim is past the
  // window's first check point, so the claim after it checks head.
  for (int i = 0; i < 5; ++i) f.put(100);
  CHECK(f.drain().size() == 5);
  f.consumer.releaseAll();
  const std::uint64_t before = f.producer.tail();
  REQUIRE((before & f.mask()) >= 512);
  auto c = f.producer.tryClaim(100);
  REQUIRE(c.ok());
  CHECK((c->pos & f.mask()) == 0);                          // restarted
  CHECK(c->padBytes == f.ring.geometry.capacity - (before & f.mask()));
  std::memset(c->body, 0x5a, 100);
  f.producer.commit(*c, 100);
  auto out = f.drain();
  REQUIRE(out.size() == 1);
  CHECK(out[0].body[0] == 0x5a);
  CHECK((out[0].pos & f.mask()) == 0);
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());  // the padding's header was zeroed; its body was never written
}

TEST_CASE("restartWindow: no restart while the unreleased records would not fit before the offset") {
  RingFixture f({4096, 1024, 512});
  for (int i = 0; i < 5; ++i) f.put(100);
  auto held = f.drain();
  REQUIRE(held.size() == 5);  // 560 bytes held at offset 560: 560 + 112 > 560
  auto c = f.producer.tryClaim(100);
  REQUIRE(c.ok());
  CHECK(c->padBytes == 0);
  CHECK(c->pos == f.producer.tail());
  f.producer.abort(*c, 0);
}

TEST_CASE("restartWindow: a restart with one record still held keeps that record readable") {
  RingFixture f({4096, 1024, 512});
  for (int i = 0; i < 5; ++i) f.put(100, static_cast<std::uint8_t>(i));
  auto first = f.drain();
  REQUIRE(first.size() == 5);
  f.consumer.releaseTo(first[3].end);  // the last record (fill 4) is still held
  auto c = f.producer.tryClaim(100);
  REQUIRE(c.ok());
  CHECK((c->pos & f.mask()) == 0);  // restarted: 112 held + 112 new fit before offset 560
  std::memset(c->body, 9, 100);
  f.producer.commit(*c, 100);
  CHECK(first[4].body[0] == 4);  // the held record is untouched
  auto next = f.drain();
  REQUIRE(next.size() == 1);
  CHECK(next[0].body[0] == 9);
  f.consumer.releaseAll();
  CHECK(f.ring.allZero());
}

TEST_CASE("restartWindow: a bad window is rejected") {
  CHECK(validateGeometry({4096, 1024, 512}).ok());
  CHECK_FALSE(validateGeometry({4096, 1024, 12}).ok());    // below 64
  CHECK_FALSE(validateGeometry({4096, 1024, 3000}).ok());  // above capacity / 2
  CHECK_FALSE(validateGeometry({4096, 1024, 100}).ok());   // not a multiple of 8
}

TEST_CASE("a batch consumer reads only below the tail the producer published") {
  RingFixture f;
  f.put(40, 1);
  f.put(40, 2);
  auto none = f.consumer.tryReadPublished();
  REQUIRE(none.ok());
  CHECK_FALSE(none->has_value());  // committed, not yet published
  CHECK_FALSE(f.consumer.hasPublished());
  CHECK(f.consumer.hasData());     // a latency consumer would see them already
  f.producer.notifyConsumer();
  CHECK(f.consumer.hasPublished());
  for (std::uint8_t fill : {1, 2}) {
    auto r = f.consumer.tryReadPublished();
    REQUIRE(r.ok());
    REQUIRE(r->has_value());
    CHECK((*r)->body[0] == fill);
  }
  f.put(40, 3);  // committed after the publication
  auto after = f.consumer.tryReadPublished();
  REQUIRE(after.ok());
  CHECK_FALSE(after->has_value());
  f.consumer.releaseAll();
}

TEST_CASE("a batch consumer reports Corrupt for an impossible published tail or a hole below it") {
  RingFixture f;
  SUBCASE("tail beyond the ring") {
    f.ring.control->tail.store(f.ring.geometry.capacity + 64);
    auto r = f.consumer.tryReadPublished();
    CHECK(r.code() == ErrorCode::Corrupt);
  }
  SUBCASE("tail past an uncommitted record") {
    f.ring.control->tail.store(64);
    auto r = f.consumer.tryReadPublished();
    CHECK(r.code() == ErrorCode::Corrupt);
  }
}

TEST_CASE("a producer attaching after unpublished commits resumes after them, not at the stale tail") {
  RingFixture f;
  f.put(40);
  f.producer.notifyConsumer();  // tail published after the first record only
  f.put(40);
  f.put(40);
  RingProducer again = f.ring.producer();
  CHECK(again.tail() == f.producer.tail());
}
