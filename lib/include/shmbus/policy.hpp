// libshmbus — policy as data (docs/architecture.md §15): who may hold a role, and which roles may
// send, invoke, handle and receive each channel. One model for the API (Supervisor::setPolicy)
// and for the policy file of `shmbusd --policy FILE` (TOML, parsePolicy).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/error.hpp"

namespace shmbus {

/// What a policy decides for one (action, role, channel).
enum class Decision : std::uint8_t {
  Allow,
  Deny,
};

/// The four things a role may do with a channel. Every messaging pattern is one or two of them
/// (docs/architecture.md §15): the sender's side (Send or Invoke) and the receiver's (Receive or
/// Handle), each checked for its own role. The main process is the role "main".
enum class PolicyAction : std::uint8_t {
  Send,     ///< write a one-way message: Window::send, sendTo; the main process's send and broadcast
  Invoke,   ///< make a call: Window::invoke, invokeIn; the main process's invoke
  Handle,   ///< answer calls: a handler of the channel (the main process's, or a window's)
  Receive,  ///< hear one-way messages: main's listeners, a window's pushes, broadcasts and sendTo's
};

/// "send", "invoke", "handle" or "receive". Thread contract: pure; any thread.
const char* policyActionName(PolicyAction a) noexcept;
/// "allow" or "deny". Thread contract: pure; any thread.
const char* decisionName(Decision d) noexcept;

/// How a window may get a role when it connects by socket path (docs/architecture.md §5).
enum class RoleAdmission : std::uint8_t {
  Open,     ///< any window of an allowed uid may claim it by connecting
  Invited,  ///< only Supervisor::spawn or an invitation token (Supervisor::invite) gives it
};

/// "open" or "invited". Thread contract: pure; any thread.
const char* roleAdmissionName(RoleAdmission a) noexcept;

/// The rule of one role (Policy::roles).
struct RoleRule {
  std::string name;  ///< the role (NameKind::Role); "main" is always Invited
  /// How a window connecting by path gets this role; unset: Policy::defaultAdmission.
  std::optional<RoleAdmission> admission;
  /// Most windows that may hold this role at once (registered, registering, or spawned and not
  /// yet connected); 0 = no cap of its own (SupervisorOptions::maxWindows still holds). One past
  /// it: the window's connect (or spawn()) gets Full.
  std::uint32_t maxWindows = 0;
  /// Largest message payload, bytes, a window of this role may send or invoke with (the Cap'n
  /// Proto message, without the 64-byte frame header); 0 = no limit of its own (the ring's
  /// maximum record still holds). Larger: TooLarge at the sender (a one-way message is reported
  /// back like any undeliverable one).
  std::uint32_t maxMessageBytes = 0;
  /// Most calls a window of this role may have in flight through the router at once (to main or
  /// to a window, routed); 0 = the bus's SupervisorOptions::maxPendingCalls. It can only lower
  /// that cap: a value above it changes nothing. One more: Full at the caller, counted in
  /// RouterStats::overPendingLimit.
  std::uint32_t maxPendingCalls = 0;
  /// Most request bytes (payloads, without frame headers) a window of this role may have in
  /// flight through the router at once: the sum over its calls not yet answered, this one
  /// included; 0 = no limit. Past it: Full at the caller, counted in
  /// RouterStats::overPendingLimit. A single request larger than this is Full too.
  std::uint64_t maxBytesInFlight = 0;
  int line = 0;  ///< line in the policy file it came from (0: built through the API)
};

/// The rule of the channels whose names match `pattern`, for the actions it lists. An action it
/// leaves unset is decided by a later rule that sets it, else by Policy::defaultDecision.
struct ChannelRule {
  /// fnmatch(3) glob over channel names: `*` matches any run of characters (dots included, no
  /// flags are passed), `?` one character, brackets a set; e.g. "Dashboard.*". A name without
  /// those characters matches itself only.
  std::string pattern;
  // Roles (NameKind::Role, or "*" for every role, "main" for the main process) that may:
  std::optional<std::vector<std::string>> send;     ///< send one-way messages on the channel
  std::optional<std::vector<std::string>> invoke;   ///< call it
  std::optional<std::vector<std::string>> handle;   ///< answer its calls
  std::optional<std::vector<std::string>> receive;  ///< hear its one-way messages and broadcasts
  int line = 0;  ///< line in the policy file it came from (0: built through the API)

  /// The role list of `a` (null when this rule leaves `a` unset).
  const std::vector<std::string>* roles(PolicyAction a) const noexcept;
  /// The role list of `a`, writable (the parser fills it); unset until assigned.
  std::optional<std::vector<std::string>>& rolesOf(PolicyAction a) noexcept;
};

/// The whole policy of a bus. A plain value: build it, parse it (parsePolicy), hand it to
/// Supervisor::setPolicy, which replaces the one in force at once.
///
/// Channel decisions: for (action, role, channel name), the first rule in `channels` whose
/// pattern matches the name and that sets the action decides: Allow when the role (or "*") is in
/// its list, else Deny. No such rule: `defaultDecision`. A channel whose name the supervisor does
/// not know (a typed channel id only a window has named, never the main process) matches no
/// pattern: `defaultDecision` decides (docs/architecture.md §15).
struct Policy {
  Decision defaultDecision = Decision::Allow;            ///< for what no channel rule decides
  RoleAdmission defaultAdmission = RoleAdmission::Open;  ///< for roles without a RoleRule admission
  /// User ids, besides the supervisor's own and SupervisorOptions::allowedUids, whose processes
  /// may connect (SO_PEERCRED at accept); another uid is told Denied. With any listed the socket
  /// file is made mode 0666 (the uid check guards it); the socket's directory must let them in.
  std::vector<std::uint32_t> uids;
  std::vector<RoleRule> roles;        ///< at most one per role name
  std::vector<ChannelRule> channels;  ///< in order: the first matching rule that sets an action wins
  /// Whether inspectors may read captured payloads (SupervisorOptions::payloadCapture): an
  /// inspector of the supervisor's own uid that asks for them gets them only while this is
  /// true (TOML `inspect-payloads = true`). Default false: inspectors see events, never bytes.
  bool inspectPayloads = false;

  /// The decision for `role` doing `action` on the channel named `channel` (null: a name the
  /// supervisor does not know; then defaultDecision). Thread contract: const; any thread.
  Decision decide(PolicyAction action, std::string_view role, const std::string* channel) const;
  /// The rule that decided (index into `channels`), or -1 when the default did.
  int decidingRule(PolicyAction action, const std::string& channel) const;
  /// The rule of `role`, or null.
  const RoleRule* role(std::string_view name) const;
  /// How a window connecting by path gets `role` ("main": always Invited).
  RoleAdmission admissionOf(std::string_view role) const;
  /// The role's rule, created (with only its name) at the end when missing.
  RoleRule& roleRule(std::string_view name);
};

/// Checks a policy built through the API: role names (NameKind::Role), role lists (roles or
/// "*"), at most one rule per role, no "open" admission for "main", non-empty patterns of at most
/// 256 characters. Errors: InvalidArgument naming the rule (its line when it has one).
/// Thread contract: pure; any thread.
Result<void> validatePolicy(const Policy& policy);

/// Parses a policy file (TOML; the format is in docs/architecture.md §15 and
/// examples/policy/bus-policy.toml). `sourceName` names the source in errors. Unknown keys,
/// values of the wrong type, bad role names, bad decisions are errors, each
/// "SOURCE:LINE:COL: what" (InvalidArgument); a TOML syntax error too. Thread contract: pure;
/// any thread.
Result<Policy> parsePolicy(std::string_view toml, std::string_view sourceName);

/// Reads and parses the file at `path` (parsePolicy with `path` as its source name).
/// Errors: as parsePolicy; SystemError when the file cannot be read ("PATH: why").
Result<Policy> loadPolicyFile(const std::string& path);

/// The effective rules as text, one line each, for `shmbusd --check` and logs: the defaults,
/// each role rule with its admission and limits, each channel rule with the decision per action
/// ("(unset)" where a later rule or the default decides), in evaluation order. Thread contract: pure; any thread.
std::string renderPolicy(const Policy& policy);

/// What changed from `before` to `after`, as lines ("+ ...", "- ..." of renderPolicy's lines);
/// empty when nothing did. Thread contract: pure; any thread.
std::string diffPolicy(const Policy& before, const Policy& after);

}  // namespace shmbus
