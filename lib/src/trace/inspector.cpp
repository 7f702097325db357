// shmbus::Inspector: attaches to a bus's trace ring over the control socket and decodes events
// (docs/architecture.md §14).
#include <poll.h>
#include <sys/socket.h>

#include <capnp/serialize.h>
#include <fmt/format.h>

#include "bus.capnp.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/validate.hpp"
#include "control/control_protocol.hpp"
#include "control/socket.hpp"
#include "shmbus/inspect.hpp"
#include "trace/trace_event.hpp"
#include "trace/trace_ring.hpp"
#include "wire/handshake.hpp"

namespace shmbus {

using namespace detail;

namespace {
/// How long the inspector parks on the ring before it looks at the socket again (a stopped
/// supervisor writes nothing more, so only the socket can tell).
constexpr std::int64_t kSocketCheckNs = 200'000'000;
constexpr int kAttachTimeoutMs = 5000;
}  // namespace

struct Inspector::Impl {
  std::string bus;
  Fd sock;
  TraceReader reader;
  std::vector<std::uint8_t> body;
  bool closed = false;

  /// True once the supervisor hung up (the bus stopped). Never blocks.
  bool supervisorGone() {
    if (closed) return true;
    pollfd pfd{sock.get(), POLLIN, 0};
    if (::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLIN)) != 0) {
      char b;
      const ssize_t n = ::recv(sock.get(), &b, 1, MSG_DONTWAIT | MSG_PEEK);
      if (n <= 0 || (pfd.revents & (POLLHUP | POLLERR)) != 0) closed = true;
    }
    return closed;
  }
};

Inspector::Inspector(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Inspector::~Inspector() = default;

Result<std::unique_ptr<Inspector>> Inspector::attach(const std::string& bus, const std::string& socketPath) {
  if (auto ok = validateName(NameKind::Bus, bus); !ok) return ok.error();
  std::string path = socketPath;
  if (path.empty()) {
    auto p = detail::socketPath(bus);
    if (!p) return p.error();
    path = *p;
  }
  auto sock = connectSeqpacket(path);
  if (!sock) {
    if (sock.code() == ErrorCode::BusClosed) {
      return makeError(ErrorCode::BusClosed, fmt::format("no supervisor of bus '{}' answers at {}", bus, path));
    }
    return sock.error();
  }
  if (auto r = sendControl(sock->get(), ControlType::Inspect, 0); !r) return r.error();
  auto readable = waitReadable(sock->get(), deadlineAfter(monotonicNowNs(), std::chrono::milliseconds(kAttachTimeoutMs)));
  if (!readable) return readable.error();
  if (!*readable) {
    return makeError(ErrorCode::Timeout,
                     fmt::format("no answer from the supervisor of bus '{}' within {} ms", bus, kAttachTimeoutMs));
  }
  auto pkt = recvPacket(sock->get());
  if (!pkt) return pkt.error();
  auto h = parseControlHeader(*pkt);
  if (!h) {
    return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' closed the connection", bus));
  }
  if (h->type == static_cast<std::uint32_t>(ControlType::Welcome)) {
    auto w = parseWelcome(*pkt, bus);  // a refusal: its error
    if (!w) return w.error();
    return makeError(ErrorCode::InvalidMessage, "the supervisor answered an inspector with a welcome");
  }
  if (h->type != static_cast<std::uint32_t>(ControlType::TraceRing) || pkt->fds.size() != 1) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("the supervisor of bus '{}' answered with control packet {} (expected a trace ring)",
                                 bus, h->type));
  }
  auto reader = TraceReader::attach(pkt->fds[0].get());  // the packet's fd closes; the mapping stays
  if (!reader) return reader.error();
  auto impl = std::make_unique<Impl>();
  impl->bus = bus;
  impl->sock = std::move(*sock);
  impl->reader = std::move(*reader);
  return std::unique_ptr<Inspector>(new Inspector(std::move(impl)));
}

Result<std::optional<TraceEvent>> Inspector::next(std::chrono::milliseconds timeout) {
  Impl& i = *impl_;
  auto current = [&]() -> Result<std::optional<TraceEvent>> {
    auto e = decodeTraceEvent(i.body, i.reader.lastSeq());
    if (!e) return e.error();
    return std::optional<TraceEvent>(std::move(*e));
  };
  auto wait = checkWaitTimeout(timeout, "Inspector::next");
  if (!wait) return wait.error();
  const std::int64_t deadline = deadlineAfter(monotonicNowNs(), *wait);
  for (;;) {
    if (i.reader.next(i.body)) return current();
    if (i.supervisorGone()) {
      // Everything written before the hang-up is in the ring already: one more look, then closed.
      if (i.reader.next(i.body)) return current();
      return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' stopped", i.bus));
    }
    const std::int64_t now = monotonicNowNs();
    if (now >= deadline) return std::optional<TraceEvent>();
    i.reader.wait(std::min(deadline, now + kSocketCheckNs));
  }
}

Result<BusSnapshot> Inspector::snapshot(std::chrono::milliseconds timeout) {
  Impl& i = *impl_;
  if (i.closed) return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' stopped", i.bus));
  if (auto r = sendControl(i.sock.get(), ControlType::Snapshot, 0); !r) return r.error();
  auto readable = waitReadable(i.sock.get(), deadlineAfter(monotonicNowNs(), std::max(timeout, {})));
  if (!readable) return readable.error();
  if (!*readable) {
    return makeError(ErrorCode::Timeout, fmt::format("no snapshot from the supervisor of bus '{}' within {} ms", i.bus,
                                                     timeout.count()));
  }
  auto pkt = recvPacket(i.sock.get());
  if (!pkt) return pkt.error();
  auto h = parseControlHeader(*pkt);
  if (!h) {
    i.closed = true;
    return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' stopped", i.bus));
  }
  const auto words = bodyWords(*pkt);
  if (h->type != static_cast<std::uint32_t>(ControlType::Snapshot) || words.empty()) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("expected a snapshot, got control packet {}", h->type));
  }
  try {
    // Bounded by the packet: a list cannot be traversed for more words than it holds, times 8.
    capnp::FlatArrayMessageReader reader(wordsOf(words), boundedControlReader(words.size() * 8 + 1024));
    auto snap = reader.getRoot<schema::BusSnapshot>();
    BusSnapshot out;
    for (auto w : snap.getWindows()) {
      // An admission this version does not know (a newer supervisor's) is read from the spawned flag.
      const std::uint8_t a = w.getAdmission();
      const Admission admission = a <= static_cast<std::uint8_t>(Admission::Spawned) ? static_cast<Admission>(a)
                                  : w.getSpawned()                                  ? Admission::Spawned
                                                                                    : Admission::Open;
      out.windows.push_back({w.getId(), w.getRole(), w.getPid(), w.getSpawned(), admission, w.getUid(),
                             w.getInboxUsed(), w.getInboxBytes(), w.getPendingCalls()});
    }
    for (auto c : snap.getChannels()) {
      RouterStats::ChannelStats cs;
      cs.channel = c.getName();
      cs.calls = c.getCalls();
      cs.messages = c.getMessages();
      cs.lateReplies = c.getLate();
      cs.p50Ms = c.getP50Ms();
      cs.p99Ms = c.getP99Ms();
      for (auto e : c.getErrors()) cs.errors[e.getCode()] = e.getCount();
      out.stats.channels.push_back(std::move(cs));
    }
    for (auto p : snap.getPending()) {
      out.stats.pending.push_back(
          {p.getChannel(), p.getSourceId(), p.getSourceRole(), p.getTargetId(), p.getTargetRole(), p.getWaitingMs()});
    }
    out.stats.lateReplies = snap.getLateReplies();
    out.stats.spoofedReplies = snap.getSpoofedReplies();
    out.stats.undeliverable = snap.getUndeliverable();
    out.stats.badMessages = snap.getBadMessages();
    out.stats.unansweredCalls = snap.getUnansweredCalls();
    out.inspectors = snap.getInspectors();
    out.truncated = snap.getTruncated();
    return out;
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed snapshot: ") + e.getDescription().cStr());
  }
}

std::uint64_t Inspector::lost() const noexcept { return impl_->reader.lost(); }

}  // namespace shmbus
