// The main process's endpoint: what the router hands to main-process callbacks, and how their
// outcomes go back (docs/architecture.md, "Main lane").
//
// It implements MainPort for the router: a job the router offers in place runs on the dispatching
// thread right after its round (MainEndpoint::runReady), anything else is copied and queued on the
// lane. Handlers reply through the router (Router::replyFromMain), which drops a reply whose call
// already ended (deadline, cancel, caller gone) and counts it as late.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "call/callbacks.hpp"
#include "endpoint/endpoint_life.hpp"
#include "router/router.hpp"
#include "supervisor/lane.hpp"

namespace shmbus::detail {

class MainEndpoint final : public MainPort {
 public:
  MainEndpoint(std::shared_ptr<CallbackTable> callbacks, Logger log);

  /// Binds the router and lane (both outlive every job). Call once before dispatching.
  void bind(Router& router, Lane& lane) noexcept {
    router_ = &router;
    lane_ = &lane;
  }

  bool deliver(MainJob& job, bool inPlaceOk) override;
  void cancelMain(std::uint64_t routeId) override;
  void post(std::function<void()> fn) override;

  /// Runs the job the last round took in place (if any), then queued callbacks while the lane
  /// has room. Called by the thread that dispatched, outside the router mutex.
  void runReady();
  /// Marks every running main handler cancelled (the bus closes).
  void cancelAll();
  /// The supervisor is being destroyed: async handlers' Responders that outlive it reply
  /// BusClosed from now on (endpoint/endpoint_life.hpp). Waits for replies in progress. Call
  /// before the router and the lane go; not from inside a Responder call.
  void endLife() { life_->end(); }

  /// The cancel state of one main-process handler call (CallContext::cancelled()).
  struct Running final : CancelProbe {
    std::atomic<bool> flag{false};
    std::int64_t deadlineNs = 0;
    bool cancelled() const noexcept override;
  };

 private:
  void run(MainJob& job);
  void runListen(MainJob& job, const Message& m);
  void runInvoke(MainJob& job, const Message& m);
  void track(std::uint64_t routeId, Running* r);
  void untrack(std::uint64_t routeId);

  std::shared_ptr<CallbackTable> callbacks_;
  Logger log_;
  Router* router_ = nullptr;
  Lane* lane_ = nullptr;
  // The job the current round took in place: only the thread holding the dispatch gate offers
  // in place (mayInline), and it runs the job before its next round, so one slot suffices.
  std::optional<MainJob> inPlace_;
  std::mutex runMu_;
  // Handlers running now (a handful: nested calls, async responders): a vector that keeps its
  // capacity, so tracking a call allocates nothing.
  std::vector<std::pair<std::uint64_t, Running*>> running_;  // guarded by runMu_
  std::unordered_set<std::uint64_t> cancelledEarly_;        // guarded by runMu_: cancelled while queued
  bool closing_ = false;                                    // guarded by runMu_
  std::shared_ptr<EndpointLife> life_ = std::make_shared<EndpointLife>();  // see endLife()
};

}  // namespace shmbus::detail
