#include "supervisor/main_endpoint.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "endpoint/handler_run.hpp"
#include "protocol/frame_io.hpp"

namespace shmbus::detail {

namespace {
constexpr std::size_t kMaxEarlyCancels = 4096;

/// The outcome of one main-process handler call goes back through the router.
class MainReplySink final : public ReplySink {
 public:
  MainReplySink(MainEndpoint& ep, Router& router, std::uint64_t routeId, std::uint64_t channel,
                std::uint64_t replySchemaId, MainEndpoint::Running& running)
      : ep_(ep), router_(router), routeId_(routeId), channel_(channel), replySchemaId_(replySchemaId), running_(running) {}

  Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) override {
    router_.replyFromMain(routeId_, segments, replySchemaId_);
    return {};
  }
  Result<void> fail(const Error& e) override {
    router_.failFromMain(routeId_, e);
    return {};
  }
  void unanswered() override { router_.countUnanswered(channel_); }
  bool cancelled() const noexcept override { return running_.cancelled(); }

 private:
  [[maybe_unused]] MainEndpoint& ep_;
  Router& router_;
  std::uint64_t routeId_, channel_, replySchemaId_;
  MainEndpoint::Running& running_;
};

/// An async handler's sink owns its Running record and stops tracking it when the last Responder
/// copy is gone.
struct OwnedRunning {
  MainEndpoint::Running running;
  std::function<void()> untrack;
  std::shared_ptr<const EndpointLife> life;  // the Responder may outlive the supervisor
  ~OwnedRunning() {
    if (untrack) life->ifAlive(untrack);
  }
};
class AsyncMainSink final : public ReplySink {
 public:
  AsyncMainSink(std::shared_ptr<OwnedRunning> owned, MainReplySink inner)
      : owned_(std::move(owned)), inner_(std::move(inner)) {}
  Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> s) override { return inner_.reply(s); }
  Result<void> fail(const Error& e) override { return inner_.fail(e); }
  void unanswered() override { inner_.unanswered(); }
  bool cancelled() const noexcept override { return inner_.cancelled(); }

 private:
  std::shared_ptr<OwnedRunning> owned_;
  MainReplySink inner_;
};
}  // namespace

bool MainEndpoint::Running::cancelled() const noexcept {
  // acquire: pairs with cancelMain()/cancelAll()'s release stores.
  return flag.load(std::memory_order_acquire) || (deadlineNs != 0 && monotonicNowNs() >= deadlineNs);
}

MainEndpoint::MainEndpoint(std::shared_ptr<CallbackTable> callbacks, Logger log)
    : callbacks_(std::move(callbacks)), log_(std::move(log)) {}

bool MainEndpoint::deliver(MainJob& job, bool inPlaceOk) {
  if (inPlaceOk && job.payload != nullptr && lane_->tryReserve()) {
    inPlace_.emplace(std::move(job));
    return true;
  }
  job.slot.reset();  // queued: its handler is looked up when it runs
  if (auto d = job.detach(); !d) {
    log_(LogLevel::Warn, "dropped a message on '{}' from window {}: {}", job.channelName, job.sourceId, d.error().message);
    if (job.kind == MainJob::Kind::Invoke) router_->failFromMain(job.routeId, d.error());
    return false;
  }
  lane_->enqueue([this, job = std::move(job)]() mutable { run(job); });
  return false;
}

void MainEndpoint::cancelMain(std::uint64_t routeId) {
  std::lock_guard lk(runMu_);
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& e) { return e.first == routeId; });
  if (it != running_.end()) {
    it->second->flag.store(true, std::memory_order_release);  // pairs with Running::cancelled()
  } else if (cancelledEarly_.size() < kMaxEarlyCancels) {
    cancelledEarly_.insert(routeId);  // still queued: its handler starts cancelled
  }
}

void MainEndpoint::cancelAll() {
  std::lock_guard lk(runMu_);
  closing_ = true;
  for (auto& [id, r] : running_) r->flag.store(true, std::memory_order_release);  // as in cancelMain
}

void MainEndpoint::post(std::function<void()> fn) { lane_->enqueue(std::move(fn)); }

void MainEndpoint::runReady() {
  if (inPlace_) {
    MainJob job = std::move(*inPlace_);
    inPlace_.reset();
    lane_->runReserved([&] { run(job); });
    if (job.pinnedConn != 0) router_->unpin(job.pinnedConn);
  }
  lane_->runQueued();
}

void MainEndpoint::track(std::uint64_t routeId, Running* r) {
  std::lock_guard lk(runMu_);
  running_.emplace_back(routeId, r);
  // relaxed: r is published to other threads through runMu_.
  if ((!cancelledEarly_.empty() && cancelledEarly_.erase(routeId) != 0) || closing_) {
    r->flag.store(true, std::memory_order_relaxed);
  }
}

void MainEndpoint::untrack(std::uint64_t routeId) {
  std::lock_guard lk(runMu_);
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& e) { return e.first == routeId; });
  if (it != running_.end()) {
    *it = running_.back();
    running_.pop_back();
  }
}

void MainEndpoint::run(MainJob& job) {
  InPlaceMessage view;
  InPlaceMessage* msg = nullptr;
  if (job.held) {
    msg = &job.held->msg;
  } else {
    if (auto r = view.parse(job.payload, job.payloadBytes); !r) {
      if (job.kind == MainJob::Kind::Invoke) router_->failFromMain(job.routeId, r.error());
      return;
    }
    msg = &view;
  }
  const Message m(msg, job.header.schemaId);
  if (job.kind == MainJob::Kind::Listen) return runListen(job, m);
  runInvoke(job, m);
}

void MainEndpoint::runListen(MainJob& job, const Message& m) {
  auto listeners = callbacks_->takeListeners(job.header.channel);
  if (listeners.empty()) return;
  CallContext ctx;
  ctx.sourceWindowId = job.sourceId;
  ctx.sourceRole = job.sourceRole;
  ctx.channel = job.channelName;
  ctx.channelId = job.header.channel;
  runListeners(listeners, m, ctx, log_);
}

void MainEndpoint::runInvoke(MainJob& job, const Message& m) {
  const FrameHeader& h = job.header;
  auto what = [&] { return fmt::format("invoke '{}' to main", job.channelName); };
  auto slot = job.slot ? std::move(job.slot) : callbacks_->handler(h.channel);
  if (!slot) {
    router_->failFromMain(job.routeId, makeError(ErrorCode::NoHandler, what() + ": no handler"));
    return;
  }
  Running running;
  running.deadlineNs = job.deadlineNs;
  CallContext ctx;
  ctx.sourceWindowId = job.sourceId;
  ctx.sourceRole = job.sourceRole;
  ctx.channel = job.channelName;
  ctx.channelId = h.channel;
  ctx.requestId = h.requestId;
  ctx.deadlineNs = job.deadlineNs;
  ctx.traceId = h.traceId;
  ctx.cancelProbe = &running;
  if (!slot->async) {
    track(job.routeId, &running);
    MainReplySink sink(*this, *router_, job.routeId, h.channel, slot->replySchemaId, running);
    runHandler(*slot, m, ctx, what, sink, {});
    untrack(job.routeId);
    return;
  }
  // An async handler's Responder may outlive this call: its cancel state lives with the sink.
  auto owned = std::make_shared<OwnedRunning>();
  owned->running.deadlineNs = job.deadlineNs;
  track(job.routeId, &owned->running);
  owned->untrack = [this, rid = job.routeId] { untrack(rid); };
  owned->life = life_;
  ctx.cancelProbe = &owned->running;
  MainReplySink inner(*this, *router_, job.routeId, h.channel, slot->replySchemaId, owned->running);
  runHandler(*slot, m, ctx, what, inner,
             [&] { return std::make_shared<GuardedSink>(life_, std::make_shared<AsyncMainSink>(owned, inner)); });
}

}  // namespace shmbus::detail
