// Wake-up stress: two processes hand records to each other through rings while both pause at
// random (spins, sched_yield, short futex parks), with a spin budget of 0 (every wait parks) and
// the default. A lost wake-up shows as a wait that reaches its deadline: the test fails there.
#include <doctest/doctest.h>
#include <sched.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>

#include "record_stream.hpp"
#include "ring/ring.hpp"
#include "shm_test.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
constexpr auto kWaitLimit = std::chrono::seconds(5);  // far beyond any honest wait here
constexpr SpinPolicy kParkAtOnce{std::chrono::nanoseconds(0)};
constexpr auto kNever = [] { return false; };

/// One process's end of a pair of rings, pausing at random between the steps of a handoff.
class Side {
 public:
  Side(const RingArea& out, const RingArea& in, SpinPolicy policy, std::uint64_t seed)
      : out_(out.producer()), in_(in.consumer()), policy_(policy), rng_(seed) {}

  /// Publishes an 8-byte record carrying `value`, with a pause between commit and wake-up.
  void send(std::uint64_t value) {
    auto c = claimWithin(out_, 8, policy_, kWaitLimit);
    childCheck(c.ok(), "claim for handoff " + std::to_string(value) + ": " + c.error().toString());
    std::memcpy(c->body, &value, 8);
    out_.commit(*c, 8);
    pause();
    out_.notifyConsumer();
  }

  /// Waits for the record carrying `value`; a wait reaching its deadline is a missed wake-up.
  void receive(std::uint64_t value) {
    pause();
    for (;;) {
      auto r = in_.tryRead();
      childCheck(r.ok(), r.error().toString());
      if (r->has_value()) {
        std::uint64_t got = 0;
        std::memcpy(&got, (*r)->body, 8);
        childCheck(got == value, "handoff " + std::to_string(value) + " carried " + std::to_string(got));
        in_.releaseAll();
        return;
      }
      childCheck(waitForData(in_, policy_, kWaitLimit),
                 "missed wake-up: handoff " + std::to_string(value) + " not seen within 5 s");
    }
  }

 private:
  /// Nothing (most often), a short spin, a sched_yield, or a park of up to 20 µs on the futex of
  /// the ring this side reads (which a send from the other side may cut short).
  void pause() {
    const std::uint64_t r = rng_();
    switch (r % 16) {
      case 0: case 1: case 2: case 3:
        for (std::uint64_t i = (r >> 8) % 256; i > 0; --i) cpuRelax();
        break;
      case 4:
        sched_yield();
        break;
      case 5:
        (void)in_.wait(deadlineIn(std::chrono::microseconds((r >> 8) % 20)), kParkAtOnce, kNever);
        break;
      default:
        break;
    }
  }

  RingProducer out_;
  RingConsumer in_;
  SpinPolicy policy_;
  std::mt19937_64 rng_;
};

/// `handoffs` records passed alternately A→B and B→A between the test process (A) and a child (B).
void pingPong(std::uint64_t handoffs, SpinPolicy policy) {
  RingSegment seg = RingSegment::create({4096, 64}, 2, "pingpong");
  const RingArea ping = seg.ring(0);
  const RingArea pong = seg.ring(1);
  Child b = Child::fork([&] {
    Side side(pong, ping, policy, 2);
    for (std::uint64_t i = 0; i < handoffs; i += 2) {
      side.receive(i);
      side.send(i + 1);
    }
  });
  Side a(ping, pong, policy, 1);
  const std::int64_t t0 = monotonicNowNs();
  std::string problem;
  try {
    for (std::uint64_t i = 0; i < handoffs; i += 2) {
      a.send(i);
      a.receive(i + 1);
    }
  } catch (const ChildFailure& e) {
    problem = e.what();
  }
  const double seconds = static_cast<double>(monotonicNowNs() - t0) / 1e9;
  CHECK_MESSAGE(problem.empty(), problem);
  CHECK(b.join(std::chrono::seconds(20)) == 0);
  MESSAGE(handoffs << " handoffs in " << seconds << " s, " << seconds * 1e9 / static_cast<double>(handoffs)
                   << " ns each");
}
}  // namespace

TEST_CASE("a million ping-pong handoffs that always park lose no wake-up") {
  pingPong(countFromEnv("SHMBUS_STRESS_HANDOFFS", 1'000'000), kParkAtOnce);
}

TEST_CASE("a million ping-pong handoffs with the default spin budget lose no wake-up") {
  pingPong(countFromEnv("SHMBUS_STRESS_HANDOFFS", 1'000'000), SpinPolicy{});
}

TEST_CASE("a stream through a tiny ring parks both sides for data and for space and loses nothing") {
  // A 4 KiB ring of records up to 64 bytes: the producer is often Full and parks on the space word
  // while the consumer parks on the data word; both pause at random.
  const std::uint64_t total = countFromEnv("SHMBUS_STRESS_RECORDS", 1'000'000);
  constexpr RingGeometry g{4096, 64};
  constexpr std::size_t kMaxBody = g.maxRecord - sizeof(RecordHeader);
  RingSegment seg = RingSegment::create(g, 1, "stream");
  const RingArea ring = seg.ring();
  Child producer = Child::fork([&] {
    RingProducer p = ring.producer();
    std::mt19937_64 rng(3);
    produceRecords(p, total, kMaxBody, kParkAtOnce, kWaitLimit, [&] {
      if (rng() % 64 == 0) sched_yield();
    });
  });
  RingConsumer c = ring.consumer();
  std::mt19937_64 rng(4);
  auto pauseOrRelease = [&](RingConsumer& rc, const RecordView&) {
    const std::uint64_t roll = rng() % 256;
    if (roll == 0) sched_yield();
    if (roll < 8) rc.releaseAll();  // release at random points, not only when the ring runs dry
  };
  const Received got = consumeRecords(c, total, kMaxBody, kParkAtOnce, kWaitLimit, pauseOrRelease);
  CHECK_MESSAGE(got.problem.empty(), got.problem);
  CHECK(got.records == total);
  CHECK(producer.join(std::chrono::seconds(20)) == 0);
}
