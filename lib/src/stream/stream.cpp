// Streams with backpressure (shmbus/stream.hpp, docs/architecture.md §18): acknowledgement-counted
// flow control over ordinary invokes. Everything here runs on the stream's one thread, except
// stats(); the calls it waits on are completed by the endpoint, whose CallState is the only state
// shared with it.
#include "shmbus/stream.hpp"

#include <algorithm>
#include <atomic>
#include <deque>
#include <optional>
#include <utility>

#include "shmbus/port.hpp"
#include "shmbus/supervisor.hpp"
#include "shmbus/window.hpp"

namespace shmbus {

struct Stream::Impl {
  struct InFlight {
    Call call;
    std::uint64_t bytes;
  };

  Invoker invoker;
  StreamOptions options;
  std::deque<InFlight> inFlight;
  std::optional<Error> ended;
  // Counters: written by the stream's thread, read by stats() on any thread. Every access is
  // relaxed: each is a count on its own, no other memory is published through it.
  std::atomic<std::uint64_t> writes{0}, bytes{0}, acknowledged{0}, inFlightBytes{0}, highWater{0}, waits{0};

  void add(std::atomic<std::uint64_t>& c, std::uint64_t n) { c.fetch_add(n, std::memory_order_relaxed); }  // relaxed: see above

  /// Counts `f`'s acknowledgement, which is there (ready, or waited for); its error ends the stream.
  void settle(InFlight& f) {
    Result<Message> r = f.call.get();
    inFlightBytes.fetch_sub(f.bytes, std::memory_order_relaxed);  // relaxed: see above
    add(acknowledged, 1);
    if (!r && !ended) ended = r.error();
  }

  /// Takes the acknowledgements already there (in any order: an asynchronous handler may answer
  /// a later write first). A failure is taken only once every older write is settled, so the
  /// error that ends the stream is its earliest failed write's, whatever order the outcomes came
  /// in (a receiver's death: the writes it held fail with TargetGone, while a write made after
  /// the death may already have come back NoTarget).
  void takeReady() {
    bool older = false;  // an older write is still unsettled
    std::erase_if(inFlight, [&](InFlight& f) {
      if (!f.call.ready() || (older && !f.call.get().ok())) {
        older = true;
        return false;
      }
      settle(f);
      return true;
    });
  }

  /// See Stream::nextAck.
  std::optional<Call> nextAck(Stream::Wait what) {
    takeReady();
    if (inFlight.empty()) return std::nullopt;
    // relaxed: see above (only this thread writes inFlightBytes).
    if (what == Stream::Wait::Window && inFlightBytes.load(std::memory_order_relaxed) < options.windowBytes) {
      return std::nullopt;
    }
    if (what != Stream::Wait::All) add(waits, 1);
    return inFlight.front().call;
  }

  /// Waits (dispatching, Call::get) until nextAck(what) has nothing more to wait for (Window or All).
  void waitAcks(Stream::Wait what) {
    while (auto c = nextAck(what)) (void)c->get();
  }
};

Stream::Stream(Invoker invoker, StreamOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->invoker = std::move(invoker);
  impl_->options = options;
  if (impl_->options.windowBytes == 0) impl_->options.windowBytes = kDefaultStreamWindow;
}

Stream Stream::to(Port& port, StreamOptions options) {
  return Stream([&port](const Channel& ch, const BuildFn& build, CallOptions o) { return port.invoke(ch, build, o); },
                options);
}

Stream Stream::to(Window& window, const Target& target, StreamOptions options) {
  if (target.isMain()) {
    return Stream([&window](const Channel& ch, const BuildFn& build, CallOptions o) { return window.invoke(ch, build, o); },
                  options);
  }
  return Stream([&window, target](const Channel& ch, const BuildFn& build,
                                  CallOptions o) { return window.invokeIn(target, ch, build, o); },
                options);
}

Stream Stream::to(Supervisor& supervisor, const Target& target, StreamOptions options) {
  return Stream([&supervisor, target](const Channel& ch, const BuildFn& build,
                                      CallOptions o) { return supervisor.invoke(target, ch, build, o); },
                options);
}

Stream::Stream(Stream&&) noexcept = default;
Stream& Stream::operator=(Stream&&) noexcept = default;
Stream::~Stream() = default;

Result<void> Stream::write(const Channel& channel, const BuildFn& build, std::chrono::milliseconds methodDefault) {
  for (;;) {
    impl_->waitAcks(Wait::Window);
    if (auto r = tryWrite(channel, build, methodDefault)) return std::move(*r);
    // The ring holds this stream's earlier writes: the oldest first (the next try takes it).
    if (auto c = nextAck(Wait::Oldest)) (void)c->get();
  }
}

std::optional<Call> Stream::nextAck(Wait what) { return impl_->nextAck(what); }

std::optional<Result<void>> Stream::tryWrite(const Channel& channel, const BuildFn& build,
                                             std::chrono::milliseconds methodDefault) {
  Impl& s = *impl_;
  if (s.options.timeout.count() < 0) return makeError(ErrorCode::InvalidArgument, "stream: negative write timeout");
  s.takeReady();
  if (s.ended) return *s.ended;
  std::uint64_t bytes = 0;
  // The build may run more than once (a port blob; a write again after Full): the last run counts.
  const BuildFn counted = [&](Builder& b) {
    if (build) build(b);
    bytes = b.sizeInWords() * sizeof(capnp::word);
  };
  const CallOptions options{s.options.timeout.count() != 0 ? s.options.timeout : methodDefault, 0};
  Call call = s.invoker(channel, counted, options);
  if (call.ready()) {
    Result<Message> r = call.get();
    if (!r) {
      const ErrorCode code = r.error().code;
      // The ring holds this stream's earlier writes: the caller waits for the oldest and tries again.
      if (code == ErrorCode::Full && !s.inFlight.empty()) return std::nullopt;
      // Refused before it was sent: the stream goes on.
      if (code == ErrorCode::Full || code == ErrorCode::TooLarge || code == ErrorCode::InvalidArgument) return r.error();
      s.waitAcks(Wait::All);  // an older write's failure, if any, is the one that ends the stream
      if (!s.ended) s.ended = r.error();
      return *s.ended;
    }
    // Acknowledged at once (the reply was there before the invoke returned).
    s.add(s.writes, 1);
    s.add(s.acknowledged, 1);
    s.add(s.bytes, bytes);
    return Result<void>{};
  }
  s.add(s.writes, 1);
  s.add(s.bytes, bytes);
  // relaxed: see Impl; only this thread writes inFlightBytes and highWater.
  const std::uint64_t now = s.inFlightBytes.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  if (now > s.highWater.load(std::memory_order_relaxed)) s.highWater.store(now, std::memory_order_relaxed);
  s.inFlight.push_back({std::move(call), bytes});
  return Result<void>{};
}

Result<void> Stream::flush() {
  impl_->waitAcks(Wait::All);
  if (impl_->ended) return *impl_->ended;
  return {};
}

Call Stream::finish(const Channel& channel, const BuildFn& build, CallOptions options) {
  if (auto done = flush(); !done) return Call::failed(done.error());
  return impl_->invoker(channel, build, options);
}

void Stream::cancel() {
  for (auto& f : impl_->inFlight) f.call.cancel();
  impl_->waitAcks(Wait::All);
  if (!impl_->ended) impl_->ended = makeError(ErrorCode::Cancelled, "stream: cancelled");
}

Result<void> Stream::status() const {
  if (impl_->ended) return *impl_->ended;
  return {};
}

StreamStats Stream::stats() const noexcept {
  const Impl& s = *impl_;
  // relaxed: counters on their own (see Impl).
  return {s.writes.load(std::memory_order_relaxed),        s.bytes.load(std::memory_order_relaxed),
          s.acknowledged.load(std::memory_order_relaxed),  s.inFlightBytes.load(std::memory_order_relaxed),
          s.highWater.load(std::memory_order_relaxed),     s.waits.load(std::memory_order_relaxed)};
}

}  // namespace shmbus
