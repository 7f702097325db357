// Unit tests of Cap'n Proto messages built in ring claims and read in place (lib/src/message).
#include "message/message.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "ring_test_util.hpp"
#include "shm_test.hpp"
#include "test_message.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using shmbus::test::RingFixture;
using shmbus::test::kPrefixBytes;

namespace {
constexpr RingGeometry kGeometry{1u << 20, 1u << 18};

/// The single record a test published.
RecordView onlyRecord(RingFixture& f) {
  auto records = f.drain();
  REQUIRE(records.size() == 1);
  return records[0];
}

/// A message body laid out by hand: the table, then `words` (for parse and capnp-level tests).
struct HandMade {
  alignas(8) std::uint8_t bytes[sizeof(MessageTable) + 64 * 8] = {};
  MessageTable& table() { return *reinterpret_cast<MessageTable*>(bytes); }
  std::uint64_t* words() { return reinterpret_cast<std::uint64_t*>(bytes + sizeof(MessageTable)); }
};
}  // namespace

TEST_CASE("a message built in place is read in place with its Text and Data inside the mapped segment") {
  RingFixture f(kGeometry);
  auto used = test::publishTestMessage(f.producer, 7, 3000);
  REQUIRE_MESSAGE(used.ok(), used.error().toString());
  const RecordView v = onlyRecord(f);
  CHECK(v.bodyBytes == *used);

  InPlaceMessage msg;
  CHECK(test::checkTestRecord(v, 7, 3000, msg) == "");
  CHECK(msg.words() * 8 + sizeof(MessageTable) + kPrefixBytes == v.bodyBytes);  // no slack committed

  // Zero copy: what the reader hands out points into the ring, inside the mapped segment.
  auto root = msg.reader().getRoot<test::TestMessage>();
  const auto* seg = f.segment.segment().base();
  const std::size_t segBytes = f.segment.segment().size();
  auto inside = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    return b >= seg && b + n <= seg + segBytes && f.ring.contains(p, n);
  };
  CHECK(inside(root.getText().begin(), root.getText().size()));
  CHECK(inside(root.getBlob().begin(), root.getBlob().size()));
  CHECK(inside(root.getInner().getLabel().begin(), 5));
  CHECK(inside(root.getChildren()[2].getLabel().begin(), 1));
  CHECK(static_cast<const void*>(root.getBlob().begin()) > static_cast<const void*>(v.body));
  CHECK(static_cast<const void*>(root.getBlob().end()) <= static_cast<const void*>(v.body + v.bodyBytes));
}

TEST_CASE("messages follow one another in the ring and the space is zero again after release") {
  RingFixture f(kGeometry);
  InPlaceMessage msg;
  std::uint64_t next = 0;
  for (std::uint64_t seq = 0; seq < 2000; ++seq) {
    const std::size_t blob = (seq * 977) % 20000;
    auto used = test::publishTestMessage(f.producer, seq, blob);
    if (used.code() == ErrorCode::Full) {
      for (const auto& v : f.drain()) {
        REQUIRE(test::checkTestRecord(v, next, (next * 977) % 20000, msg) == "");
        ++next;
      }
      f.consumer.releaseAll();
      used = test::publishTestMessage(f.producer, seq, blob);
    }
    REQUIRE_MESSAGE(used.ok(), used.error().toString());
  }
  for (const auto& v : f.drain()) {
    REQUIRE(test::checkTestRecord(v, next, (next * 977) % 20000, msg) == "");
    ++next;
  }
  f.consumer.releaseAll();
  CHECK(next == 2000);
  CHECK(f.producer.tail() > 4 * kGeometry.capacity);  // several laps, so messages crossed the wrap
  CHECK(f.ring.allZero());
}

TEST_CASE("a message is built across the wrap point when the tail stands near the end of an empty ring") {
  RingFixture f(kGeometry);
  f.advanceTo(kGeometry.capacity - 256);
  auto used = test::publishTestMessage(f.producer, 1, 100'000);
  REQUIRE_MESSAGE(used.ok(), used.error().toString());
  InPlaceMessage msg;
  CHECK(test::checkTestRecord(onlyRecord(f), 1, 100'000, msg) == "");
}

TEST_CASE("a producer that must zero builds a correct message over dirty free space") {
  // zeroOnClaim: the consumer is not trusted to leave free space zeroed.
  RingFixture f(kGeometry, true);
  std::memset(f.ring.data, 0xa5, kGeometry.capacity);
  auto used = test::publishTestMessage(f.producer, 3, 20'000);  // outgrows the first 1 KiB chunk
  REQUIRE_MESSAGE(used.ok(), used.error().toString());
  auto r = f.consumer.tryRead();
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  InPlaceMessage msg;
  CHECK(test::checkTestRecord(**r, 3, 20'000, msg) == "");
  auto table = *reinterpret_cast<const MessageTable*>((*r)->body + kPrefixBytes);
  CHECK(table.segmentCount > 1);
}

TEST_CASE("a message without a root is empty, and asking for its reader is a caller bug") {
  RingFixture f(kGeometry);
  auto c = f.producer.tryClaim(256);
  REQUIRE(c.ok());
  RingMessageBuilder b(f.producer, *c, 8);
  const std::size_t used = b.finish();
  CHECK(used == 8 + sizeof(MessageTable));
  f.producer.commit(*c, used);
  const RecordView v = onlyRecord(f);
  InPlaceMessage msg;
  REQUIRE(msg.parse(v.body + 8, v.bodyBytes - 8).ok());
  CHECK(msg.empty());
  CHECK(msg.words() == 0);
  CHECK_THROWS_AS(msg.reader(), UsageError);
}

TEST_CASE("a message larger than the maximum record throws ClaimExhausted TooLarge and abort re-zeroes it") {
  for (bool zeroOnClaim : {false, true}) {
    CAPTURE(zeroOnClaim);
    RingFixture f(kGeometry, zeroOnClaim);
    auto used = test::publishTestMessage(f.producer, 1, kGeometry.maxRecord);
    CHECK(used.code() == ErrorCode::TooLarge);
    CHECK(used.error().message.find("maximum record") != std::string::npos);
    CHECK_FALSE(f.consumer.hasData());
    CHECK(f.ring.allZero());
    CHECK(test::publishTestMessage(f.producer, 2, 1000).ok());  // the ring is still usable
  }
}

TEST_CASE("a message that does not fit the free space throws ClaimExhausted Full until space is released") {
  for (bool zeroOnClaim : {false, true}) {
    CAPTURE(zeroOnClaim);
    RingFixture f(kGeometry, zeroOnClaim);
    // The consumer holds all but 8 KiB.
    for (int i = 0; i < 4; ++i) f.put(kGeometry.maxRecord - 8 - (i == 3 ? 8192 : 0));
    REQUIRE(f.drain().size() == 4);
    auto used = test::publishTestMessage(f.producer, 1, 20'000);
    CHECK(used.code() == ErrorCode::Full);
    CHECK(used.error().message.find("no more contiguous room") != std::string::npos);
    CHECK_FALSE(f.consumer.hasData());
    f.consumer.releaseAll();
    CHECK(f.ring.allZero());
    used = test::publishTestMessage(f.producer, 1, 20'000);
    REQUIRE_MESSAGE(used.ok(), used.error().toString());
    InPlaceMessage msg;
    CHECK(test::checkTestRecord(onlyRecord(f), 1, 20'000, msg) == "");
  }
}

TEST_CASE("a message that a larger claim would hold is Full, not TooLarge, when its claim is short") {
  // The first segment takes the whole (short) claim; the blob then needs a segment of its own, so
  // the handed-out-but-unused end of the first segment must not count towards the size.
  RingFixture f(kGeometry);
  for (int i = 0; i < 3; ++i) f.put(kGeometry.maxRecord - 8);
  f.put(116 * 1024 - 8);  // 140 KiB free: less than the 150,000-byte blob needs
  REQUIRE(f.drain().size() == 4);
  auto used = test::publishTestMessage(f.producer, 9, 150'000);
  CHECK(used.code() == ErrorCode::Full);
  f.consumer.releaseAll();
  used = test::publishTestMessage(f.producer, 9, 150'000);
  REQUIRE_MESSAGE(used.ok(), used.error().toString());
  InPlaceMessage msg;
  CHECK(test::checkTestRecord(onlyRecord(f), 9, 150'000, msg) == "");
}

TEST_CASE("a message needing more than seven segments throws ClaimExhausted TooLarge") {
  RingFixture f(kGeometry, true);  // zeroing producer: segments of 1, 2, 4 ... KiB
  auto c = f.producer.tryClaimUpTo(64, SIZE_MAX);
  REQUIRE(c.ok());
  RingMessageBuilder b(f.producer, *c, 0);
  auto root = b.initRoot<test::TestMessage>();
  auto children = root.initChildren(8);
  bool exhausted = false;
  try {
    // Each label outgrows the current segment, so each asks for a new one.
    for (capnp::uint i = 0; i < 8; ++i) children[i].initLabel((1024u << i) + 1);
  } catch (const ClaimExhausted& e) {
    exhausted = true;
    CHECK(e.code == ErrorCode::TooLarge);
    CHECK(std::string(e.what()).find("segments") != std::string::npos);
  }
  CHECK(exhausted);
  f.producer.abort(*c, b.touched());
  CHECK(f.ring.allZero());
}

TEST_CASE("parse rejects a malformed segment table with InvalidMessage") {
  HandMade m;
  m.table().segmentCount = 1;
  m.table().segmentWords[0] = 4;
  REQUIRE(InPlaceMessage().parse(m.bytes, sizeof m.bytes).ok());

  InPlaceMessage msg;
  SUBCASE("shorter than the table") {
    CHECK(msg.parse(m.bytes, sizeof(MessageTable) - 1).code() == ErrorCode::InvalidMessage);
  }
  SUBCASE("misaligned") { CHECK(msg.parse(m.bytes + 4, sizeof m.bytes - 8).code() == ErrorCode::InvalidMessage); }
  SUBCASE("too many segments") {
    m.table().segmentCount = kMaxSegments + 1;
    CHECK(msg.parse(m.bytes, sizeof m.bytes).code() == ErrorCode::InvalidMessage);
  }
  SUBCASE("a segment running past the record") {
    m.table().segmentWords[0] = 65;
    CHECK(msg.parse(m.bytes, sizeof m.bytes).code() == ErrorCode::InvalidMessage);
  }
  SUBCASE("segments that together run past the record") {
    m.table().segmentCount = 3;
    m.table().segmentWords[1] = 0xffffffffu;
    m.table().segmentWords[2] = 0xffffffffu;
    CHECK(msg.parse(m.bytes, sizeof m.bytes).code() == ErrorCode::InvalidMessage);
  }
  SUBCASE("an empty first segment") {
    m.table().segmentWords[0] = 0;
    CHECK(msg.parse(m.bytes, sizeof m.bytes).code() == ErrorCode::InvalidMessage);
  }
  CHECK_THROWS_AS(msg.reader(), UsageError);  // a failed parse leaves no reader behind
}

TEST_CASE("garbage Cap'n Proto words are turned into a clear InvalidMessage error, not a crash") {
  HandMade m;
  m.table().segmentCount = 1;
  m.table().segmentWords[0] = 2;
  SUBCASE("a root pointer far out of bounds") {
    m.words()[0] = (std::uint64_t{1} << 32) | (std::uint64_t{1000} << 2);  // struct ptr, offset 1000, 1 data word
    InPlaceMessage msg;
    REQUIRE(msg.parse(m.bytes, sizeof(MessageTable) + 16).ok());
    auto r = test::readChecked([&] { (void)msg.reader().getRoot<test::TestMessage>().getSeq(); });
    CHECK(r.code() == ErrorCode::InvalidMessage);
    CHECK(r.error().message.find("out-of-bounds") != std::string::npos);
  }
  SUBCASE("random words") {
    std::mt19937_64 rng(12345);
    int errors = 0;
    for (int trial = 0; trial < 2000; ++trial) {
      m.table().segmentWords[0] = 1 + rng() % 64;
      for (int w = 0; w < 64; ++w) m.words()[w] = rng();
      InPlaceMessage msg;
      REQUIRE(msg.parse(m.bytes, sizeof m.bytes).ok());
      auto r = test::readChecked([&] { (void)test::readEverything(msg.reader().getRoot<test::TestMessage>()); });
      if (!r) {
        ++errors;
        REQUIRE(r.code() == ErrorCode::InvalidMessage);
        REQUIRE(r.error().message.find("malformed Cap'n Proto payload") == 0);
      }
    }
    CHECK(errors > 0);
  }
}

TEST_CASE("the reader options bound traversal yet allow reading a message several times") {
  const capnp::ReaderOptions o = readerOptionsFor(1000);
  CHECK(o.traversalLimitInWords == 1000 * 8 + 64 * 1024);
  CHECK(o.nestingLimit == 64);

  RingFixture f(kGeometry);
  REQUIRE(test::publishTestMessage(f.producer, 5, 200'000).ok());
  const RecordView v = onlyRecord(f);
  InPlaceMessage msg;
  REQUIRE(msg.parse(v.body + kPrefixBytes, v.bodyBytes - kPrefixBytes).ok());
  auto ok = test::readChecked([&] {
    for (int i = 0; i < 4; ++i) (void)test::readEverything(msg.reader().getRoot<test::TestMessage>());
  });
  CHECK(ok.ok());
  auto tooMuch = test::readChecked([&] {
    for (int i = 0; i < 20; ++i) (void)test::readEverything(msg.reader().getRoot<test::TestMessage>());
  });
  CHECK(tooMuch.code() == ErrorCode::InvalidMessage);
  CHECK(tooMuch.error().message.find("traversal limit") != std::string::npos);
}

TEST_CASE("validatePayload reads the whole message: sound messages pass, bad pointers deep inside fail") {
  SUBCASE("a message built in place passes, and so does an empty one") {
    RingFixture f(kGeometry);
    (void)test::publishTestMessage(f.producer, 7, 3000);
    RecordView rec = onlyRecord(f);
    CHECK(validatePayload(rec.body + kPrefixBytes, rec.bodyBytes - kPrefixBytes).ok());
    HandMade empty;
    CHECK(validatePayload(empty.bytes, sizeof(MessageTable)).ok());
  }
  HandMade m;
  m.table().segmentCount = 1;
  SUBCASE("a bad table") {
    m.table().segmentWords[0] = 65;
    CHECK(validatePayload(m.bytes, sizeof m.bytes).code() == ErrorCode::InvalidMessage);
  }
  SUBCASE("an out-of-bounds pointer one level down, which parse alone does not see") {
    // root: struct of 0 data words and 1 pointer at word 1; that pointer: a struct 1000 words away
    m.table().segmentWords[0] = 2;
    m.words()[0] = std::uint64_t{1} << 48;
    m.words()[1] = (std::uint64_t{1} << 32) | (std::uint64_t{1000} << 2);
    InPlaceMessage parsed;
    REQUIRE(parsed.parse(m.bytes, sizeof(MessageTable) + 16).ok());
    auto r = validatePayload(m.bytes, sizeof(MessageTable) + 16);
    CHECK(r.code() == ErrorCode::InvalidMessage);
    CHECK(r.error().message.find("out-of-bounds") != std::string::npos);
  }
  SUBCASE("nesting deeper than the limit (64)") {
    // The root pointer, then 100 structs of one pointer each, each pointing at the next word:
    // 100 levels of nesting; the last pointer is null.
    constexpr std::size_t kWords = 101;
    std::vector<std::uint64_t> body(sizeof(MessageTable) / 8 + kWords, 0);
    MessageTable t{};
    t.segmentCount = 1;
    t.segmentWords[0] = kWords;
    std::memcpy(body.data(), &t, sizeof t);
    for (std::size_t w = 0; w + 1 < kWords; ++w) body[sizeof(MessageTable) / 8 + w] = std::uint64_t{1} << 48;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(body.data());
    auto r = validatePayload(bytes, body.size() * 8);
    CHECK(r.code() == ErrorCode::InvalidMessage);
    CHECK(r.error().message.find("nested") != std::string::npos);
  }
}
