// shmbus::Inspector: attaches to a bus's trace ring over the control socket and decodes events
// (docs/architecture.md §14).
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <fmt/format.h>

#include "bus.capnp.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <vector>

#include "common/validate.hpp"
#include "control/control_protocol.hpp"
#include "control/socket.hpp"
#include "shmbus/inspect.hpp"
#include "message/message.hpp"
#include "trace/payload_capture.hpp"
#include "trace/schema_announce.hpp"
#include "trace/trace_event.hpp"
#include "trace/trace_ring.hpp"
#include "wire/handshake.hpp"

namespace shmbus {

using namespace detail;

namespace {
/// How long the inspector parks on the ring before it looks at the socket again (a stopped
/// supervisor writes nothing more, so only the socket can tell).
constexpr std::int64_t kSocketCheckNs = 200'000'000;
/// While events keep coming (one seen less than kActiveNs ago) the inspector polls the ring every
/// kPollNs instead of parking on its futex word: the router's notify() then finds no parked reader
/// and costs it one load, not a FUTEX_WAKE per event (docs/architecture.md §14 "Cost"). After
/// kActiveNs without an event it parks (no CPU while the bus is quiet).
constexpr std::int64_t kPollNs = 1'000'000;
constexpr std::int64_t kActiveNs = 100'000'000;

/// Sleeps until CLOCK_MONOTONIC `atNs` (absolute, so a signal's EINTR just sleeps again).
void sleepUntil(std::int64_t atNs) {
  const timespec ts{static_cast<time_t>(atNs / 1'000'000'000), static_cast<long>(atNs % 1'000'000'000)};
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}
constexpr int kAttachTimeoutMs = 5000;
/// Payload records waiting for their event (a request until its call ends): at most this many,
/// the oldest dropped first.
constexpr std::size_t kMaxPendingPayloads = 4096;
}  // namespace

struct Inspector::Impl {
  std::string bus;
  Fd sock;
  TraceReader reader;
  std::vector<std::uint8_t> body;
  bool closed = false;
  std::optional<TraceReader> payloads;  // the payload ring, when granted
  std::vector<std::uint8_t> payloadBody;
  std::deque<PayloadRecord> pending;    // payload records not yet matched to their event
  std::uint64_t payloadsDropped = 0;    // malformed, stale or pushed out of `pending`
  std::int64_t lastEventNs = 0;         // CLOCK_MONOTONIC ns of the last event read (0: none yet)

  /// Moves the payloads of `e` from the payload ring onto it. Every record of `e` was published
  /// before `e` (the router writes both under its mutex, payload first), and this thread's
  /// acquire of `e` in the trace ring orders the payload ring's tail after it: draining the
  /// payload ring now finds them.
  void attachPayloads(TraceEvent& e) {
    if (!payloads) return;
    while (payloads->next(payloadBody)) {
      auto r = decodePayloadRecord(payloadBody);
      if (!r) {
        ++payloadsDropped;  // the ring is shared memory: a scribbled record is skipped, counted
        continue;
      }
      pending.push_back(std::move(*r));
      if (pending.size() > kMaxPendingPayloads) {
        pending.pop_front();
        ++payloadsDropped;
      }
    }
    const bool call = e.kind == TraceKind::Invoke || e.kind == TraceKind::Cancel;
    for (auto it = pending.begin(); it != pending.end();) {
      const bool mine = it->channelId == e.channelId;
      if (it->part == PayloadPart::Request) {
        if (call && mine && it->sourceId == e.sourceId && it->key == e.requestId) {
          e.request = std::move(it->payload);
          it = pending.erase(it);
          continue;
        }
      } else if (it->key == e.seq && mine) {
        (it->part == PayloadPart::Reply ? e.reply : e.request) = std::move(it->payload);
        it = pending.erase(it);
        continue;
      } else if (it->key <= e.seq) {
        ++payloadsDropped;  // its event was lost (or the record lies about it)
        it = pending.erase(it);
        continue;
      }
      ++it;
    }
  }

  /// Sends a request of `type` and waits up to `timeout` for the supervisor's answer, a packet of
  /// the same type (`what` names it in errors). Errors: BusClosed, Timeout, InvalidMessage.
  Result<Packet> ask(ControlType type, std::chrono::milliseconds timeout, const char* what) {
    if (closed) return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' stopped", bus));
    if (auto r = sendControl(sock.get(), type, 0); !r) return r.error();
    auto readable = waitReadable(sock.get(), deadlineAfter(monotonicNowNs(), std::max(timeout, {})));
    if (!readable) return readable.error();
    if (!*readable) {
      return makeError(ErrorCode::Timeout,
                       fmt::format("no {} from the supervisor of bus '{}' within {} ms", what, bus, timeout.count()));
    }
    auto pkt = recvPacket(sock.get());
    if (!pkt) return pkt.error();
    auto h = parseControlHeader(*pkt);
    if (!h) {
      closed = true;
      return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' stopped", bus));
    }
    if (h->type != static_cast<std::uint32_t>(type)) {
      return makeError(ErrorCode::InvalidMessage, fmt::format("expected a {}, got control packet {}", what, h->type));
    }
    return pkt;
  }

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
  return attach(bus, InspectOptions{.socketPath = socketPath});
}

Result<std::unique_ptr<Inspector>> Inspector::attach(const std::string& bus, const InspectOptions& options) {
  if (auto ok = validateName(NameKind::Bus, bus); !ok) return ok.error();
  std::string path = options.socketPath;
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
  if (auto r = sendControl(sock->get(), ControlType::Inspect, options.payloads ? kInspectPayloads : 0); !r) {
    return r.error();
  }
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
  if (h->type != static_cast<std::uint32_t>(ControlType::TraceRing) || pkt->fds.empty() || pkt->fds.size() > 2) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("the supervisor of bus '{}' answered with control packet {} (expected a trace ring)",
                                 bus, h->type));
  }
  auto reader = TraceReader::attach(pkt->fds[0].get());  // the packet's fd closes; the mapping stays
  if (!reader) return reader.error();
  auto impl = std::make_unique<Impl>();
  if (pkt->fds.size() == 2 && options.payloads) {
    auto p = TraceReader::attach(pkt->fds[1].get());
    if (!p) return p.error();
    impl->payloads = std::move(*p);
  }
  impl->bus = bus;
  impl->sock = std::move(*sock);
  impl->reader = std::move(*reader);
  return std::unique_ptr<Inspector>(new Inspector(std::move(impl)));
}

Result<std::optional<TraceEvent>> Inspector::next(std::chrono::milliseconds timeout) {
  Impl& i = *impl_;
  auto current = [&]() -> Result<std::optional<TraceEvent>> {
    i.lastEventNs = monotonicNowNs();
    auto e = decodeTraceEvent(i.body, i.reader.lastSeq());
    if (!e) return e.error();
    i.attachPayloads(*e);
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
    if (i.lastEventNs != 0 && now - i.lastEventNs < kActiveNs) {
      sleepUntil(std::min(deadline, now + kPollNs));  // active: poll, no wake-up asked of the router
    } else {
      i.reader.wait(std::min(deadline, now + kSocketCheckNs));
    }
  }
}

Result<BusSnapshot> Inspector::snapshot(std::chrono::milliseconds timeout) {
  auto pkt = impl_->ask(ControlType::Snapshot, timeout, "snapshot");
  if (!pkt) return pkt.error();
  const auto words = bodyWords(*pkt);
  if (words.empty()) return makeError(ErrorCode::InvalidMessage, "an empty snapshot");
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
    for (auto p : snap.getPorts()) {
      out.ports.push_back({p.getId(), p.getOpener(), p.getAcceptor(), p.getChannel(), p.getAccepted(), p.getRoute()});
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

Result<AnnouncedSchemas> Inspector::schemas(std::chrono::milliseconds timeout) {
  auto pkt = impl_->ask(ControlType::Schemas, timeout, "schema set");
  if (!pkt) return pkt.error();
  auto h = parseControlHeader(*pkt);
  // The supervisor keeps at most kMaxSchemaBytesPerBus; the set adds a few words per contract.
  constexpr std::uint64_t kMaxAnswer = 2 * kMaxSchemaBytesPerBus;
  if (pkt->fds.size() != 1 || h->value % sizeof(capnp::word) != 0 || h->value > kMaxAnswer) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("a schema set of {} B with {} descriptors", h->value, pkt->fds.size()));
  }
  auto words = kj::heapArray<capnp::word>(h->value / sizeof(capnp::word));
  auto* bytes = reinterpret_cast<std::uint8_t*>(words.begin());
  for (std::size_t done = 0; done < h->value;) {
    const ssize_t n = ::pread(pkt->fds[0].get(), bytes + done, h->value - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return makeError(ErrorCode::InvalidMessage, fmt::format("the schema set ends at {} of {} B", done, h->value));
    done += static_cast<std::size_t>(n);
  }
  AnnouncedSchemas out;
  try {
    capnp::FlatArrayMessageReader reader(words, readerOptionsFor(words.size()));
    for (auto a : reader.getRoot<schema::SchemaSet>().getContracts()) {
      auto loaded = decodeAnnouncement(a);
      if (!loaded) continue;  // the supervisor checked it: a newer one's, or a bug; left out
      for (auto& [channel, method] : loaded->methods) out.methods.insert_or_assign(channel, std::move(method));
      out.contracts.push_back(std::move(loaded->name));
      out.loaders.push_back(std::move(loaded->loader));
    }
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed schema set: ") + e.getDescription().cStr());
  }
  return out;
}

std::uint64_t Inspector::lost() const noexcept { return impl_->reader.lost(); }

bool Inspector::payloadsGranted() const noexcept { return impl_->payloads.has_value(); }

std::uint64_t Inspector::payloadsDropped() const noexcept {
  return impl_->payloadsDropped + (impl_->payloads ? impl_->payloads->lost() : 0);
}

}  // namespace shmbus
