// Input checks shared by every entry point (docs/architecture.md §3): names (the public
// shmbus/validate.hpp) and timeouts (clamped here, so no deadline arithmetic can overflow).
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>
#include <string>

#include "shmbus/channel.hpp"
#include "shmbus/validate.hpp"

namespace shmbus::detail {

/// A call's timeout as given (CallOptions::timeout): 0 stays 0 ("not given": the channel's or
/// the bus's default), a positive one is clamped to kMaxTimeout. Errors: InvalidArgument for a
/// negative timeout, naming `what` (e.g. "invoke 'x' to role 'y'"; empty: the caller adds it,
/// so a call formats its name only on this error path).
Result<std::chrono::milliseconds> checkCallTimeout(std::chrono::milliseconds timeout, std::string_view what);

/// A wait's timeout (poll, waitForRole, connectTimeout): 0 means "do not wait", a positive one is
/// clamped to kMaxTimeout. Errors: InvalidArgument for a negative timeout, naming `what`.
Result<std::chrono::milliseconds> checkWaitTimeout(std::chrono::milliseconds timeout, std::string_view what);

/// `nowNs` + `timeout` in CLOCK_MONOTONIC ns, `timeout` clamped to [0, kMaxTimeout] first: never
/// overflows.
std::int64_t deadlineAfter(std::int64_t nowNs, std::chrono::milliseconds timeout) noexcept;

/// A deadline read from a peer's frame header (untrusted: any value), in CLOCK_MONOTONIC ns, cut
/// to [nowNs, nowNs + kMaxTimeout]: an honest peer writes its own now plus at most kMaxTimeout, a
/// past one expires at once, and arithmetic on the result cannot overflow.
std::int64_t clampPeerDeadline(std::int64_t deadlineNs, std::int64_t nowNs) noexcept;

/// The role of `target`, when it names one, checked as NameKind::Role. Errors: InvalidArgument.
Result<void> validateTarget(const Target& target);

/// Longest invitation token text a window may present (Supervisor::invite's are 32 digits).
inline constexpr std::size_t kMaxTokenChars = 128;

/// An invitation token as a window presents it (WindowOptions::token, $SHMBUS_TOKEN): 1..
/// kMaxTokenChars hex digits. Errors: InvalidArgument, whose message gives the token's length,
/// never its text (a token is a secret, even a malformed one).
Result<void> validateToken(std::string_view token);

/// Every role of `roles` checked as NameKind::Role. Errors: InvalidArgument for the first bad one.
Result<void> validateRoles(const std::vector<std::string>& roles);

}  // namespace shmbus::detail
