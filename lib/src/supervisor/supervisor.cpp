// The Supervisor facade: wires the router, the main endpoint and its lane, spawn and the dispatch
// threads together (docs/architecture.md). It holds no routing logic of its own.
#include "shmbus/supervisor.hpp"

#include <fmt/format.h>

#include <mutex>
#include <thread>

#include "blob/blob.hpp"
#include "call/call.hpp"
#include "call/callbacks.hpp"
#include "common/grow_only_ids.hpp"
#include "common/validate.hpp"
#include "endpoint/call_wait.hpp"
#include "endpoint/handler_run.hpp"
#include "protocol/frame.hpp"
#include "router/router.hpp"
#include "shmbus/schema.hpp"
#include "spawn/spawn.hpp"
#include "supervisor/lane.hpp"
#include "supervisor/main_endpoint.hpp"
#include "wire/handshake.hpp"

namespace shmbus {

using namespace detail;

const char* toString(Admission a) noexcept {
  switch (a) {
    case Admission::Open: return "open";
    case Admission::Invited: return "invited";
    case Admission::Spawned: return "spawned";
  }
  return "?";
}

namespace {
constexpr int kSpawnedExitGraceMs = 2000;
bool isPowerOfTwo(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
}  // namespace

struct Supervisor::Impl final : CallOwner {
  SupervisorOptions opts;
  Logger log;
  std::shared_ptr<CallbackTable> callbacks = std::make_shared<CallbackTable>();
  MainEndpoint main;
  std::unique_ptr<Router> router;
  std::unique_ptr<Lane> lane;
  DispatchGate gate;  // held by the thread that dispatches (run, poll, Call::get)
  std::thread dispatcher;
  std::atomic<bool> stopped{false};
  std::mutex schemaMu;
  GrowOnlyIds announcedSchemas;  // interface ids given to the router; inserted under schemaMu

  explicit Impl(SupervisorOptions o)
      : opts(std::move(o)), log{"supervisor", opts.bus, opts.logLevel}, main(callbacks, Logger{"lane", opts.bus, opts.logLevel}) {}

  /// One dispatch round on a thread that holds `gate`: route, then run what the round left for
  /// the main process (in place or queued) on this thread.
  void dispatchRound(std::int64_t until, CallState* = nullptr) {
    router->dispatchOnce(until, /*mayInline=*/true);
    main.runReady();
  }

  // ---- CallOwner (calls made by the main process) and the waitForCall endpoint contract

  DispatchGate& gateRef() { return gate; }
  bool closed() const { return router->stopping(); }
  Result<Message> closedResult(const std::shared_ptr<CallState>& s) {
    return makeError(ErrorCode::BusClosed, s->what() + ": the supervisor stopped");
  }
  void giveUp(const std::shared_ptr<CallState>& s) {
    // The dispatching thread may be the reason no answer comes (stuck in a callback that waits
    // for this thread). The route expires at the router later; its completion is then a no-op.
    completeCall(s, makeError(ErrorCode::Timeout, fmt::format("{} timed out after {} ms (the dispatching thread never "
                                                              "got to the answer)",
                                                              s->what(), s->timeoutMs)));
  }
  struct WaitAdapter {
    Impl& i;
    DispatchGate& gate() { return i.gate; }
    void dispatchRound(std::int64_t until, CallState* s) { i.dispatchRound(until, s); }
    bool closed() const { return i.closed(); }
    Result<Message> closedResult(const std::shared_ptr<CallState>& s) { return i.closedResult(s); }
    void giveUp(const std::shared_ptr<CallState>& s) { i.giveUp(s); }
  };
  Result<Message> waitFor(const std::shared_ptr<CallState>& s) override {
    WaitAdapter a{*this};
    return waitForCall(s, a);
  }
  void cancel(const std::shared_ptr<CallState>& s) override { router->cancelMainCall(s); }

  Result<WindowInfo> waitForWindow(const std::string& role, const Channel* channel, std::chrono::milliseconds asked) {
    if (auto v = validateName(NameKind::Role, role); !v) return v.error();
    auto timeout = checkWaitTimeout(asked, fmt::format("wait for a window with role '{}'", role));
    if (!timeout) return timeout.error();
    const std::int64_t deadline = deadlineAfter(monotonicNowNs(), *timeout);
    for (;;) {
      if (auto w = router->findWindow(nameId(role), channel ? channel->id : 0)) return *w;
      if (monotonicNowNs() >= deadline) {
        return makeError(ErrorCode::Timeout,
                         channel == nullptr
                             ? fmt::format("no window with role '{}' registered within {} ms", role, timeout->count())
                             : fmt::format("no window with role '{}' handles '{}' within {} ms", role, channel->name,
                                           timeout->count()));
      }
      if (gate.try_lock()) {
        dispatchRound(deadline);
        gate.unlock();
      } else {
        router->awaitRegistryChange(std::chrono::milliseconds(10));
      }
    }
  }

  void stop() {
    if (stopped.exchange(true)) {
      if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
      return;
    }
    router->beginStop();
    if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
    lane->stop();
    main.cancelAll();
    router->stop();
    // Spawned windows saw their socket hang up (BusClosed) and should exit; each gets
    // kSpawnedExitGraceMs to do so, then is killed: a spawned window belongs to its supervisor.
    for (pid_t pid : router->reaper().finish(kSpawnedExitGraceMs)) {
      log(LogLevel::Warn, "spawned window pid {} did not exit {} ms after the bus closed: killed it", pid,
          kSpawnedExitGraceMs);
    }
  }
};

Supervisor::Supervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Supervisor::~Supervisor() {
  if (impl_) {
    impl_->main.endLife();  // a Responder kept past this point replies BusClosed
    impl_->stop();
    impl_->callbacks->clearHooks();
  }
}

Result<std::unique_ptr<Supervisor>> Supervisor::create(SupervisorOptions options) {
  if (auto v = validateName(NameKind::Bus, options.bus); !v) return v.error();
  if (auto v = validateRoles(options.allowedRoles); !v) return v.error();
  if (auto v = validateRoles(options.invitedRoles); !v) return v.error();
  if (options.handshakeTimeout.count() <= 0 || options.maxWindows == 0 || options.maxPendingCalls == 0) {
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("handshakeTimeout ({} ms) must be positive, maxWindows ({}) and maxPendingCalls ({}) "
                                 "at least 1",
                                 options.handshakeTimeout.count(), options.maxWindows, options.maxPendingCalls));
  }
  options.handshakeTimeout = std::min(options.handshakeTimeout, kMaxTimeout);
  if (!isPowerOfTwo(options.inboxBytes) || !isPowerOfTwo(options.outboxBytes) || options.inboxBytes < 4096 ||
      options.outboxBytes < 4096 || options.maxRecordBytes < 256 || options.maxRecordBytes % 8 != 0) {
    return makeError(ErrorCode::InvalidArgument, "ring sizes must be powers of two >= 4 KiB and the maximum record a "
                                                 "multiple of 8 bytes >= 256");
  }
  if (options.windowBlobBytes > kMaxPortBlobBytes) {
    return makeError(ErrorCode::InvalidArgument, fmt::format("windowBlobBytes {} is more than {}",
                                                             options.windowBlobBytes, kMaxPortBlobBytes));
  }
  // Whole pages; a size too small for one message's header is none.
  options.windowBlobBytes = (options.windowBlobBytes + kBlobPage - 1) / kBlobPage * kBlobPage;
  if (options.windowBlobBytes <= kBlobOverhead) options.windowBlobBytes = 0;
  SHMBUS_REQUIRE(options.callbackThreads >= 1, "SupervisorOptions::callbackThreads must be at least 1");
  auto impl = std::make_unique<Impl>(options);
  RouterOptions ro;
  ro.bus = options.bus;
  ro.socketPath = options.socketPath;
  ro.policy = policyFromOptions(options);
  ro.allowedUids = options.allowedUids;
  ro.inboxBytes = options.inboxBytes;
  ro.outboxBytes = options.outboxBytes;
  ro.maxRecordBytes = options.maxRecordBytes;
  ro.blobBytesPerWindow = options.blobBytesPerWindow;
  ro.blobBytesPerBus = options.blobBytesPerBus;
  ro.windowBlobBytes = options.windowBlobBytes;
  ro.directRoutes = options.directRoutes;
  ro.spin = options.spin;
  ro.traceRingBytes = options.traceRingBytes;
  if (auto c = checkPayloadCapture(options.payloadCapture); !c) return c.error();
  ro.payloadCapture = options.payloadCapture;
  ro.logLevel = options.logLevel;
  ro.handshakeTimeout = options.handshakeTimeout;
  ro.maxWindows = options.maxWindows;
  ro.maxPendingCalls = options.maxPendingCalls;
  auto router = Router::create(std::move(ro), impl->main, impl->callbacks);
  if (!router) return router.error();
  impl->router = std::move(*router);
  Impl* raw = impl.get();
  impl->lane = std::make_unique<Lane>(options.callbackThreads, Logger{"lane", options.bus, options.logLevel},
                                      [raw](std::int64_t until) { raw->router->dispatchOnce(until, /*mayInline=*/false); },
                                      [raw] { raw->router->wake(); });
  impl->main.bind(*impl->router, *impl->lane);
  return std::unique_ptr<Supervisor>(new Supervisor(std::move(impl)));
}

const std::string& Supervisor::bus() const noexcept { return impl_->opts.bus; }
const std::string& Supervisor::socketPath() const noexcept { return impl_->router->socketPath(); }

Result<WindowInfo> Supervisor::spawn(const std::string& role, const std::vector<std::string>& argv,
                                     const std::vector<std::string>& env) {
  SHMBUS_REQUIRE(!argv.empty(), "spawn needs argv[0]");
  if (auto v = validateName(NameKind::Role, role); !v) return v.error();
  if (auto cap = impl_->router->checkWindowCap(role); !cap) return cap.error();
  auto child = spawnWindowProcess(impl_->opts.bus, role, argv, env);
  if (!child) return child.error();
  return impl_->router->addSpawned(std::move(child->sock), role, child->pid);
}

Result<std::string> Supervisor::invite(std::string_view role, std::chrono::milliseconds ttl) {
  if (auto v = validateName(NameKind::Role, role); !v) return v.error();
  auto checked = checkWaitTimeout(ttl, fmt::format("the invitation for role '{}'", role));
  if (!checked) return checked.error();
  if (checked->count() == 0) {
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("the invitation for role '{}': ttl 0 ms must be positive", role));
  }
  return impl_->router->invite(std::string(role), *checked);
}

Result<WindowInfo> Supervisor::waitForRole(const std::string& role, std::chrono::milliseconds timeout) {
  return impl_->waitForWindow(role, nullptr, timeout);
}

Result<WindowInfo> Supervisor::waitForHandler(const std::string& role, const Channel& channel,
                                              std::chrono::milliseconds timeout) {
  return impl_->waitForWindow(role, &channel, timeout);
}

std::vector<WindowInfo> Supervisor::windows() const { return impl_->router->windows(); }
std::optional<WindowInfo> Supervisor::window(std::uint32_t id) const { return impl_->router->window(id); }
std::vector<PortInfo> Supervisor::ports() const { return impl_->router->ports(); }
Result<void> Supervisor::revokePort(std::uint64_t id) { return impl_->router->revokePort(id); }

Registration Supervisor::on(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), false);
}

Registration Supervisor::once(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), true);
}

Registration Supervisor::onWindowOpened(WindowEventListener listener) {
  return on(Channel(kWindowOpened), windowEventListener(std::move(listener)));
}

Registration Supervisor::onWindowClosed(WindowEventListener listener) {
  return on(Channel(kWindowClosed), windowEventListener(std::move(listener)));
}

Registration Supervisor::handle(const Channel& channel, Handler handler) {
  return impl_->callbacks->setHandler(channel, std::move(handler));
}

Registration Supervisor::handleAsync(const Channel& channel, AsyncHandler handler) {
  return impl_->callbacks->setAsyncHandler(channel, std::move(handler));
}

Result<void> Supervisor::send(const Target& target, const Channel& channel, const BuildFn& build) {
  if (auto v = validateTarget(target); !v) return v.error();
  if (auto v = validateName(NameKind::Channel, channel.name); !v) return v.error();
  return impl_->router->send(target, channel, build);
}

Result<BroadcastReport> Supervisor::broadcast(const Channel& channel, const BuildFn& build,
                                              const BroadcastOptions& options) {
  if (auto v = validateName(NameKind::Channel, channel.name); !v) return v.error();
  if (auto v = validateRoles(options.roles); !v) return v.error();
  if (auto v = validateRoles(options.excludeRoles); !v) return v.error();
  return impl_->router->broadcast(channel, build, options);
}

Call Supervisor::invoke(const Target& target, const Channel& channel, const BuildFn& build, CallOptions options) {
  auto s = std::make_shared<CallState>();
  s->owner = impl_.get();
  s->channelName = channel.name;
  s->target = target;
  Lane* lane = impl_->lane.get();
  s->post = [lane](std::function<void()> fn) { lane->enqueue(std::move(fn)); };
  auto timeout = checkCallTimeout(options.timeout, {});
  if (!timeout) timeout = inContext(timeout.error(), s->what());
  Result<void> valid = validateTarget(target);
  if (valid) valid = validateName(NameKind::Channel, channel.name);
  if (!timeout || !valid) {
    completeCall(s, valid ? timeout.error() : valid.error());
    return Call(s);
  }
  options.timeout = *timeout;
  impl_->router->invoke(target, channel, build, options, s);
  return Call(s);
}

void Supervisor::setPolicy(const Channel& channel, ChannelPolicy policy) {
  impl_->router->setChannelCallers(channel, policy.callers);
}

Result<void> Supervisor::nameChannels(std::span<const Channel> channels) {
  for (const Channel& c : channels) {
    if (auto v = validateName(NameKind::Channel, c.name); !v) return v.error();
  }
  impl_->router->nameChannels(channels);
  return {};
}

Result<void> Supervisor::announceSchema(const ContractSchema& contract) {
  const std::uint64_t id = contract.interface.getProto().getId();
  if (impl_->announcedSchemas.contains(id)) return {};  // the common answer, without a lock
  {
    std::lock_guard lk(impl_->schemaMu);
    if (!impl_->announcedSchemas.insert(id)) return {};
  }
  auto r = impl_->router->announceSchema(contract);
  if (!r) impl_->log(LogLevel::Warn, "the schema of {} was not kept: {}", contract.name, r.error().message);
  return r;
}

Result<void> Supervisor::setPolicy(Policy policy) {
  if (auto v = validatePolicy(policy); !v) return v;
  impl_->router->setPolicy(std::move(policy));
  return {};
}

Policy Supervisor::policy() const { return impl_->router->policy(); }

Result<void> Supervisor::setPayloadCapture(PayloadCapture capture) {
  if (auto c = checkPayloadCapture(capture); !c) return c;
  impl_->router->setPayloadCapture(std::move(capture));
  return {};
}

Policy policyFromOptions(const SupervisorOptions& options) {
  Policy p;
  // A non-empty allowedRoles closes every other role to connections by path (they still come
  // by spawn() or an invitation: "invited"); inviteOnly closes them all.
  p.defaultAdmission = options.inviteOnly || !options.allowedRoles.empty() ? RoleAdmission::Invited : RoleAdmission::Open;
  if (!options.inviteOnly) {
    for (const std::string& r : options.allowedRoles) p.roleRule(r).admission = RoleAdmission::Open;
  }
  for (const std::string& r : options.invitedRoles) p.roleRule(r).admission = RoleAdmission::Invited;
  return p;
}

void Supervisor::setChannelTimeout(const Channel& channel, std::chrono::milliseconds timeout) {
  SHMBUS_REQUIRE(timeout.count() > 0, "setChannelTimeout needs a positive timeout");
  impl_->router->setChannelTimeout(channel, std::min(timeout, kMaxTimeout));
}

RouterStats Supervisor::stats() const { return impl_->router->stats(); }

void Supervisor::run() {
  std::lock_guard g(impl_->gate);
  while (!impl_->router->stopping()) impl_->dispatchRound(kNoDeadline);
}

Result<void> Supervisor::poll(std::chrono::milliseconds timeout) {
  if (impl_->router->stopping()) return makeError(ErrorCode::BusClosed, "the supervisor stopped");
  auto wait = checkWaitTimeout(timeout, "Supervisor::poll");
  if (!wait) return wait.error();
  const std::int64_t until = deadlineAfter(monotonicNowNs(), *wait);
  // Another thread dispatching (the dispatch thread holds the gate for good): wait for the gate
  // up to `timeout`, then return without dispatching.
  if (std::unique_lock g(impl_->gate, *wait); g.owns_lock()) impl_->dispatchRound(until);
  return {};
}

void Supervisor::startDispatchThread() {
  SHMBUS_REQUIRE(!impl_->dispatcher.joinable(), "the dispatch thread is already running");
  impl_->dispatcher = startDispatcher(impl_->gate, [this] { run(); });
}

void Supervisor::stop() { impl_->stop(); }

}  // namespace shmbus
