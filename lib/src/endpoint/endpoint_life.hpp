// Whether an endpoint still exists, for the objects that may outlive it (docs/architecture.md
// "Endpoint core": an asynchronous handler's Responder).
#pragma once

#include <memory>
#include <mutex>
#include <shared_mutex>
#include <utility>

#include "endpoint/handler_run.hpp"

namespace shmbus::detail {

/// The life of one endpoint (a window, a port's end, the supervisor's main endpoint), shared with
/// the objects that refer to it but may outlive it. Such an object runs its work on the endpoint
/// through ifAlive(): the endpoint cannot be destroyed while that work runs, and once it began
/// to be destroyed the work is skipped. The pattern of Chromium's base::WeakPtr, with a reader
/// lock so that the work may run on any thread.
/// Thread contract: any thread. end() must not be called from inside ifAlive() on the same thread.
class EndpointLife {
 public:
  /// Runs `fn` while the endpoint lives and returns true; returns false (not running `fn`) once
  /// end() was called. Concurrent calls run concurrently (a shared lock).
  template <typename Fn>
  bool ifAlive(Fn&& fn) const {
    std::shared_lock lk(mu_);
    if (!alive_) return false;
    std::forward<Fn>(fn)();
    return true;
  }
  /// The endpoint is being destroyed: waits for running ifAlive() calls, then refuses new ones.
  /// Call first in the endpoint's destructor. Idempotent.
  void end() {
    std::unique_lock lk(mu_);
    alive_ = false;
  }

 private:
  mutable std::shared_mutex mu_;
  bool alive_ = true;  // guarded by mu_
};

/// An asynchronous call's sink as its Responder holds it: forwards to `inner` while the endpoint
/// lives; afterwards reply() and fail() return BusClosed, cancelled() is true and unanswered()
/// does nothing. The inner sink's own destructor must be safe once the endpoint is gone (the
/// objects it owns check the same EndpointLife).
class GuardedSink final : public ReplySink {
 public:
  GuardedSink(std::shared_ptr<const EndpointLife> life, std::shared_ptr<ReplySink> inner)
      : life_(std::move(life)), inner_(std::move(inner)) {}
  Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) override {
    Result<void> r = gone();
    life_->ifAlive([&] { r = inner_->reply(segments); });
    return r;
  }
  Result<void> fail(const Error& e) override {
    Result<void> r = gone();
    life_->ifAlive([&] { r = inner_->fail(e); });
    return r;
  }
  void unanswered() override {
    life_->ifAlive([&] { inner_->unanswered(); });
  }
  bool cancelled() const noexcept override {
    bool c = true;
    life_->ifAlive([&] { c = inner_->cancelled(); });
    return c;
  }

 private:
  static Result<void> gone() {
    return makeError(ErrorCode::BusClosed, "the endpoint that received this call was destroyed before the reply");
  }
  std::shared_ptr<const EndpointLife> life_;
  std::shared_ptr<ReplySink> inner_;
};

}  // namespace shmbus::detail
