// A window's ports as its state holds them (docs/architecture.md §16, §14 "Ports"): the window's
// hub of descriptors, onPort listeners and open ports (PortHub), and what makes an endpoint a
// port's end (PortSide), a Port's or a direct route's (§19). Members of Window::Impl
// (window_impl.hpp, as Impl::PortHub and Impl::PortSide); port.cpp and route.cpp use them.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "blob/blob.hpp"
#include "control/socket.hpp"
#include "segment/segment.hpp"
#include "shmbus/inspect.hpp"
#include "shmbus/port.hpp"
#include "shmbus/window.hpp"
#include "wire/cancel_board.hpp"
#include "wire/handshake.hpp"

namespace shmbus::window_detail {

using namespace detail;  // internal headers of the window's sources, as window_impl.hpp

/// One call or send of a port's end, waiting in its window's batch (PortHub::traceBatch) for
/// the PortTrace frame; the fields of bus.capnp PortTrace.Record.
struct PortTraceRecord {
  std::uint64_t portId = 0;
  TraceKind kind = TraceKind::Send;
  std::uint64_t channelId = 0;
  std::string channel;
  std::uint64_t requestId = 0, traceId = 0;
  std::int64_t startNs = 0, endNs = 0;
  ErrorCode status = ErrorCode::Ok;
  std::string error;
  std::uint32_t requestBytes = 0, replyBytes = 0;
};

/// A window's side of its ports: descriptors the supervisor sent, onPort listeners, open ports.
struct PortHub {
  std::mutex mu;
  std::condition_variable cv;  // a descriptor arrived
  Window::Impl* window = nullptr;  // guarded by mu: the owning window, null once it closed
  std::unordered_map<std::uint64_t, Fd> fds;  // guarded by mu: PortFd descriptors by port id
  struct Acceptor {
    std::uint64_t token = 0;
    PortListener fn;
  };
  std::unordered_map<std::uint64_t, Acceptor> acceptors;  // guarded by mu: onPort, by channel id
  std::uint64_t nextToken = 1;                            // guarded by mu
  std::unordered_map<std::uint64_t, std::weak_ptr<Window::Impl>> ports;  // guarded by mu: this window's
  // The trace of its ports' calls and sends (docs/architecture.md §14 "Ports"), batched here
  // and sent as one PortTrace frame (flushPortTrace) when kPortTraceBatch records wait, when
  // a port ends, or by the watchdog kPortTraceDelayNs after a batch's first record.
  std::mutex traceMu;
  std::vector<PortTraceRecord> traceBatch;  // guarded by traceMu
  std::int64_t traceSince = 0;              // guarded by traceMu: when the batch's first came
  Fd traceKick;  // eventfd: a batch's first record wakes the watchdog, which then flushes it
};

/// An endpoint's blob arenas (blob/blob.hpp, docs/architecture.md §17): the one this end writes
/// (its one producer holds the endpoint's outMu) and the peer's, read in place; none when `in`
/// is null. A port's end has the port segment's two; a window the two of its own segment, between
/// it and the supervisor (SupervisorOptions::windowBlobBytes).
struct BlobLink {
  BlobProducer out;  // guarded by outMu
  std::uint8_t* in = nullptr;
  std::size_t inBytes = 0;
  /// How long a send without a deadline of its own waits for the peer's releases and ring room.
  std::chrono::milliseconds timeout{0};
  // Channels whose last message went as a blob (the newest few): their next message is built in
  // the arena first instead of in the ring first, whose TooLarge is an exception thrown through
  // Cap'n Proto's frames (about half of a 1 MiB blob call's instructions, 2026-12-07). A
  // message of such a channel that would have fitted the ring still travels as a blob, once.
  std::array<std::uint64_t, 4> channels{};  // guarded by outMu; the first channelCount used
  std::uint8_t channelCount = 0;            // guarded by outMu
  std::uint8_t channelNext = 0;             // guarded by outMu: the entry replaced next
  /// Whether `channel`'s last message went as a blob (caller holds outMu).
  bool first(std::uint64_t channel) const noexcept {
    for (std::uint8_t i = 0; i < channelCount; ++i) {
      if (channels[i] == channel) return true;
    }
    return false;
  }
  /// Remembers (`large`) or forgets whether `channel`'s message needed a blob (caller holds outMu).
  void note(std::uint64_t channel, bool large) noexcept {
    for (std::uint8_t i = 0; i < channelCount; ++i) {
      if (channels[i] != channel) continue;
      if (!large) channels[i] = channels[--channelCount];
      return;
    }
    if (!large) return;
    if (channelCount < channels.size()) {
      channels[channelCount++] = channel;
      return;
    }
    channels[channelNext] = channel;
    channelNext = static_cast<std::uint8_t>((channelNext + 1) % channels.size());
  }
};

/// The blob arenas of the end `link` whose Welcome named them (link.blobBytes != 0; attachLink
/// checked they lie in its segment). `file`: a descriptor of the segment's file for the producer
/// (BlobProducer: may be none); `timeout`: BlobLink::timeout. The producer's warm front is half
/// the arena, at most kBlobWarmBytes: what an end keeps of pages blobs touched once released.
inline BlobLink blobLinkOf(const WindowLink& link, Fd file, std::chrono::milliseconds timeout) {
  BlobLink b;
  std::uint8_t* base = link.segment->base();
  b.out = BlobProducer(base + link.blobOutOffset, link.blobBytes, std::move(file), link.blobOutOffset,
                       std::min<std::size_t>(kBlobWarmBytes, link.blobBytes / 2));
  b.in = base + link.blobInOffset;
  b.inBytes = link.blobBytes;
  b.timeout = timeout;
  return b;
}

/// What makes an endpoint a port's: its peer, its close word, its close listeners.
struct PortSide {
  std::uint64_t id = 0;
  std::string channel;  // the channel it was opened on
  std::uint32_t peerId = 0;
  std::string peerRole;
  bool opener = false;
  std::chrono::milliseconds callTimeout{0};
  // The port's two cancel boards (wire/cancel_board.hpp, §11): this end posts the calls it
  // cancels on its own (under outMu, its one writer) and its handlers read the peer's.
  PortCancelBoard* ownCancels = nullptr;
  const PortCancelBoard* peerCancels = nullptr;
  std::weak_ptr<PortHub> hub;  // the owning window's (tells the supervisor of a close)
  std::mutex mu;
  std::vector<std::pair<std::uint64_t, PortCloseListener>> closeListeners;  // guarded by mu
  std::uint64_t nextListener = 1;                                           // guarded by mu
  std::optional<Error> ended;                                               // guarded by mu
  std::mutex joinMu;  // Port::close: one thread joins the dispatch thread
  std::shared_ptr<Segment> windowSegment;  // the owning window's: its trace word (kept mapped)
  // A direct route's end (docs/architecture.md §19; route.cpp): dispatched by its window's own
  // dispatch loop (routeOwner), never by a thread of its own.
  Window::Impl* routeOwner = nullptr;
  RouteStatsTable* routeStats = nullptr;  // the opener's: counters the supervisor reads
  std::uint32_t fencesSent = 0;           // opener; guarded by the owner's outMu
  std::uint32_t fenceSeen = 0;  // acceptor, owner's dispatch only: the newest fence read in the owner's inbox
  std::uint32_t gateFence = 0;  // acceptor, owner's dispatch only: the newest fence marker read on the ring;
                                // while above fenceSeen, the ring's later records wait
  std::unordered_set<std::uint64_t> allowed;  // acceptor, owner's dispatch only: channels granted
  // The order of everything the caller sends the target, direct or routed (§19): the opener
  // counts the records it commits on the route (`written`, mod 2^32) and whether it wrote
  // direct since its last RouteSync (`directSince`: relaxed, a program-order flag of the
  // writing thread) or routed since its last fence (`routedSince`, under the owner's outMu);
  // the acceptor counts the records it read (`readCount`, owner's dispatch only).
  std::atomic<std::uint32_t> written{0};
  std::atomic<bool> directSince{false};
  bool routedSince = false;
  std::uint32_t readCount = 0;
  /// Whether an inspector is attached to the bus: the window segment's trace word.
  bool tracing() const noexcept {
    // relaxed: a hint (Router::setTraceWords); the records travel on the outbox, which orders
    // them itself (SYNC POINT "record"), and the router checks that it still traces.
    return traceWord(windowSegment->base()).load(std::memory_order_relaxed) != 0;
  }
};

}  // namespace shmbus::window_detail
