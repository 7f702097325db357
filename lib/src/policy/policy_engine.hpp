// The router's side of the policy (docs/architecture.md §15): the Policy in force, with its
// decisions compiled per channel id so that a frame costs one hash lookup and a short scan of
// role ids, never a glob match.
//
// Not thread-safe alone: the router guards it with its mutex (Router::mu_).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "shmbus/policy.hpp"

namespace shmbus::detail {

class PolicyEngine {
 public:
  PolicyEngine() = default;
  PolicyEngine(const PolicyEngine&) = delete;  // limits_ points into policy_
  PolicyEngine& operator=(const PolicyEngine&) = delete;
  /// What decided a check: the rule's line in the policy file (0: built through the API), or
  /// the default (rule < 0).
  struct Verdict {
    Decision decision = Decision::Allow;
    int rule = -1;  ///< index into Policy::channels; -1: the default decided
    int line = 0;   ///< that rule's line (0: from the API or the default)
  };

  /// Replaces the policy in force; every compiled decision is dropped (the next frame on each
  /// channel compiles it again under the new rules).
  void set(Policy p);
  const Policy& policy() const noexcept { return policy_; }
  /// The limits of role `roleId` (its nameId) when its rule sets any of maxMessageBytes,
  /// maxPendingCalls, maxBytesInFlight; else null. Compiled by set() into a map by role id, so a
  /// frame costs one branch when no role has limits and one hash lookup otherwise, never a scan
  /// of role names.
  const RoleRule* limitsOf(std::uint64_t roleId) const {
    if (limits_.empty()) return nullptr;
    auto it = limits_.find(roleId);
    return it == limits_.end() ? nullptr : it->second;
  }

  /// Whether the role `roleId` may do `a` on channel `channel`, whose trusted name `nameOf`
  /// gives (a callable returning std::optional<std::string>; called only the first time a
  /// channel is seen since the last set()). A channel without a trusted name is decided by the
  /// default and not remembered, so ids a hostile window makes up cannot grow the cache; the
  /// cache is otherwise bounded by the names the router keeps (Registry's bound).
  template <typename NameFn>
  Verdict check(PolicyAction a, std::uint64_t channel, std::uint64_t roleId, NameFn&& nameOf) {
    auto it = compiled_.find(channel);
    if (it == compiled_.end()) {
      std::optional<std::string> name = nameOf();
      if (!name) return Verdict{policy_.defaultDecision, -1, 0};
      it = compiled_.emplace(channel, compile(*name)).first;
    }
    return it->second[static_cast<std::size_t>(a)].verdict(roleId, policy_.defaultDecision);
  }

  /// Channels with compiled decisions (for tests).
  std::size_t compiledChannels() const noexcept { return compiled_.size(); }

 private:
  /// One action on one channel: the deciding rule's role ids, or the default (rule < 0).
  struct Compiled {
    int rule = -1;
    int line = 0;
    bool anyRole = false;               // the list holds "*"
    std::vector<std::uint64_t> roleIds;  // nameId of each listed role

    Verdict verdict(std::uint64_t roleId, Decision fallback) const;
  };
  using ChannelDecisions = std::array<Compiled, 4>;  // by PolicyAction

  ChannelDecisions compile(const std::string& name) const;

  Policy policy_;
  std::unordered_map<std::uint64_t, const RoleRule*> limits_;  // roleId → its rule in policy_.roles
  std::unordered_map<std::uint64_t, ChannelDecisions> compiled_;
};

}  // namespace shmbus::detail
