// Unit tests of the router's registry (lib/src/router/registry): connections, role resolution and
// the names of channel and role ids.
#include "router/registry.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <memory>
#include <string>

#include "call/callbacks.hpp"
#include "protocol/frame.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {

/// A descriptor for a Conn's socket (the registry only owns it).
Fd anFd() {
  Fd fd(::eventfd(0, EFD_CLOEXEC));
  REQUIRE(fd);
  return fd;
}

/// A registry over its own main-process callback table.
struct Fixture {
  std::shared_ptr<CallbackTable> callbacks = std::make_shared<CallbackTable>();
  Registry reg{callbacks};

  /// Adds a window of `role` that said hello (its role id set) and reached `state`.
  Conn& window(const std::string& role, Conn::State state = Conn::State::Live) {
    Conn& c = reg.add(anFd(), role, 100, false);
    c.roleId = nameId(role);
    c.state = state;
    return c;
  }
};

/// How Registry spells an id it has no name for.
std::string hex(std::uint64_t id) { return fmt::format("#{:016x}", id); }

}  // namespace

TEST_CASE("add numbers connections from 1, awaiting hello, and remove hands them back") {
  Fixture f;
  Fd sock = anFd();
  const int raw = sock.get();
  Conn& a = f.reg.add(std::move(sock), "", 4321, true);
  Conn& b = f.reg.add(anFd(), "tool", 99, false);
  CHECK(a.id == 1);
  CHECK(b.id == 2);
  CHECK(a.state == Conn::State::AwaitHello);
  CHECK(a.pid == 4321);
  CHECK(a.spawned);
  CHECK(a.sock.get() == raw);
  CHECK(f.reg.find(1) == &a);
  CHECK(f.reg.all().size() == 2);

  auto removed = f.reg.remove(1);
  REQUIRE(removed != nullptr);
  CHECK(removed.get() == &a);
  CHECK(f.reg.find(1) == nullptr);
  CHECK(f.reg.remove(1) == nullptr);
  CHECK(f.reg.find(2) == &b);
  removed.reset();  // the connection owns its socket
  CHECK(::fcntl(raw, F_GETFD) == -1);
  CHECK(errno == EBADF);
  CHECK(f.reg.add(anFd(), "x", 1, false).id == 3);  // ids are never reused
}

TEST_CASE("live and resolve by id skip a window that is not live yet or is doomed") {
  Fixture f;
  Conn& hello = f.window("dash", Conn::State::AwaitHello);
  Conn& mapping = f.window("dash", Conn::State::AwaitMapped);
  Conn& live = f.window("dash");
  Conn& doomed = f.window("dash");
  doomed.doomed = "bad message";
  CHECK(f.reg.live(hello.id) == nullptr);
  CHECK(f.reg.live(mapping.id) == nullptr);
  CHECK(f.reg.live(live.id) == &live);
  CHECK(f.reg.live(doomed.id) == nullptr);
  CHECK(f.reg.find(doomed.id) == &doomed);
  CHECK(f.reg.resolve(live.id, 0) == &live);
  CHECK(f.reg.resolve(mapping.id, 0) == nullptr);
  CHECK(f.reg.resolve(Target(live.id)) == &live);
  CHECK(f.reg.resolve(Target(doomed.id)) == nullptr);
  CHECK(f.reg.resolve(Target(77u)) == nullptr);
  CHECK(f.reg.resolve(Target::main()) == nullptr);  // the main process is not a window
}

TEST_CASE("a role resolves to its first registered live window") {
  Fixture f;
  Conn& mapping = f.window("dash", Conn::State::AwaitMapped);
  Conn& doomed = f.window("dash");
  doomed.doomed = "closed";
  f.window("other");
  Conn& first = f.window("dash");
  Conn& second = f.window("dash");
  const std::uint64_t dash = nameId("dash");
  CHECK(f.reg.resolve(kTargetByRole, dash) == &first);
  CHECK(f.reg.resolve(Target("dash")) == &first);
  CHECK(f.reg.resolve(kTargetByRole, nameId("nobody")) == nullptr);

  f.reg.remove(first.id);
  CHECK(f.reg.resolve(Target("dash")) == &second);
  mapping.state = Conn::State::Live;  // an older window becoming live wins: registration order
  CHECK(f.reg.resolve(Target("dash")) == &mapping);
  doomed.doomed.clear();
  CHECK(f.reg.resolve(kTargetByRole, dash) == &mapping);
  f.reg.remove(mapping.id);
  CHECK(f.reg.resolve(kTargetByRole, dash) == &doomed);
}

TEST_CASE("roleOf names the main process, a window's role, or nothing") {
  Fixture f;
  Conn& w = f.window("editor");
  CHECK(f.reg.roleOf(0) == "main");
  CHECK(f.reg.roleOf(w.id) == "editor");
  CHECK(f.reg.roleOf(99).empty());
  CHECK(w.describe() == "role 'editor' (window 1)");
}

TEST_CASE("nameOf prefers a verified name, then the main callbacks' name, then hex") {
  Fixture f;
  const std::uint64_t status = nameId("status");
  const std::uint64_t ping = nameId("ping");
  const std::uint64_t unknown = nameId("never named");
  CHECK(f.reg.nameOf(status) == hex(status));
  f.reg.addName(status, "status");
  CHECK(f.reg.nameOf(status) == "status");
  f.reg.addName(status, "impostor");  // the first verified name stays
  CHECK(f.reg.nameOf(status) == "status");

  auto handler = f.callbacks->setHandler(Channel("ping"), [](const Message&, Builder&, const CallContext&) {});
  CHECK(f.reg.nameOf(ping) == "ping");
  CHECK(f.reg.nameOf(nameId("main")) == "main");
  CHECK(f.reg.nameOf(unknown) == hex(unknown));
  CHECK(f.reg.nameOf(unknown, 5) == hex(unknown));  // no such window
}

TEST_CASE("a window's own names name an id only in that window's messages") {
  Fixture f;
  Conn& typed = f.window("calc");
  Conn& other = f.window("dash");
  const std::uint64_t add = methodChannelId(0xabcdef, 0);
  typed.ownNames[add] = "Calc.add";
  CHECK(f.reg.nameOf(add, typed.id) == "Calc.add");
  CHECK(f.reg.nameOf(add, other.id) == hex(add));
  CHECK(f.reg.nameOf(add) == hex(add));
  CHECK(f.reg.statName(add) == hex(add));  // unverified: never in stats

  f.reg.addName(add, "verified");  // a verified name wins even for that window
  CHECK(f.reg.nameOf(add, typed.id) == "verified");
}

TEST_CASE("statName falls back to a typed channel's first stat label, never over a name") {
  Fixture f;
  const std::uint64_t typed = methodChannelId(0x1234, 2);
  f.reg.addStatLabel(typed, "Calc.mul");
  f.reg.addStatLabel(typed, "Evil.label");
  CHECK(f.reg.statName(typed) == "Calc.mul");
  CHECK(f.reg.nameOf(typed) == hex(typed));  // labels are for stats only

  const std::uint64_t named = nameId("tick");
  f.reg.addName(named, "tick");
  f.reg.addStatLabel(named, "label");
  CHECK(f.reg.statName(named) == "tick");
  CHECK(f.reg.statName(nameId("plain")) == hex(nameId("plain")));
}

TEST_CASE("describeTarget names a role by its verified name or hex id, and a window by number") {
  Fixture f;
  const std::uint64_t dash = nameId("dashboard");
  CHECK(f.reg.describeTarget(kTargetByRole, dash) == "role '" + hex(dash) + "'");
  CHECK(f.reg.roleName(dash) == nullptr);
  f.reg.addName(dash, "dashboard");
  CHECK(f.reg.describeTarget(kTargetByRole, dash) == "role 'dashboard'");
  REQUIRE(f.reg.roleName(dash) != nullptr);
  CHECK(*f.reg.roleName(dash) == "dashboard");
  CHECK(f.reg.describeTarget(3, dash) == "window 3");
  CHECK(*f.reg.roleName(nameId("main")) == "main");
}
