#include "endpoint/handler_run.hpp"

#include <kj/exception.h>

#include <memory>
#include <vector>

#include "bus.capnp.h"
#include "common/tls.hpp"
#include "protocol/frame.hpp"
#include "protocol/frame_io.hpp"

namespace shmbus {

namespace {
Error alreadyReplied(const detail::ResponderState& s) {
  return makeError(ErrorCode::InvalidMessage, s.what + ": already replied");
}
}  // namespace

Result<void> Responder::reply(const BuildFn& build) {
  if (!state_) return makeError(ErrorCode::InvalidMessage, "reply() on an empty Responder");
  // acq_rel: exactly one reply wins; pairs with replied()'s acquire load.
  if (state_->done.exchange(true, std::memory_order_acq_rel)) return alreadyReplied(*state_);
  capnp::MallocMessageBuilder mb;
  try {
    if (build) build(mb);
  } catch (...) {
    return state_->sink->fail(detail::handlerError(state_->what, std::current_exception()));
  }
  return state_->sink->reply(mb.getSegmentsForOutput());
}

Result<void> Responder::reply(capnp::MessageBuilder& built) {
  if (!state_) return makeError(ErrorCode::InvalidMessage, "reply() on an empty Responder");
  if (state_->done.exchange(true, std::memory_order_acq_rel)) return alreadyReplied(*state_);  // as in reply()
  return state_->sink->reply(built.getSegmentsForOutput());
}

Result<void> Responder::fail(std::exception_ptr exception) {
  if (!state_) return makeError(ErrorCode::InvalidMessage, "fail() on an empty Responder");
  return fail(detail::handlerError(state_->what, std::move(exception)));
}

Result<void> Responder::fail(Error error) {
  if (!state_) return makeError(ErrorCode::InvalidMessage, "fail() on an empty Responder");
  if (state_->done.exchange(true, std::memory_order_acq_rel)) return alreadyReplied(*state_);  // as in reply()
  return state_->sink->fail(error);
}

bool Responder::replied() const noexcept {
  return state_ && state_->done.load(std::memory_order_acquire);  // pairs with reply()'s exchange
}

bool Responder::cancelled() const noexcept { return state_ && state_->sink->cancelled(); }

std::uint64_t Responder::requestId() const noexcept { return state_ ? state_->requestId : 0; }

namespace detail {

namespace {
/// Scratch first segments for synchronous replies, one per nesting depth on this thread (a
/// handler blocked in Call::get() may run another handler on the same thread). A
/// MallocMessageBuilder over a caller-given first segment zeroes the words it used when it is
/// destroyed (docs/architecture.md §13), so each buffer stays zero between calls: no allocation and no 8 KiB
/// memset per reply, only the reply's own words are touched.
constexpr std::size_t kScratchWords = 1024;
SHMBUS_HOT_TLS thread_local std::vector<std::unique_ptr<capnp::word[]>> tScratch;
SHMBUS_HOT_TLS thread_local std::size_t tScratchDepth = 0;

struct ScratchSegment {
  kj::ArrayPtr<capnp::word> words;
  ScratchSegment() {
    if (tScratch.size() <= tScratchDepth) tScratch.push_back(std::make_unique<capnp::word[]>(kScratchWords));  // value-initialised: zero
    words = kj::arrayPtr(tScratch[tScratchDepth].get(), kScratchWords);
    ++tScratchDepth;
  }
  ~ScratchSegment() { --tScratchDepth; }
  ScratchSegment(const ScratchSegment&) = delete;
  ScratchSegment& operator=(const ScratchSegment&) = delete;
};
}  // namespace

ResponderState::~ResponderState() {
  // relaxed: the last owner is being destroyed; no other thread can reply any more.
  if (!done.load(std::memory_order_relaxed) && sink) sink->unanswered();
}

namespace {
SHMBUS_HOT_TLS thread_local std::uint64_t tCurrentTraceId = 0;
/// Sets this thread's current trace id for one handler run (nested runs restore the outer one).
class TraceScope {
 public:
  explicit TraceScope(std::uint64_t id) noexcept : saved_(std::exchange(tCurrentTraceId, id)) {}
  ~TraceScope() { tCurrentTraceId = saved_; }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  std::uint64_t saved_;
};
}  // namespace

std::uint64_t currentTraceId() noexcept { return tCurrentTraceId; }

void runHandler(const HandlerSlot& slot, const Message& request, const CallContext& ctx,
                const std::function<std::string()>& what, ReplySink& syncSink,
                const std::function<std::shared_ptr<ReplySink>()>& makeAsyncSink) {
  const TraceScope trace(ctx.traceId);
  CallbackGate::Run run(slot.gate);
  if (!run) {  // unregistered after the dispatcher looked it up
    (void)syncSink.fail(makeError(ErrorCode::NoHandler, what() + ": no handler"));
    return;
  }
  if (slot.async) {
    auto state = std::make_shared<ResponderState>();
    state->sink = makeAsyncSink();
    state->requestId = ctx.requestId;
    state->what = what();
    try {
      slot.async(request, Responder(state), ctx);
    } catch (...) {
      Error e = handlerError(state->what, std::current_exception());
      if (!state->done.exchange(true, std::memory_order_acq_rel)) (void)state->sink->fail(e);  // as in reply()
    }
    return;
  }
  ScratchSegment scratch;
  capnp::MallocMessageBuilder reply(scratch.words);
  try {
    slot.fn(request, reply, ctx);
  } catch (...) {
    (void)syncSink.fail(handlerError(what(), std::current_exception()));
    return;
  }
  (void)syncSink.reply(reply.getSegmentsForOutput());
}

Listener windowEventListener(WindowEventListener fn) {
  SHMBUS_REQUIRE(fn != nullptr, "listener must not be empty");
  return [fn = std::move(fn)](const Message& m, const CallContext&) {
    auto e = m.root<schema::WindowEvent>();
    fn(WindowEvent{e.getWindowId(), e.getRole(), e.getPid(), e.getReason()});
  };
}

Listener sendFailureListener(SendFailureListener fn) {
  SHMBUS_REQUIRE(fn != nullptr, "listener must not be empty");
  return [fn = std::move(fn)](const Message& m, const CallContext& ctx) {
    auto info = m.root<schema::ErrorInfo>();
    SendFailure f;
    f.channel = std::string(ctx.channel);
    f.channelId = ctx.channelId;
    f.error = makeError(errorCodeFromWire(info.getCode()), info.getMessage());
    fn(f);
  };
}

void runListeners(const std::vector<std::shared_ptr<ListenerSlot>>& listeners, const Message& m,
                  const CallContext& ctx, const Logger& log) {
  for (const auto& l : listeners) {
    CallbackGate::Run run(l->gate);
    if (!run) continue;  // unregistered since the snapshot was taken
    try {
      l->fn(m, ctx);
    } catch (const std::exception& e) {
      log(LogLevel::Error, "listener for '{}' threw: {}", ctx.channel, e.what());
    } catch (const kj::Exception& e) {
      log(LogLevel::Error, "listener for '{}' threw: {}", ctx.channel, e.getDescription().cStr());
    }
  }
}

}  // namespace detail
}  // namespace shmbus
