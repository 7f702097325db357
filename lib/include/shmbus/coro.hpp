// libshmbus — C++20 coroutines over the bus: `co_await` a call, write handlers as coroutines.
//
//   shmbus::Task<shmbus::Reply> getData(shmbus::Request req) {
//     auto rows = co_await win.invokeIn("database", "query", build);   // suspends, no thread blocked
//     if (!rows) throw shmbus::CallFailure(rows.error());
//     shmbus::Reply reply;
//     reply.initRoot<Data>().setTotal(...);
//     co_return reply;                                                  // the call's reply
//   }
//   auto reg = shmbus::handleCo(win, "GetDashboardData", getData);
//
// Where coroutines resume: `co_await call` resumes in the call's then-callback, i.e. on the
// endpoint's dispatch thread (a Window's run()/poll()/startDispatchThread(), the Supervisor's
// callback lane). So the library's loop drives them; to drive them from your own loop, call
// `endpoint.poll(0ms)` whenever your loop is idle (or from a timer), or run the endpoint's
// startDispatchThread() and hop back to your loop in the coroutine yourself. syncWait() runs
// one task to completion, dispatching on the calling thread unless a dispatch thread does.
//
// Task<T> is lazy (it starts when awaited, detached, or run by syncWait) and single-owner.
// Thread contract: a Task is resumed on one thread at a time; it may move between threads.
#pragma once

#include <capnp/message.h>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <exception>
#include <memory>
#include <optional>
#include <utility>

#include "shmbus/channel.hpp"
#include "shmbus/message.hpp"
#include "shmbus/typed.hpp"

namespace shmbus {

template <typename T = void>
class Task;

namespace detail {

template <typename T>
struct TaskPromiseBase {
  std::exception_ptr error;
  std::coroutine_handle<> continuation;
  std::suspend_always initial_suspend() noexcept { return {}; }
  struct Final {
    bool await_ready() noexcept { return false; }
    template <typename P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      // Symmetric transfer to whoever awaited this task (no stack growth across long chains).
      auto c = h.promise().continuation;
      return c ? c : std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  Final final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { error = std::current_exception(); }
};

template <typename T>
struct TaskPromise : TaskPromiseBase<T> {
  std::optional<T> value;
  Task<T> get_return_object() noexcept;
  void return_value(T v) { value.emplace(std::move(v)); }
  T take() {
    if (this->error) std::rethrow_exception(this->error);
    return std::move(*value);
  }
};

template <>
struct TaskPromise<void> : TaskPromiseBase<void> {
  Task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void take() {
    if (this->error) std::rethrow_exception(this->error);
  }
};

/// A coroutine that starts at once and destroys itself at the end (fire and forget).
struct Detached {
  struct promise_type {
    Detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }  // the bodies below catch everything
  };
};

}  // namespace detail

/// A lazily started coroutine producing a T (or nothing). Move-only; awaiting it starts it and
/// resumes the awaiter when it finishes, rethrowing what it threw.
template <typename T>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::TaskPromise<T>;  ///< the coroutine's promise (C++ coroutine protocol)
  using Handle = std::coroutine_handle<promise_type>;  ///< the coroutine's handle

  /// No coroutine (done() is false, awaiting it returns at once).
  Task() = default;
  /// Owns the coroutine `h` (made by the promise's get_return_object()).
  explicit Task(Handle h) noexcept : h_(h) {}
  /// Takes `o`'s coroutine; `o` is left empty.
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  /// Destroys this task's coroutine, if any, and takes `o`'s.
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  /// Awaiter protocol: no suspension when there is no coroutine or it has finished.
  bool await_ready() const noexcept { return !h_ || h_.done(); }
  /// Awaiter protocol: starts (or continues) the coroutine; `awaiter` resumes when it ends.
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiter) noexcept {
    h_.promise().continuation = awaiter;
    return h_;
  }
  /// Awaiter protocol: the coroutine's result; rethrows what it threw.
  T await_resume() { return h_.promise().take(); }

  /// True once the coroutine ran to its end.
  bool done() const noexcept { return h_ && h_.done(); }

 private:
  Handle h_;
};

namespace detail {
template <typename T>
Task<T> TaskPromise<T>::get_return_object() noexcept {
  return Task<T>(std::coroutine_handle<TaskPromise<T>>::from_promise(*this));
}
inline Task<void> TaskPromise<void>::get_return_object() noexcept {
  return Task<void>(std::coroutine_handle<TaskPromise<void>>::from_promise(*this));
}
}  // namespace detail

/// `co_await call` suspends until the call's result is there and yields it (Result<Message>;
/// bus errors are values, as from Call::get()). Resumes on the endpoint's dispatch thread.
struct CallAwaiter {
  Call call;  ///< the awaited call
  /// Awaiter protocol: no suspension when the result is already there.
  bool await_ready() const { return call.ready(); }
  /// Awaiter protocol: resumes `h` when the result arrives (false: it arrived meanwhile).
  bool await_suspend(std::coroutine_handle<> h) {
    return call.thenIfPending([h](const Result<Message>&) { h.resume(); });
  }
  /// Awaiter protocol: the call's result (Call::get(), which no longer blocks).
  Result<Message> await_resume() { return call.get(); }
};
inline CallAwaiter operator co_await(Call call) { return CallAwaiter{std::move(call)}; }

/// `co_await typedCall` (generated clients) yields Result<Typed<Results>>, read in place and
/// checked against the contract as TypedCall::get() does.
template <class Results>
struct TypedCallAwaiter {
  TypedCall<Results> call;  ///< the awaited typed call
  /// Awaiter protocol: no suspension when the result is already there.
  bool await_ready() const { return call.ready(); }
  /// Awaiter protocol: resumes `h` when the result arrives (false: it arrived meanwhile).
  bool await_suspend(std::coroutine_handle<> h) {
    Call untyped = call.untyped();
    return untyped.thenIfPending([h](const Result<Message>&) { h.resume(); });
  }
  /// Awaiter protocol: the typed result (TypedCall::get(), which no longer blocks).
  Result<Typed<Results>> await_resume() { return call.get(); }
};
/// Makes a TypedCall awaitable (see TypedCallAwaiter).
template <class Results>
TypedCallAwaiter<Results> operator co_await(TypedCall<Results> call) {
  return TypedCallAwaiter<Results>{std::move(call)};
}

/// The reply a coroutine handler co_returns: a heap message builder (an empty Reply is a void
/// reply). Move-only.
class Reply {
 public:
  Reply() = default;
  /// The builder (created on first use).
  Builder& builder() {
    if (!mb_) mb_ = std::make_unique<capnp::MallocMessageBuilder>();
    return *mb_;
  }
  /// Initialises the root as struct type T.
  template <typename T>
  typename T::Builder initRoot() {
    return builder().template initRoot<T>();
  }
  /// True when nothing was built (a void reply).
  bool empty() const noexcept { return mb_ == nullptr; }

 private:
  std::unique_ptr<capnp::MallocMessageBuilder> mb_;
};

/// The reply a typed coroutine handler of method M co_returns (generated `handle<Method>Co`): an
/// owned message whose root is M's results. results() initialises the root on its first call and
/// returns the same root after; a reply whose results() was never called is the empty reply, which
/// the caller reads as the results' defaults. The library stamps it with M's results fingerprint.
/// Move-only; one thread at a time.
template <class M>
class TypedReply {
 public:
  /// The results builder, the reply's root (initialised on first use).
  typename M::Results::Builder results() {
    using R = typename M::Results;
    return reply_.empty() ? reply_.template initRoot<R>() : reply_.builder().template getRoot<R>();
  }
  /// The untyped reply (empty until results() was called).
  Reply& untyped() noexcept { return reply_; }

 private:
  Reply reply_;
};

/// The request a coroutine handler gets: an owned copy of the message and of its context (the
/// strings live here), valid across suspensions. cancelled() asks the call's Responder.
class Request {
 public:
  /// Copies `m` and `ctx` (the handler's arguments) and keeps the call's Responder `r`.
  Request(const Message& m, const CallContext& ctx, Responder r)
      : s_(std::make_shared<State>(m.copy(), ctx, std::move(r))) {}
  /// The request message (an owned copy).
  const Message& message() const noexcept { return s_->message; }
  /// The context; its views point into this Request. Its cancelProbe is cleared: use cancelled().
  const CallContext& context() const noexcept { return s_->ctx; }
  /// The request's root read as struct type T (Message::root).
  template <typename T>
  typename T::Reader root() const {
    return s_->message.template root<T>();
  }
  /// True once the caller cancelled, the deadline passed or the bus closed.
  bool cancelled() const noexcept { return s_->responder.cancelled() || s_->ctx.cancelled(); }

 private:
  struct State {
    State(Message m, const CallContext& c, Responder r)
        : message(std::move(m)), role(c.sourceRole), channel(c.channel), ctx(c), responder(std::move(r)) {
      ctx.sourceRole = role;
      ctx.channel = channel;
      ctx.cancelProbe = nullptr;
    }
    Message message;
    std::string role, channel;
    CallContext ctx;
    Responder responder;
  };
  std::shared_ptr<State> s_;
};

namespace detail {
/// The untyped reply of a coroutine handler's result: a Reply itself, or a TypedReply<M>'s.
inline Reply& untypedReply(Reply& r) noexcept { return r; }
/// See untypedReply(Reply&).
template <class M>
Reply& untypedReply(TypedReply<M>& r) noexcept {
  return r.untyped();
}
/// Runs a coroutine handler's task to its end and replies with its outcome (R: Reply for
/// handleCo, TypedReply<M> for handleMethodCo). `keep` holds the handler object (a lambda's
/// captures live there) until the coroutine finished, so unregistering the handler while a call
/// is suspended leaves no dangling capture.
template <class R>
Detached driveReply([[maybe_unused]] std::shared_ptr<const void> keep, Task<R> task, Responder r) {
  try {
    R result = co_await std::move(task);
    Reply& reply = untypedReply(result);
    if (reply.empty()) {
      (void)r.reply();
    } else {
      (void)r.reply(reply.builder());
    }
  } catch (...) {
    (void)r.fail(std::current_exception());
  }
}
inline Detached driveDetached(Task<void> task) {
  try {
    co_await std::move(task);
  } catch (...) {
  }
}
}  // namespace detail

/// Registers a coroutine handler on a Window or Supervisor: `fn(Request) -> Task<Reply>`. The
/// coroutine starts on the dispatch thread; its co_return value is the reply, an exception fails
/// the call (CallFailure: its code; others: HandlerError), and the dispatch thread is free
/// whenever the coroutine is suspended. Built on handleAsync; the last registered handler wins.
/// Lifetime: the handler object (and so a lambda's captures) stays alive until every coroutine
/// it started has finished, even when the Registration is reset meanwhile; what the captures
/// refer to (a Window&, say) must outlive them as usual.
template <typename Endpoint, typename F>
Registration handleCo(Endpoint& endpoint, const Channel& channel, F fn) {
  auto shared = std::make_shared<F>(std::move(fn));
  return endpoint.handleAsync(channel, [shared](const Message& m, Responder r, const CallContext& ctx) {
    detail::driveReply(shared, (*shared)(Request(m, ctx, r)), r);
  });
}

/// A typed coroutine handler's request of method M: its params, read in an owned copy of the
/// request (checked against M's contract as the typed handlers check it), and the call's context.
/// Copyable; the params stay valid while a copy lives.
template <class M>
class TypedRequest {
 public:
  /// `params` must point into `request`'s message.
  TypedRequest(Request request, typename M::Params::Reader params) : request_(std::move(request)), params_(params) {}
  /// The params (zero copy from the request's owned copy).
  typename M::Params::Reader params() const noexcept { return params_; }
  /// The call's context (Request::context).
  const CallContext& context() const noexcept { return request_.context(); }
  /// True once the caller cancelled, the deadline passed or the bus closed.
  bool cancelled() const noexcept { return request_.cancelled(); }

 private:
  Request request_;
  typename M::Params::Reader params_;
};

namespace detail {
/// Runs a coroutine stream handler's task to its end, then acknowledges the write (an empty
/// reply), or fails it with what the task threw. `keep` as in driveReply.
inline Detached driveAck([[maybe_unused]] std::shared_ptr<const void> keep, Task<void> task, Responder r) {
  try {
    co_await std::move(task);
    (void)r.reply();
  } catch (...) {
    (void)r.fail(std::current_exception());
  }
}

/// The registration of handleStreamCo and handleMethodCo: on each call, reads M's params from the
/// request's owned copy (readParams; a mismatch fails the call with InvalidMessage before fn runs)
/// and drives fn's coroutine to its end on the dispatch thread: a streaming method's write is
/// acknowledged then (driveAck), another method's reply is the coroutine's value (driveReply).
template <class M, Endpoint E, class F>
Registration handleTypedCo(E& endpoint, F&& fn) {
  announce<M>(endpoint);
  auto shared = std::make_shared<std::decay_t<F>>(std::forward<F>(fn));
  return endpoint.handleAsync(handledChannel<M>(), [shared](const Message& m, Responder r, const CallContext& ctx) {
    Request req(m, ctx, r);
    auto params = readParams<M>(req.message());
    if (!params) {
      (void)r.fail(params.error());
      return;
    }
    auto task = (*shared)(TypedRequest<M>(std::move(req), *params));
    if constexpr (isStreaming<M>()) {
      driveAck(shared, std::move(task), r);
    } else {
      driveReply(shared, std::move(task), r);
    }
  });
}

/// Registers a coroutine handler for streaming method M (`-> stream`; generated
/// `handle<Method>Co`): fn(TypedRequest<M>) -> Task<void>, started on the dispatch thread. The
/// write is acknowledged when the coroutine co_returns, not when it first suspends: the sender's
/// credit (shmbus/stream.hpp), so a receiver that awaits (a disk, a database, another window)
/// holds the sender to its flow window without blocking its dispatch thread, which serves other
/// calls and the next writes meanwhile (each write's coroutine runs on its own: they finish in
/// the order the handler lets them). A throw fails the write (CallFailure: its code; others
/// HandlerError) and ends the sender's stream; a request that does not match M's contract fails
/// it with InvalidMessage before fn runs. Lifetime: as handleCo.
template <class M, Endpoint E, class F>
Registration handleStreamCo(E& endpoint, F&& fn) {
  static_assert(isStreaming<M>(), "handleStreamCo serves streaming methods (-> stream)");
  static_assert(std::is_invocable_r_v<Task<void>, std::decay_t<F>&, TypedRequest<M>>,
                "a typed coroutine stream handler is fn(shmbus::TypedRequest<M>) -> shmbus::Task<void>");
  return handleTypedCo<M>(endpoint, std::forward<F>(fn));
}

/// Registers a coroutine handler for method M with a reply (generated `handle<Method>Co`):
/// fn(TypedRequest<M>) -> Task<TypedReply<M>>, started on the dispatch thread; its co_return value
/// is the reply (stamped with M's results fingerprint), and the dispatch thread serves other calls
/// whenever it is suspended. A throw fails the call (CallFailure: its code; others HandlerError);
/// a request that does not match M's contract fails it with InvalidMessage before fn runs.
/// Lifetime: as handleCo.
template <class M, Endpoint E, class F>
Registration handleMethodCo(E& endpoint, F&& fn) {
  static_assert(!M::oneway && !isStreaming<M>(),
                "handleMethodCo serves methods with a reply; $oneway methods are listened to, streaming ones "
                "handled with handleStreamCo");
  static_assert(std::is_invocable_r_v<Task<TypedReply<M>>, std::decay_t<F>&, TypedRequest<M>>,
                "a typed coroutine handler is fn(shmbus::TypedRequest<M>) -> shmbus::Task<shmbus::TypedReply<M>>");
  return handleTypedCo<M>(endpoint, std::forward<F>(fn));
}
}  // namespace detail

/// Stream::write() as a coroutine (docs/architecture.md §18): suspends, blocking no thread, while
/// the stream's window is full (or the ring refused the write while earlier ones are in flight)
/// on the oldest write's acknowledgement, and resumes where `co_await call` resumes (the
/// endpoint's dispatch thread, the supervisor's lane). Returns what write() returns. `channel`
/// and `build` are kept by the coroutine (a Channel's name must outlive it, as for any call);
/// `stream` must outlive it, and nothing else may use the stream until it ends (one sequence).
inline Task<Result<void>> writeAsync(Stream& stream, Channel channel, BuildFn build,
                                     std::chrono::milliseconds methodDefault = std::chrono::milliseconds(0)) {
  for (;;) {
    while (auto ack = stream.nextAck(Stream::Wait::Window)) (void)co_await std::move(*ack);
    if (auto r = stream.tryWrite(channel, build, methodDefault)) co_return std::move(*r);
    if (auto ack = stream.nextAck(Stream::Wait::Oldest)) (void)co_await std::move(*ack);
  }
}

/// Stream::flush() as a coroutine: suspends until every write was acknowledged (as writeAsync).
/// Errors: the error that ended the stream.
inline Task<Result<void>> flushAsync(Stream& stream) {
  while (auto ack = stream.nextAck(Stream::Wait::All)) (void)co_await std::move(*ack);
  co_return stream.status();
}

namespace detail {
/// A typed stream's write of streaming method M from a coroutine (generated `<method>Async`):
/// a coroutine itself, so `build` lives in its frame until the write is made.
template <class M, class F>
Task<Result<void>> streamWriteAsync(Stream& stream, F build) {
  static_assert(isStreaming<M>(), "only streaming methods (-> stream) are written to a stream");
  co_return co_await writeAsync(stream, M::channel(), buildFn<M>(build), M::defaultTimeout);
}
}  // namespace detail

/// Starts `task` and lets it run to its end on its own (exceptions are swallowed: catch inside).
inline void detach(Task<void> task) { detail::driveDetached(std::move(task)); }

namespace detail {
/// What syncWait shares with the task it runs: owned by both (the task may resume, on the
/// dispatch thread, after syncWait gave up because the endpoint closed).
template <typename T>
struct SyncWaitState {
  std::optional<T> out;
  std::exception_ptr error;
  // Set by the task's last step, on whichever thread resumed it. The release store publishes
  // `out`/`error`; it pairs with syncWait's acquire loads (SYNC POINT "syncWait finished").
  std::atomic<bool> finished{false};
};

/// syncWait's task: runs `task` and stores its outcome into `st` (parameters live in the frame).
template <typename T>
Task<void> syncWaitBody(std::shared_ptr<SyncWaitState<T>> st, Task<T> task) {
  try {
    st->out.emplace(co_await std::move(task));
  } catch (...) {
    st->error = std::current_exception();
  }
  st->finished.store(true, std::memory_order_release);  // pairs with syncWait's acquire load
}
}  // namespace detail

/// Runs `task` to its end and returns its value (or rethrows what it threw). Meanwhile this
/// thread dispatches `endpoint` (poll, 10 ms rounds) when nobody else does; when another thread
/// dispatches it (its dispatch thread), the task resumes there and this thread notices its end
/// within 10 ms. Errors: UsageError when the endpoint closed before the task finished.
/// Thread contract: any thread, a callback of `endpoint` included (the gate is re-entrant).
template <typename Endpoint, typename T>
T syncWait(Endpoint& endpoint, Task<T> task) {
  auto st = std::make_shared<detail::SyncWaitState<T>>();
  detach(detail::syncWaitBody(st, std::move(task)));
  // acquire: pairs with syncWaitBody's release store; `out` and `error` are then complete.
  while (!st->finished.load(std::memory_order_acquire)) {
    if (!endpoint.poll(std::chrono::milliseconds(10))) break;
  }
  if (!st->finished.load(std::memory_order_acquire)) {
    throw UsageError("syncWait: the endpoint closed before the task finished");
  }
  if (st->error) std::rethrow_exception(st->error);
  return std::move(*st->out);
}

}  // namespace shmbus
