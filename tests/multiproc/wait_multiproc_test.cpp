// The shared (non-PRIVATE) futex between processes that map one segment at different addresses.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "segment/segment.hpp"
#include "shm_test.hpp"
#include "wait/wait.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
constexpr SpinPolicy kParkAtOnce{std::chrono::nanoseconds(0)};

/// What the processes share: a flag set before notifying, and the word to park on.
struct Shared {
  std::atomic<std::uint32_t> flag;
  WaitWord word;
};

/// A segment holding one Shared after its header, mapped again by name in each child.
struct SharedSegment {
  std::string name = Segment::makeName(uniqueBus("wait"), 1);
  Segment segment = [&] {
    auto s = Segment::create(name, 4096);
    REQUIRE(s.ok());
    return std::move(s).value();
  }();
  ~SharedSegment() { Segment::unlink(name); }

  static Shared* at(const Segment& s) { return reinterpret_cast<Shared*>(s.base() + sizeof(SegmentHeader)); }
  Shared* shared() const { return at(segment); }

  /// Child body: its own mapping, then park (no spin) until the flag is set.
  void parkInChild() const {
    auto mine = Segment::open(name);
    childCheck(mine.ok(), mine.error().toString());
    childCheck(mine->base() != segment.base(), "the child's mapping should be its own");
    Shared* s = at(*mine);
    const std::int64_t deadline = deadlineIn(std::chrono::seconds(10));
    const WaitStatus st =
        spinThenPark(s->word, [&] { return s->flag.load(std::memory_order_acquire) != 0; }, kParkAtOnce, deadline);
    // At the deadline the wait looks once more: Ready then still means the wake-up was lost.
    childCheck(st == WaitStatus::Ready && monotonicNowNs() < deadline, "parked waiter was not woken within 10 s");
  }
};
}  // namespace

TEST_CASE("a waiter parked in another process is woken through the shared futex") {
  SharedSegment seg;
  Child waiter = Child::fork([&] { seg.parkInChild(); });
  Shared* s = seg.shared();
  REQUIRE_MESSAGE(awaitCondition([&] { return s->word.waiters.load() == 1; }), "the child never parked");
  s->flag.store(1, std::memory_order_release);
  notify(s->word);
  CHECK(waiter.join(std::chrono::seconds(20)) == 0);
  CHECK(s->word.seq.load() == 1);
  CHECK(s->word.waiters.load() == 0);
}

TEST_CASE("wakeAll wakes waiters parked in several processes") {
  SharedSegment seg;
  std::vector<Child> waiters;
  for (int i = 0; i < 3; ++i) waiters.push_back(Child::fork([&] { seg.parkInChild(); }));
  Shared* s = seg.shared();
  REQUIRE(awaitCondition([&] { return s->word.waiters.load() == 3; }));
  s->flag.store(1, std::memory_order_release);
  wakeAll(s->word);
  for (auto& w : waiters) CHECK(w.join(std::chrono::seconds(20)) == 0);
}
