// A ring between two real processes: a producer child that maps the segment by name (at its own
// address) and the test process consuming. Records are self-checking (record_pattern.hpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "record_stream.hpp"
#include "ring/ring.hpp"
#include "shm_test.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
constexpr RingGeometry kGeometry{1u << 20, 64u << 10};
constexpr std::size_t kMaxBody = kGeometry.maxRecord - sizeof(RecordHeader);
constexpr auto kWaitLimit = std::chrono::seconds(10);  // a wait this long is a lost wake-up or a dead peer

/// Child body: maps `name` itself (at its own address), then produces records [0, total).
void produce(const std::string& name, const Pipe& mapped, std::uint64_t total, SpinPolicy policy) {
  RingSegment mine = RingSegment::open(name, kGeometry);
  mapped.send();
  RingProducer p = mine.ring().producer();
  produceRecords(p, total, kMaxBody, policy, kWaitLimit, [] {});
}

/// Passes `total` records from a producer child to this process over a fresh segment, checks
/// that all arrive in order and intact and that the ring is left zeroed, and reports the rate.
void transfer(std::uint64_t total, SpinPolicy policy, std::string_view tag) {
  RingSegment seg = RingSegment::create(kGeometry, 1, tag);
  Pipe mapped;
  Child producer = Child::fork([&] { produce(seg.name(), mapped, total, policy); });
  REQUIRE_MESSAGE(mapped.receive(std::chrono::seconds(10)).has_value(), "the producer did not map the segment");
  seg.unlink();  // both sides mapped: nothing is left behind whatever happens next
  CHECK(Segment::countNames(seg.bus()) == 0);

  RingConsumer c = seg.ring().consumer();
  const std::int64_t t0 = monotonicNowNs();
  auto releaseInBatches = [](RingConsumer& rc, const RecordView& v) {
    if (v.end - rc.head() >= kGeometry.capacity / 4) rc.releaseTo(v.end);
  };
  const Received got = consumeRecords(c, total, kMaxBody, policy, kWaitLimit, releaseInBatches);
  const double seconds = static_cast<double>(monotonicNowNs() - t0) / 1e9;
  CHECK_MESSAGE(got.problem.empty(), got.problem);
  CHECK(got.records == total);
  CHECK(producer.join(std::chrono::seconds(30)) == 0);
  auto extra = c.tryRead();
  CHECK(extra.ok());
  CHECK_FALSE(extra->has_value());  // nothing after the last record
  CHECK(seg.ring().allZero());      // everything consumed was zeroed again
  MESSAGE(got.records << " records, " << got.bytes / (1 << 20) << " MiB in " << seconds << " s ("
                      << static_cast<double>(got.records) / seconds / 1e6 << " M records/s)");
}
}  // namespace

TEST_CASE("ten million records of random sizes pass between two processes in order with none lost") {
  // SHMBUS_TRANSFER_RECORDS shortens a local run; CI runs the full ten million.
  transfer(countFromEnv("SHMBUS_TRANSFER_RECORDS", 10'000'000), SpinPolicy{}, "xfer");
}

TEST_CASE("records pass between two processes when both sides park at once instead of spinning") {
  transfer(countFromEnv("SHMBUS_TRANSFER_PARKED_RECORDS", 200'000), SpinPolicy{std::chrono::nanoseconds(0)},
           "xferpark");
}
