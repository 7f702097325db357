// Cap'n Proto messages built in place by one process and read in place by another.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "message/message.hpp"
#include "ring/ring.hpp"
#include "shm_test.hpp"
#include "test_message.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
constexpr RingGeometry kGeometry{1u << 20, 1u << 18};
constexpr std::uint64_t kMessages = 20'000;

std::size_t blobFor(std::uint64_t seq) { return seq % 97 == 0 ? 150'000 : (seq * 7919) % 6000; }
}  // namespace

TEST_CASE("messages built in place by one process are read in place by another") {
  RingSegment seg = RingSegment::create(kGeometry, 1, "capnp");
  Pipe mapped;
  Child producer = Child::fork([&] {
    RingSegment mine = RingSegment::open(seg.name(), kGeometry);
    mapped.send();
    RingProducer p = mine.ring().producer();
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
      for (;;) {
        auto used = publishTestMessage(p, seq, blobFor(seq));
        if (used.ok()) break;
        childCheck(used.code() == ErrorCode::Full, "message " + std::to_string(seq) + ": " + used.error().toString());
        // Wait until the message's worth of space is free, then build it again.
        auto room = claimWithin(p, blobFor(seq) + 4096, SpinPolicy{}, std::chrono::seconds(10));
        childCheck(room.ok(), "waiting for space: " + room.error().toString());
        p.abort(*room, 0);
      }
    }
  });
  REQUIRE(mapped.receive(std::chrono::seconds(10)).has_value());
  seg.unlink();

  const RingArea ring = seg.ring();
  RingConsumer c = ring.consumer();
  InPlaceMessage msg;
  std::uint64_t seq = 0;
  std::string problem;
  while (seq < kMessages && problem.empty()) {
    auto r = c.tryRead();
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    if (!r->has_value()) {
      c.releaseAll();
      REQUIRE_MESSAGE(waitForData(c, SpinPolicy{}, std::chrono::seconds(10)), "no message " << seq << " within 10 s");
      continue;
    }
    problem = checkTestRecord(**r, seq, blobFor(seq), msg);
    if (problem.empty()) {
      // Zero copy: the payload is read where the other process built it, in this mapping.
      auto root = msg.reader().getRoot<TestMessage>();
      if (!ring.contains(root.getText().begin(), root.getText().size()) ||
          !ring.contains(root.getBlob().begin(), root.getBlob().size())) {
        problem = "message " + std::to_string(seq) + " was not read in place";
      }
    }
    ++seq;
  }
  CHECK_MESSAGE(problem.empty(), problem);
  CHECK(seq == kMessages);
  c.releaseAll();
  CHECK(producer.join(std::chrono::seconds(30)) == 0);
  CHECK(ring.allZero());
}
