// The trace ring and trace events (trace/): records in order, wrap with padding, a lapped reader
// counts what it lost, torn copies are never returned (a forked reader checks every body while the
// producer overwrites), the event codec round-trips and rejects malformed bodies, JSON escaping.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "bus_test.hpp"
#include "trace/trace_event.hpp"
#include "segment/segment.hpp"
#include "trace/trace_ring.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace std::chrono_literals;

namespace {
/// A body of `n` bytes whose every byte is derived from `v` (so a torn copy is detectable).
std::vector<std::uint8_t> bodyFor(std::uint64_t v, std::size_t n) {
  std::vector<std::uint8_t> b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(v * 131 + i * 7);
  if (n >= 8) std::memcpy(b.data(), &v, 8);
  return b;
}
bool bodyOk(const std::vector<std::uint8_t>& b) {
  if (b.size() < 8) return false;
  std::uint64_t v;
  std::memcpy(&v, b.data(), 8);
  return b == bodyFor(v, b.size());
}
}  // namespace

TEST_CASE("records come out in order, across the ring's end, with sequence numbers") {
  auto p = TraceProducer::create(kTraceMinCapacity);
  REQUIRE(p.ok());
  auto r = TraceReader::attach(p->fd());
  REQUIRE(r.ok());
  std::vector<std::uint8_t> got;
  CHECK_FALSE(r->next(got));
  // Enough records of varying size to wrap the 64 KiB ring several times, read as they come.
  for (std::uint64_t i = 1; i <= 5000; ++i) {
    p->write(bodyFor(i, 8 + (i * 37) % 300));
    REQUIRE(r->next(got));
    CHECK(bodyOk(got));
    std::uint64_t v;
    std::memcpy(&v, got.data(), 8);
    CHECK(v == i);
    CHECK(r->lastSeq() == i);
  }
  CHECK_FALSE(r->next(got));
  CHECK(r->lost() == 0);
}

TEST_CASE("an inspector cannot resize the trace ring it was handed (its size is sealed)") {
  auto p = TraceProducer::create(kTraceMinCapacity);
  REQUIRE(p.ok());
  CHECK(::fcntl(p->fd(), F_GET_SEALS) == detail::kSegmentSeals);
  CHECK(::ftruncate(p->fd(), 0) == -1);
  CHECK(errno == EPERM);
  p->write(bodyFor(1, 16));  // the producer's mapping is whole
  auto r = TraceReader::attach(p->fd());
  REQUIRE(r.ok());
}

TEST_CASE("a reader attached later starts at the newest record; a lapped reader counts what it lost") {
  auto p = TraceProducer::create(kTraceMinCapacity);
  REQUIRE(p.ok());
  for (std::uint64_t i = 1; i <= 10; ++i) p->write(bodyFor(i, 64));
  auto r = TraceReader::attach(p->fd());
  REQUIRE(r.ok());
  std::vector<std::uint8_t> got;
  CHECK_FALSE(r->next(got));  // what was there before it attached is not shown
  CHECK(r->lastSeq() == 10);
  // 2000 records of 80 B each: about 2.4 times the ring while the reader reads nothing.
  for (std::uint64_t i = 11; i <= 2010; ++i) p->write(bodyFor(i, 64));
  std::vector<std::uint64_t> seen;
  while (r->next(got)) {
    REQUIRE(bodyOk(got));
    std::uint64_t v;
    std::memcpy(&v, got.data(), 8);
    seen.push_back(v);
  }
  REQUIRE(!seen.empty());
  CHECK(seen.back() == 2010);
  for (std::size_t i = 1; i < seen.size(); ++i) CHECK(seen[i] == seen[i - 1] + 1);
  CHECK(r->lost() == seen.front() - 11);  // every record before the first it read
  CHECK(r->lost() + seen.size() == 2000);
  MESSAGE("kept " << seen.size() << " of 2000 records, lost " << r->lost());
}

TEST_CASE("a reader in another process never returns a torn record while the producer laps it") {
  auto p = TraceProducer::create(kTraceMinCapacity);
  REQUIRE(p.ok());
  test::Link link;
  test::Child reader = test::Child::fork([&] {
    auto r = TraceReader::attach(p->fd());
    if (!r) throw std::runtime_error(r.error().toString());
    link.tellParent("attached");
    std::vector<std::uint8_t> got;
    std::uint64_t read = 0, last = 0;
    while (last < 200000) {
      if (!r->next(got)) {
        r->wait(kNoDeadline);
        continue;
      }
      if (!bodyOk(got)) throw std::runtime_error("torn record " + std::to_string(r->lastSeq()));
      std::memcpy(&last, got.data(), 8);
      ++read;
    }
    link.tellParent(std::to_string(read) + " " + std::to_string(r->lost()));
  });
  REQUIRE(link.hearChild() == "attached");
  for (std::uint64_t i = 1; i <= 200000; ++i) p->write(bodyFor(i, 8 + (i * 13) % 500));
  const auto report = link.hearChild(60s);
  MESSAGE("the reader got and lost: " << report);
  CHECK(reader.join(10s) == 0);
}

TEST_CASE("attach refuses memory that is not a trace ring") {
  const int fd = ::memfd_create("not-trace", MFD_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, sizeof(TraceRingHeader) + kTraceMinCapacity) == 0);
  auto r = TraceReader::attach(fd);
  CHECK(r.code() == ErrorCode::InvalidMessage);
  ::close(fd);
}

TEST_CASE("trace events round-trip; malformed bodies are InvalidMessage; JSON escapes strings") {
  TraceEvent e;
  e.kind = TraceKind::Invoke;
  e.startNs = 100;
  e.endNs = 42'000'100;
  e.requestId = 7;
  e.traceId = 9;
  e.channelId = 0x1234;
  e.channel = "GetDashboardData";
  e.sourceId = 0;
  e.sourceRole = "main";
  e.targetId = 2;
  e.targetRole = "dashboard";
  e.status = ErrorCode::Timeout;
  e.error = "said \"no\"\n";
  e.requestBytes = 64;
  e.replyBytes = 128;
  std::vector<std::uint8_t> buf;
  encodeTraceEvent(e, buf);
  auto d = decodeTraceEvent(buf, 5);
  REQUIRE(d.ok());
  CHECK(d->seq == 5);
  CHECK(d->kind == e.kind);
  CHECK(d->channel == e.channel);
  CHECK(d->sourceRole == e.sourceRole);
  CHECK(d->targetRole == e.targetRole);
  CHECK(d->error == e.error);
  CHECK(d->status == e.status);
  CHECK(d->requestId == 7);
  CHECK(d->traceId == 9);
  CHECK(d->replyBytes == 128);
  CHECK(d->durationMs() == doctest::Approx(42.0));
  const std::string json = toJson(*d);
  CHECK(json.find(R"("error":"said \"no\"\n")") != std::string::npos);
  CHECK(json.find(R"("kind":"invoke")") != std::string::npos);
  CHECK(json.find(R"("status":"Timeout")") != std::string::npos);
  CHECK(toText(*d).find("main → dashboard#2") != std::string::npos);

  CHECK(decodeTraceEvent(std::span(buf).first(10), 1).code() == ErrorCode::InvalidMessage);  // short
  auto badLen = buf;
  badLen[4] = 0xff;  // the channel's length runs past the body
  CHECK(decodeTraceEvent(badLen, 1).code() == ErrorCode::InvalidMessage);
  auto badKind = buf;
  badKind[0] = 99;
  CHECK(decodeTraceEvent(badKind, 1).code() == ErrorCode::InvalidMessage);
  // Strings past their bounds are cut, not rejected.
  e.channel = std::string(1000, 'c');
  encodeTraceEvent(e, buf);
  auto cut = decodeTraceEvent(buf, 1);
  REQUIRE(cut.ok());
  CHECK(cut->channel.size() == kTraceChannelMax);
  // A body whose string is longer than its bound (written by no encoder) is InvalidMessage,
  // naming the string: the role of 65 bytes here, with the body's size matching it.
  std::vector<std::uint8_t> longRole(72 + 65, 0);
  longRole[0] = static_cast<std::uint8_t>(TraceKind::Send);
  longRole[6] = 65;  // the source role's length
  auto tooLong = decodeTraceEvent(longRole, 1);
  CHECK(tooLong.code() == ErrorCode::InvalidMessage);
  CHECK(tooLong.error().message.find("source role of 65 bytes (at most 64)") != std::string::npos);
  longRole[6] = 64;
  longRole.pop_back();
  CHECK(decodeTraceEvent(longRole, 1).ok());
}

TEST_CASE("port events carry their port id in an optional tail; a body with a bad tail is InvalidMessage") {
  TraceEvent e{.kind = TraceKind::PortClose, .startNs = 500, .endNs = 500, .channelId = 0x77, .channel = "chat",
               .sourceId = 3, .sourceRole = "opener", .targetId = 4, .targetRole = "acceptor",
               .status = ErrorCode::TargetGone, .error = "the acceptor's window closed or died", .portId = 12};
  std::vector<std::uint8_t> withPort;
  encodeTraceEvent(e, withPort);
  auto d = decodeTraceEvent(withPort, 9);
  REQUIRE(d.ok());
  CHECK(d->kind == TraceKind::PortClose);
  CHECK(d->portId == 12);
  CHECK(d->error == e.error);
  CHECK(std::string(traceKindName(TraceKind::PortOpen)) == "port-open");
  CHECK(std::string(traceKindName(TraceKind::PortClose)) == "port-close");
  CHECK(toText(*d).find("opener#3 ↔ acceptor#4") != std::string::npos);
  CHECK(toText(*d).find("port 12") != std::string::npos);
  CHECK(toJson(*d).find(R"("portId":12)") != std::string::npos);
  CHECK(toJson(*d).find(R"("kind":"port-close")") != std::string::npos);

  // Without a port the body is the layout readers before ports knew: 8 bytes shorter.
  e.portId = 0;
  std::vector<std::uint8_t> without;
  encodeTraceEvent(e, without);
  CHECK(without.size() + 8 == withPort.size());
  auto plain = decodeTraceEvent(without, 1);
  REQUIRE(plain.ok());
  CHECK(plain->portId == 0);

  // An invoke over a port keeps its kind and gains the port.
  e.kind = TraceKind::Invoke;
  e.portId = 5;
  encodeTraceEvent(e, withPort);
  auto call = decodeTraceEvent(withPort, 2);
  REQUIRE(call.ok());
  CHECK(call->kind == TraceKind::Invoke);
  CHECK(call->portId == 5);
  CHECK(toText(*call).find("port 5") != std::string::npos);

  // A tail of 0, a tail of the wrong size, an unknown kind past the port kinds: rejected.
  auto zeroTail = withPort;
  std::fill(zeroTail.end() - 8, zeroTail.end(), std::uint8_t{0});
  CHECK(decodeTraceEvent(zeroTail, 1).code() == ErrorCode::InvalidMessage);
  auto shortTail = withPort;
  shortTail.resize(shortTail.size() - 4);
  CHECK(decodeTraceEvent(shortTail, 1).code() == ErrorCode::InvalidMessage);
  auto longTail = withPort;
  longTail.resize(longTail.size() + 8);
  CHECK(decodeTraceEvent(longTail, 1).code() == ErrorCode::InvalidMessage);
  auto kind11 = withPort;
  kind11[0] = 11;
  CHECK(decodeTraceEvent(kind11, 1).code() == ErrorCode::InvalidMessage);
}
