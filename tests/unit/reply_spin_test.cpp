// Unit tests of the learned reply spin (lib/src/wait/reply_spin).
#include "wait/reply_spin.hpp"

#include <doctest/doctest.h>

#include "shmbus/channel.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
constexpr std::int64_t kCap = 100'000;  // ns
const std::uint64_t kFast = nameId("fast");
const std::uint64_t kSlow = nameId("slow");
}  // namespace

TEST_CASE("an unknown channel earns no spin; fast replies earn twice their average, capped") {
  ReplySpin rs;
  rs.configure(kCap, 2);
  CHECK(rs.capNs() == kCap);
  CHECK(rs.budgetNs(kFast) == 0);
  for (int i = 0; i < 20; ++i) rs.observe(kFast, 10'000);
  CHECK(rs.budgetNs(kFast) == 20'000);
  for (int i = 0; i < 100; ++i) rs.observe(kFast, 80'000);  // within the cap, but 2 × 80 µs is not
  CHECK(rs.budgetNs(kFast) == kCap);
  CHECK(rs.budgetNs(kSlow) == 0);  // learning one channel teaches nothing about another
}

TEST_CASE("slow replies earn no spin, and a channel that turns slow loses its spin within a few replies") {
  ReplySpin rs;
  rs.configure(kCap, 2);
  for (int i = 0; i < 20; ++i) rs.observe(kSlow, 60'000'000);
  CHECK(rs.budgetNs(kSlow) == 0);
  for (int i = 0; i < 20; ++i) rs.observe(kFast, 5'000);
  REQUIRE(rs.budgetNs(kFast) > 0);
  int misses = 0;
  while (rs.budgetNs(kFast) > 0) {
    rs.observe(kFast, 60'000'000);
    ++misses;
    REQUIRE(misses < 20);
  }
  CHECK(misses >= 2);  // one slow reply does not undo what was learned
  CHECK(misses <= 8);
  // And it learns back when the replies are fast again.
  for (int i = 0; i < 40; ++i) rs.observe(kFast, 5'000);
  CHECK(rs.budgetNs(kFast) > 0);
  CHECK(rs.budgetNs(kFast) <= kCap);
}

TEST_CASE("one very slow reply is clamped and does not blow the average up") {
  ReplySpin rs;
  rs.configure(kCap, 2);
  for (int i = 0; i < 40; ++i) rs.observe(kFast, 4'000);
  rs.observe(kFast, 10'000'000'000);  // 10 s: counted as 4 × the cap
  CHECK(rs.budgetNs(kFast) == kCap);   // still spins (one miss), for the cap at most
  // Ten fast replies bring the average back under half the cap (unclamped, 10 s / 8 would take
  // about a hundred).
  for (int i = 0; i < 10; ++i) rs.observe(kFast, 4'000);
  CHECK(rs.budgetNs(kFast) > 8'000);
  CHECK(rs.budgetNs(kFast) < kCap / 2);
}

TEST_CASE("no cap or a single CPU turns learning off; configure forgets") {
  ReplySpin off;
  off.configure(0, 8);
  off.observe(kFast, 1'000);
  CHECK(off.capNs() == 0);
  CHECK(off.budgetNs(kFast) == 0);
  ReplySpin one;
  one.configure(kCap, 1);
  one.observe(kFast, 1'000);
  CHECK(one.capNs() == 0);
  CHECK(one.budgetNs(kFast) == 0);
  ReplySpin rs;
  rs.configure(kCap, 2);
  for (int i = 0; i < 10; ++i) rs.observe(kFast, 1'000);
  REQUIRE(rs.budgetNs(kFast) > 0);
  rs.configure(kCap, 2);
  CHECK(rs.budgetNs(kFast) == 0);
}

TEST_CASE("two channels sharing a slot take it over in turn") {
  // Find a channel that maps to the slot of kFast (slots are the top 6 bits of the id).
  std::uint64_t other = 0;
  for (int i = 0; other == 0; ++i) {
    const std::uint64_t id = nameId("ch" + std::to_string(i));
    if (id >> 58 == kFast >> 58 && id != kFast) other = id;
  }
  ReplySpin rs;
  rs.configure(kCap, 2);
  for (int i = 0; i < 10; ++i) rs.observe(kFast, 1'000);
  CHECK(rs.budgetNs(kFast) == 2'000);
  rs.observe(other, 3'000);
  CHECK(rs.budgetNs(other) == 6'000);
  CHECK(rs.budgetNs(kFast) == 0);  // forgotten, not mixed with the other's figures
}

TEST_CASE("spinFor probes an unknown channel and, once in kProbeEvery calls, one that earned no spin") {
  ReplySpin rs;
  rs.configure(kCap, 2);
  CHECK(rs.spinFor(kSlow) == kCap);  // not known yet: a probe
  CHECK(rs.spinFor(kSlow) == kCap);  // still unknown until its first reply
  for (int i = 0; i < 20; ++i) rs.observe(kSlow, 60'000'000);
  int probes = 0;
  for (std::uint32_t i = 0; i < 4 * ReplySpin::kProbeEvery; ++i) {
    const auto b = rs.spinFor(kSlow);
    CHECK((b == 0 || b == kCap));
    probes += b == kCap;
  }
  CHECK(probes == 4);
  // A probe that finds fast replies turns into a learned spin.
  for (int i = 0; i < 30; ++i) rs.observe(kSlow, 5'000);
  CHECK(rs.spinFor(kSlow) == rs.budgetNs(kSlow));
  CHECK(rs.budgetNs(kSlow) > 0);
  CHECK(rs.budgetNs(kSlow) < kCap);
  ReplySpin off;
  off.configure(0, 8);
  CHECK(off.spinFor(kFast) == 0);
}
