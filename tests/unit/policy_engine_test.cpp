// policy_engine: the router's compiled decisions per channel id (docs/architecture.md §15).
#include <doctest/doctest.h>

#include <optional>
#include <string>

#include "policy/policy_engine.hpp"
#include "shmbus/channel.hpp"

using namespace shmbus;
using namespace shmbus::detail;

TEST_CASE("the engine decides like the policy, compiles a named channel once, and recompiles after set()") {
  Policy p;
  p.defaultDecision = Decision::Deny;
  ChannelRule r{.pattern = "ui.*", .line = 3};
  r.send = std::vector<std::string>{"editor"};
  p.channels.push_back(r);
  PolicyEngine e;
  e.set(p);
  int lookups = 0;
  auto named = [&] { ++lookups; return std::optional<std::string>("ui.title"); };
  const std::uint64_t ch = nameId("ui.title");
  auto v = e.check(PolicyAction::Send, ch, nameId("editor"), named);
  CHECK(v.decision == Decision::Allow);
  CHECK(v.rule == 0);
  CHECK(v.line == 3);
  v = e.check(PolicyAction::Send, ch, nameId("viewer"), named);
  CHECK(v.decision == Decision::Deny);
  CHECK(v.line == 3);
  v = e.check(PolicyAction::Receive, ch, nameId("viewer"), named);  // the rule leaves receive unset
  CHECK(v.decision == Decision::Deny);
  CHECK(v.rule == -1);
  CHECK(lookups == 1);
  CHECK(e.compiledChannels() == 1);

  p.channels[0].send = std::vector<std::string>{"*"};
  e.set(p);
  CHECK(e.compiledChannels() == 0);
  CHECK(e.check(PolicyAction::Send, ch, nameId("viewer"), named).decision == Decision::Allow);
  CHECK(lookups == 2);
}

TEST_CASE("a channel without a trusted name gets the default and is not remembered") {
  Policy p;
  p.channels.push_back(ChannelRule{.pattern = "*", .invoke = std::vector<std::string>{}});
  PolicyEngine e;
  for (Decision fallback : {Decision::Allow, Decision::Deny}) {
    p.defaultDecision = fallback;
    e.set(p);
    auto unknown = [] { return std::optional<std::string>(); };
    for (std::uint64_t id = 1; id < 100; ++id) {
      CHECK(e.check(PolicyAction::Invoke, id, nameId("x"), unknown).decision == fallback);
    }
    CHECK(e.compiledChannels() == 0);
    // The same id with a name: the "*" rule (empty list) denies it.
    auto named = [] { return std::optional<std::string>("anything"); };
    CHECK(e.check(PolicyAction::Invoke, 5, nameId("x"), named).decision == Decision::Deny);
  }
}
