// Unit tests of the grow-only id set (lib/src/common/grow_only_ids.hpp): what insert() answers,
// that contains() is exact for the inline ids and a "no" past them, and a reader thread that
// never sees an id before its insert (run under ThreadSanitizer in CI).
#include "common/grow_only_ids.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>

using shmbus::detail::GrowOnlyIds;

TEST_CASE("insert says whether an id is new; contains is exact for the inline ids") {
  GrowOnlyIds s;
  CHECK_FALSE(s.contains(7));
  CHECK(s.insert(7));
  CHECK_FALSE(s.insert(7));
  CHECK(s.contains(7));
  CHECK_FALSE(s.contains(8));
  CHECK(s.insert(0));  // 0 is an id like any other
  CHECK(s.contains(0));
}

TEST_CASE("past the inline ids, contains says no and insert still knows every id") {
  GrowOnlyIds s;
  const std::uint64_t n = GrowOnlyIds::kInline + 20;
  for (std::uint64_t i = 1; i <= n; ++i) CHECK(s.insert(i * 1000));
  for (std::uint64_t i = 1; i <= n; ++i) {
    CHECK(s.contains(i * 1000) == (i <= GrowOnlyIds::kInline));
    CHECK_FALSE(s.insert(i * 1000));  // the caller's slow path: never announced twice
  }
}

TEST_CASE("a reader sees an id only after its insert, and every inline id once inserted") {
  GrowOnlyIds s;
  std::mutex mu;
  std::atomic<std::uint64_t> inserted{0};  // ids 1..inserted are in the set
  std::atomic<bool> wrong{false};
  std::thread reader([&] {
    for (;;) {
      const std::uint64_t before = inserted.load(std::memory_order_acquire);
      // An id inserted before `before` was published must be seen; one never inserted never is.
      if (before > 0 && before <= GrowOnlyIds::kInline && !s.contains(before)) wrong = true;
      if (s.contains(1'000'000)) wrong = true;
      if (before == GrowOnlyIds::kInline) return;
    }
  });
  for (std::uint64_t id = 1; id <= GrowOnlyIds::kInline; ++id) {
    {
      std::lock_guard lk(mu);
      CHECK(s.insert(id));
    }
    inserted.store(id, std::memory_order_release);
  }
  reader.join();
  CHECK_FALSE(wrong.load());
}
