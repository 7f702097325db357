// Unit tests of the control-socket handshake (lib/src/wire/handshake): the segment layout, the
// checks on what a window asks for, and a full exchange over a socketpair in which the test plays
// the supervisor.
#include "wire/handshake.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "shm_test.hpp"

#include "bus.capnp.h"

using namespace shmbus;
using namespace shmbus::detail;
using shmbus::test::uniqueBus;
using namespace std::chrono_literals;

namespace {

/// Receives one packet on the supervisor's end within `timeout` (an event wait on the socket).
Result<Packet> recvWithin(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return makeError(ErrorCode::Timeout, "no packet");
  return recvPacket(fd);
}

ControlType typeOf(const Packet& p) {
  ControlHeader h{};
  REQUIRE(p.bytes.size() >= sizeof h);
  std::memcpy(&h, p.bytes.data(), sizeof h);
  return static_cast<ControlType>(h.type);
}

/// The window's side of the handshake on its own thread; joined on destruction (after the
/// supervisor's end, declared later, is closed, so a failed test cannot leave it waiting).
struct WindowSide {
  std::optional<Result<WindowLink>> link;
  std::jthread thread;
  WindowSide(int sock, HelloParams p, std::string bus)
      : thread([this, sock, p = std::move(p), bus = std::move(bus)] { link = helloAndWelcome(sock, p, bus, 10s); }) {}
  Result<WindowLink>& result() {
    thread.join();
    return *link;
  }
};

/// Unlinks a segment name at scope exit, whatever the test's outcome.

}  // namespace

TEST_CASE("the segment layout places board and rings 64-byte aligned, in order, without overlap") {
  for (auto sizes : {std::pair{4096u, 4096u}, {16384u, 8192u}, {64u << 20, 4096u}, {4096u, 64u << 20}}) {
    // Plain variables, not a structured binding: INFO captures them in a lambda (clang 14 refuses
    // to capture structured bindings).
    const unsigned in = sizes.first, out = sizes.second;
    INFO("inbox ", in, " outbox ", out);
    const SegmentLayout l = segmentLayout(in, out);
    CHECK(l.boardOffset == sizeof(SegmentHeader));
    CHECK(l.boardOffset % 64 == 0);
    CHECK(l.inboxOffset % 64 == 0);
    CHECK(l.outboxOffset % 64 == 0);
    CHECK(l.boardOffset + sizeof(CancelBoard) <= l.inboxOffset);
    CHECK(l.inboxOffset + ringFootprint(in) <= l.outboxOffset);
    CHECK(l.outboxOffset + ringFootprint(out) == l.totalBytes);
    CHECK(l.totalBytes == sizeof(SegmentHeader) + sizeof(CancelBoard) + ringFootprint(in) + ringFootprint(out));
  }
}

TEST_CASE("ring sizes must be powers of two from 4 KiB to 64 MiB") {
  CHECK(checkRingSizes(4096, 64u << 20).ok());
  CHECK(checkRingSizes(1u << 20, 8192).ok());
  for (auto [in, out] : {std::pair{2048u, 4096u}, {4096u, 128u << 20}, {6000u, 4096u}, {0u, 4096u}, {4096u, 0u}}) {
    auto r = checkRingSizes(in, out);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == ErrorCode::InvalidArgument);
    CHECK(r.error().message.find(std::to_string(in) + " / " + std::to_string(out)) != std::string::npos);
  }
}

TEST_CASE("a window and a supervisor complete the handshake and share rings, board and doorbell") {
  const std::string bus = uniqueBus("hs");
  auto pair = seqpacketPair();
  REQUIRE(pair.ok());
  Fd winSock = std::move(pair->second);
  WindowSide window(winSock.get(), HelloParams{"dash", 16384, 8192, false, "00ff00ff"}, bus);
  Fd sup = std::move(pair->first);

  auto hello = recvWithin(sup.get(), 10s);
  REQUIRE(hello.ok());
  CHECK(typeOf(*hello) == ControlType::Hello);
  auto req = parseHello(*hello);
  REQUIRE(req.ok());
  CHECK(req->role == "dash");
  CHECK(req->token == "00ff00ff");
  CHECK(req->inboxBytes == 16384);
  CHECK(req->outboxBytes == 8192);
  REQUIRE(checkRingSizes(req->inboxBytes, req->outboxBytes).ok());

  auto seg = createWindowSegment(bus, 7, req->inboxBytes, req->outboxBytes, 1u << 16);
  REQUIRE(seg.ok());
  // A sealed memfd: no name in /dev/shm, and no mapper can resize it (a window that shrank it
  // would make the supervisor's accesses past the new end raise SIGBUS).
  REQUIRE(seg->segment->fd() >= 0);
  CHECK(::fcntl(seg->segment->fd(), F_GET_SEALS) == kSegmentSeals);
  CHECK(::ftruncate(seg->segment->fd(), 0) == -1);
  CHECK(errno == EPERM);
  CHECK(::ftruncate(seg->segment->fd(), static_cast<off_t>(seg->segment->size() * 2)) == -1);
  CHECK(errno == EPERM);
  CHECK(seg->maxRecord == 4096);  // min(1 << 16, the smaller ring / 2)
  const SegmentLayout l = segmentLayout(16384, 8192);
  CHECK(seg->segment->size() == l.totalBytes);
  CHECK(seg->inboxOffset == l.inboxOffset);
  CHECK(seg->outboxOffset == l.outboxOffset);
  CHECK(seg->boardOffset == l.boardOffset);

  Fd doorbell(::eventfd(0, EFD_CLOEXEC));
  REQUIRE(doorbell);
  REQUIRE(sendWelcome(sup.get(), bus, 7, req->role, *seg, doorbell.get()).ok());
  auto mapped = recvWithin(sup.get(), 10s);
  REQUIRE(mapped.ok());
  CHECK(typeOf(*mapped) == ControlType::Mapped);

  auto& link = window.result();
  REQUIRE_MESSAGE(link.ok(), link.error().toString());
  CHECK(link->id == 7);
  CHECK(link->role == "dash");
  CHECK(link->segment->size() == l.totalBytes);

  // The doorbell is the supervisor's eventfd.
  const std::uint64_t ring = 5;
  REQUIRE(::write(doorbell.get(), &ring, sizeof ring) == sizeof ring);
  std::uint64_t heard = 0;
  REQUIRE(::read(link->doorbell.get(), &heard, sizeof heard) == sizeof heard);
  CHECK(heard == 5);

  // Supervisor → window on the inbox, window → supervisor on the outbox, and the cancel board.
  auto c = seg->inbox.tryClaim(3);
  REQUIRE(c.ok());
  std::memcpy(c->body, "in!", 3);
  seg->inbox.publish(*c, 3);
  auto got = link->inbox.tryRead();
  REQUIRE(got.ok());
  REQUIRE(got->has_value());
  CHECK(std::string(reinterpret_cast<const char*>((*got)->body), (*got)->bodyBytes) == "in!");

  auto o = link->outbox.tryClaim(4);
  REQUIRE(o.ok());
  std::memcpy(o->body, "out!", 4);
  link->outbox.publish(*o, 4);
  auto back = seg->outbox.tryRead();
  REQUIRE(back.ok());
  REQUIRE(back->has_value());
  CHECK(std::string(reinterpret_cast<const char*>((*back)->body), (*back)->bodyBytes) == "out!");

  CHECK_FALSE(link->cancels->contains(99));
  seg->cancels->post(99);
  CHECK(link->cancels->contains(99));
}

TEST_CASE("a refused hello returns the supervisor's error and leaves no segment") {
  const std::string bus = uniqueBus("hsno");
  auto pair = seqpacketPair();
  REQUIRE(pair.ok());
  Fd winSock = std::move(pair->second);
  WindowSide window(winSock.get(), HelloParams{"dash", 0, 0, false}, bus);
  Fd sup = std::move(pair->first);

  auto hello = recvWithin(sup.get(), 10s);
  REQUIRE(hello.ok());
  auto req = parseHello(*hello);
  REQUIRE(req.ok());
  CHECK(req->inboxBytes == 0);  // 0 asks for the supervisor's default
  sendWelcomeError(sup.get(), makeError(ErrorCode::Denied, "role 'dash' is not allowed on this bus"));

  auto& link = window.result();
  REQUIRE_FALSE(link.ok());
  CHECK(link.code() == ErrorCode::Denied);
  CHECK(link.error().message == "role 'dash' is not allowed on this bus");
}

TEST_CASE("a welcome without a doorbell is InvalidMessage") {
  const std::string bus = uniqueBus("hsfd");
  auto pair = seqpacketPair();
  REQUIRE(pair.ok());
  Fd winSock = std::move(pair->second);
  WindowSide window(winSock.get(), HelloParams{"dash", 4096, 4096, false}, bus);
  Fd sup = std::move(pair->first);
  REQUIRE(recvWithin(sup.get(), 10s).ok());
  auto seg = createWindowSegment(bus, 1, 4096, 4096, 1024);
  REQUIRE(seg.ok());
  REQUIRE(sendWelcome(sup.get(), bus, 1, "dash", *seg, -1).ok());
  auto& link = window.result();
  CHECK(link.code() == ErrorCode::InvalidMessage);
}

TEST_CASE("no welcome in time is Timeout, and a closed supervisor is BusClosed") {
  auto pair = seqpacketPair();
  REQUIRE(pair.ok());
  auto silent = helloAndWelcome(pair->second.get(), HelloParams{"dash"}, "quiet", 20ms);
  CHECK(silent.code() == ErrorCode::Timeout);
  CHECK(silent.error().message.find("'quiet'") != std::string::npos);

  auto pair2 = seqpacketPair();
  REQUIRE(pair2.ok());
  pair2->first.reset();
  CHECK(helloAndWelcome(pair2->second.get(), HelloParams{"dash"}, "gone", 1s).code() == ErrorCode::BusClosed);
}

TEST_CASE("a malformed hello is InvalidMessage") {
  Packet headerOnly;
  headerOnly.bytes.resize(sizeof(ControlHeader));
  CHECK(parseHello(headerOnly).code() == ErrorCode::InvalidMessage);

  Packet garbage;
  garbage.bytes.assign(sizeof(ControlHeader) + 64, 0xff);
  CHECK(parseHello(garbage).code() == ErrorCode::InvalidMessage);
}

TEST_CASE("a hello shorter than its control header is InvalidMessage") {
  // parseHello takes untrusted packets: a 4-byte one must not make bodyWords() subtract the
  // header size unchecked (a vector of ~2^61 words, std::length_error).
  Packet shortPkt;
  shortPkt.bytes.resize(4);
  CHECK(parseHello(shortPkt).code() == ErrorCode::InvalidMessage);
}

namespace {
/// A control packet of `type` carrying `mb` as a flat array, as sendControl lays it out.
Packet packetOf(ControlType type, capnp::MessageBuilder& mb) {
  Packet p;
  const ControlHeader h{static_cast<std::uint32_t>(type), 0, 0};
  p.bytes.resize(sizeof h);
  std::memcpy(p.bytes.data(), &h, sizeof h);
  const auto words = capnp::messageToFlatArray(mb);
  const auto bytes = words.asBytes();
  p.bytes.insert(p.bytes.end(), bytes.begin(), bytes.end());
  return p;
}

/// A refused Welcome carrying error code `code`.
Packet refusal(std::uint16_t code) {
  capnp::MallocMessageBuilder mb;
  auto w = mb.initRoot<schema::Welcome>();
  w.setOk(false);
  w.initError().setCode(code);
  return packetOf(ControlType::Welcome, mb);
}
}  // namespace

TEST_CASE("a refused welcome keeps its error code; Ok or an unknown code is InvalidMessage") {
  CHECK(parseWelcome(refusal(static_cast<std::uint16_t>(ErrorCode::Denied)), "b").code() == ErrorCode::Denied);
  CHECK(parseWelcome(refusal(static_cast<std::uint16_t>(ErrorCode::InvalidArgument)), "b").code() ==
        ErrorCode::InvalidArgument);
  CHECK(parseWelcome(refusal(0), "b").code() == ErrorCode::InvalidMessage);
  CHECK(parseWelcome(refusal(999), "b").code() == ErrorCode::InvalidMessage);
}

TEST_CASE("a welcome whose rings or board lie outside the segment fails the layout check") {
  const SegmentLayout l = segmentLayout(4096, 4096);
  WelcomeInfo w;
  w.inbox = w.outbox = RingGeometry{4096, 1024};
  w.boardOffset = l.boardOffset;
  w.inboxOffset = l.inboxOffset;
  w.outboxOffset = l.outboxOffset;
  CHECK(checkWelcomeLayout(w, l.totalBytes).ok());
  CHECK(checkWelcomeLayout(w, l.totalBytes - 64).code() == ErrorCode::InvalidMessage);
  WelcomeInfo far = w;
  far.outboxOffset = ~std::uint64_t{63};  // the sum with the ring's size would overflow
  CHECK(checkWelcomeLayout(far, l.totalBytes).code() == ErrorCode::InvalidMessage);
  WelcomeInfo bad = w;
  bad.inbox.maxRecord = 4096;  // more than half the capacity
  CHECK(checkWelcomeLayout(bad, l.totalBytes).code() == ErrorCode::InvalidMessage);
}

TEST_CASE("a control packet that is short or of an unknown type is InvalidMessage") {
  Packet p;
  p.bytes.resize(sizeof(ControlHeader) - 1);
  CHECK(parseControlHeader(p).code() == ErrorCode::InvalidMessage);
  p.bytes.assign(sizeof(ControlHeader), 0);
  CHECK(parseControlHeader(p).code() == ErrorCode::InvalidMessage);  // type 0
  p.bytes[0] = static_cast<std::uint8_t>(ControlType::Mapped);
  CHECK(parseControlHeader(p)->type == static_cast<std::uint32_t>(ControlType::Mapped));
  p.bytes[0] = 77;
  CHECK(parseControlHeader(p).code() == ErrorCode::InvalidMessage);
}

TEST_CASE("a port's two ends map one window layout with the rings swapped, and share its close word") {
  const std::string bus = uniqueBus("hs-port");
  auto seg = createWindowSegment(bus, 7, kDefaultPortRingBytes, kDefaultPortRingBytes, 1u << 18);
  REQUIRE(seg.ok());
  const int fd = seg->segment->fd();
  auto end = [&](bool swapped) {
    capnp::MallocMessageBuilder mb;
    fillWelcome(mb, bus, swapped ? 1 : 2, swapped ? "opener" : "acceptor", *seg, swapped, 7);
    capnp::SegmentArrayMessageReader reader(mb.getSegmentsForOutput());
    auto info = readWelcome(reader);
    REQUIRE(info.ok());
    CHECK(info->portId == 7);
    CHECK(info->id == (swapped ? 1u : 2u));
    auto mapped = Segment::map(fd, info->segmentName);
    REQUIRE(mapped.ok());
    WindowLink link;
    REQUIRE(attachLink(link, *info, std::move(*mapped), true, -1).ok());
    return link;
  };
  WindowLink opener = end(false), acceptor = end(true);
  // What the opener writes, the acceptor reads, and the other way round.
  auto claim = opener.outbox.tryClaim(8);
  REQUIRE(claim.ok());
  std::memcpy(claim->body, "opener!", 8);
  opener.outbox.publish(*claim, 8);
  auto rec = acceptor.inbox.tryRead();
  REQUIRE(rec.ok());
  REQUIRE(rec->has_value());
  CHECK(std::memcmp((*rec)->body, "opener!", 8) == 0);
  CHECK(reinterpret_cast<std::uint8_t*>(acceptor.outbox.control()) - acceptor.segment->base() ==
        reinterpret_cast<std::uint8_t*>(opener.inbox.control()) - opener.segment->base());
  // One close word for both (and the supervisor's mapping).
  // relaxed: one thread; the mappings alias the same page.
  CHECK(closeWord(opener.segment->base()).load(std::memory_order_relaxed) == kPortOpen);
  closeWord(seg->segment->base()).store(kPortRevoked, std::memory_order_relaxed);
  CHECK(closeWord(acceptor.segment->base()).load(std::memory_order_relaxed) == kPortRevoked);
  CHECK(portCloseText(kPortClosedByAcceptor, true) == "the peer closed it");
  CHECK(portCloseText(kPortClosedByAcceptor, false) == "this side closed it");
  CHECK(portCloseText(99, true) == "it was closed (reason 99)");
}

TEST_CASE("a port's blob arenas follow its rings, page aligned, sparse, and each end writes the one the other reads") {
  const std::string bus = uniqueBus("hs-blob");
  constexpr std::uint64_t kBlob = 64u << 20;
  const SegmentLayout l = segmentLayout(kDefaultPortRingBytes, kDefaultPortRingBytes, kBlob);
  CHECK(l.inboxBlobOffset % 4096 == 0);
  CHECK(l.inboxBlobOffset >= segmentLayout(kDefaultPortRingBytes, kDefaultPortRingBytes).totalBytes);
  CHECK(l.outboxBlobOffset == l.inboxBlobOffset + kBlob);
  CHECK(l.totalBytes == l.outboxBlobOffset + kBlob);
  auto seg = createWindowSegment(bus, 9, kDefaultPortRingBytes, kDefaultPortRingBytes, 1u << 18, kBlob);
  REQUIRE(seg.ok());
  CHECK(seg->segment->size() == l.totalBytes);
  {
    // Sparse: the file is as large as both arenas, yet holds only the pages written so far.
    struct stat st {};
    REQUIRE(::fstat(seg->segment->fd(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) == l.totalBytes);
    CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 < (1u << 20));
  }
  auto info = [&](bool swapped) {
    capnp::MallocMessageBuilder mb;
    fillWelcome(mb, bus, 1, "peer", *seg, swapped, 9);
    capnp::SegmentArrayMessageReader reader(mb.getSegmentsForOutput());
    auto w = readWelcome(reader);
    REQUIRE(w.ok());
    CHECK(checkWelcomeLayout(*w, seg->segment->size()).ok());
    return *w;
  };
  const WelcomeInfo opener = info(false), acceptor = info(true);
  CHECK(opener.blobBytes == kBlob);
  CHECK(opener.blobOutOffset == acceptor.blobInOffset);
  CHECK(opener.blobInOffset == acceptor.blobOutOffset);
  CHECK(opener.blobOutOffset != opener.blobInOffset);
  // An arena outside the segment, of a size no page multiple, or overflowing is refused.
  WelcomeInfo bad = opener;
  bad.blobOutOffset = seg->segment->size() - 4096;
  CHECK(checkWelcomeLayout(bad, seg->segment->size()).code() == ErrorCode::InvalidMessage);
  bad = opener;
  bad.blobBytes = kBlob + 64;
  CHECK(checkWelcomeLayout(bad, seg->segment->size()).code() == ErrorCode::InvalidMessage);
  bad = opener;
  bad.blobInOffset = ~std::uint64_t{4095};
  CHECK(checkWelcomeLayout(bad, seg->segment->size()).code() == ErrorCode::InvalidMessage);
}
