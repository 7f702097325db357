// Fuzzing in-place message reading: random and bit-flipped bodies given to InPlaceMessage::parse
// and read through Cap'n Proto with the library's reader options. The body is placed against a
// PROT_NONE guard page, so a read past it crashes; every kj::Exception is turned into an error.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "message/message.hpp"
#include "ring_test_util.hpp"
#include "shm_test.hpp"
#include "test_message.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
constexpr RingGeometry kGeometry{1u << 16, 1u << 15};

struct Outcome {
  std::uint64_t rejected = 0;  ///< parse said InvalidMessage
  std::uint64_t thrown = 0;    ///< Cap'n Proto threw while reading (converted to InvalidMessage)
  std::uint64_t read = 0;      ///< read to the end (possibly with wrong values)
};

/// Places `body` at the very end of the guarded area (the guard page follows it) or at its very
/// start (the guard page precedes it), parses it and reads everything reachable.
void readUntrusted(const RingArea& area, const std::vector<std::uint8_t>& body, bool atEnd, Outcome& out) {
  std::uint8_t* at = atEnd ? area.data + area.geometry.capacity - body.size() : area.data;
  std::memcpy(at, body.data(), body.size());
  InPlaceMessage msg;
  auto parsed = msg.parse(at, body.size());
  if (!parsed) {
    REQUIRE(parsed.code() == ErrorCode::InvalidMessage);
    ++out.rejected;
    return;
  }
  if (msg.empty()) {
    ++out.read;
    return;
  }
  auto r = readChecked([&] {
    auto root = msg.reader().getRoot<TestMessage>();
    (void)readEverything(root);
    // Whatever the pointers say, what capnp hands out lies inside the body.
    auto inBody = [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::uint8_t*>(p);
      return n == 0 || (b >= at && b + n <= at + body.size());
    };
    REQUIRE(inBody(root.getText().begin(), root.getText().size()));
    REQUIRE(inBody(root.getBlob().begin(), root.getBlob().size()));
  });
  if (r) {
    ++out.read;
  } else {
    REQUIRE(r.code() == ErrorCode::InvalidMessage);
    ++out.thrown;
  }
}

/// A valid published message body (after the prefix), for bit flipping.
std::vector<std::uint8_t> validBody(std::uint64_t seq, std::size_t blob) {
  RingFixture f(kGeometry);
  auto used = publishTestMessage(f.producer, seq, blob);
  REQUIRE(used.ok());
  const RecordView v = f.drain().at(0);
  return {v.body + kPrefixBytes, v.body + v.bodyBytes};
}
}  // namespace

TEST_CASE("bit-flipped messages are rejected, throw, or read with wrong values, never read out of bounds") {
  RingSegment seg = RingSegment::create(kGeometry, 1, "mfuzz");
  const RingArea area = seg.ring();
  std::mt19937_64 rng(66);
  Outcome out;
  for (std::size_t blob : {std::size_t{0}, std::size_t{40}, std::size_t{3000}}) {
    const std::vector<std::uint8_t> valid = validBody(blob + 1, blob);
    for (int trial = 0; trial < 15'000; ++trial) {
      std::vector<std::uint8_t> body = valid;
      for (int flips = 1 + rng() % 4; flips > 0; --flips) {
        const std::size_t bit = rng() % (body.size() * 8);
        body[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
      }
      readUntrusted(area, body, trial % 2 == 0, out);
    }
  }
  MESSAGE("rejected " << out.rejected << ", threw " << out.thrown << ", read " << out.read);
  CHECK(out.thrown > 0);
  CHECK(out.read > 0);
}

TEST_CASE("random buffers are rejected, throw, or read, never read out of bounds") {
  RingSegment seg = RingSegment::create(kGeometry, 1, "rfuzz");
  const RingArea area = seg.ring();
  std::mt19937_64 rng(77);
  Outcome out;
  for (int trial = 0; trial < 40'000; ++trial) {
    const std::size_t words = rng() % 256;
    std::vector<std::uint8_t> body(sizeof(MessageTable) + words * 8);
    for (auto& b : body) b = static_cast<std::uint8_t>(rng());
    if (trial % 2 == 0) {  // a plausible table, so the words behind it get read
      MessageTable table{};
      table.segmentCount = 1 + rng() % 3;
      std::size_t left = words;
      for (std::uint32_t s = 0; s < table.segmentCount; ++s) {
        const std::size_t n = left == 0 ? 0 : s == 0 ? 1 + rng() % left : rng() % (left + 1);
        table.segmentWords[s] = static_cast<std::uint32_t>(n);
        left -= table.segmentWords[s];
      }
      std::memcpy(body.data(), &table, sizeof table);
    }
    readUntrusted(area, body, trial % 3 != 0, out);
  }
  MESSAGE("rejected " << out.rejected << ", threw " << out.thrown << ", read " << out.read);
  CHECK(out.rejected > 0);
  CHECK(out.thrown > 0);
}
