// Unit tests of the router's routes table and counters (lib/src/router/routes), with a real
// CLOCK_MONOTONIC timerfd for the deadline timer.
#include "router/routes.hpp"

#include <doctest/doctest.h>
#include <poll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <vector>

#include "wait/wait.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kSec = 1'000'000'000;

/// A non-blocking CLOCK_MONOTONIC timerfd, as the router creates it.
struct TimerFd {
  int fd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  TimerFd() { REQUIRE(fd >= 0); }
  ~TimerFd() { ::close(fd); }
};

/// The absolute CLOCK_MONOTONIC time the timer is armed for, or 0 when disarmed.
std::int64_t armedAt(int fd) {
  itimerspec its{};
  REQUIRE(::timerfd_gettime(fd, &its) == 0);
  const std::int64_t left = its.it_value.tv_sec * kSec + its.it_value.tv_nsec;
  return left == 0 ? 0 : monotonicNowNs() + left;
}

/// True when the timer is armed for `deadline` (timerfd_gettime reads the time left, so the
/// reconstruction is off by the time between the two clock reads: well under a millisecond).
bool armedFor(int fd, std::int64_t deadline) { return std::llabs(armedAt(fd) - deadline) < kMs; }

Route route(std::int64_t deadline, std::uint32_t callerId = 0, std::uint64_t callerReq = 0, std::uint32_t targetId = 0) {
  Route r;
  r.deadline = deadline;
  r.callerId = callerId;
  r.callerReq = callerReq;
  r.targetId = targetId;
  return r;
}

std::vector<std::int64_t> deadlinesOf(const std::vector<Route>& rs) {
  std::vector<std::int64_t> out;
  for (const auto& r : rs) out.push_back(r.deadline);
  return out;
}

}  // namespace

TEST_CASE("add numbers routes from 1 and take removes exactly the route asked for") {
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t far = monotonicNowNs() + 100 * kSec;
  CHECK(table.add(route(far, 1, 10, 2)) == 1);
  CHECK(table.add(route(far, 2, 10, 1)) == 2);
  CHECK(table.add(route(far)) == 3);
  REQUIRE(table.find(2) != nullptr);
  CHECK(table.find(2)->routeId == 2);
  CHECK(table.find(2)->callerId == 2);

  auto taken = table.take(2);
  REQUIRE(taken.has_value());
  CHECK(taken->routeId == 2);
  CHECK(taken->targetId == 1);
  CHECK_FALSE(table.contains(2));
  CHECK(table.find(2) == nullptr);
  CHECK_FALSE(table.take(2).has_value());
  CHECK(table.contains(1));
  CHECK(table.contains(3));
  CHECK(table.size() == 2);
  // The freed slot is reused under a new generation: the id differs from every earlier one, and
  // the old id (a late or forged reply) names nothing.
  const std::uint64_t reused = table.add(route(far, 7, 70));
  CHECK(reused != 1);
  CHECK(reused != 2);
  CHECK(reused != 3);
  CHECK((reused & 0xffffffffu) == 2);  // the slot of route 2, generation 1
  CHECK(table.find(2) == nullptr);
  CHECK_FALSE(table.take(2).has_value());
  CHECK(table.find(reused)->callerId == 7);
}

TEST_CASE("ids that name no route are refused: zero, out of range, a stale generation") {
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t far = monotonicNowNs() + 100 * kSec;
  const std::uint64_t a = table.add(route(far, 1, 1));
  CHECK(table.find(0) == nullptr);
  CHECK(table.find(a + 1) == nullptr);                  // a slot never used
  CHECK(table.find(0xffffffffull) == nullptr);          // far out of range
  CHECK(table.find(a | (std::uint64_t{5} << 32)) == nullptr);  // right slot, wrong generation
  CHECK_FALSE(table.take(a | (std::uint64_t{1} << 32)).has_value());
  CHECK(table.contains(a));
  for (int round = 0; round < 1000; ++round) {  // one slot, reused: its ids never repeat
    auto r = table.take(table.add(route(far, 2, static_cast<std::uint64_t>(round))));
    REQUIRE(r.has_value());
  }
  CHECK(table.size() == 1);
  CHECK(table.byCaller(1, 1) == a);
}

TEST_CASE("many routes with mixed deadlines expire in deadline order, whatever was taken between") {
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t base = monotonicNowNs() + 1000 * kSec;  // never due by the clock
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(table.add(route(base + ((i * 7919) % 200) * kMs, 1, i + 1)));
  for (int i = 0; i < 200; i += 3) REQUIRE(table.take(ids[i]).has_value());
  auto due = table.takeExpired(base + 199 * kMs);
  std::vector<std::int64_t> got = deadlinesOf(due);
  CHECK(std::is_sorted(got.begin(), got.end()));
  CHECK(got.size() == 200 - 67);
  CHECK(table.size() == 0);
  CHECK(table.inFlightOf(1).calls == 0);
}

TEST_CASE("byCaller finds a window's pending request until it is taken") {
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t far = monotonicNowNs() + 100 * kSec;
  const auto a = table.add(route(far, 1, 7));
  const auto b = table.add(route(far, 2, 7));
  const auto mainCall = table.add(route(far, 0, 7));  // main-process calls are not indexed by caller
  CHECK(table.byCaller(1, 7) == a);
  CHECK(table.byCaller(2, 7) == b);
  CHECK(table.byCaller(0, 7) == 0);
  CHECK(table.byCaller(1, 8) == 0);
  CHECK(table.byCaller(3, 7) == 0);
  table.take(a);
  CHECK(table.byCaller(1, 7) == 0);
  CHECK(table.byCaller(2, 7) == b);
  CHECK(table.contains(mainCall));
}

TEST_CASE("inFlightOf counts each window's routes and request bytes through add, take, takeExpired and takeIf") {
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t now = monotonicNowNs();
  const std::int64_t far = now + 100 * kSec;
  auto sized = [](Route r, std::uint32_t bytes) {
    r.requestBytes = bytes;
    return r;
  };
  auto calls = [&](std::uint32_t id) { return table.inFlightOf(id).calls; };
  auto bytes = [&](std::uint32_t id) { return table.inFlightOf(id).bytes; };
  const auto a1 = table.add(sized(route(far, 1, 1), 100));
  table.add(sized(route(now - kMs, 1, 2), 20));  // already due
  table.add(sized(route(far, 1, 3, 9), 3));
  table.add(sized(route(far, 2, 1), 7));
  table.add(sized(route(far, 0, 1), 50));  // main's own call: no window's count
  CHECK(calls(1) == 3);
  CHECK(bytes(1) == 123);
  CHECK(calls(2) == 1);
  CHECK(bytes(2) == 7);
  CHECK(calls(0) == 0);
  CHECK(bytes(0) == 0);
  table.take(a1);
  CHECK(calls(1) == 2);
  CHECK(bytes(1) == 23);
  CHECK(table.takeExpired(monotonicNowNs()).size() == 1);
  CHECK(calls(1) == 1);
  CHECK(bytes(1) == 3);
  CHECK(table.takeIf([](const Route& r) { return r.targetId == 9; }).size() == 1);
  CHECK(calls(1) == 0);
  CHECK(bytes(1) == 0);
  CHECK(calls(2) == 1);
}

TEST_CASE("the timer is armed to the earliest deadline, lazily") {
  TimerFd t;
  RouteTable table(t.fd);
  CHECK(armedAt(t.fd) == 0);
  const std::int64_t now = monotonicNowNs();
  table.add(route(now + 100 * kSec));
  CHECK(armedFor(t.fd, now + 100 * kSec));
  const auto early = table.add(route(now + 50 * kSec));
  CHECK(armedFor(t.fd, now + 50 * kSec));
  table.add(route(now + 200 * kSec));
  CHECK(armedFor(t.fd, now + 50 * kSec));  // a later deadline leaves the timer alone

  // Removing a route never re-arms: the timer fires early and the next scan re-arms.
  table.take(early);
  CHECK(armedFor(t.fd, now + 50 * kSec));
  CHECK(table.takeExpired(monotonicNowNs()).empty());
  CHECK(armedFor(t.fd, now + 100 * kSec));
}

TEST_CASE("takeExpired returns exactly the due routes in deadline order and re-arms to the next") {
  TimerFd t;
  RouteTable table(t.fd);
  // A scan time far enough ahead that every deadline, due or not, lies in the future for the timer.
  const std::int64_t scan = monotonicNowNs() + 100 * kSec;
  table.add(route(scan - 1 * kMs, 1, 1));
  table.add(route(scan + 50 * kSec, 1, 2));
  table.add(route(scan - 3 * kMs, 1, 3));
  table.add(route(scan, 1, 4));  // due: deadline <= now
  table.add(route(scan + 1, 1, 5));
  table.add(route(scan - 2 * kMs, 1, 6));
  table.add(route(scan - 2 * kMs, 1, 7));  // same deadline: both due

  auto due = table.takeExpired(scan);
  CHECK(deadlinesOf(due) ==
        std::vector<std::int64_t>{scan - 3 * kMs, scan - 2 * kMs, scan - 2 * kMs, scan - 1 * kMs, scan});
  std::set<std::uint64_t> reqs;
  for (const auto& r : due) reqs.insert(r.callerReq);
  CHECK(reqs == std::set<std::uint64_t>{1, 3, 4, 6, 7});
  CHECK(table.size() == 2);
  CHECK(table.byCaller(1, 3) == 0);
  CHECK(table.byCaller(1, 5) != 0);
  CHECK(armedFor(t.fd, scan + 1));

  CHECK(deadlinesOf(table.takeExpired(scan + 1)) == std::vector<std::int64_t>{scan + 1});
  CHECK(armedFor(t.fd, scan + 50 * kSec));
  CHECK(table.takeExpired(scan + 50 * kSec).size() == 1);
  CHECK(armedAt(t.fd) == 0);  // nothing left: disarmed
}

TEST_CASE("a deadline already past fires the timer at once and takeExpired drains it") {
  TimerFd t;
  RouteTable table(t.fd);
  table.add(route(monotonicNowNs() - kMs, 4, 1));
  pollfd p{t.fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 5000) == 1);  // an event wait: the expiry is already due

  auto due = table.takeExpired(monotonicNowNs());
  REQUIRE(due.size() == 1);
  CHECK(due[0].callerId == 4);
  CHECK(armedAt(t.fd) == 0);
  std::uint64_t expirations = 0;
  CHECK(::read(t.fd, &expirations, sizeof expirations) == -1);  // drained by takeExpired
  CHECK(errno == EAGAIN);
}

TEST_CASE("takeIf removes every route the predicate selects and nothing else") {
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t far = monotonicNowNs() + 100 * kSec;
  table.add(route(far, 3, 1, 5));
  table.add(route(far, 5, 1, 3));
  table.add(route(far, 4, 1, 6));
  table.add(route(far + 1, 6, 2, 3));
  // A window (3) goes away: every route it made or is the target of ends.
  auto gone = table.takeIf([](const Route& r) { return r.callerId == 3 || r.targetId == 3; });
  std::set<std::uint32_t> callers;
  for (const auto& r : gone) callers.insert(r.callerId);
  CHECK(callers == std::set<std::uint32_t>{3, 5, 6});
  CHECK(table.size() == 1);
  CHECK(table.byCaller(3, 1) == 0);
  CHECK(table.byCaller(6, 2) == 0);
  CHECK(table.byCaller(4, 1) != 0);
  // The deadline index forgot them too: a scan past every deadline finds only the one left.
  auto due = table.takeExpired(far + 1);
  REQUIRE(due.size() == 1);
  CHECK(due[0].callerId == 4);
}

TEST_CASE("byCaller finds both routes of two windows whose (caller, request) pairs fold together") {
  // A key folded as (caller << 32) ^ request would give window 3's request (2 << 32) | 5 and
  // window 1's request 5 one slot (a hostile window could hide another's route from its Cancel);
  // the index is keyed by the exact pair.
  TimerFd t;
  RouteTable table(t.fd);
  const std::int64_t far = monotonicNowNs() + 100 * kSec;
  const auto first = table.add(route(far, 1, 5));
  const auto second = table.add(route(far, 3, (std::uint64_t{2} << 32) | 5));
  CHECK(table.byCaller(3, (std::uint64_t{2} << 32) | 5) == second);
  CHECK(table.byCaller(1, 5) == first);
  table.take(second);
  CHECK(table.byCaller(1, 5) == first);
}

TEST_CASE("a channel keeps the newest 4096 latency samples and counts errors by code") {
  RouterCounters counters;
  auto& ch = counters.at(42);
  constexpr int kSamples = 10000;
  for (int i = 0; i < kSamples; ++i) ch.sample(static_cast<double>(i));
  REQUIRE(ch.latencyMs.size() == 4096);
  std::set<double> kept(ch.latencyMs.begin(), ch.latencyMs.end());
  CHECK(kept.size() == 4096);
  CHECK(*kept.begin() == kSamples - 4096);
  CHECK(*kept.rbegin() == kSamples - 1);

  counters.error(42, ErrorCode::Timeout);
  counters.error(42, ErrorCode::Timeout);
  counters.error(7, ErrorCode::NoHandler);
  CHECK(counters.at(42).errors.at(ErrorCode::Timeout) == 2);
  CHECK(counters.at(7).errors.at(ErrorCode::NoHandler) == 1);
  CHECK(counters.channels().size() == 2);
}
