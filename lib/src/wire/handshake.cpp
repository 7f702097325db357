#include "wire/handshake.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "blob/blob.hpp"
#include "common/validate.hpp"
#include "protocol/frame.hpp"
#include "wait/wait.hpp"

#include "bus.capnp.h"

namespace shmbus::detail {

namespace {
bool isPowerOfTwo(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

std::vector<std::uint64_t> bodyWords(const Packet& pkt) {
  std::vector<std::uint64_t> words((pkt.bytes.size() - sizeof(ControlHeader)) / sizeof(capnp::word));
  // An empty body leaves data() null, which memcpy must not get even for 0 bytes (UBSan).
  if (!words.empty()) {
    std::memcpy(words.data(), pkt.bytes.data() + sizeof(ControlHeader), words.size() * sizeof(capnp::word));
  }
  return words;
}

capnp::ReaderOptions boundedControlReader(std::uint64_t traversalWords) {
  capnp::ReaderOptions ro;
  ro.traversalLimitInWords = traversalWords;
  ro.nestingLimit = 8;
  return ro;
}

kj::ArrayPtr<const capnp::word> wordsOf(const std::vector<std::uint64_t>& words) {
  return kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size());
}

Result<void> sendControl(int sock, ControlType type, std::uint64_t value, capnp::MessageBuilder* mb, int fd,
                         int fd2) {
  std::vector<std::uint8_t> pkt(sizeof(ControlHeader));
  ControlHeader h{static_cast<std::uint32_t>(type), 0, value};
  std::memcpy(pkt.data(), &h, sizeof h);
  if (mb != nullptr) {
    auto words = capnp::messageToFlatArray(*mb);
    auto bytes = words.asBytes();
    pkt.insert(pkt.end(), bytes.begin(), bytes.end());
  }
  std::vector<int> fds;
  for (int f : {fd, fd2}) {
    if (f >= 0) fds.push_back(f);
  }
  return sendPacket(sock, pkt.data(), pkt.size(), fds);
}

Result<HelloRequest> parseHello(const Packet& pkt) {
  if (pkt.bytes.size() < sizeof(ControlHeader)) return makeError(ErrorCode::InvalidMessage, "hello shorter than its header");
  auto words = bodyWords(pkt);
  try {
    capnp::FlatArrayMessageReader reader(wordsOf(words), boundedControlReader());
    auto hello = reader.getRoot<schema::Hello>();
    return HelloRequest{hello.getRole(), hello.getInviteToken(), hello.getInboxBytes(), hello.getOutboxBytes()};
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed hello: ") + e.getDescription().cStr());
  }
}

Result<void> checkRingSizes(std::uint32_t in, std::uint32_t out) {
  auto ok = [](std::uint32_t c) { return isPowerOfTwo(c) && c >= 4096 && c <= (64u << 20); };
  if (ok(in) && ok(out)) return {};
  return makeError(ErrorCode::InvalidArgument,
                   fmt::format("ring sizes {} / {} bytes must be powers of two in [4 KiB, 64 MiB]", in, out));
}

SegmentLayout segmentLayout(std::uint32_t inCap, std::uint32_t outCap, std::uint64_t blobBytes,
                            bool routeStats) noexcept {
  SegmentLayout l;
  l.boardOffset = sizeof(SegmentHeader);
  l.inboxOffset = l.boardOffset + sizeof(CancelBoard);
  l.outboxOffset = l.inboxOffset + ringFootprint(inCap);
  l.totalBytes = l.outboxOffset + ringFootprint(outCap);
  if (blobBytes != 0) {
    l.inboxBlobOffset = alignUp(l.totalBytes, kBlobPage);
    l.outboxBlobOffset = l.inboxBlobOffset + blobBytes;
    l.totalBytes = l.outboxBlobOffset + blobBytes;
  }
  if (routeStats) {
    l.routeStatsOffset = alignUp(l.totalBytes, 64);
    l.totalBytes = l.routeStatsOffset + sizeof(RouteStatsTable);
  }
  return l;
}

Result<WindowSegment> createWindowSegment(const std::string& bus, std::uint32_t id, std::uint32_t inCap,
                                          std::uint32_t outCap, std::uint32_t maxRecordBytes, std::uint64_t blobBytes,
                                          bool routeStats) {
  WindowSegment w;
  w.inboxBytes = inCap;
  w.outboxBytes = outCap;
  w.maxRecord = std::min<std::uint32_t>(maxRecordBytes, std::min(inCap, outCap) / 2);
  const SegmentLayout l = segmentLayout(inCap, outCap, blobBytes, routeStats);
  w.routeStatsOffset = l.routeStatsOffset;
  w.inboxBlobOffset = l.inboxBlobOffset;
  w.outboxBlobOffset = l.outboxBlobOffset;
  w.blobBytes = blobBytes;
  w.boardOffset = l.boardOffset;
  w.inboxOffset = l.inboxOffset;
  w.outboxOffset = l.outboxOffset;
  const std::size_t total = l.totalBytes;
  auto seg = Segment::createSealed(Segment::makeName(bus, id), total);
  if (!seg) return seg.error();
  w.segment = std::make_shared<Segment>(std::move(*seg));
  std::uint8_t* base = w.segment->base();
  // The kernel zero-fills the segment: the board starts with seq 0, the rings empty.
  w.cancels = reinterpret_cast<CancelBoard*>(base + w.boardOffset);
  w.inbox = RingProducer(reinterpret_cast<RingControl*>(base + w.inboxOffset), base + w.inboxOffset + sizeof(RingControl),
                         RingGeometry{inCap, w.maxRecord}, /*zeroOnClaim=*/true);
  w.outbox = RingConsumer(reinterpret_cast<RingControl*>(base + w.outboxOffset),
                          base + w.outboxOffset + sizeof(RingControl), RingGeometry{outCap, w.maxRecord});
  return w;
}

void fillWelcome(capnp::MessageBuilder& mb, const std::string& bus, std::uint32_t id, const std::string& role,
                 const WindowSegment& seg, bool swapped, std::uint64_t portId) {
  auto w = mb.initRoot<schema::Welcome>();
  w.setOk(true);
  w.setWindowId(id);
  w.setRole(role);
  w.setSegmentName(seg.segment->name());
  w.setSegmentBytes(seg.segment->size());
  // A port's acceptor reads what the opener writes: the two rings trade places (§16).
  w.setInboxOffset(swapped ? seg.outboxOffset : seg.inboxOffset);
  w.setInboxCapacity(swapped ? seg.outboxBytes : seg.inboxBytes);
  w.setOutboxOffset(swapped ? seg.inboxOffset : seg.outboxOffset);
  w.setOutboxCapacity(swapped ? seg.inboxBytes : seg.outboxBytes);
  w.setMaxRecord(seg.maxRecord);
  w.setBusName(bus);
  w.setCancelBoardOffset(seg.boardOffset);
  w.setPortId(portId);
  // A port's arenas: the opener writes the outbox's (its outbox is that ring), the acceptor the
  // inbox's; each reads the other's (§17).
  w.setBlobBytes(seg.blobBytes);
  w.setBlobOutOffset(swapped ? seg.inboxBlobOffset : seg.outboxBlobOffset);
  w.setBlobInOffset(swapped ? seg.outboxBlobOffset : seg.inboxBlobOffset);
  w.setRouteStatsOffset(seg.routeStatsOffset);
}

Result<void> sendWelcome(int sock, const std::string& bus, std::uint32_t id, const std::string& role,
                         const WindowSegment& seg, int doorbellFd) {
  capnp::MallocMessageBuilder mb;
  fillWelcome(mb, bus, id, role, seg, false, 0);
  // The segment's sealed memfd travels second, after the doorbell; with no doorbell to send (a
  // test of that refusal) nothing is sent. The segment has no other name to open it by.
  if (doorbellFd < 0) return sendControl(sock, ControlType::Welcome, 0, &mb);
  SHMBUS_REQUIRE(seg.segment->fd() >= 0, "sendWelcome: the segment's descriptor was closed");
  return sendControl(sock, ControlType::Welcome, 0, &mb, doorbellFd, seg.segment->fd());
}

void sendWelcomeError(int sock, const Error& e) {
  capnp::MallocMessageBuilder mb;
  auto w = mb.initRoot<schema::Welcome>();
  w.setOk(false);
  auto info = w.initError();
  info.setCode(static_cast<std::uint16_t>(e.code));
  info.setMessage(e.message);
  (void)sendControl(sock, ControlType::Welcome, 0, &mb);
}

Result<WindowLink> helloAndWelcome(int sock, const HelloParams& p, const std::string& bus,
                                   std::chrono::milliseconds timeout) {
  {
    capnp::MallocMessageBuilder mb;
    auto hello = mb.initRoot<schema::Hello>();
    hello.setRole(p.role);
    hello.setPid(static_cast<std::int32_t>(::getpid()));
    hello.setInboxBytes(p.inboxBytes);
    hello.setOutboxBytes(p.outboxBytes);
    hello.setSpawnToken(p.spawned ? 1 : 0);
    if (!p.token.empty()) hello.setInviteToken(p.token);
    if (auto r = sendControl(sock, ControlType::Hello, 0, &mb); !r) {
      // A supervisor that refuses this uid answers at accept and hangs up, maybe before this
      // Hello went out: its refusal is still queued here, and says more than BusClosed.
      if (r.code() != ErrorCode::BusClosed) return r.error();
      auto refusal = recvPacket(sock);
      if (!refusal || refusal->hangup) return r.error();
      auto welcome = parseWelcome(*refusal, bus);
      return welcome ? r.error() : welcome.error();
    }
  }
  auto readable = waitReadable(sock, deadlineAfter(monotonicNowNs(), timeout));
  if (!readable) return readable.error();
  if (!*readable) {
    return makeError(ErrorCode::Timeout,
                     fmt::format("no welcome from the supervisor of bus '{}' within {} ms", bus, timeout.count()));
  }
  auto pkt = recvPacket(sock);
  if (!pkt) return pkt.error();
  auto welcome = parseWelcome(*pkt, bus);  // a hang-up has no bytes: BusClosed
  if (!welcome) return welcome.error();
  if (pkt->fds.size() < 2) {
    return makeError(ErrorCode::InvalidMessage, "welcome without the doorbell and segment descriptors");
  }
  WindowLink link;
  link.doorbell = std::move(pkt->fds[0]);
  auto seg = Segment::map(pkt->fds[1].get(), welcome->segmentName);  // any uid can map it
  if (!seg) return seg.error();
  // The supervisor zeroes what it consumed, so the outbox's free space is zero: no memset.
  if (auto ok = attachLink(link, *welcome, std::move(*seg), false, link.doorbell.get()); !ok) return ok.error();
  if (link.blobBytes != 0) link.segmentFd = std::move(pkt->fds[1]);  // the arena's producer keeps it
  if (auto r = sendControl(sock, ControlType::Mapped, 0); !r) return r.error();
  return link;
}

Result<void> attachLink(WindowLink& link, const WelcomeInfo& w, Segment seg, bool zeroOnClaim, int doorbellFd) {
  link.id = w.id;
  link.role = w.role;
  link.segment = std::make_shared<Segment>(std::move(seg));
  if (auto ok = checkWelcomeLayout(w, link.segment->size()); !ok) return ok.error();
  std::uint8_t* base = link.segment->base();
  link.cancels = reinterpret_cast<const CancelBoard*>(base + w.boardOffset);
  link.inbox = RingConsumer(reinterpret_cast<RingControl*>(base + w.inboxOffset),
                            base + w.inboxOffset + sizeof(RingControl), w.inbox);
  link.outbox = RingProducer(reinterpret_cast<RingControl*>(base + w.outboxOffset),
                             base + w.outboxOffset + sizeof(RingControl), w.outbox, zeroOnClaim, doorbellFd);
  link.blobOutOffset = w.blobOutOffset;
  link.blobInOffset = w.blobInOffset;
  link.blobBytes = w.blobBytes;
  return {};
}

Result<WelcomeInfo> readWelcome(capnp::MessageReader& reader) {
  try {
    auto w = reader.getRoot<schema::Welcome>();
    if (!w.getOk()) {
      auto e = w.getError();
      return makeError(errorCodeFromWire(e.getCode()), e.getMessage());
    }
    WelcomeInfo info;
    info.id = w.getWindowId();
    info.role = w.getRole();
    info.segmentName = w.getSegmentName();
    info.inbox = RingGeometry{w.getInboxCapacity(), w.getMaxRecord()};
    info.outbox = RingGeometry{w.getOutboxCapacity(), w.getMaxRecord()};
    info.inboxOffset = w.getInboxOffset();
    info.outboxOffset = w.getOutboxOffset();
    info.boardOffset = w.getCancelBoardOffset();
    info.portId = w.getPortId();
    info.blobOutOffset = w.getBlobOutOffset();
    info.blobInOffset = w.getBlobInOffset();
    info.blobBytes = w.getBlobBytes();
    info.routeStatsOffset = w.getRouteStatsOffset();
    return info;
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed welcome: ") + e.getDescription().cStr());
  }
}

Result<WelcomeInfo> parseWelcome(const Packet& pkt, const std::string& bus) {
  if (pkt.bytes.size() < sizeof(ControlHeader) + sizeof(capnp::word)) {
    return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' closed the connection", bus));
  }
  auto words = bodyWords(pkt);
  try {
    capnp::FlatArrayMessageReader reader(wordsOf(words), boundedControlReader());
    return readWelcome(reader);
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed welcome: ") + e.getDescription().cStr());
  }
}

Result<void> checkWelcomeLayout(const WelcomeInfo& w, std::size_t size) {
  // Every part must lie inside the segment, 64-byte aligned; written so no sum can overflow.
  auto fits = [size](std::uint64_t offset, std::uint64_t bytes) {
    return offset % 64 == 0 && offset <= size && bytes <= size - offset;
  };
  if (!validateGeometry(w.inbox) || !validateGeometry(w.outbox) ||
      !fits(w.inboxOffset, ringFootprint(w.inbox.capacity)) || !fits(w.outboxOffset, ringFootprint(w.outbox.capacity)) ||
      !fits(w.boardOffset, sizeof(CancelBoard))) {
    return makeError(ErrorCode::InvalidMessage, "welcome describes rings outside the segment");
  }
  if (w.blobBytes != 0 && (w.blobBytes % kBlobPage != 0 || w.blobBytes <= kBlobOverhead ||
                           !fits(w.blobOutOffset, w.blobBytes) || !fits(w.blobInOffset, w.blobBytes))) {
    return makeError(ErrorCode::InvalidMessage, "welcome describes blob arenas outside the segment");
  }
  if (w.routeStatsOffset != 0 && !fits(w.routeStatsOffset, sizeof(RouteStatsTable))) {
    return makeError(ErrorCode::InvalidMessage, "welcome describes route stats outside the segment");
  }
  return {};
}

std::string portCloseText(std::uint32_t reason, bool opener) {
  const bool byPeer = (reason == kPortClosedByAcceptor || reason == kPortAcceptorGone ||
                       reason == kPortCorruptAtAcceptor) == opener;
  switch (reason) {
    case kPortClosedByOpener:
    case kPortClosedByAcceptor: return byPeer ? "the peer closed it" : "this side closed it";
    case kPortOpenerGone:
    case kPortAcceptorGone: return byPeer ? "the peer's window closed or died" : "this window closed";
    case kPortRevoked: return "the supervisor revoked it";
    case kPortBusStopped: return "the supervisor stopped";
    case kPortCorruptAtOpener:
    case kPortCorruptAtAcceptor:
      return byPeer ? "the peer found this side's ring corrupt" : "the peer's ring was corrupt";
    case kPortOpenTimedOut: return "the opener gave up before it was accepted";
    default: return fmt::format("it was closed (reason {})", reason);
  }
}

std::string portEndText(std::uint32_t reason) {
  switch (reason) {
    case kPortClosedByOpener: return "closed by the opener";
    case kPortClosedByAcceptor: return "closed by the acceptor";
    case kPortOpenerGone: return "the opener's window closed or died";
    case kPortAcceptorGone: return "the acceptor's window closed or died";
    case kPortCorruptAtOpener: return "the opener found the acceptor's ring corrupt";
    case kPortCorruptAtAcceptor: return "the acceptor found the opener's ring corrupt";
    default: return portCloseText(reason, true);  // worded alike from either side
  }
}

ErrorCode portEndStatus(std::uint32_t reason) noexcept {
  switch (reason) {
    case kPortClosedByOpener:
    case kPortClosedByAcceptor: return ErrorCode::Ok;
    case kPortCorruptAtOpener:
    case kPortCorruptAtAcceptor: return ErrorCode::Corrupt;
    case kPortBusStopped: return ErrorCode::BusClosed;
    default: return ErrorCode::TargetGone;
  }
}

Result<ControlHeader> parseControlHeader(const Packet& pkt) {
  if (pkt.bytes.size() < sizeof(ControlHeader)) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("control packet of {} bytes is shorter than its header", pkt.bytes.size()));
  }
  ControlHeader h;
  std::memcpy(&h, pkt.bytes.data(), sizeof h);
  if (h.type == 0 || h.type > static_cast<std::uint32_t>(kLastControlType)) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("unknown control packet type {}", h.type));
  }
  return h;
}

}  // namespace shmbus::detail
