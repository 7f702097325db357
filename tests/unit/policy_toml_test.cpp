// policy_toml: the policy file's TOML form, every key, and errors with SOURCE:LINE:COL
// (docs/architecture.md §15).
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <string>

#include "shmbus/policy.hpp"

using namespace shmbus;

namespace {
/// The error message of parsing `text` as "p.toml" ("" when it parses).
std::string refusal(const std::string& text) {
  auto r = parsePolicy(text, "p.toml");
  if (r.ok()) return "";
  CHECK(r.code() == ErrorCode::InvalidArgument);
  return r.error().message;
}
}  // namespace

TEST_CASE("every key of a policy file reaches the model, with the lines of its rules") {
  auto p = parsePolicy(R"(default = "deny"
default-admission = "invited"
uids = [1000, 65534]
[roles.editor]
admission = "open"
max-windows = 2
max-message-bytes = 4096
max-pending-calls = 16
max-bytes-in-flight = 8589934592

[roles.viewer]

[[channels]]
pattern = "Dashboard.*"
send = ["editor"]
invoke = ["editor", "main"]
handle = ["dashboard"]
receive = ["*"]

[[channels]]
pattern = "empty"
send = []
)",
                       "p.toml");
  REQUIRE_MESSAGE(p.ok(), p.error().message);
  CHECK(p->defaultDecision == Decision::Deny);
  CHECK(p->defaultAdmission == RoleAdmission::Invited);
  REQUIRE(p->roles.size() == 2);
  const RoleRule& e = p->roles[0];
  CHECK(e.name == "editor");
  CHECK(e.admission == RoleAdmission::Open);
  CHECK(e.maxWindows == 2);
  CHECK(e.maxMessageBytes == 4096);
  CHECK(e.maxPendingCalls == 16);
  CHECK(e.maxBytesInFlight == 8589934592ull);  // 8 GiB: past 32 bits
  CHECK(e.line == 4);
  CHECK(p->uids == std::vector<std::uint32_t>{1000, 65534});
  CHECK(p->roles[1].maxPendingCalls == 0);
  CHECK(p->roles[1].maxBytesInFlight == 0);
  CHECK(p->roles[1].name == "viewer");
  CHECK_FALSE(p->roles[1].admission.has_value());
  CHECK(p->admissionOf("viewer") == RoleAdmission::Invited);
  REQUIRE(p->channels.size() == 2);
  const ChannelRule& c = p->channels[0];
  CHECK(c.pattern == "Dashboard.*");
  CHECK(c.line == 13);
  CHECK(*c.send == std::vector<std::string>{"editor"});
  CHECK(*c.invoke == std::vector<std::string>{"editor", "main"});
  CHECK(*c.handle == std::vector<std::string>{"dashboard"});
  CHECK(*c.receive == std::vector<std::string>{"*"});
  CHECK(p->channels[1].send->empty());
  CHECK_FALSE(p->channels[1].invoke.has_value());
  const std::string get = "Dashboard.get";
  CHECK(p->decide(PolicyAction::Invoke, "main", &get) == Decision::Allow);
  CHECK(p->decide(PolicyAction::Invoke, "viewer", &get) == Decision::Deny);
  CHECK(validatePolicy(*p).ok());
}

TEST_CASE("an empty file is the open policy: allow, open admission, no rules") {
  auto p = parsePolicy("# nothing\n", "p.toml");
  REQUIRE(p.ok());
  CHECK(p->defaultDecision == Decision::Allow);
  CHECK(p->defaultAdmission == RoleAdmission::Open);
  CHECK(p->roles.empty());
  CHECK(p->channels.empty());
  CHECK_FALSE(p->inspectPayloads);
}

TEST_CASE("inspect-payloads lets inspectors read captured payloads; it must be a boolean") {
  auto p = parsePolicy("inspect-payloads = true\n", "p.toml");
  REQUIRE(p.ok());
  CHECK(p->inspectPayloads);
  CHECK(renderPolicy(*p).find("inspect-payloads true\n") != std::string::npos);
  CHECK(diffPolicy(Policy{}, *p) == "+ inspect-payloads true\n");
  CHECK(refusal("inspect-payloads = \"yes\"\n") == "p.toml:1:20: inspect-payloads must be true or false");
}

TEST_CASE("unknown keys are errors naming the key, its line and column") {
  CHECK(refusal("defualt = \"deny\"\n") ==
        "p.toml:1:1: unknown key 'defualt' (known: default, default-admission, uids, inspect-payloads, roles, channels)");
  CHECK(refusal("[roles.editor]\nmax-window = 2\n") ==
        "p.toml:2:1: unknown key 'max-window' in roles.editor (known: admission, max-windows, max-message-bytes, "
        "max-pending-calls, max-bytes-in-flight)");
  CHECK(refusal("\n[[channels]]\npattern = \"x\"\n  sends = [\"a\"]\n") ==
        "p.toml:4:3: unknown key 'sends' in a channel rule (known: pattern, send, invoke, handle, receive)");
}

TEST_CASE("bad values are errors at the value: decisions, admissions, counts, role names, types") {
  CHECK(refusal("default = \"maybe\"\n") == "p.toml:1:11: default must be \"allow\" or \"deny\", not \"maybe\"");
  CHECK(refusal("default = 1\n") == "p.toml:1:11: default must be a string");
  CHECK(refusal("default-admission = \"closed\"\n") ==
        "p.toml:1:21: default-admission must be \"open\" or \"invited\", not \"closed\"");
  CHECK(refusal("[roles.x]\nmax-windows = -1\n").find("p.toml:2:15: max-windows must be an integer in 0..") == 0);
  CHECK(refusal("[roles.x]\nmax-message-bytes = \"big\"\n").find("p.toml:2:21: max-message-bytes must be") == 0);
  CHECK(refusal("[roles.x]\nmax-pending-calls = 4294967296\n") ==
        "p.toml:2:21: max-pending-calls must be an integer in 0..4294967295 (0 = the bus's cap)");
  CHECK(refusal("[roles.x]\nmax-bytes-in-flight = -5\n") ==
        "p.toml:2:23: max-bytes-in-flight must be an integer in 0..9223372036854775807 (0 = no limit)");
  CHECK(refusal("uids = 1000\n") == "p.toml:1:8: uids must be an array of user ids (integers)");
  CHECK(refusal("uids = [1000, -1]\n") == "p.toml:1:15: each uid must be an integer in 0..4294967294");
  CHECK(refusal("uids = [\"root\"]\n") == "p.toml:1:9: each uid must be an integer in 0..4294967294");
  CHECK(refusal("[roles.MAIN]\n").find("p.toml:1:8: role 'MAIN'") == 0);
  CHECK(refusal("[roles.main]\nadmission = \"open\"\n").find("p.toml:2:13: role 'main' names the main") == 0);
  CHECK(refusal("[[channels]]\npattern = \"x\"\nsend = [\"ok\", \"a/b\"]\n").find("p.toml:3:15: role 'a/b'") == 0);
  CHECK(refusal("[[channels]]\npattern = \"x\"\nsend = \"editor\"\n") ==
        "p.toml:3:8: send must be an array of role names (\"*\": every role)");
  CHECK(refusal("[[channels]]\nsend = [\"a\"]\n") == "p.toml:1:1: a channel rule needs a pattern");
  CHECK(refusal("[[channels]]\npattern = \"\"\n") == "p.toml:2:11: a channel pattern is 1..256 characters");
  CHECK(refusal("roles = 3\n") == "p.toml:1:9: roles must be a table of [roles.NAME] tables");
  CHECK(refusal("channels = 3\n") == "p.toml:1:12: channels must be an array of [[channels]] tables");
}

TEST_CASE("TOML syntax errors carry the source, line and column") {
  const std::string e = refusal("default = \"allow\"\n[roles.a]\n[roles.a]\n");
  CHECK(e.find("p.toml:3:") == 0);
  CHECK(refusal("x = = 1\n").find("p.toml:1:") == 0);
}

TEST_CASE("loadPolicyFile reads a file and names it in errors") {
  char path[] = "/tmp/shmbus-policy-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  const std::string text = "default = \"deny\"\nbogus = 1\n";
  REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  ::close(fd);
  auto r = loadPolicyFile(path);
  CHECK(r.error().message == std::string(path) + ":2:1: unknown key 'bogus' (known: default, default-admission, "
                                                 "uids, inspect-payloads, roles, channels)");
  ::unlink(path);
  auto missing = loadPolicyFile(path);
  CHECK(missing.code() == ErrorCode::SystemError);
  CHECK(missing.error().message == std::string(path) + ": No such file or directory");
}
