// policy: the model's decisions (first matching rule that sets the action, globs, the default,
// unknown names), admission, validation, rendering and diffs (docs/architecture.md §15).
#include <doctest/doctest.h>

#include <string>

#include "shmbus/policy.hpp"

using namespace shmbus;

namespace {
/// A policy with the rules most tests share: Dashboard.* handled by dashboard only and called by
/// editor and main; "log.*" heard by every role, sent by editor; "secret" left to the default.
Policy sample(Decision fallback) {
  Policy p;
  p.defaultDecision = fallback;
  ChannelRule dash{.pattern = "Dashboard.*"};
  dash.invoke = std::vector<std::string>{"editor", "main"};
  dash.handle = std::vector<std::string>{"dashboard"};
  p.channels.push_back(dash);
  ChannelRule log{.pattern = "log.*"};
  log.send = std::vector<std::string>{"editor"};
  log.receive = std::vector<std::string>{"*"};
  p.channels.push_back(log);
  return p;
}
const std::string kGet = "Dashboard.get";
const std::string kLog = "log.line";
const std::string kSecret = "secret";
}  // namespace

TEST_CASE("a rule that sets an action decides it for the roles it lists, by glob, and denies the others") {
  const Policy p = sample(Decision::Allow);
  CHECK(p.decide(PolicyAction::Invoke, "editor", &kGet) == Decision::Allow);
  CHECK(p.decide(PolicyAction::Invoke, "main", &kGet) == Decision::Allow);
  CHECK(p.decide(PolicyAction::Invoke, "viewer", &kGet) == Decision::Deny);
  CHECK(p.decide(PolicyAction::Handle, "dashboard", &kGet) == Decision::Allow);
  CHECK(p.decide(PolicyAction::Handle, "editor", &kGet) == Decision::Deny);
  CHECK(p.decide(PolicyAction::Send, "editor", &kLog) == Decision::Allow);
  CHECK(p.decide(PolicyAction::Send, "viewer", &kLog) == Decision::Deny);
  CHECK(p.decide(PolicyAction::Receive, "anyone", &kLog) == Decision::Allow);  // "*"
  const std::string notMatched = "Dashboard";  // "Dashboard.*" needs the dot
  CHECK(p.decide(PolicyAction::Invoke, "viewer", &notMatched) == Decision::Allow);
}

TEST_CASE("what no rule sets falls to the default, and so does a channel whose name is unknown") {
  for (Decision fallback : {Decision::Allow, Decision::Deny}) {
    const Policy p = sample(fallback);
    CHECK(p.decide(PolicyAction::Send, "editor", &kGet) == fallback);     // the rule leaves send unset
    CHECK(p.decide(PolicyAction::Receive, "viewer", &kGet) == fallback);
    CHECK(p.decide(PolicyAction::Invoke, "editor", &kSecret) == fallback);  // no rule matches
    CHECK(p.decide(PolicyAction::Invoke, "editor", nullptr) == fallback);   // a name nobody verified
    CHECK(p.decidingRule(PolicyAction::Send, kGet) == -1);
  }
}

TEST_CASE("the first matching rule that sets an action wins; later ones decide only what it leaves unset") {
  Policy p;
  ChannelRule narrow{.pattern = "a.b"};
  narrow.send = std::vector<std::string>{"x"};
  ChannelRule wide{.pattern = "a.*"};
  wide.send = std::vector<std::string>{"y"};
  wide.invoke = std::vector<std::string>{"y"};
  p.channels = {narrow, wide};
  const std::string ab = "a.b", ac = "a.c";
  CHECK(p.decide(PolicyAction::Send, "x", &ab) == Decision::Allow);
  CHECK(p.decide(PolicyAction::Send, "y", &ab) == Decision::Deny);
  CHECK(p.decide(PolicyAction::Invoke, "y", &ab) == Decision::Allow);  // narrow leaves invoke unset
  CHECK(p.decide(PolicyAction::Invoke, "x", &ab) == Decision::Deny);
  CHECK(p.decide(PolicyAction::Send, "y", &ac) == Decision::Allow);
  CHECK(p.decidingRule(PolicyAction::Send, ab) == 0);
  CHECK(p.decidingRule(PolicyAction::Invoke, ab) == 1);
  const std::string q = "a?c", set = "[ab]x";
  p.channels = {ChannelRule{.pattern = q, .send = std::vector<std::string>{}},
                ChannelRule{.pattern = set, .send = std::vector<std::string>{}}};
  const std::string abc = "abc", bx = "bx", cx = "cx";
  CHECK(p.decide(PolicyAction::Send, "x", &abc) == Decision::Deny);  // an empty list denies everyone
  CHECK(p.decide(PolicyAction::Send, "x", &bx) == Decision::Deny);
  CHECK(p.decide(PolicyAction::Send, "x", &cx) == Decision::Allow);
}

TEST_CASE("admission: a role's own rule, else the default; 'main' is always invited") {
  Policy p;
  p.defaultAdmission = RoleAdmission::Invited;
  p.roleRule("editor").admission = RoleAdmission::Open;
  p.roleRule("viewer").maxWindows = 2;  // no admission of its own
  CHECK(p.admissionOf("editor") == RoleAdmission::Open);
  CHECK(p.admissionOf("viewer") == RoleAdmission::Invited);
  CHECK(p.admissionOf("other") == RoleAdmission::Invited);
  p.defaultAdmission = RoleAdmission::Open;
  CHECK(p.admissionOf("other") == RoleAdmission::Open);
  CHECK(p.admissionOf("main") == RoleAdmission::Invited);
  CHECK(&p.roleRule("viewer") == p.role("viewer"));  // found, not added twice
  CHECK(p.roles.size() == 2);
}

TEST_CASE("validatePolicy refuses bad role names, two rules of a role, an open 'main' and empty patterns") {
  CHECK(validatePolicy(sample(Decision::Deny)).ok());
  Policy p;
  p.roles.push_back(RoleRule{.name = "a/b", .line = 7});
  auto r = validatePolicy(p);
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == ErrorCode::InvalidArgument);
  CHECK(r.error().message.find("policy (line 7): role 'a/b'") == 0);
  p.roles = {RoleRule{.name = "x"}, RoleRule{.name = "x"}};
  CHECK(validatePolicy(p).error().message == "policy: role 'x' has two rules");
  p.roles = {RoleRule{.name = "main", .admission = RoleAdmission::Open}};
  CHECK(validatePolicy(p).error().message.find("role 'main'") != std::string::npos);
  p.roles.clear();
  p.channels = {ChannelRule{.pattern = ""}};
  CHECK_FALSE(validatePolicy(p).ok());
  p.channels = {ChannelRule{.pattern = "x", .handle = std::vector<std::string>{"ok", "MAIN"}}};
  CHECK(validatePolicy(p).error().message.find("channel 'x', handle: role 'MAIN'") != std::string::npos);
}

TEST_CASE("renderPolicy prints every rule in evaluation order; diffPolicy names what changed") {
  Policy p = sample(Decision::Deny);
  p.roleRule("editor").maxWindows = 2;
  p.roles[0].maxBytesInFlight = 1 << 20;
  p.roles[0].line = 4;
  p.uids = {1000, 1001};
  const std::string text = renderPolicy(p);
  CHECK(text ==
        "default deny\n"
        "default-admission open\n"
        "uids 1000,1001\n"
        "role editor: admission open (default), max-windows 2, max-message-bytes -, max-pending-calls -, "
        "max-bytes-in-flight 1048576 (line 4)\n"
        "channel Dashboard.*: send (unset); invoke [editor,main]; handle [dashboard]; receive (unset)\n"
        "channel log.*: send [editor]; invoke (unset); handle (unset); receive [*]\n");
  CHECK(diffPolicy(p, p).empty());
  Policy q = p;
  q.roles[0].line = 9;  // moved in the file: not a change
  CHECK(diffPolicy(p, q).empty());
  q.channels[1].send = std::vector<std::string>{"editor", "viewer"};
  CHECK(diffPolicy(p, q) ==
        "- channel log.*: send [editor]; invoke (unset); handle (unset); receive [*]\n"
        "+ channel log.*: send [editor,viewer]; invoke (unset); handle (unset); receive [*]\n");
}
