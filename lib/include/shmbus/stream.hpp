// libshmbus — streams with backpressure: Cap'n Proto streaming methods (`-> stream`) over a port,
// a routed call or a call to the main process (docs/architecture.md §18).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "shmbus/channel.hpp"
#include "shmbus/error.hpp"
#include "shmbus/message.hpp"

namespace shmbus {

class Port;
class Supervisor;
class Window;

/// How a Stream paces its writes.
struct StreamOptions {
  /// Flow window in bytes: how much of the stream may be written and not yet acknowledged by
  /// the receiver's handler. A write waits (dispatching, as Call::get) while this much is in
  /// flight, so at most windowBytes plus one write sit in the rings or the receiver's queue at
  /// once. 0 = kDefaultStreamWindow. Larger than a port's ring or the caller's outbox is fine: a
  /// write the ring has no room for waits for the oldest acknowledgement and is written again.
  /// A routed stream's window (plus one write) must fit the receiver's inbox
  /// (SupervisorOptions::inboxBytes, 1 MiB by default) beside its other traffic: the router
  /// refuses a call to a full inbox with Full, and that ends the stream.
  std::uint64_t windowBytes = 0;
  /// Deadline of each write, from when it is written (CallOptions::timeout). A write whose
  /// acknowledgement does not come in time ends the stream with Timeout. 0 = the endpoint's
  /// default (the channel's timeout, else kDefaultTimeout); negative: InvalidArgument.
  std::chrono::milliseconds timeout{0};
};

/// The default flow window: 256 KiB, four times a default port ring (64 KiB), so a sender keeps
/// the receiver busy across a wake-up without holding more than a few rings' worth of chunks.
inline constexpr std::uint64_t kDefaultStreamWindow = 256u << 10;

/// What a stream has done so far (Stream::stats).
struct StreamStats {
  std::uint64_t writes = 0;               ///< writes sent
  std::uint64_t bytes = 0;                ///< payload bytes of those writes (Cap'n Proto words × 8)
  std::uint64_t acknowledged = 0;         ///< writes the receiver acknowledged
  std::uint64_t inFlightBytes = 0;        ///< bytes sent and not yet acknowledged, now
  std::uint64_t inFlightHighWater = 0;    ///< the most bytes ever in flight at once
  std::uint64_t waits = 0;                ///< times a write waited for an acknowledgement (window or ring full)
};

/// A flow-controlled sequence of calls to one receiver: the sending half of a Cap'n Proto
/// streaming method (`write @0 (chunk :Data) -> stream;`). Each write is an invoke on the
/// endpoint it was made for, so it has the call's deadline, tracing, statistics and error codes;
/// the receiver's handler acknowledges it by returning (the empty StreamResult reply). Credits are
/// those acknowledgements: the sender counts bytes in flight and waits for the oldest
/// acknowledgement while the window is full (Cap'n Proto's own streaming flow control, with a
/// fixed window instead of its bandwidth-delay estimate: rpc.capnp, "Streaming"). Nothing the
/// receiver writes can grant more credit than the replies to calls it actually got, so a hostile
/// peer cannot make the sender overrun the window.
///
/// Writes are delivered in order (one ring path, handled in ring order). The first failure of a
/// write (its handler threw: HandlerError; the receiver died or left: TargetGone; Timeout,
/// Cancelled, InvalidMessage, ...) ends the stream: that write's call, or the next write, flush()
/// or finish(), returns the error, and so does every later one. A write the ring refuses (Full
/// with nothing of this stream in flight to wait for) is not sent and does not end the stream.
/// The stream ends with a final, ordinary call (finish(): the method's result), made after every
/// write was acknowledged.
///
/// Thread contract: one thread at a time (a stream is a sequence; stats() excepted); it may be
/// moved to another thread between calls. Waiting dispatches like Call::get, so a stream may be written from a
/// handler or from the endpoint's dispatch thread. Destroying a stream abandons the
/// acknowledgements of writes still in flight (those writes are still delivered).
class Stream {
 public:
  /// Makes the call of one write or of the final call: Port::invoke, Window::invoke/invokeIn or
  /// Supervisor::invoke bound to the receiver.
  using Invoker = std::function<Call(const Channel& channel, const BuildFn& build, CallOptions options)>;

  /// A stream whose calls `invoker` makes. Errors: InvalidArgument (negative timeout) on the first write.
  explicit Stream(Invoker invoker, StreamOptions options = {});
  /// A stream to the peer of `port` (kept by reference: the port must outlive the stream).
  static Stream to(Port& port, StreamOptions options = {});
  /// A stream from a window to `target` (Target::main() for the main process, else routed by the
  /// supervisor). `window` must outlive the stream.
  static Stream to(Window& window, const Target& target, StreamOptions options = {});
  /// A stream from the main process to a window. `supervisor` must outlive the stream.
  static Stream to(Supervisor& supervisor, const Target& target, StreamOptions options = {});

  /// Moves the stream (its writes in flight with it); the moved-from stream may only be destroyed.
  Stream(Stream&&) noexcept;
  /// Moves `other` in; the writes this stream had in flight are abandoned (as by the destructor).
  Stream& operator=(Stream&&) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  /// Writes one message on `channel` (a streaming method), built in place by `build` (which may
  /// run more than once: see Port::send). First waits while the window is full. Returns once the
  /// write is sent, not acknowledged. Errors: the error that ended the stream (this write is then
  /// not sent); Full when the ring has no room and nothing is in flight (not sent, the stream
  /// goes on); TooLarge and InvalidArgument as the invoker returns them at once (not sent, the
  /// stream goes on).
  /// `methodDefault` is the write's timeout when StreamOptions::timeout is 0 (a typed stream
  /// passes the method's $timeoutMs; 0 = the endpoint's default).
  Result<void> write(const Channel& channel, const BuildFn& build,
                     std::chrono::milliseconds methodDefault = std::chrono::milliseconds(0));

  /// Waits until every write was acknowledged. Errors: the error that ended the stream.
  Result<void> flush();

  /// What a write or a flush waits for (nextAck).
  enum class Wait : std::uint8_t {
    Window,  ///< the oldest write, while the unacknowledged bytes fill the window (before a write)
    Oldest,  ///< the oldest write, whatever the window (a write the ring refused: tryWrite)
    All,     ///< the oldest write, while any is in flight (flush)
  };
  /// The building blocks of write() and flush() that never wait, for code that waits its own way
  /// (shmbus/coro.hpp: `co_await writeAsync(stream, ...)`). First takes the acknowledgements
  /// already there; then returns the call of the oldest write still in flight when `what` says
  /// to wait for it (counted in StreamStats::waits, except for All), else nullopt. Awaiting or
  /// getting that call and asking again settles it.
  std::optional<Call> nextAck(Wait what);
  /// write() without its waits: nullopt when the ring refused the write while writes of this
  /// stream are in flight (wait for nextAck(Wait::Oldest), then try again); else write()'s result.
  /// Call it once nextAck(Wait::Window) is nullopt, or the window is exceeded (by one write).
  std::optional<Result<void>> tryWrite(const Channel& channel, const BuildFn& build,
                                       std::chrono::milliseconds methodDefault = std::chrono::milliseconds(0));

  /// flush(), then the final call on `channel` (an ordinary method: its reply is the stream's
  /// result). When the stream ended with an error the returned call has already failed with it
  /// and nothing is sent. The stream may be written again afterwards.
  Call finish(const Channel& channel, const BuildFn& build = {}, CallOptions options = {});

  /// Cancels every write in flight (their handlers see ctx.cancelled()) and ends the stream with
  /// Cancelled. Idempotent.
  void cancel();

  /// The error that ended the stream, or ok.
  Result<void> status() const;

  /// Counts so far (see StreamStats). Unlike the rest, callable from any thread while another
  /// writes (each count is read on its own: a snapshot of counters, not of one instant).
  StreamStats stats() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
