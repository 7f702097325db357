// In-process helpers for tests that drive a producer and a consumer of one ring by hand.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "ring/ring.hpp"
#include "shm_test.hpp"

namespace shmbus::test {

/// A ring in its own guarded segment, with a producer and a consumer attached.
struct RingFixture {
  explicit RingFixture(detail::RingGeometry g = {4096, 1024}, bool zeroOnClaim = false)
      : segment(RingSegment::create(g, 1, "ring")),
        ring(segment.ring()),
        producer(ring.producer(zeroOnClaim)),
        consumer(ring.consumer()) {}

  RingSegment segment;
  RingArea ring;
  detail::RingProducer producer;
  detail::RingConsumer consumer;

  std::uint64_t mask() const { return ring.geometry.capacity - 1; }

  /// Claims, fills with `fill` and commits a record of `body` bytes; returns the claim as made.
  detail::Claim put(std::size_t body, std::uint8_t fill = 0xab) {
    auto c = producer.tryClaim(body);
    REQUIRE_MESSAGE(c.ok(), c.error().toString());
    const detail::Claim made = *c;
    std::memset(c->body, fill, body);
    producer.commit(*c, body);
    return made;
  }

  /// Every record committed and not yet read.
  std::vector<detail::RecordView> drain() {
    std::vector<detail::RecordView> out;
    for (;;) {
      auto r = consumer.tryRead();
      REQUIRE_MESSAGE(r.ok(), r.error().toString());
      if (!r->has_value()) return out;
      out.push_back(**r);
    }
  }

  /// Moves the (empty) ring's positions forward until the producer's tail sits at buffer `index`,
  /// consuming and releasing everything on the way.
  void advanceTo(std::uint64_t index) {
    const std::size_t cap = ring.geometry.capacity;
    while ((producer.tail() & mask()) != index) {
      const std::uint64_t at = producer.tail() & mask();
      const std::size_t dist = (index - at) & mask();
      std::size_t bytes = std::min<std::size_t>({dist, ring.geometry.maxRecord, cap - at});
      put(bytes - sizeof(detail::RecordHeader));
      drain();
      consumer.releaseAll();
    }
    REQUIRE(ring.allZero());
  }
};

}  // namespace shmbus::test
