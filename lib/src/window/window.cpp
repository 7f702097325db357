// The Window facade: a client process's endpoint (docs/architecture.md, "Window"). The handshake
// is wire/, pending calls and blocking waits are endpoint/, handler running is endpoint/; this file
// holds the window's rings and its dispatch loop.
#include "shmbus/window.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "bus.capnp.h"
#include "call/call.hpp"
#include "call/callbacks.hpp"
#include "common/validate.hpp"
#include "control/control_protocol.hpp"
#include "endpoint/call_wait.hpp"
#include "endpoint/handler_run.hpp"
#include "endpoint/pending_calls.hpp"
#include "log/log.hpp"
#include "protocol/frame_io.hpp"
#include "shmbus/schema.hpp"
#include "trace/schema_announce.hpp"
#include "wire/handshake.hpp"
#include "window/window_impl.hpp"

namespace shmbus {

using namespace detail;


// ---------------------------------------------------------------------------------------------

namespace {

/// What connect() and fromSpawn() check before anything touches a socket.
Result<void> checkOptions(const WindowOptions& o, const std::string& bus, bool spawned) {
  if (auto v = validateName(NameKind::Bus, bus); !v) return v.error();
  if (!spawned) {
    if (auto v = validateName(NameKind::Role, o.role); !v) return v.error();
    if (!o.token.empty()) {
      if (auto v = validateToken(o.token); !v) return v.error();
    }
  }
  if (o.inboxBytes != 0 || o.outboxBytes != 0) {
    // 0 = the supervisor's default (already checked by Supervisor::create): only given sizes here.
    if (auto v = checkRingSizes(o.inboxBytes != 0 ? o.inboxBytes : 4096, o.outboxBytes != 0 ? o.outboxBytes : 4096); !v) {
      return v.error();
    }
  }
  if (o.replySpinCap.count() < 0) {
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("replySpinCap {} ns must not be negative (0 turns the learned spin off)",
                                 o.replySpinCap.count()));
  }
  if (o.connectTimeout.count() <= 0) {
    return makeError(ErrorCode::InvalidArgument,
                     fmt::format("connectTimeout {} ms must be positive", o.connectTimeout.count()));
  }
  return {};
}

Result<std::unique_ptr<Window::Impl>> handshake(Fd sock, WindowOptions opts, const std::string& bus, bool spawned) {
  if (auto v = checkOptions(opts, bus, spawned); !v) return v.error();
  opts.connectTimeout = std::min(opts.connectTimeout, kMaxTimeout);
  auto impl = std::make_unique<Window::Impl>();
  impl->opts = opts;
  impl->bus = bus;
  impl->spin.spin = opts.spin;
  impl->replySpin.configure(opts.replySpinCap.count(), ::get_nprocs());
  impl->sock = std::move(sock);
  auto link = helloAndWelcome(impl->sock.get(), HelloParams{opts.role, opts.inboxBytes, opts.outboxBytes, spawned,
                                                                      spawned ? std::string() : opts.token},
                              bus, opts.connectTimeout);
  if (!link) return link.error();
  impl->link = std::move(*link);
  if (impl->link.blobBytes != 0) {
    // The window's arenas between it and the supervisor (§17): it writes the outbox's; a send
    // without a deadline waits kDefaultTimeout for the receiver's releases.
    impl->blobs = blobLinkOf(impl->link, std::move(impl->link.segmentFd), kDefaultTimeout);
  }
  impl->log = Logger{"window", fmt::format("{}/{}#{}", bus, impl->link.role, impl->link.id), opts.logLevel};
  impl->roleNames[nameId("main")] = "main";
  Window::Impl* raw = impl.get();
  impl->hub = std::make_shared<Window::Impl::PortHub>();
  impl->hub->window = raw;
  // Without it the port trace's batches wait for a full batch or a port's end (watch()).
  impl->hub->traceKick = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  impl->callbacks->setHooks(
      [raw](std::uint64_t ch, bool present) {
        // The channel's name first: the supervisor checks a handler registration against its
        // policy by name (docs/architecture.md §15).
        if (present) raw->internHandled(ch);
        raw->control(present ? FrameKind::HandlerAdd : FrameKind::HandlerRemove, ch);
      },
      [raw](std::uint64_t ch) {
        if (ch == nameId(kWindowOpened) || ch == nameId(kWindowClosed)) raw->control(FrameKind::Listen, ch);
      });
  impl->watchdog = std::thread([raw] { raw->watch(); });
  return impl;
}

}  // namespace

Window::Window(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Window::~Window() {
  if (impl_) impl_->close(fmt::format("window {} is closed", impl_->link.id));
}

Result<std::unique_ptr<Window>> Window::connect(WindowOptions options) {
  std::string bus = options.bus;
  if (bus.empty()) {
    if (const char* b = std::getenv(kEnvBus)) bus = b;
  }
  if (options.token.empty()) {
    if (const char* t = std::getenv(kEnvToken)) {
      options.token = t;
      ::unsetenv(kEnvToken);  // good once: a child must not inherit a used token
    }
  }
  if (auto v = checkOptions(options, bus, false); !v) return v.error();
  std::string path = options.socketPath;
  if (path.empty()) {
    auto p = socketPath(bus);
    if (!p) return p.error();
    path = *p;
  }
  auto fd = connectSeqpacket(path);
  if (!fd) return fd.error();
  auto impl = handshake(std::move(*fd), std::move(options), bus, false);
  if (!impl) return impl.error();
  return std::unique_ptr<Window>(new Window(std::move(*impl)));
}

bool Window::spawned() noexcept { return std::getenv(kEnvFd) != nullptr; }

Result<std::unique_ptr<Window>> Window::fromSpawn(WindowOptions options) {
  const char* fdText = std::getenv(kEnvFd);
  if (fdText == nullptr) {
    return makeError(ErrorCode::InvalidArgument,
                     "Window::fromSpawn in a process that Supervisor::spawn did not start (no $SHMBUS_FD); "
                     "use Window::connect");
  }
  const int fd = std::atoi(fdText);
  if (options.bus.empty()) {
    if (const char* b = std::getenv(kEnvBus)) options.bus = b;
  }
  if (const char* r = std::getenv(kEnvRole)) options.role = r;
  ::unsetenv(kEnvFd);  // a grandchild must not reuse it
  auto impl = handshake(Fd(fd), options, options.bus, true);
  if (!impl) return impl.error();
  return std::unique_ptr<Window>(new Window(std::move(*impl)));
}

std::uint32_t Window::id() const noexcept { return impl_->link.id; }
const std::string& Window::role() const noexcept { return impl_->link.role; }
std::chrono::nanoseconds Window::learnedReplySpin(const Channel& channel) const noexcept {
  return std::chrono::nanoseconds(impl_->replySpin.budgetNs(channel.id));
}
const std::string& Window::bus() const noexcept { return impl_->bus; }

Result<void> Window::send(const Channel& channel, const BuildFn& build) {
  return impl_->sendImpl(Target::main(), channel, build);
}

Result<void> Window::sendTo(const Target& target, const Channel& channel, const BuildFn& build) {
  if (auto v = validateTarget(target); !v) return v.error();
  return impl_->sendImpl(target, channel, build);
}

Call Window::invoke(const Channel& channel, const BuildFn& build, CallOptions options) {
  return impl_->invokeImpl(Target::main(), channel, build, options);
}

Call Window::invokeIn(const Target& target, const Channel& channel, const BuildFn& build, CallOptions options) {
  SHMBUS_REQUIRE(!target.isMain(), "invokeIn needs a role or window id; use invoke() for the main process");
  return impl_->invokeImpl(target, channel, build, options);
}

Registration Window::on(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), false);
}

Registration Window::once(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), true);
}

Registration Window::onWindowOpened(WindowEventListener listener) {
  return on(Channel(kWindowOpened), windowEventListener(std::move(listener)));
}

Registration Window::onWindowClosed(WindowEventListener listener) {
  return on(Channel(kWindowClosed), windowEventListener(std::move(listener)));
}

Registration Window::onSendFailed(SendFailureListener listener) {
  return on(Channel(kSendFailed), sendFailureListener(std::move(listener)));
}

Result<void> Window::announceSchema(const ContractSchema& contract) {
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::Schema);
  h.channel = contract.interface.getProto().getId();
  // Once per contract: typed stubs call this before every operation, so the common answer
  // ("announced already") takes no lock.
  if (impl_->announcedSchemas.contains(h.channel)) return {};
  std::lock_guard lk(impl_->outMu);
  if (!impl_->announcedSchemas.insert(h.channel)) return {};
  auto r = impl_->writeOutLocked(h, [&](Builder& b) { encodeAnnouncement(contract, b.initRoot<schema::SchemaAnnouncement>()); },
                                 0, monotonicNowNs() + 1'000'000'000);
  // A closed bus says so to the typed operation itself; anything else is worth a line.
  if (!r && r.code() != ErrorCode::BusClosed) {
    impl_->log(LogLevel::Warn, "the schema of {} was not announced: {}", contract.name, r.error().message);
  }
  return r;
}

Registration Window::handle(const Channel& channel, Handler handler) {
  return impl_->callbacks->setHandler(channel, std::move(handler));
}

Registration Window::handleAsync(const Channel& channel, AsyncHandler handler) {
  return impl_->callbacks->setAsyncHandler(channel, std::move(handler));
}

void Window::run() { impl_->runLoop(); }

Result<void> Window::poll(std::chrono::milliseconds timeout) { return impl_->pollFor(timeout, "Window::poll"); }

void Window::startDispatchThread() {
  SHMBUS_REQUIRE(!impl_->dispatcher.joinable(), "the dispatch thread is already running");
  impl_->dispatcher = startDispatcher(impl_->gate, [this] { run(); });
}

// ---- the outbox's sends and calls (window_impl.hpp)

Result<void> Window::Impl::internLocked(std::uint64_t nameIdValue, std::string_view name, bool isRole) {
  if (interned.count(nameIdValue) != 0) return {};
  if (auto v = validateName(isRole ? NameKind::Role : NameKind::Channel, name); !v) return v;
  // Nothing is written once closed: the supervisor reads this ring no more.
  if (closed.load(std::memory_order_acquire)) return {};  // acquire: pairs with markClosed
  interned.try_emplace(nameIdValue, name);
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::Intern);
  h.channel = nameIdValue;
  auto r = writeFrame(link.outbox, h, [&](Builder& b) {
    auto i = b.initRoot<schema::Intern>();
    i.setId(nameIdValue);
    i.setName(interned[nameIdValue]);
    i.setIsRole(isRole);
  }, 512);
  if (!r) interned.erase(nameIdValue);  // try again with the next message
  return {};
}

Result<void> Window::Impl::sendImpl(const Target& t, const Channel& ch, const BuildFn& build,
                                    std::atomic<std::size_t>* payloadBytes) {
  // relaxed: a hint; a grant installed meanwhile is used from the next send on (§19).
  if (!port && routeGrantCount.load(std::memory_order_relaxed) != 0) {
    std::shared_ptr<Impl> end;
    RouteStatsSlot* slot = nullptr;
    {
      std::lock_guard lk(outMu);
      if (RouteGrantEntry* g = grantLocked(t, ch)) {
        end = g->end;
        slot = g->slot;
      }
    }
    if (end) {
      // Counted before the write (taken back if the route refuses it), so that the count is
      // in the table before the target can see the message, and so before a close of the
      // route the target's end starts: the supervisor folds the table into its statistics
      // then. relaxed: a counter; the ring write's release store and the socket carry it.
      slot->messages.fetch_add(1, std::memory_order_relaxed);
      auto r = end->portSend(t, ch, build, payloadBytes);
      end->port->directSince.store(true, std::memory_order_relaxed);  // relaxed: see PortSide
      if (r) return r;
      slot->messages.fetch_sub(1, std::memory_order_relaxed);  // relaxed: a counter, as above
      // Not written (the route's ring without room, the route ended meanwhile, ...): this
      // message goes routed, behind a RouteSync, so in order, and with routed semantics: a
      // full inbox or a target gone is reported through onSendFailed, never returned here.
    }
  }
  FrameHeader h = headerFor(FrameKind::Send, t, ch);
  std::lock_guard lk(outMu);
  if (auto r = internFor(t, ch, h.role); !r) return r;
  if (!port && routeGrantCount.load(std::memory_order_relaxed) != 0) {  // relaxed: a hint
    if (auto r = syncRouteLocked(t); !r) return r;
  }
  return writeOutLocked(h, build, 0, 0, payloadBytes);
}

Call Window::Impl::invokeImpl(const Target& t, const Channel& ch, const BuildFn& build, const CallOptions& o,
                              FrameKind kind, std::atomic<std::uint64_t>* routeErrors, bool* refused) {
  // relaxed: a hint; a grant installed meanwhile is used from the next call on (§19).
  if (!port && o.direct && kind == FrameKind::Invoke && routeGrantCount.load(std::memory_order_relaxed) != 0) {
    RouteGrantEntry grant;
    {
      std::lock_guard lk(outMu);
      if (RouteGrantEntry* g = grantLocked(t, ch)) grant = *g;
    }
    if (grant.end) {
      CallOptions d = o;
      if (d.timeout.count() == 0) d.timeout = grant.timeout;  // the channel's default, as routed
      bool refused = false;
      // Counted before the write, as a direct send is (above): relaxed, a counter.
      grant.slot->calls.fetch_add(1, std::memory_order_relaxed);
      Call c = grant.end->invokeImpl(t, ch, build, d, kind, grant.slot->errors, &refused);
      if (!refused) {
        grant.end->port->directSince.store(true, std::memory_order_relaxed);  // relaxed: see PortSide
        return c;
      }
      grant.slot->calls.fetch_sub(1, std::memory_order_relaxed);  // relaxed: a counter
      // Not written (the route's ring full, the route ended meanwhile, ...): the call goes
      // routed, behind a RouteSync, so in order, and the router's answer is the routed one
      // (a full inbox is Full there, a window gone finds whichever holds the role).
    }
  }
  auto s = std::make_shared<CallState>();
  s->owner = this;
  s->channelName = ch.name;
  s->target = port && port->routeOwner == nullptr ? Target(port->peerId) : t;
  s->routeErrors = routeErrors;
  auto checked = checkCallTimeout(o.timeout, {});
  if (!checked) {
    completeCall(s, inContext(checked.error(), s->what()));
    return Call(s);
  }
  // 0 = the channel's default (a port's: its callTimeout, checked positive when it opened).
  const std::chrono::milliseconds timeout = port && checked->count() == 0 ? port->callTimeout : *checked;
  s->timeoutMs = timeout.count();
  FrameHeader h = headerFor(kind, t, ch);
  h.traceId = currentTraceId();  // a call made inside a handler continues its flow (0: a new one)
  // A zero timeout asks the supervisor for the channel's default (Supervisor::setChannelTimeout),
  // which this window does not know; its local fallback then waits kUnknownDeadlineFallbackNs.
  const std::int64_t now = monotonicNowNs();
  // kMaxTimeout fits the 32-bit status field and keeps the sum far from overflowing.
  h.deadlineNs = timeout.count() > 0 ? deadlineAfter(now, timeout) : 0;
  h.status = static_cast<std::uint32_t>(timeout.count());
  // A port has no supervisor in the path: its own deadline is the call's (always given: the
  // port's callTimeout default is positive).
  s->deadlineNs = port ? h.deadlineNs
                       : (h.deadlineNs != 0 ? h.deadlineNs : now + kUnknownDeadlineFallbackNs) + kLocalGraceNs;
  // A port's call is traced by this end while an inspector is attached (one load otherwise).
  if (port && kind == FrameKind::Invoke && port->tracing()) s->onEnd = portCallTracer(h, std::string(ch.name));
  // Read before pending.add: the reply's completeCall (another thread, after pending.take)
  // moves onEnd out, and the PendingCalls mutex orders this read before it; read after the
  // publish, the only order is through the peer's process, which ThreadSanitizer cannot see.
  std::atomic<std::size_t>* requestBytes = s->onEnd ? &s->requestBytes : nullptr;
  if (replySpin.capNs() > 0) {
    // Learned reply spin (docs/architecture.md §4): a waiter may spin until spinUntilNs.
    s->spinChannel = ch.id;
    s->sentNs = now;
    s->spinUntilNs = now + replySpin.spinFor(ch.id);
  }
  h.requestId = pending.add(s);
  if (h.requestId == 0) {
    completeCall(s, makeError(ErrorCode::Full, fmt::format("{}: {} calls are in flight already", s->what(),
                                                           std::uint64_t{1} << PendingCalls::kSlotBits)));
    return Call(s);
  }
  Result<void> r;
  {
    std::lock_guard lk(outMu);
    r = internFor(t, ch, h.role);
    // relaxed: a hint; under outMu the sync decides (§19).
    if (r && !port && kind == FrameKind::Invoke && routeGrantCount.load(std::memory_order_relaxed) != 0) {
      r = syncRouteLocked(t);
    }
    // requestBytes is stored before the commit publishes the request, so the thread that reads
    // the reply and runs onEnd sees it (SYNC POINT "record", to the peer and back).
    if (r) r = writeOutLocked(h, build, o.sizeHint, 0, requestBytes);
  }
  if (!r) {
    pending.take(s->requestId);
    if (refused != nullptr) {
      if (r.code() == ErrorCode::Corrupt) endPortCorrupt(r.error());  // the route ends here
      *refused = true;
      return Call(s);
    }
    Error err = r.error();
    err.message = fmt::format("{}: {}", s->what(), err.message);
    completeCall(s, std::move(err));
  }
  return Call(s);
}

BlobStats Window::blobStats() const { return impl_->blobStats(); }

void Window::close() { impl_->close(fmt::format("window {} is closed", impl_->link.id)); }

bool Window::closed() const noexcept { return impl_->closed.load(std::memory_order_acquire); }

}  // namespace shmbus
