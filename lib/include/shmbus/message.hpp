// libshmbus — messages, call context, call options and the asynchronous call handle.
#pragma once

#include <capnp/message.h>
#include <kj/exception.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "shmbus/error.hpp"

namespace shmbus {

namespace detail {
class InPlaceMessage;
struct CallState;
struct HeldMessage;
struct ResponderState;
/// Tells whether a running handler's call was cancelled (endpoint/handler_run.hpp).
struct CancelProbe {
  virtual ~CancelProbe() = default;
  virtual bool cancelled() const noexcept = 0;
};
}  // namespace detail

/// The builder a build callback fills: a capnp::MessageBuilder whose segments are ring space
/// (requests, sends, pushes: built in place, zero copy) or a process-local scratch arena (handler
/// replies; see Window::handle). Call `initRoot<T>()` once. A message that outgrows the ring's
/// maximum record makes the operation fail with TooLarge; one that outgrows the free space, Full.
/// On a port, a message that outgrows the ring is a blob instead (shmbus/port.hpp,
/// docs/architecture.md §17): built in the port's blob arena and read there in place.
using Builder = capnp::MessageBuilder;

/// A build callback: fills the payload of an outgoing message. It runs synchronously inside the
/// call that takes it, on the calling thread, while the ring space is reserved: it must not send
/// on the same endpoint itself. On a port it may run more than once for one message (a second
/// time in the blob arena when the message outgrew the ring, a third after waiting for arena
/// room), so it must build the same message each time and have no other effects.
using BuildFn = std::function<void(Builder&)>;

/// A received Cap'n Proto message, read in place from an inbox or outbox record (zero copy).
/// In `on`/`handle` callbacks the Message is valid until the callback returns. A Message that
/// holds a call's reply (Call::get) keeps its record reserved until the Message is destroyed; the
/// ring cannot reuse that space meanwhile, so drop replies when done with them.
/// Thread contract: reading from several threads is fine; destruction from any thread.
class Message {
 public:
  Message() = default;

  /// True when the message carries no payload (an empty build or a void reply).
  bool empty() const noexcept;

  /// The root as struct type T (a capnpc-generated type). Throws kj::Exception when the payload is
  /// malformed (Cap'n Proto validates lazily, within bounded ReaderOptions) and UsageError on an
  /// empty message.
  template <typename T>
  typename T::Reader root() const {
    return reader().template getRoot<T>();
  }

  /// Like root(), but malformed or empty payloads come back as InvalidMessage.
  template <typename T>
  Result<typename T::Reader> tryRoot() const {
    if (empty()) return makeError(ErrorCode::InvalidMessage, "the message has no payload");
    try {
      auto r = reader().template getRoot<T>();
      return r;
    } catch (const kj::Exception& e) {
      return makeError(ErrorCode::InvalidMessage, std::string("malformed payload: ") + e.getDescription().cStr());
    }
  }

  /// The underlying reader (UsageError when empty).
  capnp::MessageReader& reader() const;

  /// Size of the Cap'n Proto payload in 8-byte words.
  std::size_t words() const noexcept;

  /// Fingerprint of the payload's schema set by typed senders (0 = untyped).
  std::uint64_t schemaId() const noexcept { return schemaId_; }

  /// An owned copy of this message (heap, one memcpy of its words) that stays valid after the
  /// callback returns and releases no ring space: for requests an async handler keeps.
  /// Errors: none (an empty message copies to an empty one).
  Message copy() const;

  /// Internal: a view of a message read in place (valid during a callback).
  Message(detail::InPlaceMessage* view, std::uint64_t schemaId) noexcept : view_(view), schemaId_(schemaId) {}
  /// Internal: a message that owns its record lease or its copy (replies, Message::copy()).
  Message(std::shared_ptr<detail::HeldMessage> held, std::uint64_t schemaId) noexcept;

 private:
  detail::InPlaceMessage* view_ = nullptr;
  std::shared_ptr<detail::HeldMessage> held_;
  std::uint64_t schemaId_ = 0;
};

/// What a handler or listener learns about the message it got (docs/architecture.md §2).
/// Valid during the callback; copy the fields you keep. Thread contract: read on the callback's thread;
/// cancelled() may be polled from any thread.
struct CallContext {
  std::uint32_t sourceWindowId = 0;  ///< sender's window id; 0 = the main process (supervisor)
  std::string_view sourceRole;       ///< sender's role; "main" for the supervisor
  std::string_view channel;          ///< channel name (empty when only the id is known)
  std::uint64_t channelId = 0;       ///< 64-bit channel id
  std::uint64_t requestId = 0;       ///< request id of an invoke; 0 for one-way messages
  std::int64_t deadlineNs = 0;       ///< absolute CLOCK_MONOTONIC ns by which the caller wants the reply; 0 = none
  /// The flow this call belongs to in the bus's trace (shmbus/inspect.hpp; 0 for one-way
  /// messages): calls a synchronous handler makes on its thread carry it, so A→B→C is one flow.
  std::uint64_t traceId = 0;
  const detail::CancelProbe* cancelProbe = nullptr;  ///< internal: how cancelled() learns of a Cancel

  /// True once the caller cancelled the call, its deadline passed, or this endpoint's bus closed:
  /// a long handler should stop. Cheap (a few loads); poll it from any thread.
  bool cancelled() const noexcept;
  /// Time left until the deadline (zero when passed; a large value when none).
  std::chrono::nanoseconds remaining() const noexcept;
};

/// Options of one invoke.
struct CallOptions {
  /// Timeout of the call. 0 (the default) means "not given": the method's $timeoutMs for typed
  /// calls, else the channel's default (Supervisor::setChannelTimeout), else kDefaultTimeout.
  /// Negative: the call fails at once with InvalidArgument. Longer than kMaxTimeout
  /// (shmbus/validate.hpp, 30 days): clamped to it (so milliseconds::max() waits 30 days).
  std::chrono::milliseconds timeout{0};
  /// Optional size hint of the request in bytes (0 = claim as much contiguous ring space as is free,
  /// up to the maximum record). Only matters for rings that are nearly full.
  std::size_t sizeHint = 0;
  /// Window::invokeIn only: whether the call may take a direct route to its target when the bus
  /// has granted one (SupervisorOptions::directRoutes, docs/architecture.md §19). false: through
  /// the supervisor, always.
  bool direct = true;
};

/// The default call timeout (docs/architecture.md §3).
inline constexpr std::chrono::milliseconds kDefaultTimeout{5000};

/// Handle of an asynchronous call (invoke, invokeIn, Supervisor::invoke). Copyable; all copies refer
/// to the same call. Exactly one result is ever produced: the reply, or one Error.
/// Thread contract: any method from any thread. Callbacks (then) run on the endpoint's dispatch
/// thread, or immediately on the calling thread when the result is already there.
class Call {
 public:
  Call() = default;

  /// Blocks until the result is there. On the endpoint's dispatch thread (inside a handler, or when no
  /// other thread dispatches) it keeps dispatching meanwhile, so handlers may call each other and a
  /// cycle A→B→A completes or times out but never deadlocks. Errors: every code of docs/architecture.md §3.
  Result<Message> get();

  /// True when the result is there (get() will not block).
  bool ready() const;

  /// Runs `cb` with the result once it is there (see thread contract). Replaces an earlier callback.
  void then(std::function<void(Result<Message>)> cb);

  /// Like then(), but when the result is already there returns false and does not run `cb`
  /// (co_await's await_suspend uses it: the caller then goes on without suspending).
  bool thenIfPending(std::function<void(Result<Message>)> cb);

  /// Gives up the call: the result becomes Cancelled (unless it is already there) and the target is
  /// told, so ctx.cancelled() turns true in its handler. A late reply is dropped and counted.
  void cancel();

  /// The caller-side request id (unique per endpoint).
  std::uint64_t requestId() const;

  /// A call that has already failed with `error`: get() returns it at once, then() runs at once.
  /// For layers that fail before anything is sent (Stream::finish after the stream ended).
  static Call failed(Error error);

  /// Internal: a handle of the endpoint's call state.
  explicit Call(std::shared_ptr<detail::CallState> s) : state_(std::move(s)) {}

 private:
  std::shared_ptr<detail::CallState> state_;
};

/// A registered handler or listener. Destroying it (or calling reset()) unregisters it. Move-only.
/// [[nodiscard]]: a Registration dropped on the spot unregisters at once (the caller would then
/// time out or hear nothing); keep it, or call release() to keep the registration for good.
/// Thread contract: reset from any thread. When reset returns, the callback does not start again
/// and no run of it is in progress on another thread (reset waits for such a run to return), so
/// state the callback captures may be destroyed right after; a callback may reset its own
/// registration (that run is not waited for). Do not reset, from inside a callback, the
/// registration of another callback that may be waiting to reset yours: the two wait for each other.
/// An async handler's Responder is not covered: it replies after the handler has returned.
class [[nodiscard]] Registration {
 public:
  Registration() = default;
  /// A registration that runs `undo` once when reset or destroyed.
  explicit Registration(std::function<void()> undo) : undo_(std::move(undo)) {}
  /// Takes over `o`'s registration (`o` is left empty).
  Registration(Registration&& o) noexcept : undo_(std::exchange(o.undo_, nullptr)) {}
  /// Unregisters this one, then takes over `o`'s.
  Registration& operator=(Registration&& o) noexcept {
    if (this != &o) { reset(); undo_ = std::exchange(o.undo_, nullptr); }
    return *this;
  }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  ~Registration() { reset(); }
  /// Unregisters now (idempotent).
  void reset() { if (auto u = std::exchange(undo_, nullptr)) u(); }
  /// Keeps the registration for the endpoint's lifetime (the handle no longer undoes it).
  void release() noexcept { undo_ = nullptr; }
  /// Same as reset(): the Electron-style cleanup call.
  void operator()() { reset(); }

 private:
  std::function<void()> undo_;
};

/// Thrown by a handler to fail the call with `error` itself (its code, e.g. InvalidMessage or
/// Denied, and message) instead of the HandlerError any other exception becomes. The message is
/// prefixed with the call's description on the way to the caller.
class CallFailure : public std::runtime_error {
 public:
  /// Fails the call with `e` (its code and message).
  explicit CallFailure(Error e) : std::runtime_error(e.message), error_(std::move(e)) {}
  /// The error the caller gets.
  const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};

/// The reply of one call, owned by the handler that got it (Window::handleAsync,
/// Supervisor::handleAsync): reply later, from any thread, after the handler returned. Copies refer
/// to the same call; exactly one reply or fail() counts. When the last copy is destroyed without a
/// reply, the call is counted as unanswered (RouterStats::unansweredCalls, a warning in the log)
/// and the caller gets Timeout at its deadline: never a hang.
/// Lifetime: a copy may outlive its endpoint (Window, Port, Supervisor). Once the endpoint's
/// destructor has begun, reply() and fail() return BusClosed, cancelled() is true, and dropping the
/// last copy counts nothing; a reply already in progress on another thread finishes first (the
/// destructor waits for it).
/// Thread contract: every method from any thread.
class Responder {
 public:
  Responder() = default;
  /// Internal: the endpoint makes one per asynchronous call.
  explicit Responder(std::shared_ptr<detail::ResponderState> s) noexcept : state_(std::move(s)) {}

  /// Sends the reply built by `build` (empty: a void reply), built in a process-local arena and
  /// copied once into the ring. Errors: InvalidMessage (already replied, or an empty Responder),
  /// TooLarge, Full (the ring stayed full until the deadline), BusClosed. An exception thrown by
  /// `build` fails the call with HandlerError instead.
  Result<void> reply(const BuildFn& build = {});
  /// Sends `built`, a message the caller built itself (e.g. in a capnp::MallocMessageBuilder), as
  /// the reply; its segments are copied once into the ring. Errors: as reply(const BuildFn&).
  Result<void> reply(capnp::MessageBuilder& built);
  /// Fails the call with `error` (its code and message). Errors: as reply().
  Result<void> fail(Error error);
  /// Fails the call as a handler's exception would: a CallFailure gives its Error, any other
  /// exception HandlerError with its type, message and stack text. Errors: as reply().
  Result<void> fail(std::exception_ptr exception);
  /// True once reply() or fail() was called.
  bool replied() const noexcept;
  /// True once the caller cancelled, the deadline passed, or the bus closed (as CallContext).
  bool cancelled() const noexcept;
  /// The request id the handler saw in its CallContext.
  std::uint64_t requestId() const noexcept;

 private:
  std::shared_ptr<detail::ResponderState> state_;
};

/// A window opened or closed: what the bus events "window-opened" / "window-closed" carry,
/// decoded (Supervisor::onWindowOpened/onWindowClosed, the same on Window).
struct WindowEvent {
  std::uint32_t windowId = 0;  ///< the window's id
  std::string role;            ///< its role
  std::int32_t pid = 0;        ///< its process id
  std::string reason;          ///< closed: "closed", "bad message: ...", "the supervisor stopped"; opened: empty
};

/// Listener of window lifecycle events (runs where other listeners of the endpoint run).
using WindowEventListener = std::function<void(const WindowEvent&)>;

/// A one-way message (Window::send / sendTo) the supervisor could not deliver, reported back to
/// its sender after the send returned Ok (the send itself only writes the sender's outbox).
struct SendFailure {
  std::string channel;         ///< the message's channel name
  std::uint64_t channelId = 0; ///< its id
  /// Denied (policy), NoTarget (no live window with the role or id), Full (the target's inbox
  /// stayed full), BusClosed (the target closed meanwhile); the message names channel, sender
  /// and target.
  Error error;
};

/// Listener of send failures (runs on the window's dispatch thread, like other listeners).
using SendFailureListener = std::function<void(const SendFailure&)>;

/// Listener callback: the message and its context.
using Listener = std::function<void(const Message&, const CallContext&)>;

/// Handler callback: reads the request, fills the reply builder (leave it empty for a void reply),
/// may throw to fail the call with HandlerError (type, message and stack text travel to the caller),
/// or throw CallFailure to fail it with a code of its choice.
using Handler = std::function<void(const Message& request, Builder& reply, const CallContext& ctx)>;

/// Asynchronous handler: reads the request (valid only during the callback: copy what you keep),
/// returns at once, and replies later through the Responder from any thread. Throwing before it
/// returns fails the call as for Handler. The dispatch thread is free as soon as it returns.
using AsyncHandler = std::function<void(const Message& request, Responder responder, const CallContext& ctx)>;

}  // namespace shmbus
