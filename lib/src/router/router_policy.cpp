// The router's policy (docs/architecture.md §15): the policy in force, the checks shared by
// every pattern (Router::denied, router_internal.hpp), role caps and message limits.
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "call/callbacks.hpp"
#include "protocol/frame_io.hpp"
#include "router/router.hpp"
#include "router/router_internal.hpp"

namespace shmbus::detail {

std::optional<std::string> Router::policyName(std::uint64_t channel) const {
  // Never a window's own unverified name (Conn::ownNames): a window could name a typed channel
  // after one the policy allows.
  std::string n = registry_.nameOf(channel);
  if (n.starts_with("#")) return std::nullopt;
  return n;
}

void Router::setPolicy(Policy policy) {
  std::lock_guard lk(mu_);
  const std::string change = diffPolicy(policy_.policy(), policy);
  policy_.set(std::move(policy));
  closeRoutes("the policy changed");  // each route was granted under the old policy
  setSocketMode();
  if (!change.empty()) log_(LogLevel::Info, "policy replaced:\n{}", change);
}

void Router::setSocketMode() const {
  const bool others = !opts_.allowedUids.empty() || !policy_.policy().uids.empty();
  if (::chmod(path_.c_str(), others ? 0666 : 0600) != 0) {
    log_(LogLevel::Warn, "chmod {} of {}: {}", others ? "0666" : "0600", path_, std::strerror(errno));
  }
}

void Router::nameChannels(std::span<const Channel> channels) {
  std::lock_guard lk(mu_);
  // Trusted from now on (policyName): the policy engine caches no decision for an id without a
  // trusted name, so the next frame on each is judged by its name.
  for (const Channel& c : channels) mainCallbacks_->rememberName(c.id, c.name);
}

void Router::setChannelCallers(const Channel& channel, const std::vector<std::string>& callers) {
  std::lock_guard lk(mu_);
  mainCallbacks_->rememberName(channel.id, channel.name);
  Policy p = policy_.policy();
  auto& rules = p.channels;
  rules.erase(std::remove_if(rules.begin(), rules.end(), [&](const ChannelRule& r) { return r.pattern == channel.name; }),
              rules.end());
  // Channel names hold no glob characters (NameKind::Channel), so the name as a pattern matches
  // itself only. First in order: this channel's rule wins over any glob. The main process keeps
  // its pushes and calls, as before the policy model (callers spoke for windows only).
  ChannelRule r{.pattern = std::string(channel.name)};
  std::vector<std::string> roles = callers;
  if (roles.empty()) roles.push_back("*");
  else if (std::find(roles.begin(), roles.end(), "main") == roles.end()) roles.push_back("main");
  r.send = roles;
  r.invoke = roles;
  rules.insert(rules.begin(), std::move(r));
  policy_.set(std::move(p));
  closeRoutes("the policy changed");
}

Policy Router::policy() const {
  std::lock_guard lk(mu_);
  return policy_.policy();
}

Result<void> Router::checkWindowCap(const std::string& role) const {
  std::lock_guard lk(mu_);
  if (auto cap = windowCapLocked(nullptr); !cap) return cap;
  return roleCapLocked(role, nullptr);
}

Result<void> Router::roleCapLocked(const std::string& role, const Conn* except) const {
  const RoleRule* rule = policy_.policy().role(role);
  if (rule == nullptr || rule->maxWindows == 0) return {};
  std::size_t n = 0;
  for (auto& [id, c] : registry_.all()) {
    if (c.get() == except || !c->doomed.empty() || c->state == Conn::State::Inspector || c->role != role) continue;
    if (c->state != Conn::State::AwaitHello || c->spawned) ++n;
  }
  if (n < rule->maxWindows) return {};
  return makeError(ErrorCode::Full, fmt::format("role '{}' on bus '{}' has reached its cap of {} windows (policy)",
                                                role, opts_.bus, rule->maxWindows));
}

std::optional<Error> Router::overLimit(const Conn& w, const FrameHeader& h, std::size_t payloadBytes) {
  const RoleRule* rule = policy_.limitsOf(w.roleId);
  if (rule == nullptr || rule->maxMessageBytes == 0 || payloadBytes <= rule->maxMessageBytes) return std::nullopt;
  ++counters_.policyDenials;
  return makeError(ErrorCode::TooLarge,
                   fmt::format("{} '{}' from {}: the message is {} bytes, more than the {} bytes role '{}' may send "
                               "(policy)",
                               h.kind == static_cast<std::uint16_t>(FrameKind::Invoke) ? "invoke" : "send",
                               registry_.nameOf(h.channel, w.id), w.describe(), payloadBytes, rule->maxMessageBytes,
                               w.role));
}

std::optional<Error> Router::overInFlight(const Conn& w, const FrameHeader& h, std::size_t payloadBytes) {
  const RouteTable::InFlight now = routes_.inFlightOf(w.id);
  std::uint32_t maxCalls = opts_.maxPendingCalls;
  const char* source = "SupervisorOptions::maxPendingCalls";
  std::uint64_t maxBytes = 0;
  if (const RoleRule* rule = policy_.limitsOf(w.roleId)) {
    if (rule->maxPendingCalls != 0 && rule->maxPendingCalls < maxCalls) {
      maxCalls = rule->maxPendingCalls;
      source = "the policy's max-pending-calls of its role";
    }
    maxBytes = rule->maxBytesInFlight;
  }
  std::string why;
  if (now.calls >= maxCalls) {
    why = fmt::format("the window has {} calls in flight ({})", maxCalls, source);
  } else if (maxBytes != 0 && now.bytes + payloadBytes > maxBytes) {
    why = fmt::format("the window has {} request bytes in flight, {} more would pass the {} bytes of the policy's "
                      "max-bytes-in-flight of role '{}'",
                      now.bytes, payloadBytes, maxBytes, w.role);
  } else {
    return std::nullopt;
  }
  ++counters_.overPendingLimit;
  return makeError(ErrorCode::Full, fmt::format("invoke '{}' from {}: {}", registry_.nameOf(h.channel, w.id),
                                                w.describe(), why));
}

void Router::onHandlerAdd(Conn& w, const FrameHeader& h) {
  w.handled.insert(h.channel);
  registryCv_.notify_all();
  // Kept in `handled` all the same: every call is checked again (Handle for the target's role),
  // so a later policy that allows it needs no new registration.
  auto e = denied(PolicyAction::Handle, h.channel, w.roleId, w.role, w.id, [&] {
    return fmt::format("handle '{}' in {}", registry_.nameOf(h.channel, w.id), w.describe());
  });
  if (!e) return;
  FrameHeader back{};
  back.channel = h.channel;
  back.requestId = 0;  // request id 0: reported to the window's onSendFailed listeners
  (void)writeToWindow(w, [&] { return writeErrorFrame(w.inbox, back, *e); });
}

}  // namespace shmbus::detail
