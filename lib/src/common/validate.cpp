#include "common/validate.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace shmbus {

namespace {

struct Rule {
  const char* noun;       // "role", for "role 'x': ..."
  std::size_t maxChars;
  bool dot;               // '.' allowed (never first)
  bool colon;             // ':' allowed
  const char* text;       // the rule as the message states it
};

Rule ruleOf(NameKind kind) {
  switch (kind) {
    case NameKind::Bus:
      return {"bus", kMaxBusNameChars, false, false, "bus names are 1..64 characters of [A-Za-z0-9_-]"};
    case NameKind::Role:
      return {"role", kMaxRoleNameChars, true, false,
              "role names are 1..64 characters of [A-Za-z0-9_.-], not starting with '.'"};
    case NameKind::Channel:
      return {"channel", kMaxChannelNameChars, true, true,
              "channel names are 1..128 characters of [A-Za-z0-9_.:-], not starting with '.'"};
  }
  return {"name", 0, false, false, "unknown kind of name"};
}

bool allowedChar(char c, const Rule& r) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
         (c == '.' && r.dot) || (c == ':' && r.colon);
}

/// `name` for a message: printable ASCII as is, other bytes as \xNN, at most 40 of them.
std::string shown(std::string_view name) {
  constexpr std::size_t kShown = 40;
  std::string out;
  for (char c : name.substr(0, kShown)) {
    if (c >= ' ' && c < 127 && c != '\\') {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    }
  }
  if (name.size() > kShown) out += fmt::format("... ({} characters)", name.size());
  return out;
}

bool equalsMainIgnoringCase(std::string_view name) {
  constexpr std::string_view kMain = "main";
  return name.size() == kMain.size() && std::equal(name.begin(), name.end(), kMain.begin(), [](char a, char b) {
           return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
         });
}

}  // namespace

Result<void> validateName(NameKind kind, std::string_view name) {
  const Rule r = ruleOf(kind);
  const bool ok = !name.empty() && name.size() <= r.maxChars && name.front() != '.' &&
                  std::all_of(name.begin(), name.end(), [&](char c) { return allowedChar(c, r); });
  if (!ok) return makeError(ErrorCode::InvalidArgument, fmt::format("{} '{}': {}", r.noun, shown(name), r.text));
  if (kind == NameKind::Role && name != "main" && equalsMainIgnoringCase(name)) {
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("role '{}': 'main' in any letter case is reserved for the main process", name));
  }
  return {};
}

namespace detail {

namespace {
Result<std::chrono::milliseconds> checkTimeout(std::chrono::milliseconds t, std::string_view what,
                                               const char* zeroMeans) {
  if (t.count() < 0) {
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("{}{}timeout {} ms is negative (0 means {}; at most {} ms, longer ones are clamped)",
                                 what, what.empty() ? "" : ": ", t.count(), zeroMeans, kMaxTimeout.count()));
  }
  return std::min(t, kMaxTimeout);
}
}  // namespace

Result<std::chrono::milliseconds> checkCallTimeout(std::chrono::milliseconds t, std::string_view what) {
  return checkTimeout(t, what, "the channel's default");
}

Result<std::chrono::milliseconds> checkWaitTimeout(std::chrono::milliseconds t, std::string_view what) {
  return checkTimeout(t, what, "do not wait");
}

std::int64_t deadlineAfter(std::int64_t nowNs, std::chrono::milliseconds timeout) noexcept {
  const auto ms = std::clamp<std::int64_t>(timeout.count(), 0, kMaxTimeout.count());
  return nowNs + ms * 1'000'000;
}

std::int64_t clampPeerDeadline(std::int64_t deadlineNs, std::int64_t nowNs) noexcept {
  return std::clamp(deadlineNs, nowNs, deadlineAfter(nowNs, kMaxTimeout));
}

Result<void> validateTarget(const Target& target) {
  if (target.role.empty()) return {};
  return validateName(NameKind::Role, target.role);
}

Result<void> validateRoles(const std::vector<std::string>& roles) {
  for (const auto& r : roles) {
    if (auto v = validateName(NameKind::Role, r); !v) return v;
  }
  return {};
}

Result<void> validateToken(std::string_view token) {
  const bool hex = std::all_of(token.begin(), token.end(), [](char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
  });
  if (hex && !token.empty() && token.size() <= kMaxTokenChars) return {};
  return makeError(ErrorCode::InvalidArgument,
                   fmt::format("the invitation token ({} characters) must be 1..{} hex digits", token.size(),
                               kMaxTokenChars));
}

}  // namespace detail

}  // namespace shmbus
