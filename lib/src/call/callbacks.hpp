// Listener and handler tables of an endpoint (Window and Supervisor share them).
// Semantics (docs/architecture.md §2): listeners accumulate; a `once` listener is removed before it runs;
// the last registered handler wins; a Registration removes exactly what it registered.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shmbus/channel.hpp"
#include "shmbus/message.hpp"

namespace shmbus::detail {

/// The runs of one registered callback, so that unregistering it is final: once retire()
/// returns, no run of the callback is in progress on another thread and none starts again.
/// That is what makes `Registration::reset()` (and a Registration destroyed beside the state its
/// callback captures) safe while the callback may be running on a dispatch or lane thread.
///
/// One 32-bit atomic: bit 31 = retired, bits 0..30 = runs in progress. A run that finds the
/// retired bit does not start; retire() sets the bit and waits (futex, std::atomic::wait) until
/// the runs left are only those of the calling thread itself (a callback that resets its own
/// registration, or one nested below it through re-entrant dispatch: waiting for those would
/// deadlock). Same contract as Win32 UnregisterWaitEx with a completion event or
/// WaitForThreadpoolWorkCallbacks: the unregistering thread waits for callbacks in flight.
/// Thread contract: enter/leave/retire from any thread. Two callbacks on two threads that each
/// reset the other's registration while running deadlock; don't.
class CallbackGate {
 public:
  /// Starts a run; false when the callback is retired (then it must not run, and leave() is
  /// not called).
  bool enter() noexcept;
  /// Ends a run that enter() started, on the thread that started it.
  void leave() noexcept;
  /// Stops new runs and waits until no run of another thread is in progress. Idempotent.
  void retire() noexcept;

  /// enter() and leave() as a scope.
  class Run {
   public:
    explicit Run(CallbackGate& g) noexcept : g_(g.enter() ? &g : nullptr) {}
    ~Run() { if (g_) g_->leave(); }
    Run(const Run&) = delete;
    Run& operator=(const Run&) = delete;
    /// Whether the callback may run.
    explicit operator bool() const noexcept { return g_ != nullptr; }

   private:
    CallbackGate* g_;
  };

 private:
  static constexpr std::uint32_t kRetired = 1u << 31;
  std::atomic<std::uint32_t> state_{0};
};

/// A registered listener. (Constructors rather than aggregates: clang before 16 has no
/// parenthesised aggregate initialisation, P0960, which make_shared needs.)
struct ListenerSlot {
  /// The slot of listener `fn` with `token`, removed after its first run when `once`.
  ListenerSlot(std::uint64_t t, Listener f, bool o) : token(t), fn(std::move(f)), once(o) {}
  std::uint64_t token;
  Listener fn;
  bool once;
  CallbackGate gate;
};

/// A registered handler (synchronous or asynchronous).
struct HandlerSlot {
  /// The slot of handler `f` or `a` (exactly one set) with `token` and the request and reply fingerprints.
  HandlerSlot(std::uint64_t t, Handler f, AsyncHandler a, std::uint64_t schema, std::uint64_t replySchema)
      : token(t), fn(std::move(f)), async(std::move(a)), schemaId(schema), replySchemaId(replySchema) {}
  std::uint64_t token;
  Handler fn;                   ///< synchronous handler, or
  AsyncHandler async;           ///< asynchronous handler (exactly one of the two is set)
  std::uint64_t schemaId;       ///< expected request fingerprint (0 = unchecked)
  std::uint64_t replySchemaId;  ///< fingerprint stamped on replies (0 = untyped)
  mutable CallbackGate gate;    ///< runs of `fn`/`async` (the synchronous part of an async handler)
};

/// Thread contract: every method is thread-safe; callbacks are never invoked under the lock.
/// A Registration's undo retires the slot's gate after removing it from the table (see
/// CallbackGate): when reset() returns, the callback is neither running elsewhere nor starts again.
/// Owned by shared_ptr: a Registration that outlives its endpoint becomes a no-op.
class CallbackTable : public std::enable_shared_from_this<CallbackTable> {
 public:
  /// Called (outside the lock) when a channel gains its first handler (true) or loses its last (false).
  using HandlerHook = std::function<void(std::uint64_t channel, bool present)>;
  /// Called (outside the lock) when a channel gains its first listener.
  using ListenerHook = std::function<void(std::uint64_t channel)>;

  void setHooks(HandlerHook h, ListenerHook l) {
    std::lock_guard lk(mu_);
    handlerHook_ = std::make_shared<HandlerHook>(std::move(h));
    listenerHook_ = std::make_shared<ListenerHook>(std::move(l));
  }
  void clearHooks() {
    std::lock_guard lk(mu_);
    handlerHook_.reset();
    listenerHook_.reset();
  }

  Registration addListener(const Channel& ch, Listener fn, bool once);
  Registration setHandler(const Channel& ch, Handler fn);
  Registration setAsyncHandler(const Channel& ch, AsyncHandler fn);

  /// Snapshot of the listeners of `channel`; `once` listeners are removed from the table here,
  /// before they run. Empty when none.
  std::vector<std::shared_ptr<ListenerSlot>> takeListeners(std::uint64_t channel);
  /// Number of listeners of `channel` now (0 when none).
  std::size_t listenerCount(std::uint64_t channel) const;
  /// The current handler of `channel`, or null.
  std::shared_ptr<HandlerSlot> handler(std::uint64_t channel) const;
  bool hasHandler(std::uint64_t channel) const { return handler(channel) != nullptr; }
  /// Channel ids with a handler now (for re-announcing).
  std::vector<std::uint64_t> handledChannels() const;
  /// Name registered for `channel` ("" if unknown).
  std::string name(std::uint64_t channel) const;
  /// Records a name for an id seen elsewhere.
  void rememberName(std::uint64_t channel, std::string_view name);

 private:
  struct Entry {
    std::string name;
    std::vector<std::shared_ptr<ListenerSlot>> listeners;
    std::shared_ptr<HandlerSlot> handler;
  };
  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, Entry> entries_;
  std::uint64_t nextToken_ = 1;
  std::shared_ptr<HandlerHook> handlerHook_;
  std::shared_ptr<ListenerHook> listenerHook_;

  Registration install(const Channel& ch, std::shared_ptr<HandlerSlot> slot);
};

}  // namespace shmbus::detail
