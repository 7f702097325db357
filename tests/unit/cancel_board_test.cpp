// Unit tests of the cancel boards (lib/src/wire/cancel_board.hpp): the router (a port's caller)
// posts cancelled request ids, a window's (the port peer's) threads look them up.
#include "wire/cancel_board.hpp"

#include <doctest/doctest.h>
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

using namespace shmbus::detail;

namespace {

/// A board as a freshly created segment holds it: all zero.
std::unique_ptr<CancelBoard> freshBoard() { return std::make_unique<CancelBoard>(); }

}  // namespace

TEST_CASE("a fresh board contains nothing, not even the id 0 its empty slots hold") {
  auto b = freshBoard();
  CHECK(b->seq.load() == 0);
  CHECK_FALSE(b->contains(0));
  CHECK_FALSE(b->contains(1));
}

TEST_CASE("posted ids are found and others are not") {
  auto b = freshBoard();
  b->post(7);
  b->post(0xffff'ffff'ffff'fff0ull);
  CHECK(b->contains(7));
  CHECK(b->contains(0xffff'ffff'ffff'fff0ull));
  CHECK_FALSE(b->contains(8));
  CHECK_FALSE(b->contains(0));  // slots not yet written are not scanned
  CHECK(b->seq.load() == 2);
}

TEST_CASE("the board remembers the last 63 posts: the 64th forgets the oldest") {
  static_assert(CancelBoard::kSlots == 63);
  auto b = freshBoard();
  for (std::uint64_t id = 1; id <= 63; ++id) b->post(id);
  for (std::uint64_t id = 1; id <= 63; ++id) REQUIRE(b->contains(id));

  b->post(64);
  CHECK_FALSE(b->contains(1));
  for (std::uint64_t id = 2; id <= 64; ++id) REQUIRE(b->contains(id));

  for (std::uint64_t id = 65; id <= 200; ++id) b->post(id);
  for (std::uint64_t id = 1; id <= 200; ++id) {
    INFO("id ", id);
    CHECK(b->contains(id) == (id > 200 - 63));
  }
}

TEST_CASE("a reader racing the poster finds every post it sees counted and never an unposted id") {
  // The poster posts id(1), id(2), ...; the reader reads the board's own count s (the acquire of
  // SYNC POINT "board"), looks up id(s) and acknowledges s. The poster stays at most kLead posts
  // ahead of the acknowledgement, so the slot of post s cannot be overwritten (that takes 63 more
  // posts) before the reader has looked: every lookup must succeed, which fails if a post could
  // be counted before its id is visible. An id mixing the halves of two posted ids (a torn slot
  // read) or lying ahead of the poster must never be found.
  constexpr std::uint64_t kPosts = 50'000;
  constexpr std::uint64_t kLead = 32;
  static_assert(kLead < CancelBoard::kSlots);
  auto id = [](std::uint64_t k) { return (k << 32) | k; };
  auto b = freshBoard();
  std::atomic<std::uint64_t> acked{0};
  std::atomic<std::uint64_t> missed{0}, phantom{0}, lookups{0};

  std::thread reader([&] {
    for (;;) {
      const std::uint64_t s = b->seq.load(std::memory_order_acquire);
      if (s != 0) {
        lookups.fetch_add(1, std::memory_order_relaxed);
        if (!b->contains(id(s))) missed.fetch_add(1, std::memory_order_relaxed);
        if (b->contains((s << 32) | (s - 1)) || b->contains(((s - 1) << 32) | s) || b->contains(id(s + kLead + 1)) ||
            b->contains(0)) {
          phantom.fetch_add(1, std::memory_order_relaxed);
        }
      }
      // release/acquire: only paces the poster; the reader's view of the board comes from seq.
      acked.store(s, std::memory_order_release);
      if (s == kPosts) return;
    }
  });
  for (std::uint64_t k = 1; k <= kPosts; ++k) {
    while (k > acked.load(std::memory_order_acquire) + kLead) sched_yield();
    b->post(id(k));
  }
  reader.join();

  CHECK(lookups.load() > 0);
  CHECK(missed.load() == 0);
  CHECK(phantom.load() == 0);
  CHECK(b->seq.load() == kPosts);
  for (std::uint64_t k = kPosts - 62; k <= kPosts; ++k) REQUIRE(b->contains(id(k)));
  CHECK_FALSE(b->contains(id(kPosts - 63)));
}

TEST_CASE("a port's two boards share the window board's bytes and keep the two directions apart") {
  static_assert(sizeof(PortCancelBoards) == sizeof(CancelBoard));
  static_assert(PortCancelBoard::kSlots == 31);
  auto boards = std::make_unique<PortCancelBoards>();
  // Both ends' first calls carry the same request id: a cancel of one is not a cancel of the other.
  boards->byOpener.post(1);
  CHECK(boards->byOpener.contains(1));
  CHECK_FALSE(boards->byAcceptor.contains(1));
  boards->byAcceptor.post(2);
  CHECK(boards->byAcceptor.contains(2));
  CHECK_FALSE(boards->byOpener.contains(2));
  // 31 slots each: the 32nd post of one direction forgets its oldest, and only its own.
  for (std::uint64_t id = 100; id < 131; ++id) boards->byOpener.post(id);
  CHECK_FALSE(boards->byOpener.contains(1));
  CHECK(boards->byOpener.contains(100));
  CHECK(boards->byAcceptor.contains(2));
}

TEST_CASE("a board a hostile peer scribbled is read and posted on within its bounds") {
  auto b = freshBoard();
  // Any count, any ids: lookups scan at most kSlots slots, a post lands in slot count % kSlots.
  b->seq.store(std::uint64_t{1} << 62, std::memory_order_relaxed);
  for (auto& slot : b->ids) slot.store(0xdead, std::memory_order_relaxed);
  CHECK(b->contains(0xdead));
  CHECK_FALSE(b->contains(7));
  b->post(7);
  CHECK(b->contains(7));
  // A count about to wrap: the post wraps it to 0, and the scan then covers no slot (a late
  // hint, nothing worse); the next post counts again.
  b->seq.store(~std::uint64_t{0}, std::memory_order_relaxed);
  b->post(8);
  CHECK(b->seq.load() == 0);
  CHECK_FALSE(b->contains(8));
  b->post(9);
  CHECK(b->contains(9));
}
