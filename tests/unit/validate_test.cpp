// common/validate: the one check of bus, role and channel names, and of timeouts.
#include <doctest/doctest.h>

#include <climits>
#include <cstdint>
#include <string>

#include "common/validate.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace std::chrono_literals;

namespace {
/// The message of validating `name` as `kind` ("" when it passes).
std::string refusal(NameKind kind, std::string_view name) {
  auto r = validateName(kind, name);
  if (r.ok()) return "";
  CHECK(r.code() == ErrorCode::InvalidArgument);
  return r.error().message;
}
bool passes(NameKind kind, std::string_view name) { return validateName(kind, name).ok(); }
}  // namespace

TEST_CASE("bus names are 1 to 64 characters of letters, digits, '_' and '-'") {
  CHECK(passes(NameKind::Bus, "demo"));
  CHECK(passes(NameKind::Bus, "a-b_C9"));
  CHECK(passes(NameKind::Bus, std::string(64, 'x')));
  for (std::string_view bad : {"", "a.b", "a/b", "a b", "..", "caf\xc3\xa9"}) {
    CHECK_MESSAGE(!passes(NameKind::Bus, bad), bad);
  }
  CHECK_FALSE(passes(NameKind::Bus, std::string(65, 'x')));
  CHECK(refusal(NameKind::Bus, "a b") == "bus 'a b': bus names are 1..64 characters of [A-Za-z0-9_-]");
}

TEST_CASE("role names are 1 to 64 of [A-Za-z0-9_.-], not starting with '.', and never 'main' in another case") {
  for (std::string_view good : {"dashboard", "a", "role-1.x_y", "v2.editor", "main", "mains", "a..b"}) {
    CHECK_MESSAGE(passes(NameKind::Role, good), good);
  }
  CHECK(passes(NameKind::Role, std::string(64, 'r')));
  for (std::string_view bad : {"", "a/b", "../../etc", ".", "..", ".hidden", "two words", "tab\there", "new\nline",
                               "del\x7f", "caf\xc3\xa9", "x:y", "MAIN", "Main", "mAiN"}) {
    CHECK_MESSAGE(!passes(NameKind::Role, bad), bad);
  }
  CHECK_FALSE(passes(NameKind::Role, std::string(65, 'r')));
  CHECK(refusal(NameKind::Role, "a/b") ==
        "role 'a/b': role names are 1..64 characters of [A-Za-z0-9_.-], not starting with '.'");
  CHECK(refusal(NameKind::Role, "MAIN") == "role 'MAIN': 'main' in any letter case is reserved for the main process");
}

TEST_CASE("a NUL inside a name is refused and shown, never cut off") {
  const std::string nul("nul\0x", 5);
  CHECK(refusal(NameKind::Role, nul).find("'nul\\x00x'") != std::string::npos);
  CHECK_FALSE(passes(NameKind::Channel, nul));
  CHECK_FALSE(passes(NameKind::Bus, nul));
}

TEST_CASE("an overlong name is refused with a shortened copy and its length") {
  const std::string huge(100'000, 'r');
  const std::string m = refusal(NameKind::Role, huge);
  CHECK(m.find("(100000 characters)") != std::string::npos);
  CHECK(m.size() < 200);
}

TEST_CASE("channel names are 1 to 128 of [A-Za-z0-9_.:-], not starting with '.'") {
  for (std::string_view good : {"set-title", "Dashboard.getDashboardData", "ns:Studio.describe", "window-opened"}) {
    CHECK_MESSAGE(passes(NameKind::Channel, good), good);
  }
  CHECK(passes(NameKind::Channel, std::string(128, 'c')));
  CHECK_FALSE(passes(NameKind::Channel, std::string(129, 'c')));
  for (std::string_view bad : {"", "a/b", "..", ".x", "a b", "a\\b"}) CHECK_MESSAGE(!passes(NameKind::Channel, bad), bad);
  CHECK(refusal(NameKind::Channel, "a/b") ==
        "channel 'a/b': channel names are 1..128 characters of [A-Za-z0-9_.:-], not starting with '.'");
}

TEST_CASE("a target's role is checked, the main process and window ids need no name") {
  CHECK(validateTarget(Target::main()).ok());
  CHECK(validateTarget(Target(7u)).ok());
  CHECK(validateTarget(Target("editor")).ok());
  CHECK(validateTarget(Target("a/b")).code() == ErrorCode::InvalidArgument);
  CHECK(validateRoles({"a", "b"}).ok());
  CHECK(validateRoles({"a", "b/c"}).error().message.find("'b/c'") != std::string::npos);
}

TEST_CASE("timeouts: negative is an error, zero keeps its meaning, huge ones are clamped to kMaxTimeout") {
  auto neg = checkCallTimeout(-1ms, "invoke 'x' to role 'y'");
  REQUIRE_FALSE(neg.ok());
  CHECK(neg.code() == ErrorCode::InvalidArgument);
  CHECK(neg.error().message.find("invoke 'x' to role 'y': timeout -1 ms is negative") == 0);
  CHECK(checkWaitTimeout(-5ms, "poll").code() == ErrorCode::InvalidArgument);
  CHECK(checkCallTimeout(0ms, "x").value() == 0ms);
  CHECK(checkCallTimeout(250ms, "x").value() == 250ms);
  CHECK(checkCallTimeout(std::chrono::milliseconds(LONG_MAX / 2), "x").value() == kMaxTimeout);
  CHECK(checkWaitTimeout(std::chrono::milliseconds::max(), "x").value() == kMaxTimeout);
  CHECK(kMaxTimeout.count() <= UINT32_MAX);  // fits the frame's 32-bit millisecond field
}

TEST_CASE("deadlineAfter never overflows and never goes backwards") {
  const std::int64_t now = 1'000'000'000'000;
  CHECK(deadlineAfter(now, 5ms) == now + 5'000'000);
  CHECK(deadlineAfter(now, std::chrono::milliseconds::max()) == now + kMaxTimeout.count() * 1'000'000);
  CHECK(deadlineAfter(now, std::chrono::milliseconds(LONG_MAX / 2)) > now);
  CHECK(deadlineAfter(now, -10ms) == now);
}

TEST_CASE("a peer's deadline is cut to [now, now + kMaxTimeout], whatever the frame says") {
  const std::int64_t now = 1'000'000'000'000;
  CHECK(clampPeerDeadline(now + 7'000'000, now) == now + 7'000'000);
  CHECK(clampPeerDeadline(INT64_MAX, now) == now + kMaxTimeout.count() * 1'000'000);
  CHECK(clampPeerDeadline(INT64_MIN, now) == now);
  CHECK(clampPeerDeadline(now - 1, now) == now);  // already past: expires at once
}
