#include "policy/policy_engine.hpp"

#include <algorithm>

#include "shmbus/channel.hpp"

namespace shmbus::detail {

void PolicyEngine::set(Policy p) {
  policy_ = std::move(p);
  compiled_.clear();
  limits_.clear();
  for (const RoleRule& r : policy_.roles) {
    if (r.maxMessageBytes != 0 || r.maxPendingCalls != 0 || r.maxBytesInFlight != 0) limits_.emplace(nameId(r.name), &r);
  }
}

PolicyEngine::Verdict PolicyEngine::Compiled::verdict(std::uint64_t roleId, Decision fallback) const {
  if (rule < 0) return Verdict{fallback, -1, 0};
  const bool listed = anyRole || std::find(roleIds.begin(), roleIds.end(), roleId) != roleIds.end();
  return Verdict{listed ? Decision::Allow : Decision::Deny, rule, line};
}

PolicyEngine::ChannelDecisions PolicyEngine::compile(const std::string& name) const {
  ChannelDecisions out;
  for (PolicyAction a : {PolicyAction::Send, PolicyAction::Invoke, PolicyAction::Handle, PolicyAction::Receive}) {
    Compiled& c = out[static_cast<std::size_t>(a)];
    c.rule = policy_.decidingRule(a, name);
    if (c.rule < 0) continue;
    const ChannelRule& r = policy_.channels[static_cast<std::size_t>(c.rule)];
    c.line = r.line;
    for (const std::string& role : *r.roles(a)) {
      if (role == "*") c.anyRole = true;
      else c.roleIds.push_back(nameId(role));
    }
  }
  return out;
}

}  // namespace shmbus::detail
