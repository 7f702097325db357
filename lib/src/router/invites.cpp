#include "router/invites.hpp"

#include <sys/random.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace shmbus::detail {

Result<std::string> randomToken() {
  unsigned char bytes[16];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    // getrandom of up to 256 bytes from the urandom pool does not return short once the pool is
    // initialised; a signal before it is can interrupt it (EINTR), so loop.
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return makeError(ErrorCode::SystemError, std::string("getrandom: ") + std::strerror(errno));
    }
    got += static_cast<std::size_t>(n);
  }
  std::string hex;
  hex.reserve(2 * sizeof bytes);
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

void InviteStore::forget(std::int64_t nowNs) {
  std::erase_if(entries_, [nowNs](const auto& e) { return e.second.used || nowNs >= e.second.expiresNs; });
}

Result<std::string> InviteStore::issue(std::string role, std::int64_t nowNs, std::int64_t expiresNs) {
  if (entries_.size() >= kMaxOutstanding) forget(nowNs);
  if (entries_.size() >= kMaxOutstanding) {
    return makeError(ErrorCode::Full, fmt::format("{} invitations are outstanding (the most at once): none for "
                                                  "role '{}' until one is used or expires",
                                                  kMaxOutstanding, role));
  }
  auto token = randomToken();
  if (!token) return token.error();
  // 128 random bits do not collide in practice; a repeat would replace nothing (emplace keeps
  // the first), so it is refused rather than handed out twice.
  if (!entries_.emplace(*token, Entry{std::move(role), expiresNs, false}).second) {
    return makeError(ErrorCode::SystemError, "getrandom returned a token already issued");
  }
  return token;
}

Result<void> InviteStore::redeem(std::string_view token, std::string_view role, std::int64_t nowNs,
                                 std::string_view bus) {
  auto denied = [&](std::string_view why) {
    return makeError(ErrorCode::Denied,
                     fmt::format("role '{}' on bus '{}': the invitation token given {}", role, bus, why));
  };
  auto it = entries_.find(std::string(token));
  if (it == entries_.end()) return denied("is unknown (never issued by this supervisor, or long expired)");
  Entry& e = it->second;
  if (e.used) return denied("was already used (an invitation is good for one registration)");
  if (e.role != role) return denied("was issued for another role");
  if (nowNs >= e.expiresNs) {
    return denied(fmt::format("expired {} ms ago", (nowNs - e.expiresNs) / 1'000'000));
  }
  e.used = true;
  return {};
}

}  // namespace shmbus::detail
