// Running handlers and listeners: the part of the endpoint core that the window and the main
// process share (docs/architecture.md, "Endpoint core").
//
// A handler's outcome (reply segments or an Error) goes to a ReplySink: the window's outbox, or
// the router for a main-process handler. A synchronous handler fills a scratch builder and its
// outcome reaches the sink before runHandler returns; an asynchronous one gets a Responder that
// owns a sink and replies later from any thread.
#pragma once

#include <capnp/message.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "call/callbacks.hpp"
#include "log/log.hpp"
#include "shmbus/message.hpp"

namespace shmbus::detail {

/// Where one call's outcome goes. Implementations stamp the reply's frame (channel, request id,
/// reply schema) themselves. Thread contract: reply/fail from any thread, at most one of them once.
class ReplySink : public CancelProbe {
 public:
  /// Writes the reply (a heap-built message's segments). Errors: TooLarge, Full, BusClosed.
  virtual Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) = 0;
  /// Writes the failure. Errors: Full, BusClosed.
  virtual Result<void> fail(const Error& e) = 0;
  /// The Responder was dropped without a reply (count it; the caller times out).
  virtual void unanswered() = 0;
};

/// What a Responder holds: its sink, whether it replied, and the call's description.
struct ResponderState {
  std::shared_ptr<ReplySink> sink;
  std::atomic<bool> done{false};
  std::uint64_t requestId = 0;
  std::string what;  // "invoke 'ch' on window 3 (role 'x')", for HandlerError messages
  ~ResponderState();
};

/// The trace id of the call whose handler runs on this thread, 0 outside handlers: a call made
/// from inside a handler carries it (docs/architecture.md §14). Any thread.
std::uint64_t currentTraceId() noexcept;

/// Runs `slot` on `request`. Sync: the outcome goes to `syncSink` before this returns (a
/// thrown CallFailure becomes its Error, any other exception HandlerError naming `what()`).
/// Async: `makeAsyncSink()` gives the sink the Responder owns; an exception thrown before the
/// handler returns fails the call unless it already replied.
void runHandler(const HandlerSlot& slot, const Message& request, const CallContext& ctx,
                const std::function<std::string()>& what, ReplySink& syncSink,
                const std::function<std::shared_ptr<ReplySink>()>& makeAsyncSink);

/// A Listener that decodes bus.capnp WindowEvent payloads for `fn` (a malformed one is thrown
/// as the listener's failure, which the endpoint logs).
Listener windowEventListener(WindowEventListener fn);

/// A Listener that decodes a bus.capnp ErrorInfo payload into a SendFailure for `fn`; the
/// channel comes from the context (the failed message's channel, not kSendFailed).
Listener sendFailureListener(SendFailureListener fn);

/// Runs each listener on `m`; an exception is logged through `log` and the next listener runs.
void runListeners(const std::vector<std::shared_ptr<ListenerSlot>>& listeners, const Message& m,
                  const CallContext& ctx, const Logger& log);

}  // namespace shmbus::detail
