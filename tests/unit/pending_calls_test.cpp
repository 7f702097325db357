// Unit tests of a window's table of calls in flight (lib/src/endpoint/pending_calls).
#include "endpoint/pending_calls.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <thread>
#include <vector>

using namespace shmbus;
using namespace shmbus::detail;

namespace {

std::shared_ptr<CallState> call(std::int64_t deadlineNs) {
  auto s = std::make_shared<CallState>();
  s->deadlineNs = deadlineNs;
  return s;
}

std::set<std::uint64_t> idsOf(const std::vector<std::shared_ptr<CallState>>& calls) {
  std::set<std::uint64_t> ids;
  for (const auto& s : calls) ids.insert(s->requestId);
  return ids;
}

}  // namespace

TEST_CASE("add gives increasing request ids and writes them into the call") {
  PendingCalls pending;
  auto a = call(kNoDeadline), b = call(kNoDeadline), c = call(kNoDeadline);
  const auto ia = pending.add(a), ib = pending.add(b), ic = pending.add(c);
  CHECK(ia != 0);
  CHECK(ia < ib);
  CHECK(ib < ic);
  CHECK(a->requestId == ia);
  CHECK(b->requestId == ib);
  CHECK(c->requestId == ic);
  CHECK(pending.take(ib) == b);
  const auto id = pending.add(call(kNoDeadline));  // takes b's slot, never b's id
  CHECK(id > ic);
  CHECK(pending.take(ib) == nullptr);
  CHECK(pending.take(id) != nullptr);
}

TEST_CASE("take removes a call once") {
  PendingCalls pending;
  auto a = call(100);
  const auto id = pending.add(a);
  CHECK(pending.take(id) == a);
  CHECK(pending.take(id) == nullptr);
  CHECK(pending.take(99) == nullptr);
  CHECK(pending.takeExpired(1000).empty());  // a taken call never expires
}

TEST_CASE("takeExpired returns only the due calls and moves nextExpiry to the earliest left") {
  PendingCalls pending;
  CHECK(pending.nextExpiry() == kNoDeadline);
  auto at300 = call(300), at100 = call(100), at200 = call(200), at400 = call(400), never = call(kNoDeadline);
  for (const auto& s : {at300, at100, at200, at400, never}) pending.add(s);
  CHECK(pending.nextExpiry() == 100);

  CHECK(pending.takeExpired(99).empty());
  CHECK(pending.nextExpiry() == 100);

  CHECK(idsOf(pending.takeExpired(200)) == std::set<std::uint64_t>{at100->requestId, at200->requestId});
  CHECK(pending.nextExpiry() == 300);

  // A call that ends early leaves a stale hint; the next scan finds nothing due and corrects it.
  pending.take(at300->requestId);
  CHECK(pending.takeExpired(300).empty());
  CHECK(pending.nextExpiry() == 400);

  CHECK(idsOf(pending.takeExpired(1000)) == std::set<std::uint64_t>{at400->requestId});
  CHECK(pending.nextExpiry() == kNoDeadline);
  CHECK(pending.take(never->requestId) == never);
}

TEST_CASE("a call added with an earlier deadline lowers nextExpiry at once") {
  PendingCalls pending;
  pending.add(call(500));
  CHECK(pending.nextExpiry() == 500);
  pending.add(call(900));
  CHECK(pending.nextExpiry() == 500);
  pending.add(call(50));
  CHECK(pending.nextExpiry() == 50);
}

TEST_CASE("takeAll empties the table") {
  PendingCalls pending;
  auto a = call(10), b = call(20), c = call(kNoDeadline);
  for (const auto& s : {a, b, c}) pending.add(s);
  auto all = pending.takeAll();
  REQUIRE(all.size() == 3);
  CHECK(idsOf(all) == std::set<std::uint64_t>{a->requestId, b->requestId, c->requestId});
  CHECK(pending.take(a->requestId) == nullptr);
  CHECK(pending.takeExpired(kNoDeadline).empty());
  CHECK(pending.takeAll().empty());
}

TEST_CASE("calls added from several threads get distinct ids") {
  PendingCalls pending;
  constexpr int kPerThread = 2000;
  std::vector<std::uint64_t> ids[2];
  std::vector<std::thread> threads;
  for (auto& mine : ids) {
    threads.emplace_back([&pending, &mine] {
      for (int i = 0; i < kPerThread; ++i) mine.push_back(pending.add(call(kNoDeadline)));
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::uint64_t> all(ids[0].begin(), ids[0].end());
  all.insert(ids[1].begin(), ids[1].end());
  CHECK(all.size() == 2 * kPerThread);
  CHECK(all.count(0) == 0);
  for (const auto& mine : ids) CHECK(std::is_sorted(mine.begin(), mine.end()));
  CHECK(pending.takeAll().size() == 2 * kPerThread);
}
