// control/bus_lock: one supervisor per bus, the lock's holder named, a dead holder's lock free.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "control/bus_lock.hpp"
#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::test;

namespace {
std::string testSocketPath(const std::string& tag) {
  auto dir = runtimeDir();
  REQUIRE(dir.ok());
  return *dir + "/" + uniqueBus(tag) + ".sock";
}
bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}
}  // namespace

TEST_CASE("a second lock of the same path in the same process is refused, naming the bus and this pid") {
  const std::string sock = testSocketPath("lock");
  auto first = BusLock::acquire("demo", sock);
  REQUIRE_MESSAGE(first.ok(), first.error().toString());
  auto second = BusLock::acquire("demo", sock);
  REQUIRE_FALSE(second.ok());
  CHECK(second.code() == ErrorCode::Denied);
  CHECK(second.error().message ==
        "bus 'demo' already has a supervisor: pid " + std::to_string(::getpid()) + " listens on " + sock);
  // The refusal did not disturb the holder: a forked process is still refused.
  Child c = Child::fork([&] {
    auto again = BusLock::acquire("demo", sock);
    childCheck(again.code() == ErrorCode::Denied, "a child got the lock: " + again.error().toString());
    childCheck(again.error().message.find("pid " + std::to_string(::getppid())) != std::string::npos,
               "holder not named: " + again.error().message);
  });
  CHECK(c.join(std::chrono::seconds(10)) == 0);
  first->release();
  CHECK_FALSE(exists(sock + ".lock"));
  auto third = BusLock::acquire("demo", sock);
  CHECK(third.ok());
}

TEST_CASE("the lock dies with its process, not with a child that inherited the descriptor") {
  const std::string sock = testSocketPath("dead");
  Link link;
  Child holder = Child::fork([&] {
    auto lock = BusLock::acquire("demo", sock);
    childCheck(lock.ok(), lock.error().toString());
    link.tellParent("locked");
    link.hearParent(std::chrono::seconds(60));
  });
  REQUIRE(link.hearChild() == "locked");
  CHECK(BusLock::acquire("demo", sock).code() == ErrorCode::Denied);
  ::kill(holder.pid(), SIGKILL);
  CHECK(holder.join(std::chrono::seconds(10)) == 128 + SIGKILL);
  // The file is still there (nobody removed it), the lock is not.
  CHECK(exists(sock + ".lock"));
  auto mine = BusLock::acquire("demo", sock);
  REQUIRE_MESSAGE(mine.ok(), mine.error().toString());

  // A child forked now inherits the descriptor but not the lock: its exit changes nothing.
  Child inherits = Child::fork([] {});
  CHECK(inherits.join(std::chrono::seconds(10)) == 0);
  Child prober = Child::fork([&] {
    childCheck(BusLock::acquire("demo", sock).code() == ErrorCode::Denied, "the lock went with a child");
  });
  CHECK(prober.join(std::chrono::seconds(10)) == 0);
}

TEST_CASE("removeStaleSocket removes a socket file, accepts a missing one, and leaves other files alone") {
  const std::string sock = testSocketPath("stale");
  CHECK(removeStaleSocket("demo", sock).ok());  // missing
  {
    Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", sock.c_str());
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  REQUIRE(exists(sock));
  CHECK(removeStaleSocket("demo", sock).ok());
  CHECK_FALSE(exists(sock));
  std::ofstream(sock) << "not a socket";
  auto r = removeStaleSocket("demo", sock);
  CHECK(r.code() == ErrorCode::SystemError);
  CHECK(r.error().message.find("is not a socket") != std::string::npos);
  CHECK(exists(sock));
  ::unlink(sock.c_str());
}

TEST_CASE("removeStaleSocket leaves a socket that answers, naming the bus and the listener's pid") {
  const std::string sock = testSocketPath("live");
  auto listening = listenSeqpacket(sock);
  REQUIRE_MESSAGE(listening.ok(), listening.error().toString());
  Child c = Child::fork([&] {
    auto r = removeStaleSocket("demo", sock);
    childCheck(r.code() == ErrorCode::Denied, "a live socket was not refused: " + r.error().toString());
    childCheck(r.error().message == "bus 'demo' already has a supervisor: pid " + std::to_string(::getppid()) +
                                        " listens on " + sock,
               r.error().message);
  });
  CHECK(c.join(std::chrono::seconds(10)) == 0);
  CHECK(exists(sock));
  auto probe = probeListener(sock);
  REQUIRE(probe.ok());
  CHECK((*probe && (*probe)->pid == ::getpid()));
  listening->reset();  // nobody listens any more: the file is stale now
  probe = probeListener(sock);
  REQUIRE(probe.ok());
  CHECK_FALSE(probe->has_value());
  CHECK(removeStaleSocket("demo", sock).ok());
  CHECK_FALSE(exists(sock));
}
