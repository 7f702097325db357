// The router: its life cycle, the control plane (accept, handshake, disconnect) and the dispatch
// loop (docs/architecture.md §5, §9). Frames are in router_frames.cpp, the main process's API in
// router_main.cpp.
#include "router/router.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <capnp/message.h>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "bus.capnp.h"
#include "call/callbacks.hpp"
#include "common/tls.hpp"
#include "common/validate.hpp"
#include "protocol/frame_io.hpp"
#include "router/router_internal.hpp"
#include "control/control_protocol.hpp"
#include "wire/handshake.hpp"

namespace shmbus::detail {

namespace {
constexpr int kBatch = 64;

// Connections past the window cap that are still accepted, so that each can be told why it is
// refused (a Welcome error after its Hello); beyond them a connection is closed at once.
constexpr std::size_t kRefusalSlack = 64;

enum EpollTag : std::uint64_t {
  kTagListen = 1, kTagDoorbell = 2, kTagTimer = 3, kTagWake = 4, kTagConn = 5, kTagChild = 6,
  kTagHandshake = 7
};
std::uint64_t tag(EpollTag t, std::uint32_t id = 0) { return (static_cast<std::uint64_t>(t) << 32) | id; }
}  // namespace

Result<void> MainJob::detach() {
  if (held) return {};
  if (blob) {
    pinnedConn = 0;  // the payload is in the window's arena, which the blob keeps mapped
    return {};
  }
  auto copy = copyMessage(payload, payloadBytes);
  if (!copy) return copy.error();
  held = std::move(*copy);
  payload = nullptr;
  pinnedConn = 0;
  return {};
}

Router::Router(RouterOptions o, MainPort& main, std::shared_ptr<CallbackTable> mainCallbacks)
    : opts_(std::move(o)),
      log_{"router", opts_.bus, opts_.logLevel},
      main_(main),
      mainCallbacks_(mainCallbacks),
      registry_(std::move(mainCallbacks)),
      routes_(-1) {
  policy_.set(std::move(opts_.policy));  // the one copy in force: setPolicy replaces it
  capture_.set(opts_.payloadCapture);
}

Router::~Router() = default;

Result<std::unique_ptr<Router>> Router::create(RouterOptions o, MainPort& main,
                                               std::shared_ptr<CallbackTable> mainCallbacks) {
  std::unique_ptr<Router> r(new Router(std::move(o), main, std::move(mainCallbacks)));
  if (r->opts_.socketPath.empty()) {
    auto p = detail::socketPath(r->opts_.bus);
    if (!p) return p.error();
    r->path_ = *p;
  } else {
    r->path_ = r->opts_.socketPath;
  }
  // One supervisor per bus: the lock first; only its holder may replace a socket file.
  auto lock = BusLock::acquire(r->opts_.bus, r->path_);
  if (!lock) return lock.error();
  r->busLock_ = std::move(*lock);
  if (auto gone = removeStaleSocket(r->opts_.bus, r->path_); !gone) return gone.error();
  const std::size_t stale = Segment::removeStale(r->opts_.bus);
  auto l = listenSeqpacket(r->path_);
  if (!l) return l.error();
  r->listenFd_ = std::move(*l);
  r->setSocketMode();
  r->epollFd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  r->doorbellFd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  r->timerFd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  r->wakeFd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  r->handshakeTimerFd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  r->spareFd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!r->epollFd_ || !r->doorbellFd_ || !r->timerFd_ || !r->wakeFd_ || !r->handshakeTimerFd_ || !r->spareFd_) {
    return makeError(ErrorCode::SystemError, std::string("epoll/eventfd/timerfd: ") + std::strerror(errno));
  }
  r->routes_.setTimer(r->timerFd_.get());
  r->epollAdd(r->listenFd_.get(), tag(kTagListen));
  r->epollAdd(r->doorbellFd_.get(), tag(kTagDoorbell));
  r->epollAdd(r->timerFd_.get(), tag(kTagTimer));
  r->epollAdd(r->wakeFd_.get(), tag(kTagWake));
  r->epollAdd(r->handshakeTimerFd_.get(), tag(kTagHandshake));
  r->spin_.spin = r->opts_.spin;
  if (stale > 0) r->log_(LogLevel::Info, "removed {} stale segment names", stale);
  return r;
}

void Router::epollAdd(int fd, std::uint64_t t) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = t;
  ::epoll_ctl(epollFd_.get(), EPOLL_CTL_ADD, fd, &ev);
}

void Router::acceptAll() {
  for (;;) {
    Fd fd(::accept4(listenFd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if ((errno == EMFILE || errno == ENFILE) && shedConnection()) continue;
      return;
    }
    auto cred = peerCred(fd.get());
    if (!cred) {
      log_(LogLevel::Warn, "refused a connection: {}", cred.error().message);
      continue;
    }
    if (registry_.all().size() >= std::size_t{opts_.maxWindows} + kRefusalSlack) {
      // Past the cap and the refusals in progress: closed unheard (its connect sees BusClosed).
      ++counters_.refusedWindows;
      log_(LogLevel::Warn, "closed a connection from pid {} at once: {} connections (cap {} windows)", cred->pid,
           registry_.all().size(), opts_.maxWindows);
      continue;
    }
    Conn& c = registry_.add(std::move(fd), "", cred->pid, false);
    c.uid = cred->uid;
    // Another uid is held like any connection until its first packet, then told Denied
    // (onConnReadable): closing it at once, with its Hello unread, would reset its socket and
    // its connect would see only BusClosed.
    c.uidRefused = !uidAllowed(cred->uid);
    epollAdd(c.sock.get(), tag(kTagConn, c.id));
    handshakes_.emplace_back(deadlineAfter(monotonicNowNs(), opts_.handshakeTimeout), c.id);
    if (handshakes_.size() == 1) armHandshakeTimer();
  }
}

bool Router::shedConnection() {
  // Out of descriptors: the pending connection would stay in the backlog, and the listening
  // socket readable, so epoll would wake this thread again at once, for ever. The spare
  // descriptor makes room to accept that connection and close it (its window sees BusClosed);
  // descriptors come back as handshake deadlines close silent connections.
  if (!spareFd_) return false;
  spareFd_.reset();
  Fd shed(::accept4(listenFd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  const bool accepted = static_cast<bool>(shed);
  shed.reset();
  spareFd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!accepted) return false;
  ++counters_.refusedWindows;
  log_(LogLevel::Warn, "closed a connection at once: this process is out of file descriptors ({} connections)",
       registry_.all().size());
  if (!spareFd_) log_(LogLevel::Error, "no spare descriptor any more: connections wait in the backlog");
  return true;
}

void Router::armHandshakeTimer() {
  itimerspec t{};  // all zero disarms
  if (!handshakes_.empty()) {
    const std::int64_t at = handshakes_.front().first;
    t.it_value.tv_sec = static_cast<time_t>(at / 1'000'000'000);
    t.it_value.tv_nsec = static_cast<long>(at % 1'000'000'000);
  }
  ::timerfd_settime(handshakeTimerFd_.get(), TFD_TIMER_ABSTIME, &t, nullptr);
}

void Router::expireHandshakes() {
  std::uint64_t ticks;
  (void)!::read(handshakeTimerFd_.get(), &ticks, sizeof ticks);
  const std::int64_t now = monotonicNowNs();
  while (!handshakes_.empty() && handshakes_.front().first <= now) {
    Conn* c = registry_.find(handshakes_.front().second);
    handshakes_.pop_front();
    // Live windows and attached inspectors finished their handshake.
    if (c == nullptr || c->state == Conn::State::Live || c->state == Conn::State::Inspector || !c->doomed.empty()) {
      continue;
    }
    ++counters_.handshakeTimeouts;
    log_(LogLevel::Warn, "closed connection {} from pid {}: no handshake within {} ms", c->id, c->pid,
         opts_.handshakeTimeout.count());
    doom(*c, fmt::format("no handshake within {} ms", opts_.handshakeTimeout.count()), false);
  }
  armHandshakeTimer();
}

Result<void> Router::windowCapLocked(const Conn* except) const {
  std::size_t n = 0;
  for (auto& [id, c] : registry_.all()) {
    // Windows past their Hello, and spawned ones (their slot was promised at spawn()). Inspectors
    // are not windows; their connections count against the accept limit only (acceptAll).
    if (c.get() == except || !c->doomed.empty() || c->state == Conn::State::Inspector) continue;
    if (c->state != Conn::State::AwaitHello || c->spawned) ++n;
  }
  if (n < opts_.maxWindows) return {};
  return makeError(ErrorCode::Full, fmt::format("bus '{}' has reached its cap of {} windows "
                                                "(SupervisorOptions::maxWindows)",
                                                opts_.bus, opts_.maxWindows));
}

bool Router::uidAllowed(uid_t uid) const {
  const auto& policyUids = policy_.policy().uids;
  return uid == ::getuid() || std::find(opts_.allowedUids.begin(), opts_.allowedUids.end(), uid) != opts_.allowedUids.end() ||
         std::find(policyUids.begin(), policyUids.end(), uid) != policyUids.end();
}

WindowInfo Router::addSpawned(Fd sock, const std::string& role, pid_t pid) {
  std::lock_guard lk(mu_);
  Conn& c = registry_.add(std::move(sock), role, pid, true);
  c.uid = ::getuid();
  c.admission = Admission::Spawned;
  epollAdd(c.sock.get(), tag(kTagConn, c.id));
  return c.info();
}

Result<std::string> Router::invite(const std::string& role, std::chrono::milliseconds ttl) {
  std::lock_guard lk(mu_);
  if (stopping()) return makeError(ErrorCode::BusClosed, fmt::format("bus '{}': the supervisor stopped", opts_.bus));
  const std::int64_t now = monotonicNowNs();
  return invites_.issue(role, now, deadlineAfter(now, ttl));
}

Result<Admission> Router::admit(const Conn& c, const HelloRequest& hello) {
  const std::string& role = hello.role;
  if (auto valid = validateName(NameKind::Role, role); !valid) return valid.error();
  if (!hello.token.empty()) {
    // The supervisor's own grant, as strong as spawn(): it gives its role whatever the lists say
    // ("main" included, since only the supervisor could have issued it).
    if (auto ok = invites_.redeem(hello.token, role, monotonicNowNs(), opts_.bus); !ok) {
      log_(LogLevel::Warn, "denied role '{}' (pid {}, uid {}): {}", role, c.pid, static_cast<long>(c.uid),
           ok.error().message);
      return ok.error();
    }
    return Admission::Invited;
  }
  auto deny = [&](std::string why) -> Result<Admission> {
    log_(LogLevel::Warn, "denied role '{}' (pid {}, uid {}): {}", role, c.pid, static_cast<long>(c.uid), why);
    return makeError(ErrorCode::Denied, std::move(why));
  };
  // "main" names the main process in every context (CallContext::sourceRole, frames' role ids):
  // a window claiming it by path would pass for the supervisor to a handler that checks the
  // caller's role. Only spawn() or an invitation, which the supervisor itself issues, may give it.
  if (role == kMainRole) {
    return deny(fmt::format("role '{}' is reserved for the main process of bus '{}'", role, opts_.bus));
  }
  const Policy& policy = policy_.policy();
  if (policy.admissionOf(role) == RoleAdmission::Invited) {
    std::vector<std::string> open;
    for (const RoleRule& r : policy.roles) {
      if (policy.admissionOf(r.name) == RoleAdmission::Open) open.push_back(r.name);
    }
    return deny(fmt::format("role '{}' on bus '{}' is by invitation only{}: connect with a token from "
                            "Supervisor::invite (WindowOptions::token or $SHMBUS_TOKEN), or start the window "
                            "with Supervisor::spawn",
                            role, opts_.bus,
                            policy.defaultAdmission == RoleAdmission::Open || open.empty()
                                ? std::string()
                                : fmt::format(" (open roles: {})", fmt::join(open, ", "))));
  }
  return Admission::Open;
}

void Router::onHello(Conn& c, const Packet& pkt) {
  if (c.state != Conn::State::AwaitHello) return doom(c, "a second hello", true);
  auto hello = parseHello(pkt);
  if (!hello) return doom(c, hello.error().message, true);
  auto refuse = [&](const Error& e, const char* reason) {
    sendWelcomeError(c.sock.get(), e);
    doom(c, reason, false);
  };
  if (auto cap = windowCapLocked(&c); !cap) {
    ++counters_.refusedWindows;
    log_(LogLevel::Warn, "refused a window (pid {}): {}", c.pid, cap.error().message);
    return refuse(cap.error(), "window cap reached");
  }
  if (!c.spawned) {
    auto admission = admit(c, *hello);
    if (!admission) {
      return refuse(admission.error(), admission.code() == ErrorCode::Denied ? "denied" : "invalid role");
    }
    c.admission = *admission;
    c.role = hello->role;
  }
  if (auto cap = roleCapLocked(c.role, &c); !cap) {
    ++counters_.refusedWindows;
    log_(LogLevel::Warn, "refused a window (pid {}): {}", c.pid, cap.error().message);
    return refuse(cap.error(), "role cap reached");
  }
  c.roleId = nameId(c.role);
  const std::uint32_t inCap = hello->inboxBytes != 0 ? hello->inboxBytes : opts_.inboxBytes;
  const std::uint32_t outCap = hello->outboxBytes != 0 ? hello->outboxBytes : opts_.outboxBytes;
  if (auto ok = checkRingSizes(inCap, outCap); !ok) return refuse(ok.error(), "bad ring sizes");
  auto seg = createWindowSegment(opts_.bus, c.id, inCap, outCap, opts_.maxRecordBytes, opts_.windowBlobBytes);
  if (!seg) return refuse(seg.error(), "segment creation failed");
  c.seg = seg->segment;
  if (seg->blobBytes != 0) {
    c.blobIn = c.seg->base() + seg->outboxBlobOffset;  // written by the outbox's producer: the window
    c.blobInBytes = seg->blobBytes;
    c.blobOut = BlobProducer(c.seg->base() + seg->inboxBlobOffset, seg->blobBytes);
  }
  c.inbox = std::move(seg->inbox);
  c.outbox = std::move(seg->outbox);
  c.cancels = seg->cancels;
  // relaxed: as in setTraceWords; the Welcome's sendmsg orders it before the window maps it.
  traceWord(c.seg->base()).store(tracing() ? 1 : 0, std::memory_order_relaxed);
  // A failed Welcome leaves the window nothing to map: refused (disconnect() drops the segment).
  if (auto sent = sendWelcome(c.sock.get(), opts_.bus, c.id, c.role, *seg, doorbellFd_.get()); !sent) {
    return refuse(sent.error(), "welcome failed");
  }
  c.seg->closeFd();  // the window has its own now; the mapping is all the supervisor keeps
  c.state = Conn::State::AwaitMapped;
}

void Router::onMapped(Conn& c) {
  if (c.state != Conn::State::AwaitMapped) return doom(c, "unexpected mapped", true);
  c.state = Conn::State::Live;
  registry_.addName(c.roleId, c.role);
  log_(LogLevel::Info, "window {} connected: role '{}', pid {}, uid {} ({})", c.id, c.role, c.pid,
       static_cast<long>(c.uid), toString(c.admission));
  emitWindowEvent(kWindowOpened, c, "");
  traceWindow(TraceKind::WindowOpen, c, "");
  registryCv_.notify_all();
}

void Router::onConnReadable(std::uint32_t id) {
  Conn* cp = registry_.find(id);
  if (cp == nullptr) return;
  Conn& c = *cp;
  for (int i = 0; i < 16 && c.doomed.empty(); ++i) {
    auto pkt = recvPacket(c.sock.get());
    if (!pkt) {
      if (pkt.code() == ErrorCode::Full) return;  // EAGAIN: drained
      return doom(c, pkt.error().message, false);
    }
    if (pkt->hangup) return doom(c, c.state == Conn::State::Live ? "closed" : "closed before registering", false);
    auto h = parseControlHeader(*pkt);
    if (!h) return doom(c, h.error().message, true);
    if (c.uidRefused) {
      log_(LogLevel::Warn, "refused a connection from uid {} (pid {})", static_cast<long>(c.uid), c.pid);
      sendWelcomeError(c.sock.get(),
                       makeError(ErrorCode::Denied, fmt::format("bus '{}' does not accept connections from uid {} "
                                                                "(neither SupervisorOptions::allowedUids nor the "
                                                                "policy's uids name it)",
                                                                opts_.bus, static_cast<long>(c.uid))));
      return doom(c, "uid not allowed", false);
    }
    switch (static_cast<ControlType>(h->type)) {
      case ControlType::Hello: onHello(c, *pkt); break;
      case ControlType::Mapped: onMapped(c); break;
      case ControlType::Inspect: onInspect(c, h->value); break;
      case ControlType::Snapshot: onSnapshot(c); break;
      case ControlType::Schemas: onSchemas(c); break;
      default: return doom(c, fmt::format("control packet type {} is not for the supervisor", h->type), true);
    }
  }
}

void Router::doom(Conn& c, std::string reason, bool bad) {
  if (c.doomed.empty()) {
    c.doomed = std::move(reason);
    c.bad = bad;
  }
  anyDoomed_ = true;
}

void Router::reapDoomed() {
  // Called a few times per call (after each round, each drain, each unpin): nothing to do unless
  // doom() ran, so no walk over the registry per call (docs/architecture.md §10).
  if (!anyDoomed_) return;
  std::vector<std::uint32_t> ids;
  bool pinned = false;  // a doomed window still pinned by a running job waits for its unpin
  for (auto& [id, c] : registry_.all()) {
    if (c->doomed.empty()) continue;
    if (c->pinDepth == 0) {
      ids.push_back(id);
    } else {
      pinned = true;
    }
  }
  anyDoomed_ = pinned;
  for (auto id : ids) {
    Conn* c = registry_.find(id);
    // A window that closed (not one that misbehaved) gets what it wrote before closing
    // delivered first: sends and replies committed before the hang-up are never lost.
    if (c != nullptr && !c->bad && c->state == Conn::State::Live) drainClosing(*c);
    disconnect(id);
  }
}

void Router::drainClosing(Conn& c) {
  const bool inlineWas = std::exchange(mayInline_, false);  // a closing window's jobs are copied
  for (std::size_t n = 0; n < (1u << 20); ++n) {
    auto r = c.outbox.tryRead();
    if (!r || !*r) break;
    const std::string reason = std::exchange(c.doomed, std::string());  // live while it drains
    process(c, **r);
    if (c.doomed.empty()) c.doomed = reason;
    if (c.bad) break;
  }
  mayInline_ = inlineWas;
  c.outbox.releaseAll();
}

void Router::flushHeld() {
  if (holding_ == 0) return;
  for (auto& [id, held] : registry_.all()) {
    Conn* c = held.get();  // a lambda cannot capture a structured binding before clang 16 (P1091)
    if (c->held.empty()) continue;
    while (!c->held.empty()) {
      const HeldFrame& f = c->held.front();
      if (c->live()) {
        auto r = writeToWindow(*c, [&] { return writeFrameCopy(c->inbox, f.header, f.payload.data(), f.payload.size()); });
        if (!r && r.code() == ErrorCode::Full) break;  // still no room: the next round tries again
      }
      // Written; or the window is going (or its inbox is corrupt): its held frames go with it.
      c->heldBytes -= sizeof(FrameHeader) + f.payload.size();
      c->held.pop_front();
    }
    if (c->held.empty()) --holding_;
  }
}

void Router::disconnect(std::uint32_t id) {
  std::unique_ptr<Conn> c = registry_.remove(id);
  if (!c) return;
  if (!c->held.empty()) --holding_;
  const bool wasLive = c->state == Conn::State::Live;
  if (c->state == Conn::State::Inspector) {
    if (--inspectors_ == 0) setTraceWords();
    if (c->payloadReader) --payloadReaders_;
    log_(LogLevel::Info, "inspector {} detached: {}; {} attached", c->id, c->doomed, inspectors_);
  } else if (c->bad) {
    ++counters_.badMessages;
    // A spawned window is the supervisor's own child (Mojo's rule: a process that sends a bad
    // message is killed, not just cut off). It is not reaped before reaper_.closed() below, so
    // its pid cannot have been reused.
    const bool kill = c->spawned && c->pid > 0 && ::kill(c->pid, SIGKILL) == 0;
    log_(LogLevel::Warn, "{} {}: bad message: {}", kill ? "killed" : "disconnected", c->describe(), c->doomed);
  } else {
    log_(LogLevel::Info, "window {} ({}) disconnected: {}", c->id, c->role, c->doomed);
  }
  ::epoll_ctl(epollFd_.get(), EPOLL_CTL_DEL, c->sock.get(), nullptr);
  closePortsOf(*c);
  auto gone = routes_.takeIf([&](const Route& r) { return r.targetId == id || r.callerId == id; });
  for (const Route& r : gone) {
    if (r.targetId == id) {
      failCaller(r, makeError(ErrorCode::TargetGone,
                              fmt::format("invoke '{}' to {}: the target {} before replying ({})",
                                          registry_.nameOf(r.channel, r.callerId), c->describe(),
                                          c->bad ? "was disconnected" : "closed", c->doomed)));
    } else {
      sendCancel(r.targetId, r.routeId);
      traceCall(r, TraceKind::Cancel, ErrorCode::Cancelled, "the caller left", 0);
    }
  }
  if (wasLive) traceWindow(c->bad ? TraceKind::BadMessage : TraceKind::WindowClose, *c, c->doomed);
  if (c->spawned) {
    if (const int pidfd = reaper_.closed(c->pid); pidfd >= 0) epollAdd(pidfd, tag(kTagChild, static_cast<std::uint32_t>(pidfd)));
  }
  c->sock.reset();
  if (wasLive) emitWindowEvent(kWindowClosed, *c, c->bad ? "bad message: " + c->doomed : c->doomed);
  c->seg.reset();
  registryCv_.notify_all();
}

void Router::emitWindowEvent(std::string_view channel, const Conn& c, const std::string& reason) {
  const std::uint64_t ch = nameId(channel);
  BuildFn build = [&](Builder& b) {
    auto e = b.initRoot<schema::WindowEvent>();
    e.setWindowId(c.id);
    e.setRole(c.role);
    e.setPid(c.pid);
    e.setReason(reason);
  };
  for (auto& [id, other] : registry_.all()) {
    if (other.get() == &c || other->state != Conn::State::Live || !other->listens.count(ch)) continue;
    FrameHeader h = frameHeader(FrameKind::Send, ch);
    h.role = nameId(kMainRole);
    (void)writeFrame(other->inbox, h, build, 512);
  }
  if (mainCallbacks_->listenerCount(ch) == 0) return;
  // Main-process listeners hear it on the lane, from an owned copy.
  capnp::MallocMessageBuilder mb;
  build(mb);
  auto held = copyBuilt(mb);
  if (!held) return;
  MainJob job;
  job.kind = MainJob::Kind::Listen;
  job.header = frameHeader(FrameKind::Send, ch);
  job.sourceId = c.id;
  job.sourceRole = c.role;
  job.channelName = std::string(channel);
  job.held = std::move(*held);
  job.payload = nullptr;
  main_.deliver(job, false);
}

std::size_t Router::drain() {
  std::size_t total = 0;
  for (auto& [id, c] : registry_.all()) {
    if (!c->live()) continue;
    int n = 0;
    while (n < kBatch && c->doomed.empty() && !endRound_) {
      auto r = c->outbox.tryRead();
      if (!r) {
        doom(*c, r.error().message, true);
        break;
      }
      if (!*r) break;
      // A nested round (a main callback blocked in Call::get() dispatches) may read further
      // records while this one is processed: never release past it, never free the Conn.
      if (c->pinDepth++ == 0) c->pinPos = (*r)->pos;
      process(*c, **r);
      --c->pinDepth;
      ++n;
    }
    // Batch release (one head publication per batch); never past a record still in use.
    if (n > 0) c->pinDepth > 0 ? c->outbox.releaseTo(c->pinPos) : c->outbox.releaseAll();
    total += static_cast<std::size_t>(n);
    if (endRound_) break;
  }
  if (!endRound_) reapDoomed();
  return total;
}

bool Router::anyData() {
  for (auto& [id, c] : registry_.all()) {
    if (c->state == Conn::State::Live && c->outbox.hasData()) return true;
  }
  return false;
}

void Router::dispatchOnce(std::int64_t deadline, bool mayInline) {
  std::unique_lock lk(mu_);
  // Per-round state, set again whenever this thread (re)takes mu_: other rounds may have run
  // while it was parked.
  auto begin = [&] {
    mayInline_ = mayInline;
    endRound_ = false;
  };
  begin();
  flushHeld();
  if (drain() > 0 || endRound_) return;
  if (spin_.spin.count() > 0) {
    // The clock costs more than a look at every outbox: read it every 16 looks (wait.hpp does
    // the same), so data that arrives is seen within one look, not one clock read.
    const std::int64_t end = monotonicNowNs() + spin_.spin.count();
    for (unsigned i = 1;; ++i) {
      if (anyData()) return;
      cpuRelax();
      if ((i & 15u) == 0 && monotonicNowNs() >= end) break;
    }
  }
  // The words armed for this park, each with its segment kept mapped until the park ends (another
  // round may disconnect the window meanwhile). Reused per thread: no allocation per park.
  SHMBUS_HOT_TLS thread_local std::vector<std::pair<WaitWord*, std::shared_ptr<Segment>>> armed;
  SHMBUS_HOT_TLS thread_local std::vector<WaitWord*> words;
  armed.clear();
  words.clear();
  for (auto& [id, c] : registry_.all()) {
    if (c->state != Conn::State::Live) continue;
    // SYNC POINT W (wait.hpp): seq_cst RMW pairs with notify() in the window.
    c->outbox.control()->dataReady.waiters.fetch_add(1, std::memory_order_seq_cst);
    armed.emplace_back(&c->outbox.control()->dataReady, c->seg);
    words.push_back(&c->outbox.control()->dataReady);
  }
  // SYNC POINT W, the waiter's half for every armed outbox at once (one membarrier call).
  const bool newMark = waiterBarrier(words.data(), words.size());
  const bool ready = anyData();
  int timeoutMs = -1;
  if (deadline != kNoDeadline) {
    const std::int64_t left = deadline - monotonicNowNs();
    timeoutMs = left <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>((left + 999'999) / 1'000'000, 1 << 30));
  }
  constexpr int kFirstMarkParkMs = static_cast<int>(kFirstMarkParkNs / 1'000'000);
  if (newMark && (timeoutMs < 0 || timeoutMs > kFirstMarkParkMs)) timeoutMs = kFirstMarkParkMs;  // waiterBarrier()
  // Held outcomes (flushHeld): a window does not tell the router when its inbox has room again,
  // so look every millisecond while any is held (rare: a window that stopped reading its inbox).
  if (holding_ > 0 && (timeoutMs < 0 || timeoutMs > 1)) timeoutMs = 1;
  epoll_event evs[32];
  int n = 0;
  if (!ready && !stopping()) {
    lk.unlock();  // let other threads send (and other rounds route) while this one sleeps
    n = ::epoll_wait(epollFd_.get(), evs, 32, timeoutMs);
    lk.lock();
    begin();
  }
  for (auto& [word, seg] : armed) {
    // relaxed: a hint for notifiers; a stale value costs one spurious doorbell write.
    word->waiters.fetch_sub(1, std::memory_order_relaxed);
  }
  armed.clear();
  for (int i = 0; i < n; ++i) {
    const auto t = static_cast<EpollTag>(evs[i].data.u64 >> 32);
    const auto id = static_cast<std::uint32_t>(evs[i].data.u64 & 0xffffffffu);
    std::uint64_t v;
    switch (t) {
      case kTagListen: acceptAll(); break;
      case kTagDoorbell: (void)!::read(doorbellFd_.get(), &v, sizeof v); break;
      case kTagTimer: expireDeadlines(); break;
      case kTagWake: (void)!::read(wakeFd_.get(), &v, sizeof v); break;
      case kTagConn: onConnReadable(id); break;
      case kTagChild:
        // A closed spawned window exited (its pidfd, from Reaper::closed): out of the set before
        // the Reaper closes it, so no event of a reused descriptor number can be taken for it.
        ::epoll_ctl(epollFd_.get(), EPOLL_CTL_DEL, static_cast<int>(id), nullptr);
        reaper_.exited(static_cast<int>(id));
        break;
      case kTagHandshake: expireHandshakes(); break;
    }
  }
  if (!endRound_) reapDoomed();
  if (!endRound_) flushHeld();
  if (!endRound_) drain();
}

void Router::wake() {
  const std::uint64_t one = 1;
  [[maybe_unused]] auto r = ::write(wakeFd_.get(), &one, sizeof one);
}

void Router::beginStop() {
  stopping_.store(true, std::memory_order_release);  // pairs with stopping()'s acquire load
  wake();
}

void Router::stop() {
  std::lock_guard lk(mu_);
  // Every call in flight ends with BusClosed first (not TargetGone: no target went away, the bus
  // did), then every window is disconnected.
  auto left = routes_.takeIf([](const Route&) { return true; });
  for (const Route& r : left) {
    failCaller(r, makeError(ErrorCode::BusClosed,
                            fmt::format("invoke '{}': the supervisor stopped", registry_.nameOf(r.channel))));
  }
  std::vector<std::uint64_t> portIds;
  for (auto& [id, p] : ports_) portIds.push_back(id);
  for (auto id : portIds) closePort(id, kPortBusStopped, std::nullopt);
  for (auto& [id, c] : registry_.all()) doom(*c, "the supervisor stopped", false);
  mayInline_ = false;
  reapDoomed();
  ::unlink(path_.c_str());
  listenFd_.reset();
  busLock_.release();  // after the socket is gone: the next supervisor binds a fresh one
}

}  // namespace shmbus::detail
