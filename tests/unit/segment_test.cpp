// Unit tests of shared memory segments (lib/src/segment).
#include "segment/segment.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string>

#include "shm_test.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using shmbus::test::Child;
using shmbus::test::uniqueBus;
using namespace std::chrono_literals;

namespace {
/// Unlinks a name at scope exit (the test's own cleanup, whatever the outcome).
struct NameGuard {
  std::string name;
  ~NameGuard() { Segment::unlink(name); }
};

/// Creates a segment or fails the test.
Segment mustCreate(const std::string& name, std::size_t bytes) {
  auto s = Segment::create(name, bytes);
  REQUIRE_MESSAGE(s.ok(), s.error().toString());
  return std::move(s).value();
}
}  // namespace

TEST_CASE("a created segment is zero filled, mode 0600, and starts with its header") {
  const std::string bus = uniqueBus("seg");
  NameGuard g{Segment::makeName(bus, 1)};
  Segment s = mustCreate(g.name, 64 * 1024);
  CHECK(s.mapped());
  CHECK(s.size() == 64 * 1024);
  CHECK(s.name() == g.name);

  const auto* h = reinterpret_cast<const SegmentHeader*>(s.base());
  CHECK(h->magic == kSegmentMagic);
  CHECK(h->version == kSegmentVersion);
  CHECK(h->creatorPid == ::getpid());
  CHECK(h->totalBytes == 64 * 1024);
  for (std::size_t i = sizeof(SegmentHeader); i < s.size(); ++i) REQUIRE(s.base()[i] == 0);

  struct stat st{};
  REQUIRE(::stat(("/dev/shm/" + g.name).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_uid == ::getuid());
}

TEST_CASE("a sealed segment has no name, keeps its descriptor until closed, and no one can resize it") {
  const std::string name = Segment::makeName(uniqueBus("sealed"), 3);
  auto made = Segment::createSealed(name, 64 * 1024);
  REQUIRE_MESSAGE(made.ok(), made.error().toString());
  Segment& s = *made;
  CHECK(s.size() == 64 * 1024);
  const auto* h = reinterpret_cast<const SegmentHeader*>(s.base());
  CHECK(h->magic == kSegmentMagic);
  CHECK(h->creatorPid == ::getpid());
  CHECK(h->totalBytes == 64 * 1024);
  for (std::size_t i = sizeof(SegmentHeader); i < s.size(); ++i) REQUIRE(s.base()[i] == 0);
  CHECK(::access(("/dev/shm/" + name).c_str(), F_OK) != 0);
  REQUIRE(s.fd() >= 0);
  CHECK(::fcntl(s.fd(), F_GET_SEALS) == kSegmentSeals);
  CHECK(::ftruncate(s.fd(), 4096) == -1);
  CHECK(errno == EPERM);
  CHECK(::ftruncate(s.fd(), 1 << 20) == -1);
  CHECK(errno == EPERM);
  CHECK(::fcntl(s.fd(), F_ADD_SEALS, F_SEAL_WRITE) == -1);  // F_SEAL_SEAL: no more seals
  // Another mapping of the descriptor sees the same memory; closing the descriptor keeps both.
  auto other = Segment::map(s.fd(), name);
  REQUIRE(other.ok());
  s.closeFd();
  CHECK(s.fd() == -1);
  s.base()[100] = 42;
  CHECK(other->base()[100] == 42);
}

TEST_CASE("the mode is 0600 whatever the umask") {
  const std::string bus = uniqueBus("umask");
  NameGuard g{Segment::makeName(bus, 1)};
  const mode_t old = ::umask(0277);  // would leave 0400: the owner could not map it read/write
  auto s = Segment::create(g.name, 4096);
  ::umask(old);
  REQUIRE(s.ok());
  struct stat st{};
  REQUIRE(::stat(("/dev/shm/" + g.name).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
}

TEST_CASE("an opened segment maps the same memory with the size of the object") {
  const std::string bus = uniqueBus("open");
  NameGuard g{Segment::makeName(bus, 7)};
  Segment a = mustCreate(g.name, 3 * 4096);
  auto b = Segment::open(g.name);
  REQUIRE(b.ok());
  CHECK(b->size() == 3 * 4096);
  CHECK(b->base() != a.base());
  a.base()[5000] = 42;
  CHECK(b->base()[5000] == 42);
  b->base()[12287] = 7;
  CHECK(a.base()[12287] == 7);
}

TEST_CASE("opening a missing or too small segment fails with SystemError") {
  const std::string bus = uniqueBus("missing");
  auto missing = Segment::open(Segment::makeName(bus, 1));
  CHECK(missing.code() == ErrorCode::SystemError);
  CHECK(missing.error().message.find("shmbus." + bus) != std::string::npos);

  NameGuard g{Segment::makeName(bus, 2)};
  const int fd = ::shm_open(g.name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, 10) == 0);
  ::close(fd);
  auto small = Segment::open(g.name);
  CHECK(small.code() == ErrorCode::SystemError);
  CHECK(small.error().message.find("too small") != std::string::npos);
}

TEST_CASE("creating a name that exists fails with SystemError and leaves the existing segment alone") {
  const std::string bus = uniqueBus("exists");
  NameGuard g{Segment::makeName(bus, 1)};
  Segment first = mustCreate(g.name, 4096);
  first.base()[100] = 9;
  auto second = Segment::create(g.name, 8192);
  CHECK(second.code() == ErrorCode::SystemError);
  CHECK(Segment::countNames(bus) == 1);
  auto again = Segment::open(g.name);
  REQUIRE(again.ok());
  CHECK(again->size() == 4096);
  CHECK(again->base()[100] == 9);
}

TEST_CASE("a segment smaller than its header is a caller bug") {
  CHECK_THROWS_AS(Segment::create(Segment::makeName(uniqueBus("tiny"), 1), 10), UsageError);
}

TEST_CASE("unlink removes the name once while the mapping stays usable") {
  const std::string bus = uniqueBus("unlink");
  const std::string name = Segment::makeName(bus, 1);
  Segment s = mustCreate(name, 4096);
  CHECK(Segment::countNames(bus) == 1);
  CHECK(Segment::unlink(name));
  CHECK_FALSE(Segment::unlink(name));
  CHECK(Segment::countNames(bus) == 0);
  CHECK(Segment::open(name).code() == ErrorCode::SystemError);
  s.base()[4095] = 1;  // still mapped
  CHECK(s.base()[4095] == 1);
}

TEST_CASE("a moved segment keeps its mapping and the source is left empty") {
  const std::string bus = uniqueBus("move");
  NameGuard g{Segment::makeName(bus, 1)};
  Segment a = mustCreate(g.name, 4096);
  std::uint8_t* base = a.base();
  Segment b = std::move(a);
  CHECK(b.base() == base);
  CHECK(b.mapped());
  CHECK_FALSE(a.mapped());  // NOLINT(bugprone-use-after-move): checking the moved-from state
}

TEST_CASE("segment names follow shmbus.<bus>.<id>.<nonce> and never repeat") {
  const std::string name = Segment::makeName("demo", 42);
  CHECK(name.rfind("shmbus.demo.42.", 0) == 0);
  CHECK(name.size() == std::string("shmbus.demo.42.").size() + 16);
  std::set<std::string> names;
  for (int i = 0; i < 1000; ++i) names.insert(Segment::makeName("demo", 42));
  CHECK(names.size() == 1000);
}

TEST_CASE("names made in a forked child differ from the parent's") {
  // A child forked from a process that already made names inherits its generator: without a
  // reseed both would make the same "unique" names.
  (void)Segment::makeName("fork", 1);
  test::Pipe pipe;
  std::string childName;
  Child child = Child::fork([&] {
    const std::string n = Segment::makeName("fork", 1);
    for (char c : n) pipe.send(static_cast<std::uint8_t>(c));
    pipe.send(0);
  });
  for (auto c = pipe.receive(5s); c && *c != 0; c = pipe.receive(5s)) childName += static_cast<char>(*c);
  CHECK(child.join(10s) == 0);
  const std::string parentName = Segment::makeName("fork", 1);
  REQUIRE(childName.size() == parentName.size());
  CHECK(childName != parentName);
}

TEST_CASE("removeStale removes the names of a dead creator and keeps a live creator's") {
  const std::string bus = uniqueBus("stale");
  const std::string other = uniqueBus("stale");
  NameGuard mine{Segment::makeName(bus, 1)};
  NameGuard otherBus{Segment::makeName(other, 1)};
  Segment live = mustCreate(mine.name, 4096);
  Segment elsewhere = mustCreate(otherBus.name, 4096);

  std::string deadName = Segment::makeName(bus, 2);
  NameGuard dead{deadName};
  Child creator = Child::fork([&] {
    auto s = Segment::create(deadName, 4096);
    test::childCheck(s.ok(), "create in the child failed: " + s.error().toString());
    ::_exit(0);  // a crash: no unlink
  });
  REQUIRE(creator.join(10s) == 0);  // reaped: kill(pid, 0) now says ESRCH
  CHECK(Segment::countNames(bus) == 2);

  CHECK(Segment::removeStale(bus) == 1);
  CHECK(Segment::countNames(bus) == 1);
  CHECK(Segment::open(deadName).code() == ErrorCode::SystemError);
  CHECK(Segment::open(mine.name).ok());
  CHECK(Segment::countNames(other) == 1);  // another bus is never touched
  CHECK(Segment::removeStale(bus) == 0);
}

TEST_CASE("removeStale removes a name whose header is not a segment header") {
  const std::string bus = uniqueBus("foreign");
  NameGuard g{Segment::makeName(bus, 1)};
  const int fd = ::shm_open(g.name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, "not a shmbus segment header, just some bytes .........................", 64) == 64);
  ::close(fd);
  CHECK(Segment::countNames(bus) == 1);
  CHECK(Segment::removeStale(bus) == 1);
  CHECK(Segment::countNames(bus) == 0);
}

TEST_CASE("countNames counts only the names of its own bus") {
  const std::string bus = uniqueBus("count");
  CHECK(Segment::countNames(bus) == 0);
  NameGuard a{Segment::makeName(bus, 1)};
  NameGuard b{Segment::makeName(bus, 2)};
  NameGuard c{Segment::makeName(bus + "x", 1)};  // a bus whose name extends ours
  Segment sa = mustCreate(a.name, 4096);
  Segment sb = mustCreate(b.name, 4096);
  Segment sc = mustCreate(c.name, 4096);
  CHECK(Segment::countNames(bus) == 2);
  CHECK(Segment::countNames(bus + "x") == 1);
}
