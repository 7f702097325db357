// libshmbus — typed contracts: the runtime half of the code capnpc-shmbus generates (docs/architecture.md §6).
//
// A contract is a Cap'n Proto `interface`. For each method capnpc-shmbus emits a *method
// descriptor*, a struct with
//
//     using Params = ...;                       // the params struct (capnpc-c++ type)
//     using Results = ...;                      // the results struct
//     static constexpr Channel channel();       // wire id + name + params/results fingerprints
//     static constexpr std::chrono::milliseconds defaultTimeout;  // $timeoutMs, 0 = none
//     static constexpr bool oneway;             // $oneway: a send/push/broadcast, no reply
//     static constexpr bool streaming;          // `-> stream`: written to a Stream (shmbus/stream.hpp)
//
// and thin client and registration functions that forward to the templates below. Everything
// here is a layer over the untyped API (Window / Supervisor / Port): the same records, the same
// routing, no extra copy. Builders write straight into ring space; readers read in place. On a
// Port (docs/architecture.md §16) the same stubs call, send to and serve the port's peer.
//
// Contract checks: every typed message carries the fingerprint of its struct's layout
// (Channel::schemaId on requests and sends, Channel::replySchemaId on replies; shmbus/contract.hpp).
// The receiver checks it against the layout it was compiled with (the descriptor's paramsLayout /
// resultsLayout): a typed handler checks the request, a TypedCall the reply, a typed listener the
// message. A sender whose fields are described identically on the fields both sides declare is
// accepted (appending fields is compatible); any other difference, and a payload that is not a
// valid message of the expected struct, is refused with InvalidMessage naming the struct and,
// where the fingerprint tells, the first field that differs.
#pragma once

#include <capnp/message.h>
#include <kj/exception.h>

#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "shmbus/channel.hpp"
#include "shmbus/contract.hpp"
#include "shmbus/error.hpp"
#include "shmbus/message.hpp"
#include "shmbus/port.hpp"
#include "shmbus/schema.hpp"
#include "shmbus/stream.hpp"
#include "shmbus/supervisor.hpp"
#include "shmbus/window.hpp"

namespace shmbus {

/// A received typed message: the `T::Reader` of a reply, together with the Message that owns the
/// record it reads. Zero copy: reader() points into the inbox record, which stays reserved while
/// this Typed (or any copy of it) lives; a reader or a Text/Data/List view taken from it must not
/// outlive it. Drop it when done (the ring cannot reuse the record meanwhile).
/// Thread contract: as Message (read from any thread; destroy from any thread).
template <class T>
class Typed {
 public:
  using Reader = typename T::Reader;  ///< the capnpc-c++ reader of T

  /// `reader`, reading in the record `message` owns.
  Typed(Message message, Reader reader) noexcept : message_(std::move(message)), reader_(reader) {}

  /// The typed reader (valid while this Typed lives).
  Reader reader() const noexcept { return reader_; }
  /// Field access through the reader: `typed->getTitle()`.
  const Reader* operator->() const noexcept { return &reader_; }
  /// The untyped message (its schemaId(), words(), ...).
  const Message& message() const noexcept { return message_; }

 private:
  Message message_;  // keeps the record alive: reader_ points into it
  Reader reader_;
};

/// The build callable a typed client passes when the caller gives none: sets no field, so the
/// receiver reads every field's default.
struct NoParams {
  /// Leaves the builder as it is.
  template <class B>
  void operator()(B&&) const noexcept {}
};

/// A build callable for method descriptor `M`: called once with an lvalue `M::Params::Builder`
/// (take it as `auto p`, `auto& p` or `Params::Builder p`), on the calling thread, while the
/// record is reserved (it must not send on the same endpoint).
template <class F, class M>
concept ParamsBuilder = std::invocable<F&, typename M::Params::Builder&>;

/// The endpoints whose calls and sends name a target: a window (to the main process, or routed
/// to other windows) and the supervisor in the main process (to windows).
template <class E>
concept RoutedEndpoint = std::same_as<E, Window> || std::same_as<E, Supervisor>;

/// Every endpoint typed contracts work on: a RoutedEndpoint, or one end of a port, whose calls
/// and sends go to its peer without a target (docs/architecture.md §16).
template <class E>
concept Endpoint = RoutedEndpoint<E> || std::same_as<E, Port>;

namespace detail {

/// "0123456789abcdef": a fingerprint as 16 hex digits, for error messages.
inline std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// Reads `m` as struct T after checking its fingerprint against `expected`, the receiver's own
/// fingerprint of T (skipped when either is 0, i.e. an untyped peer). With `layout` (T's layout
/// as the receiver was compiled with it) a differing fingerprint is accepted when the contract
/// rule of shmbus/contract.hpp allows it (fields appended by either side); without it only an
/// equal fingerprint is. An empty message reads as T's defaults (Cap'n Proto's meaning of an
/// empty message). Errors: InvalidMessage (contract mismatch, naming the struct and the first
/// differing field when known; or a malformed root). Cap'n Proto validates nested pointers
/// lazily: a deeper malformation throws kj::Exception on access.
template <class T>
Result<typename T::Reader> readChecked(const Message& m, std::uint64_t expected, const ContractLayout* layout = nullptr) {
  if (expected != 0 && m.schemaId() != 0 && m.schemaId() != expected) {
    if (layout == nullptr) {
      return makeError(ErrorCode::InvalidMessage,
                       "payload schema " + hex64(m.schemaId()) + " does not match the expected " + hex64(expected) +
                           " (the two sides were compiled from different contract versions)");
    }
    if (auto why = contractMismatch(m.schemaId(), *layout)) {
      return makeError(ErrorCode::InvalidMessage,
                       *why + "; fingerprint " + hex64(m.schemaId()) + ", expected " + hex64(expected) +
                           " (the two sides were compiled from incompatible contract versions)");
    }
  }
  if (m.empty()) return typename T::Reader();
  return m.tryRoot<T>();
}

/// True for a streaming method (`-> stream`); false for a descriptor without `streaming`
/// (written by hand, or by an older capnpc-shmbus).
template <class M>
constexpr bool isStreaming() noexcept {
  if constexpr (requires { M::streaming; }) {
    return M::streaming;
  } else {
    return false;
  }
}

/// The layout of method descriptor M's params (`Params`) or results, or nullptr for a
/// descriptor written without one (then only equal fingerprints are accepted).
template <class M>
constexpr const ContractLayout* paramsLayoutOf() noexcept {
  if constexpr (requires { M::paramsLayout; }) {
    return &M::paramsLayout;
  } else {
    return nullptr;
  }
}

/// See paramsLayoutOf.
template <class M>
constexpr const ContractLayout* resultsLayoutOf() noexcept {
  if constexpr (requires { M::resultsLayout; }) {
    return &M::resultsLayout;
  } else {
    return nullptr;
  }
}

/// The reply of a typed call, checked against the method's results fingerprint.
template <class Results>
Result<Typed<Results>> typedReply(Result<Message> reply, const Channel& channel, const Target& target,
                                  const ContractLayout* layout = nullptr) {
  if (!reply) return reply.error();
  auto r = readChecked<Results>(*reply, channel.replySchemaId, layout);
  if (!r) return inContext(r.error(), "reply of '" + std::string(channel.name) + "' from " + target.describe());
  return Typed<Results>(std::move(*reply), *r);
}

}  // namespace detail

/// Handle of a typed call (generated clients return it): a shmbus::Call whose reply is read as
/// `Results`. Copyable; all copies refer to the same call. Errors: every code of Call::get, plus
/// InvalidMessage when the reply's fingerprint is incompatible with `Results`' layout (the handler
/// was compiled from an incompatible contract version) or the reply is malformed.
/// Thread contract: as Call (any method from any thread; `then` runs on the dispatch thread).
template <class Results>
class TypedCall {
 public:
  TypedCall() = default;
  /// Wraps `call` made on `channel` (its replySchemaId is the expected reply fingerprint) to
  /// `target` (named in errors). `layout` (static storage) is `Results`' layout for the contract
  /// rule (shmbus/contract.hpp); without it only the exact fingerprint is accepted.
  TypedCall(Call call, const Channel& channel, Target target, const ContractLayout* layout = nullptr)
      : call_(std::move(call)), channel_(channel), target_(std::move(target)), layout_(layout) {}

  /// Blocks until the reply is there (dispatching meanwhile, as Call::get) and reads it in place.
  Result<Typed<Results>> get() { return detail::typedReply<Results>(call_.get(), channel_, target_, layout_); }

  /// True when the result is there (get() will not block).
  bool ready() const { return call_.ready(); }

  /// Runs `cb` with the typed result once it is there (see Call::then). Replaces an earlier callback.
  void then(std::function<void(Result<Typed<Results>>)> cb) {
    call_.then([cb = std::move(cb), channel = channel_, target = target_, layout = layout_](Result<Message> r) {
      cb(detail::typedReply<Results>(std::move(r), channel, target, layout));
    });
  }

  /// Gives up the call (Call::cancel): the result becomes Cancelled unless it is already there.
  void cancel() { call_.cancel(); }

  /// The caller-side request id.
  std::uint64_t requestId() const { return call_.requestId(); }

  /// The untyped call (for code that works on Call).
  const Call& untyped() const noexcept { return call_; }

 private:
  Call call_;
  Channel channel_{std::uint64_t{0}, std::string_view()};
  Target target_;
  const ContractLayout* layout_ = nullptr;
};

namespace detail {

/// `CallOptions` with the method's default timeout filled in when the caller gave none.
inline CallOptions withTimeout(CallOptions options, std::chrono::milliseconds methodDefault) noexcept {
  if (options.timeout.count() == 0) options.timeout = methodDefault;
  return options;
}

/// Announces the schema of method descriptor M's contract on `endpoint` (Window::announceSchema,
/// Supervisor::announceSchema: once per contract and connection; a failure is logged there and
/// does not fail the typed operation). A descriptor without `Contract` (written by hand, or by an
/// older capnpc-shmbus) announces nothing, and neither does a `Port`: no supervisor is on its
/// path, so nothing of its traffic is captured for an inspector to decode.
template <class M, class E>
void announce(E& endpoint) {
  if constexpr (requires { typename M::Contract; }) {
    if constexpr (requires { endpoint.announceSchema(M::Contract::schema()); }) {
      (void)endpoint.announceSchema(M::Contract::schema());
    }
  }
}

/// The untyped build callback for a typed one. Captures `build` by reference: a BuildFn runs
/// synchronously inside the call that takes it, so the reference outlives every use (and the
/// std::function needs no allocation).
template <class M, class F>
BuildFn buildFn(F& build) {
  return [&build](Builder& b) {
    auto params = b.initRoot<typename M::Params>();
    build(params);
  };
}

/// Typed request (method descriptor M) from a window: to the main process for Target::main()
/// (Window::invoke), else routed (Window::invokeIn).
template <class M, class F>
TypedCall<typename M::Results> invoke(Window& w, const Target& target, F& build, CallOptions options) {
  static_assert(!M::oneway, "a $oneway method has no reply: use send/push/broadcast");
  announce<M>(w);
  const Channel ch = M::channel();
  options = withTimeout(options, M::defaultTimeout);
  Call c = target.isMain() ? w.invoke(ch, buildFn<M>(build), options) : w.invokeIn(target, ch, buildFn<M>(build), options);
  return {std::move(c), ch, target, resultsLayoutOf<M>()};
}

/// Typed request (method descriptor M) from the main process to a window (Supervisor::invoke).
template <class M, class F>
TypedCall<typename M::Results> invoke(Supervisor& s, const Target& target, F& build, CallOptions options) {
  static_assert(!M::oneway, "a $oneway method has no reply: use send/push/broadcast");
  announce<M>(s);
  const Channel ch = M::channel();
  return {s.invoke(target, ch, buildFn<M>(build), withTimeout(options, M::defaultTimeout)), ch, target,
          resultsLayoutOf<M>()};
}

/// Typed request (method descriptor M) to the peer of a port (Port::invoke): the deadline is the
/// caller's own (no supervisor in the path); errors name the peer's window id.
template <class M, class F>
TypedCall<typename M::Results> invoke(Port& p, F& build, CallOptions options) {
  static_assert(!M::oneway, "a $oneway method has no reply: use send");
  const Channel ch = M::channel();
  return {p.invoke(ch, buildFn<M>(build), withTimeout(options, M::defaultTimeout)), ch, Target(p.peerId()),
          resultsLayoutOf<M>()};
}

/// The call of a generated client's overload without a target: to `fallback` (the interface's
/// $target role, else the main process) from a window or the supervisor; to the peer on a port.
template <class M, Endpoint E, class F>
TypedCall<typename M::Results> invokeDefault(E& endpoint, const Target& fallback, F& build, CallOptions options) {
  if constexpr (std::same_as<E, Port>) {
    return invoke<M>(endpoint, build, options);
  } else {
    return invoke<M>(endpoint, fallback, build, options);
  }
}

/// Typed one-way message from a window: to main (Window::send) or to a window (Window::sendTo).
template <class M, class F>
Result<void> send(Window& w, const Target& target, F& build) {
  static_assert(M::oneway, "only $oneway methods are sent; call the others");
  announce<M>(w);
  return target.isMain() ? w.send(M::channel(), buildFn<M>(build)) : w.sendTo(target, M::channel(), buildFn<M>(build));
}

/// Typed push from the main process to one window (Supervisor::send).
template <class M, class F>
Result<void> send(Supervisor& s, const Target& target, F& build) {
  static_assert(M::oneway, "only $oneway methods are pushed; call the others");
  announce<M>(s);
  return s.send(target, M::channel(), buildFn<M>(build));
}

/// Typed one-way message to the peer of a port (Port::send).
template <class M, class F>
Result<void> send(Port& p, F& build) {
  static_assert(M::oneway, "only $oneway methods are sent; call the others");
  return p.send(M::channel(), buildFn<M>(build));
}

/// The send of a generated client's overload without a target (see invokeDefault).
template <class M, Endpoint E, class F>
Result<void> sendDefault(E& endpoint, const Target& fallback, F& build) {
  if constexpr (std::same_as<E, Port>) {
    return send<M>(endpoint, build);
  } else {
    return send<M>(endpoint, fallback, build);
  }
}

/// Typed broadcast from the main process (Supervisor::broadcast).
template <class M, class F>
Result<BroadcastReport> broadcast(Supervisor& s, F& build, const BroadcastOptions& options) {
  static_assert(M::oneway, "only $oneway methods are broadcast; call the others");
  announce<M>(s);
  return s.broadcast(M::channel(), buildFn<M>(build), options);
}

/// The channel a typed handler of method M registers: M's, with the params fingerprint left out
/// (0) when M has a layout, so that the library's exact-match check leaves the decision to the
/// contract rule of readParams.
template <class M>
Channel handledChannel() noexcept {
  constexpr Channel ch = M::channel();
  return Channel(ch.id, ch.name, paramsLayoutOf<M>() != nullptr ? 0 : ch.schemaId, ch.replySchemaId);
}

/// The params of method M in request `req`, checked against M's contract (readChecked).
/// Errors: InvalidMessage naming the request's channel.
template <class M>
Result<typename M::Params::Reader> readParams(const Message& req) {
  auto read = readChecked<typename M::Params>(req, M::channel().schemaId, paramsLayoutOf<M>());
  if (!read) return inContext(read.error(), "request of '" + std::string(M::channel().name) + "'");
  return *read;
}

/// Registers a typed handler: fn(Params::Reader, Results::Builder, const CallContext&), or the
/// same without the context. The results builder is the root of the reply message. The request's
/// fingerprint is checked against M's params layout before fn runs (InvalidMessage reply when
/// incompatible; the handler is registered with schemaId 0 so that the library's exact-match
/// check leaves the decision to the contract rule), and the library stamps the reply with the
/// results fingerprint. A request whose root is malformed fails the call
/// with InvalidMessage; an exception fn throws (a kj::Exception from a malformed field included)
/// fails it with HandlerError.
template <class M, Endpoint E, class F>
Registration handle(E& endpoint, F&& fn) {
  using P = typename M::Params;
  using R = typename M::Results;
  using Fn = std::decay_t<F>;
  constexpr bool withContext = std::is_invocable_v<Fn&, typename P::Reader&, typename R::Builder&, const CallContext&>;
  static_assert(withContext || std::is_invocable_v<Fn&, typename P::Reader&, typename R::Builder&>,
                "a typed handler takes (Params::Reader, Results::Builder[, const shmbus::CallContext&])");
  announce<M>(endpoint);
  return endpoint.handle(handledChannel<M>(), [fn = Fn(std::forward<F>(fn))](const Message& req, Builder& reply,
                                                                             const CallContext& ctx) mutable {
    // A contract mismatch or a malformed payload fails the call with InvalidMessage (not
    // HandlerError: the handler never ran).
    auto read = readParams<M>(req);
    if (!read) throw CallFailure(read.error());
    typename P::Reader params = *read;
    typename R::Builder results = reply.initRoot<R>();
    if constexpr (withContext) {
      fn(params, results, ctx);
    } else {
      fn(params, results);
    }
  });
}

/// Registers a typed listener for a $oneway method: fn(Params::Reader, const CallContext&), or the
/// same without the context; `once` removes it before its first run. A message whose fingerprint
/// or payload does not match is not delivered: the endpoint logs it as the listener's failure.
template <class M, Endpoint E, class F>
Registration listen(E& endpoint, F&& fn, bool once) {
  static_assert(M::oneway, "listeners receive $oneway methods; the others are handled");
  using P = typename M::Params;
  using Fn = std::decay_t<F>;
  constexpr bool withContext = std::is_invocable_v<Fn&, typename P::Reader&, const CallContext&>;
  static_assert(withContext || std::is_invocable_v<Fn&, typename P::Reader&>,
                "a typed listener takes (Params::Reader[, const shmbus::CallContext&])");
  announce<M>(endpoint);
  Listener l = [fn = Fn(std::forward<F>(fn))](const Message& m, const CallContext& ctx) mutable {
    auto params = readChecked<P>(m, M::channel().schemaId, paramsLayoutOf<M>());
    if (!params) {  // the endpoint logs what the listener throws and goes on
      throw std::runtime_error(inContext(params.error(), "message on '" + std::string(M::channel().name) + "'").toString());
    }
    if constexpr (withContext) {
      fn(*params, ctx);
    } else {
      fn(*params);
    }
  };
  return once ? endpoint.once(M::channel(), std::move(l)) : endpoint.on(M::channel(), std::move(l));
}

/// Registers a typed handler for a streaming method (`-> stream`, M::streaming): fn(Params::Reader,
/// const CallContext&), or the same without the context. Returning acknowledges the write (the
/// empty StreamResult reply), which is the sender's credit (shmbus/stream.hpp): a slow fn slows
/// the sender down. A throw fails the write with HandlerError and ends the sender's stream.
template <class M, Endpoint E, class F>
Registration handleStream(E& endpoint, F&& fn) {
  static_assert(isStreaming<M>(), "handleStream serves streaming methods (-> stream); handle the others");
  using P = typename M::Params;
  using Fn = std::decay_t<F>;
  constexpr bool withContext = std::is_invocable_v<Fn&, typename P::Reader&, const CallContext&>;
  static_assert(withContext || std::is_invocable_v<Fn&, typename P::Reader&>,
                "a typed stream handler takes (Params::Reader[, const shmbus::CallContext&])");
  return handle<M>(endpoint, [fn = Fn(std::forward<F>(fn))](typename P::Reader& params, typename M::Results::Builder&,
                                                             const CallContext& ctx) mutable {
    if constexpr (withContext) {
      fn(params, ctx);
    } else {
      fn(params);
    }
  });
}

/// The Stream of a generated `<I>Stream` class: to the peer of a port, else to `target`; announces
/// the contract of method descriptor M (any method of the interface) on a routed endpoint.
template <class M, Endpoint E>
Stream streamTo(E& endpoint, const Target& target, StreamOptions options) {
  if constexpr (std::same_as<E, Port>) {
    return Stream::to(endpoint, options);
  } else {
    announce<M>(endpoint);
    return Stream::to(endpoint, target, options);
  }
}

/// One typed write of streaming method M on `stream` (Stream::write; $timeoutMs applies when
/// StreamOptions::timeout is 0).
template <class M, class F>
Result<void> streamWrite(Stream& stream, F& build) {
  static_assert(isStreaming<M>(), "only streaming methods (-> stream) are written to a stream");
  return stream.write(M::channel(), buildFn<M>(build), M::defaultTimeout);
}

/// The typed final call M of a stream (Stream::finish): made once every write was acknowledged;
/// already failed with the stream's error when the stream ended.
template <class M, class F>
TypedCall<typename M::Results> streamFinish(Stream& stream, const Target& target, F& build, CallOptions options) {
  static_assert(!M::oneway && !isStreaming<M>(), "a stream ends with an ordinary method that has a reply");
  const Channel ch = M::channel();
  return {stream.finish(ch, buildFn<M>(build), withTimeout(options, M::defaultTimeout)), ch, target,
          resultsLayoutOf<M>()};
}

}  // namespace detail
}  // namespace shmbus
