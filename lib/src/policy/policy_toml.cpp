// The policy file: TOML through toml++ (docs/architecture.md §15). Every error names
// "SOURCE:LINE:COL" from toml++'s source regions; unknown keys are errors, so a misspelt key
// never silently leaves a rule out.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <toml++/toml.h>

#include "shmbus/policy.hpp"
#include "shmbus/validate.hpp"

namespace shmbus {

namespace {

/// Thrown inside the parser only, turned into a Result at its edge.
struct PolicyFileError {
  Error error;
};

class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  [[noreturn]] void fail(const toml::source_region& at, const std::string& what) const {
    throw PolicyFileError{makeError(ErrorCode::InvalidArgument,
                                    fmt::format("{}:{}:{}: {}", source_, at.begin.line, at.begin.column, what))};
  }

  Policy parse(const toml::table& root) {
    Policy p;
    for (auto&& [key, node] : root) {
      const std::string_view k = key.str();
      if (k == "default") {
        const std::string v = string(node, "default");
        if (v != "allow" && v != "deny") fail(node.source(), "default must be \"allow\" or \"deny\", not \"" + v + "\"");
        p.defaultDecision = v == "allow" ? Decision::Allow : Decision::Deny;
      } else if (k == "default-admission") {
        p.defaultAdmission = admission(node, "default-admission");
      } else if (k == "uids") {
        p.uids = uids(node);
      } else if (k == "inspect-payloads") {
        const auto* b = node.as_boolean();
        if (b == nullptr) fail(node.source(), "inspect-payloads must be true or false");
        p.inspectPayloads = b->get();
      } else if (k == "roles") {
        const toml::table* roles = node.as_table();
        if (roles == nullptr) fail(node.source(), "roles must be a table of [roles.NAME] tables");
        for (auto&& [name, rule] : *roles) p.roles.push_back(role(name, rule));
      } else if (k == "channels") {
        const toml::array* rules = node.as_array();
        if (rules == nullptr) fail(node.source(), "channels must be an array of [[channels]] tables");
        for (const toml::node& rule : *rules) p.channels.push_back(channel(rule));
      } else {
        fail(key.source(), fmt::format("unknown key '{}' (known: default, default-admission, uids, inspect-payloads, roles, channels)", k));
      }
    }
    return p;
  }

 private:
  std::string string(const toml::node& node, std::string_view what) const {
    const auto* s = node.as_string();
    if (s == nullptr) fail(node.source(), fmt::format("{} must be a string", what));
    return s->get();
  }

  /// A non-negative integer of at most `max`; `zero` says what 0 means, for the error.
  template <typename T = std::uint32_t>
  T count(const toml::node& node, std::string_view what, std::string_view zero = "no limit") const {
    const auto* i = node.as_integer();
    constexpr auto max = static_cast<std::int64_t>(std::min<std::uint64_t>(std::numeric_limits<T>::max(),
                                                                           std::numeric_limits<std::int64_t>::max()));
    if (i == nullptr || i->get() < 0 || i->get() > max) {
      fail(node.source(), fmt::format("{} must be an integer in 0..{} (0 = {})", what, max, zero));
    }
    return static_cast<T>(i->get());
  }

  std::vector<std::uint32_t> uids(const toml::node& node) const {
    const toml::array* a = node.as_array();
    if (a == nullptr) fail(node.source(), "uids must be an array of user ids (integers)");
    std::vector<std::uint32_t> out;
    for (const toml::node& e : *a) {
      const auto* i = e.as_integer();
      // (uid_t)-1 means "no uid" to the kernel's calls: not a user.
      if (i == nullptr || i->get() < 0 || i->get() >= std::numeric_limits<std::uint32_t>::max()) {
        fail(e.source(), fmt::format("each uid must be an integer in 0..{}", std::numeric_limits<std::uint32_t>::max() - 1));
      }
      out.push_back(static_cast<std::uint32_t>(i->get()));
    }
    return out;
  }

  RoleAdmission admission(const toml::node& node, std::string_view what) const {
    const std::string v = string(node, what);
    if (v != "open" && v != "invited") {
      fail(node.source(), fmt::format("{} must be \"open\" or \"invited\", not \"{}\"", what, v));
    }
    return v == "open" ? RoleAdmission::Open : RoleAdmission::Invited;
  }

  RoleRule role(const toml::key& name, const toml::node& node) const {
    RoleRule r;
    r.name = std::string(name.str());
    r.line = static_cast<int>(name.source().begin.line);
    if (auto v = validateName(NameKind::Role, r.name); !v) fail(name.source(), v.error().message);
    const toml::table* t = node.as_table();
    if (t == nullptr) fail(node.source(), fmt::format("roles.{} must be a table", r.name));
    for (auto&& [key, value] : *t) {
      const std::string_view k = key.str();
      if (k == "admission") {
        r.admission = admission(value, "admission");
        if (r.name == "main" && r.admission == RoleAdmission::Open) {
          fail(value.source(), "role 'main' names the main process: only spawn() or an invitation gives it");
        }
      } else if (k == "max-windows") {
        r.maxWindows = count(value, "max-windows");
      } else if (k == "max-message-bytes") {
        r.maxMessageBytes = count(value, "max-message-bytes");
      } else if (k == "max-pending-calls") {
        r.maxPendingCalls = count(value, "max-pending-calls", "the bus's cap");
      } else if (k == "max-bytes-in-flight") {
        r.maxBytesInFlight = count<std::uint64_t>(value, "max-bytes-in-flight");
      } else {
        fail(key.source(), fmt::format("unknown key '{}' in roles.{} (known: admission, max-windows, "
                                       "max-message-bytes, max-pending-calls, max-bytes-in-flight)",
                                       k, r.name));
      }
    }
    return r;
  }

  std::vector<std::string> roleList(const toml::node& node, std::string_view what) const {
    const toml::array* a = node.as_array();
    if (a == nullptr) fail(node.source(), fmt::format("{} must be an array of role names (\"*\": every role)", what));
    std::vector<std::string> roles;
    for (const toml::node& e : *a) {
      std::string role = string(e, fmt::format("each role of {}", what));
      if (role != "*") {
        if (auto v = validateName(NameKind::Role, role); !v) fail(e.source(), v.error().message);
      }
      roles.push_back(std::move(role));
    }
    return roles;
  }

  ChannelRule channel(const toml::node& node) const {
    const toml::table* t = node.as_table();
    if (t == nullptr) fail(node.source(), "each entry of channels must be a table ([[channels]])");
    ChannelRule c;
    c.line = static_cast<int>(node.source().begin.line);
    bool hasPattern = false;
    for (auto&& [key, value] : *t) {
      const std::string_view k = key.str();
      if (k == "pattern") {
        c.pattern = string(value, "pattern");
        if (c.pattern.empty() || c.pattern.size() > 256) fail(value.source(), "a channel pattern is 1..256 characters");
        hasPattern = true;
      } else if (k == "send") {
        c.send = roleList(value, "send");
      } else if (k == "invoke") {
        c.invoke = roleList(value, "invoke");
      } else if (k == "handle") {
        c.handle = roleList(value, "handle");
      } else if (k == "receive") {
        c.receive = roleList(value, "receive");
      } else {
        fail(key.source(), fmt::format("unknown key '{}' in a channel rule (known: pattern, send, invoke, handle, "
                                       "receive)",
                                       k));
      }
    }
    if (!hasPattern) fail(node.source(), "a channel rule needs a pattern");
    return c;
  }

  std::string source_;
};

}  // namespace

Result<Policy> parsePolicy(std::string_view text, std::string_view sourceName) {
  try {
    toml::table root = toml::parse(text, sourceName);
    // A role has one rule: TOML itself refuses a second [roles.NAME] table.
    return Parser(sourceName).parse(root);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("{}:{}:{}: {}", sourceName, at.line, at.column, e.description()));
  } catch (const PolicyFileError& e) {
    return e.error;
  }
}

Result<Policy> loadPolicyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return makeError(ErrorCode::SystemError, fmt::format("{}: {}", path, std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return makeError(ErrorCode::SystemError, fmt::format("{}: read failed", path));
  return parsePolicy(text.str(), path);
}

}  // namespace shmbus
