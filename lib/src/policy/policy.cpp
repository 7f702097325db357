// The policy model: decisions, validation, rendering (docs/architecture.md §15). The TOML form
// is in policy_toml.cpp.
#include "shmbus/policy.hpp"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "shmbus/validate.hpp"

namespace shmbus {

namespace {
constexpr std::string_view kMainRole = "main";
constexpr std::size_t kMaxPatternChars = 256;
constexpr PolicyAction kActions[] = {PolicyAction::Send, PolicyAction::Invoke, PolicyAction::Handle,
                                     PolicyAction::Receive};

bool matches(const std::string& pattern, const std::string& name) {
  return ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

bool listed(const std::vector<std::string>& roles, std::string_view role) {
  return std::any_of(roles.begin(), roles.end(), [&](const std::string& r) { return r == "*" || r == role; });
}

std::string where(int line) { return line > 0 ? fmt::format(" (line {})", line) : std::string(); }

/// A limit for renderPolicy: its value, or "-" for 0 (none of its own).
std::string limit(std::uint64_t v) { return v == 0 ? std::string("-") : std::to_string(v); }
}  // namespace

const char* policyActionName(PolicyAction a) noexcept {
  switch (a) {
    case PolicyAction::Send: return "send";
    case PolicyAction::Invoke: return "invoke";
    case PolicyAction::Handle: return "handle";
    case PolicyAction::Receive: return "receive";
  }
  return "?";
}

const char* decisionName(Decision d) noexcept { return d == Decision::Allow ? "allow" : "deny"; }
const char* roleAdmissionName(RoleAdmission a) noexcept { return a == RoleAdmission::Open ? "open" : "invited"; }

const std::vector<std::string>* ChannelRule::roles(PolicyAction a) const noexcept {
  const auto& o = const_cast<ChannelRule*>(this)->rolesOf(a);
  return o ? &*o : nullptr;
}

std::optional<std::vector<std::string>>& ChannelRule::rolesOf(PolicyAction a) noexcept {
  switch (a) {
    case PolicyAction::Send: return send;
    case PolicyAction::Invoke: return invoke;
    case PolicyAction::Handle: return handle;
    case PolicyAction::Receive: break;
  }
  return receive;
}

int Policy::decidingRule(PolicyAction action, const std::string& channel) const {
  for (std::size_t i = 0; i < channels.size(); ++i) {
    if (channels[i].roles(action) != nullptr && matches(channels[i].pattern, channel)) return static_cast<int>(i);
  }
  return -1;
}

Decision Policy::decide(PolicyAction action, std::string_view role, const std::string* channel) const {
  if (channel == nullptr) return defaultDecision;
  const int i = decidingRule(action, *channel);
  if (i < 0) return defaultDecision;
  return listed(*channels[static_cast<std::size_t>(i)].roles(action), role) ? Decision::Allow : Decision::Deny;
}

const RoleRule* Policy::role(std::string_view name) const {
  auto it = std::find_if(roles.begin(), roles.end(), [&](const RoleRule& r) { return r.name == name; });
  return it == roles.end() ? nullptr : &*it;
}

RoleAdmission Policy::admissionOf(std::string_view name) const {
  if (name == kMainRole) return RoleAdmission::Invited;
  const RoleRule* r = role(name);
  return r != nullptr && r->admission ? *r->admission : defaultAdmission;
}

RoleRule& Policy::roleRule(std::string_view name) {
  if (const RoleRule* r = role(name)) return const_cast<RoleRule&>(*r);
  roles.push_back(RoleRule{.name = std::string(name)});
  return roles.back();
}

Result<void> validatePolicy(const Policy& policy) {
  auto bad = [](int line, std::string what) {
    return makeError(ErrorCode::InvalidArgument, fmt::format("policy{}: {}", where(line), what));
  };
  std::set<std::string_view> seen;
  for (const RoleRule& r : policy.roles) {
    if (auto v = validateName(NameKind::Role, r.name); !v) return bad(r.line, v.error().message);
    if (!seen.insert(r.name).second) return bad(r.line, fmt::format("role '{}' has two rules", r.name));
    if (r.name == kMainRole && r.admission == RoleAdmission::Open) {
      return bad(r.line, "role 'main' names the main process: only spawn() or an invitation gives it, never "
                         "\"open\"");
    }
  }
  for (const ChannelRule& c : policy.channels) {
    if (c.pattern.empty() || c.pattern.size() > kMaxPatternChars) {
      return bad(c.line, fmt::format("a channel pattern is 1..{} characters", kMaxPatternChars));
    }
    for (PolicyAction a : kActions) {
      const auto* list = c.roles(a);
      if (list == nullptr) continue;
      for (const std::string& role : *list) {
        if (role == "*") continue;
        if (auto v = validateName(NameKind::Role, role); !v) {
          return bad(c.line, fmt::format("channel '{}', {}: {}", c.pattern, policyActionName(a), v.error().message));
        }
      }
    }
  }
  return {};
}

std::string renderPolicy(const Policy& policy) {
  std::ostringstream out;
  out << fmt::format("default {}\n", decisionName(policy.defaultDecision));
  out << fmt::format("default-admission {}\n", roleAdmissionName(policy.defaultAdmission));
  if (!policy.uids.empty()) out << fmt::format("uids {}\n", fmt::join(policy.uids, ","));
  if (policy.inspectPayloads) out << "inspect-payloads true\n";
  for (const RoleRule& r : policy.roles) {
    out << fmt::format("role {}: admission {}{}", r.name, roleAdmissionName(policy.admissionOf(r.name)),
                       r.admission || r.name == kMainRole ? "" : " (default)");
    out << fmt::format(", max-windows {}", limit(r.maxWindows));
    out << fmt::format(", max-message-bytes {}", limit(r.maxMessageBytes));
    out << fmt::format(", max-pending-calls {}", limit(r.maxPendingCalls));
    out << fmt::format(", max-bytes-in-flight {}", limit(r.maxBytesInFlight));
    out << where(r.line) << "\n";
  }
  for (const ChannelRule& c : policy.channels) {
    out << fmt::format("channel {}:", c.pattern);
    for (PolicyAction a : kActions) {
      const auto* list = c.roles(a);
      if (list == nullptr) {
        out << fmt::format(" {} (unset)", policyActionName(a));
      } else {
        out << fmt::format(" {} [{}]", policyActionName(a), fmt::join(*list, ","));
      }
      out << (a == PolicyAction::Receive ? "" : ";");
    }
    out << where(c.line) << "\n";
  }
  return out.str();
}

std::string diffPolicy(const Policy& before, const Policy& after) {
  // Line numbers move when a file is edited above a rule: compare the rules, not where they are.
  auto lines = [](const Policy& p) {
    Policy q = p;
    for (auto& r : q.roles) r.line = 0;
    for (auto& c : q.channels) c.line = 0;
    std::vector<std::string> v;
    std::istringstream in(renderPolicy(q));
    for (std::string l; std::getline(in, l);) v.push_back(l);
    return v;
  };
  const auto a = lines(before);
  const auto b = lines(after);
  std::string out;
  for (const auto& l : a) {
    if (std::find(b.begin(), b.end(), l) == b.end()) out += "- " + l + "\n";
  }
  for (const auto& l : b) {
    if (std::find(a.begin(), a.end(), l) == a.end()) out += "+ " + l + "\n";
  }
  return out;
}

}  // namespace shmbus
