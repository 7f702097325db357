// libshmbus — a port: a direct link between two windows (Electron's MessageChannelMain;
// docs/architecture.md §16).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "shmbus/channel.hpp"
#include "shmbus/error.hpp"
#include "shmbus/message.hpp"

namespace shmbus {

/// How Window::openPort asks for a port.
struct PortOptions {
  /// Capacity in bytes of each of the port's two rings (one per direction): a power of two in
  /// [4 KiB, 64 MiB] and at most the supervisor's window ring size (SupervisorOptions::inboxBytes
  /// or outboxBytes, the larger), else InvalidArgument. 0 = 64 KiB. The largest message is half
  /// of it (and at most the supervisor's maxRecordBytes); larger messages travel as blobs.
  std::uint32_t ringBytes = 0;
  /// Bytes of each of the port's two blob arenas (docs/architecture.md §17): messages larger
  /// than the ring are built there and read in place, zero copy. 0 = 256 MiB, clamped to what
  /// SupervisorOptions::blobBytesPerWindow and blobBytesPerBus leave (possibly none: then larger
  /// messages are TooLarge). Given explicitly, it is rounded up to a multiple of 4 KiB, must be
  /// at most 64 GiB (else InvalidArgument), and an open that the limits cannot grant fails with
  /// TooLarge. The arenas are sparse: memory goes to blobs in flight and, once released, to the
  /// pages blobs touched in the arena's first half, at most 128 MiB (kept for the next blobs, so that a blob
  /// sent again and again costs no page faults) until the port closes; pages further on go back
  /// to the kernel when released. The largest blob is the arena's size minus 128 bytes.
  std::uint64_t blobBytes = 0;
  /// How long openPort waits for the supervisor and the target (the target's onPort listener
  /// runs within it). 0 = kDefaultTimeout; negative: InvalidArgument; clamped to kMaxTimeout.
  std::chrono::milliseconds timeout{0};
  /// Timeout of the port's calls that give none (CallOptions::timeout 0), on this side.
  /// 0 = kDefaultTimeout; negative: InvalidArgument; clamped to kMaxTimeout.
  std::chrono::milliseconds callTimeout{0};
};

/// What one side of a port holds in its outgoing blob arena (Port::blobStats).
struct BlobStats {
  std::uint64_t bytesHeld = 0;      ///< bytes of blobs sent and not yet released by the peer
  std::uint64_t messagesHeld = 0;   ///< how many such blobs
  std::uint64_t bytesHighWater = 0; ///< the most bytes held at once since the port opened
  std::uint64_t arenaBytes = 0;     ///< the arena's size (0: this port has no blob arenas)
};

/// Why a port ended, as its close listeners hear it.
using PortCloseListener = std::function<void(const Error& why)>;

/// One end of a port: a pair of rings shared by exactly two windows, with no supervisor in the
/// path of its messages. The patterns are the window's: send/on/once, invoke/handle/handleAsync
/// with deadlines, cancellation and the same Error codes; channels on a port are the port's own
/// (policy judged the port when it opened, not the messages on it). The typed stubs of
/// capnpc-shmbus take a Port as they take a Window (shmbus/typed.hpp): `XHandlers::handleM(port,
/// fn)` serves the peer's calls, `XPortClient(port).m(build)` calls the peer.
///
/// Lifetime: the port closes when close() is called, when the last shared_ptr to it is dropped,
/// when either window closes or dies, or when the supervisor revokes it. Then every call pending
/// on this side fails (TargetGone when the peer, its death or the supervisor ended it; Cancelled
/// when this side closed it; Corrupt when the peer wrote garbage into the ring) and the close
/// listeners run once.
///
/// Thread contract: every method may be called from any thread. Callbacks (on/once/handle and
/// close listeners when the peer ends the port) run on the port's dispatch thread: the thread of
/// start(), one inside poll(), or a thread blocked in Call::get() on a port call while nobody else
/// dispatches. Nothing is delivered before start() or poll() (Electron's MessagePortMain.start):
/// messages wait in the ring. Close listeners of a close() run on the thread that called it. A
/// port nobody dispatches learns that the peer ended it at its next poll(), start() or call.
class Port {
 public:
  struct Impl;
  /// Made by Window::openPort and Window::onPort; not for users.
  explicit Port(std::shared_ptr<Impl> impl);
  /// Closes the port (as close()).
  ~Port();
  Port(const Port&) = delete;
  Port& operator=(const Port&) = delete;

  std::uint64_t id() const noexcept;             ///< the supervisor's id of the port (> 0)
  const std::string& channel() const noexcept;   ///< the channel the port was opened on
  std::uint32_t peerId() const noexcept;         ///< the other window's id
  const std::string& peerRole() const noexcept;  ///< the other window's role
  bool isOpener() const noexcept;                ///< true on the side that called openPort

  /// One-way message to the peer (its Port::on listeners). Built in place in the port's ring.
  /// A message too large for the ring is a blob (docs/architecture.md §17): `build` then runs a
  /// second time (possibly a third, after waiting for room) over a builder in the port's blob
  /// arena, and the ring carries a small descriptor; the peer reads the message in place and
  /// releases it when its listeners return. So `build` must be repeatable (no side effects that
  /// may not happen twice). When the arena has no room the send waits for the peer's releases
  /// up to PortOptions::callTimeout, then fails with Full.
  /// Errors: Full (ring or arena full; nothing sent), TooLarge (larger than the arena, or no
  /// arena), TargetGone/Cancelled (the port is closed), InvalidArgument (bad channel name).
  Result<void> send(const Channel& channel, const BuildFn& build = {});

  /// Request to the peer's Port::handle. The deadline is kept by this side (no supervisor in the
  /// path): Timeout at CallOptions::timeout (0: PortOptions::callTimeout). Call::cancel reaches the
  /// peer's handler while it runs (ctx.cancelled(), synchronous handlers included: this side posts
  /// on its cancel board in the port's segment), as does the deadline. Errors come back
  /// through the Call: NoHandler, Timeout, HandlerError, TargetGone, Cancelled, Full, TooLarge,
  /// InvalidMessage, Corrupt; InvalidArgument at once for a bad channel or a negative timeout.
  /// Requests and replies larger than the ring travel as blobs as for send() (a blob request's
  /// arena wait ends at the call's deadline); a reply held by its Message keeps its blob until
  /// the last copy of that Message is dropped.
  Call invoke(const Channel& channel, const BuildFn& build = {}, CallOptions options = {});

  /// Adds a listener for the peer's send() on `channel` (listeners accumulate).
  Registration on(const Channel& channel, Listener listener);
  /// Like on(), but the listener removes itself before it runs the first time.
  Registration once(const Channel& channel, Listener listener);
  /// Handles the peer's invoke() on `channel`; the last registered handler wins (as Window::handle).
  Registration handle(const Channel& channel, Handler handler);
  /// Handles the peer's invoke() asynchronously (as Window::handleAsync).
  Registration handleAsync(const Channel& channel, AsyncHandler handler);
  /// Runs `listener` once when the port ends, with why (see the class comment). Added after the
  /// end, it runs at once on the calling thread.
  Registration onClose(PortCloseListener listener);

  /// Starts a thread that dispatches the port's messages until it closes. Returns once that
  /// thread dispatches. Call once; not from inside a callback of this port.
  void start();
  /// Dispatches what is ready, waiting up to `timeout` for the first message (0: do not wait).
  /// While another thread dispatches (start(), another poll()), it waits up to `timeout` for
  /// that thread to stop and returns without dispatching if it does not. Errors: the port's end
  /// (its code), InvalidArgument (negative timeout).
  Result<void> poll(std::chrono::milliseconds timeout);

  /// What this side's outgoing blob arena holds now (releases the peer made are reclaimed
  /// first). For tests and diagnostics. Thread contract: any thread (takes the send lock).
  BlobStats blobStats() const;

  /// Closes the port: the peer's pending calls fail with TargetGone and its close listeners run;
  /// this side's with Cancelled. Idempotent.
  void close();
  /// True once the port ended (either side, the supervisor, or a death).
  bool closed() const noexcept;

 private:
  std::shared_ptr<Impl> impl_;
};

/// Receives the ports other windows open to this one on a channel (Window::onPort). The listener
/// keeps the port by keeping the shared_ptr; dropping it closes the port.
using PortListener = std::function<void(std::shared_ptr<Port> port)>;

}  // namespace shmbus
