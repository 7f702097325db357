// Unit tests of the invitation store (lib/src/router/invites): one-time tokens, per role, until
// their expiry; refusals say why without the token's text.
#include "router/invites.hpp"

#include <doctest/doctest.h>

#include <set>
#include <string>

#include "common/validate.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
constexpr std::int64_t kSecond = 1'000'000'000;

/// `r` failed with Denied, its message holds `part` and not `token`.
void checkDenied(const Result<void>& r, const std::string& part, const std::string& token) {
  REQUIRE(r.code() == ErrorCode::Denied);
  CHECK_MESSAGE(r.error().message.find(part) != std::string::npos, r.error().message);
  CHECK(r.error().message.find(token) == std::string::npos);
}
}  // namespace

TEST_CASE("a token is 32 hex digits of fresh randomness, and well formed") {
  std::set<std::string> seen;
  for (int i = 0; i < 64; ++i) {
    auto t = randomToken();
    REQUIRE(t.ok());
    CHECK(t->size() == 32);
    CHECK(validateToken(*t).ok());
    CHECK(seen.insert(*t).second);
  }
}

TEST_CASE("validateToken takes 1..128 hex digits and never echoes the text") {
  CHECK(validateToken("0123456789abcdefABCDEF").ok());
  CHECK(validateToken(std::string(128, 'f')).ok());
  for (const std::string& bad : {std::string(), std::string(129, 'a'), std::string("secretzz"), std::string("ab cd")}) {
    auto r = validateToken(bad);
    REQUIRE(r.code() == ErrorCode::InvalidArgument);
    CHECK(r.error().message.find("hex digits") != std::string::npos);
    if (!bad.empty()) CHECK(r.error().message.find(bad) == std::string::npos);
  }
}

TEST_CASE("a token admits its role once, before its expiry") {
  InviteStore store;
  auto t = store.issue("editor", 0, 10 * kSecond);
  REQUIRE(t.ok());
  CHECK(store.redeem(*t, "editor", kSecond, "b").ok());
  checkDenied(store.redeem(*t, "editor", 2 * kSecond, "b"), "already used", *t);
}

TEST_CASE("a token for another role is refused and stays good for its own") {
  InviteStore store;
  auto t = store.issue("editor", 0, 10 * kSecond);
  REQUIRE(t.ok());
  checkDenied(store.redeem(*t, "viewer", kSecond, "b"), "issued for another role", *t);
  CHECK(store.redeem(*t, "editor", kSecond, "b").ok());
}

TEST_CASE("an expired token is refused as expired") {
  InviteStore store;
  auto t = store.issue("editor", 0, kSecond);
  REQUIRE(t.ok());
  checkDenied(store.redeem(*t, "editor", kSecond, "b"), "expired 0 ms ago", *t);
  checkDenied(store.redeem(*t, "editor", 3 * kSecond, "b"), "expired 2000 ms ago", *t);
}

TEST_CASE("an unknown token is refused, naming the role and the bus") {
  InviteStore store;
  auto r = store.redeem("00ff", "editor", 0, "mybus");
  checkDenied(r, "unknown", "00ff");
  CHECK(r.error().message.find("role 'editor' on bus 'mybus'") != std::string::npos);
}

TEST_CASE("at most kMaxOutstanding invitations are outstanding; used and expired ones do not count") {
  InviteStore store;
  std::string first;
  for (std::size_t i = 0; i < InviteStore::kMaxOutstanding; ++i) {
    auto t = store.issue("r", 0, kSecond);
    REQUIRE(t.ok());
    if (i == 0) first = *t;
  }
  CHECK(store.issue("r", 0, kSecond).code() == ErrorCode::Full);
  REQUIRE(store.redeem(first, "r", 0, "b").ok());
  CHECK(store.issue("r", 0, kSecond).ok());  // the used one was dropped to make room
  CHECK(store.size() == InviteStore::kMaxOutstanding);
  checkDenied(store.redeem(first, "r", 0, "b"), "unknown", first);
  CHECK(store.issue("r", 0, kSecond).code() == ErrorCode::Full);
  CHECK(store.issue("r", kSecond, 2 * kSecond).ok());  // the others expired at 1 s
  CHECK(store.size() == 1);
}
