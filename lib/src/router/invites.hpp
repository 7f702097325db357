// One-time invitation tokens (Supervisor::invite, docs/architecture.md §5): the supervisor's way
// to give a role to a window that connects by socket path, for roles that are not open for
// registration (SupervisorOptions::invitedRoles, inviteOnly).
//
// A token is 128 bits from getrandom(2), as 32 lowercase hex digits. It is good for one
// registration with the role it was issued for, until its expiry. A used or expired token is
// remembered, so that a late or second use is told what went wrong, until the store holds
// kMaxOutstanding entries: then every entry that is no longer outstanding is dropped at once (such a
// token is then unknown). So the store never holds more than kMaxOutstanding entries, and the
// scan that drops them runs once per kMaxOutstanding - outstanding issues. No message here holds a
// token's text.
//
// Thread contract: none of its own; the router guards its store with Router::mu_.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "shmbus/error.hpp"

namespace shmbus::detail {

/// 32 lowercase hex digits of 128 bits from getrandom(2). Errors: SystemError.
Result<std::string> randomToken();

/// The invitations a supervisor has issued and not yet forgotten.
class InviteStore {
 public:
  /// Most invitations outstanding (issued, not yet used nor expired) at once, and most entries held.
  static constexpr std::size_t kMaxOutstanding = 65536;

  /// Issues a fresh token for `role`, good until `expiresNs` (CLOCK_MONOTONIC ns; `nowNs` is the
  /// present, to tell expired entries when the store is full). Errors: Full (kMaxOutstanding
  /// outstanding), SystemError (getrandom).
  Result<std::string> issue(std::string role, std::int64_t nowNs, std::int64_t expiresNs);

  /// Redeems `token` for `role` at `nowNs`: marks it used when it is known, unused, issued for
  /// `role` and not expired. Errors: Denied, whose message (naming `bus` and `role`, never the
  /// token) says which of those it was not. A token for another role stays unused.
  Result<void> redeem(std::string_view token, std::string_view role, std::int64_t nowNs, std::string_view bus);

  /// Entries held (outstanding, plus used or expired ones not yet forgotten).
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct Entry {
    std::string role;
    std::int64_t expiresNs = 0;
    bool used = false;
  };
  /// Drops every entry used or expired by `nowNs`.
  void forget(std::int64_t nowNs);

  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace shmbus::detail
