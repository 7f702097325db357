// Listener and handler tables of an endpoint (Window and Supervisor share them).
// Semantics (docs/architecture.md §2): listeners accumulate; a `once` listener is removed before it runs;
// the last registered handler wins; a Registration removes exactly what it registered.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "shmbus/channel.hpp"
#include "shmbus/message.hpp"

namespace shmbus::detail {

struct ListenerSlot {
  std::uint64_t token;
  Listener fn;
  bool once;
};

struct HandlerSlot {
  std::uint64_t token;
  Handler fn;                   ///< synchronous handler, or
  AsyncHandler async;           ///< asynchronous handler (exactly one of the two is set)
  std::uint64_t schemaId;       ///< expected request fingerprint (0 = unchecked)
  std::uint64_t replySchemaId;  ///< fingerprint stamped on replies (0 = untyped)
};

/// Thread contract: every method is thread-safe; callbacks are never invoked under the lock.
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
