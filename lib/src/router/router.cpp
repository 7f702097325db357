#include "router/router.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <capnp/message.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "bus.capnp.h"
#include "call/callbacks.hpp"
#include "control/control_protocol.hpp"
#include "protocol/frame_io.hpp"
#include "wire/handshake.hpp"

namespace shmbus::detail {

namespace {
constexpr int kBatch = 64;
constexpr std::size_t kMaxOwnNames = 1u << 12;  // per window (Conn::ownNames)
constexpr std::string_view kMainRole = "main";  // the main process's role; only spawn() may give it to a window

enum EpollTag : std::uint64_t { kTagListen = 1, kTagDoorbell = 2, kTagTimer = 3, kTagWake = 4, kTagConn = 5 };
std::uint64_t tag(EpollTag t, std::uint32_t id = 0) { return (static_cast<std::uint64_t>(t) << 32) | id; }

FrameHeader header(FrameKind kind, std::uint64_t channel) {
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(kind);
  h.channel = channel;
  return h;
}
}  // namespace

Result<void> MainJob::detach() {
  if (held) return {};
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
      routes_(-1) {}

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
  const std::size_t stale = Segment::removeStale(r->opts_.bus);
  auto l = listenSeqpacket(r->path_);
  if (!l) return l.error();
  r->listenFd_ = std::move(*l);
  r->epollFd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  r->doorbellFd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  r->timerFd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  r->wakeFd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!r->epollFd_ || !r->doorbellFd_ || !r->timerFd_ || !r->wakeFd_) {
    return makeError(ErrorCode::SystemError, std::string("epoll/eventfd/timerfd: ") + std::strerror(errno));
  }
  r->routes_ = RouteTable(r->timerFd_.get());
  r->epollAdd(r->listenFd_.get(), tag(kTagListen));
  r->epollAdd(r->doorbellFd_.get(), tag(kTagDoorbell));
  r->epollAdd(r->timerFd_.get(), tag(kTagTimer));
  r->epollAdd(r->wakeFd_.get(), tag(kTagWake));
  r->spin_.spin = r->opts_.spin;
  if (stale > 0) r->log_(LogLevel::Info, "removed {} stale segment names", stale);
  return r;
}

// ---- control plane

void Router::epollAdd(int fd, std::uint64_t t) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = t;
  ::epoll_ctl(epollFd_.get(), EPOLL_CTL_ADD, fd, &ev);
}

void Router::acceptAll() {
  for (;;) {
    Fd fd(::accept4(listenFd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) return;
    auto cred = peerCred(fd.get());
    if (!cred || cred->uid != ::getuid()) {
      log_(LogLevel::Warn, "refused a connection from uid {}", cred ? static_cast<long>(cred->uid) : -1L);
      continue;
    }
    Conn& c = registry_.add(std::move(fd), "", cred->pid, false);
    epollAdd(c.sock.get(), tag(kTagConn, c.id));
  }
}

WindowInfo Router::addSpawned(Fd sock, const std::string& role, pid_t pid) {
  std::lock_guard lk(mu_);
  Conn& c = registry_.add(std::move(sock), role, pid, true);
  epollAdd(c.sock.get(), tag(kTagConn, c.id));
  return WindowInfo{c.id, role, pid, true};
}

void Router::onHello(Conn& c, const Packet& pkt) {
  if (c.state != Conn::State::AwaitHello) return doom(c, "a second hello", true);
  auto hello = parseHello(pkt);
  if (!hello) return doom(c, hello.error().message, true);
  auto refuse = [&](const Error& e, const char* reason) {
    sendWelcomeError(c.sock.get(), e);
    doom(c, reason, false);
  };
  if (!c.spawned) {
    const std::string& role = hello->role;
    if (!validRoleName(role)) {
      return refuse(makeError(ErrorCode::Denied, fmt::format("role '{}' is not a valid role name", role)),
                    "invalid role");
    }
    // "main" names the main process in every context (CallContext::sourceRole, frames' role ids):
    // a window claiming it by path would pass for the supervisor to a handler that checks the
    // caller's role. Only spawn(), which the supervisor itself authenticates, may give it.
    if (role == kMainRole) {
      log_(LogLevel::Warn, "denied role '{}' (pid {}): reserved", role, c.pid);
      return refuse(makeError(ErrorCode::Denied,
                              fmt::format("role '{}' is reserved for the main process of bus '{}'", role, opts_.bus)),
                    "denied");
    }
    if (!opts_.allowedRoles.empty() &&
        std::find(opts_.allowedRoles.begin(), opts_.allowedRoles.end(), role) == opts_.allowedRoles.end()) {
      log_(LogLevel::Warn, "denied role '{}' (pid {})", role, c.pid);
      return refuse(makeError(ErrorCode::Denied, fmt::format("role '{}' may not connect to bus '{}' by path "
                                                             "(allowed: {})",
                                                             role, opts_.bus, fmt::join(opts_.allowedRoles, ", "))),
                    "denied");
    }
    c.role = role;
  }
  c.roleId = nameId(c.role);
  const std::uint32_t inCap = hello->inboxBytes != 0 ? hello->inboxBytes : opts_.inboxBytes;
  const std::uint32_t outCap = hello->outboxBytes != 0 ? hello->outboxBytes : opts_.outboxBytes;
  if (auto ok = checkRingSizes(inCap, outCap); !ok) return refuse(ok.error(), "bad ring sizes");
  auto seg = createWindowSegment(opts_.bus, c.id, inCap, outCap, opts_.maxRecordBytes);
  if (!seg) return refuse(seg.error(), "segment creation failed");
  c.segName = seg->name;
  c.seg = seg->segment;
  c.inbox = std::move(seg->inbox);
  c.outbox = std::move(seg->outbox);
  c.cancels = seg->cancels;
  (void)sendWelcome(c.sock.get(), opts_.bus, c.id, c.role, *seg, doorbellFd_.get());
  c.state = Conn::State::AwaitMapped;
}

void Router::onMapped(Conn& c) {
  if (c.state != Conn::State::AwaitMapped) return doom(c, "unexpected mapped", true);
  Segment::unlink(c.segName);
  c.segName.clear();
  c.state = Conn::State::Live;
  registry_.addName(c.roleId, c.role);
  log_(LogLevel::Info, "window {} connected: role '{}', pid {}{}", c.id, c.role, c.pid, c.spawned ? " (spawned)" : "");
  emitWindowEvent(kWindowOpened, c, "");
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
    if (pkt->bytes.size() < sizeof(ControlHeader)) return doom(c, "short control packet", true);
    ControlHeader h;
    std::memcpy(&h, pkt->bytes.data(), sizeof h);
    switch (static_cast<ControlType>(h.type)) {
      case ControlType::Hello: onHello(c, *pkt); break;
      case ControlType::Mapped: onMapped(c); break;
      default: return doom(c, fmt::format("unknown control packet type {}", h.type), true);
    }
  }
}

void Router::doom(Conn& c, std::string reason, bool bad) {
  if (c.doomed.empty()) {
    c.doomed = std::move(reason);
    c.bad = bad;
  }
}

void Router::reapDoomed() {
  std::vector<std::uint32_t> ids;
  for (auto& [id, c] : registry_.all()) {
    if (!c->doomed.empty() && c->pinDepth == 0) ids.push_back(id);
  }
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

void Router::disconnect(std::uint32_t id) {
  std::unique_ptr<Conn> c = registry_.remove(id);
  if (!c) return;
  const bool wasLive = c->state == Conn::State::Live;
  if (c->bad) {
    ++counters_.badMessages;
    log_(LogLevel::Warn, "disconnected {}: bad message: {}", c->describe(), c->doomed);
  } else {
    log_(LogLevel::Info, "window {} ({}) disconnected: {}", c->id, c->role, c->doomed);
  }
  ::epoll_ctl(epollFd_.get(), EPOLL_CTL_DEL, c->sock.get(), nullptr);
  if (!c->segName.empty()) Segment::unlink(c->segName);
  auto gone = routes_.takeIf([&](const Route& r) { return r.targetId == id || r.callerId == id; });
  for (const Route& r : gone) {
    if (r.targetId == id) {
      failCaller(r, makeError(ErrorCode::TargetGone,
                              fmt::format("invoke '{}' to {}: the target {} before replying ({})",
                                          registry_.nameOf(r.channel, r.callerId), c->describe(),
                                          c->bad ? "was disconnected" : "closed", c->doomed)));
    } else {
      sendCancel(r.targetId, r.routeId);
    }
  }
  if (c->spawned) reaper_.closed(c->pid);
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
    FrameHeader h = header(FrameKind::Send, ch);
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
  job.header = header(FrameKind::Send, ch);
  job.sourceId = c.id;
  job.sourceRole = c.role;
  job.channelName = std::string(channel);
  job.held = std::move(*held);
  job.payload = nullptr;
  main_.deliver(job, false);
}

// ---- calls, deadlines

void Router::expireDeadlines() {
  for (const Route& r : routes_.takeExpired(monotonicNowNs())) {
    failCaller(r, timeoutError(r));
    sendCancel(r.targetId, r.routeId);
  }
}

void Router::failCaller(const Route& r, Error e) {
  counters_.error(r.channel, e.code);
  if (r.state) {
    completeCall(r.state, std::move(e));
    return;
  }
  Conn* caller = registry_.live(r.callerId);
  if (caller == nullptr) return;
  FrameHeader h{};
  h.channel = r.channel;
  h.requestId = r.callerReq;
  auto w = writeToWindow(*caller, [&] { return writeErrorFrame(caller->inbox, h, e); });
  // The caller's own fallback timer ends the call if its inbox cannot take the error now.
  if (!w) log_(LogLevel::Warn, "could not deliver '{}' to window {}: {}", e.toString(), r.callerId, w.error().message);
}

void Router::sendCancel(std::uint32_t targetId, std::uint64_t routeId) {
  if (targetId == kTargetMain) return main_.cancelMain(routeId);
  Conn* t = registry_.find(targetId);
  if (t == nullptr || t->state != Conn::State::Live) return;
  // The board first (a handler already running sees it at once), then the frame behind the
  // Invoke on the same ring (wire/cancel_board.hpp).
  t->cancels->post(routeId);
  FrameHeader h = header(FrameKind::Cancel, 0);
  h.requestId = routeId;
  (void)writeFrame(t->inbox, h, {}, 0);
}

Error Router::timeoutError(const Route& r) {
  const std::string target = r.targetId == kTargetMain ? std::string("main")
                             : registry_.live(r.targetId) ? registry_.live(r.targetId)->describe()
                                                          : fmt::format("window {}", r.targetId);
  return makeError(ErrorCode::Timeout, fmt::format("invoke '{}' to {} timed out after {} ms",
                                                   registry_.nameOf(r.channel, r.callerId), target, r.timeoutMs));
}

template <typename W>
Result<void> Router::writeToWindow(Conn& target, W&& write) {
  auto r = write();
  if (!r && r.code() == ErrorCode::Corrupt) {
    doom(target, "inbox corrupt: " + r.error().message, true);
    return makeError(ErrorCode::TargetGone, fmt::format("{} was disconnected: {}", target.describe(), r.error().message));
  }
  if (!r && r.code() == ErrorCode::Full) {
    return makeError(ErrorCode::Full, fmt::format("the inbox of {} is full", target.describe()));
  }
  return r;
}

void Router::internRole(Conn& target, std::uint64_t roleId) {
  if (target.knownRoles.count(roleId)) return;
  const std::string* name = registry_.roleName(roleId);
  if (name == nullptr) return;
  auto r = writeFrame(target.inbox, header(FrameKind::Intern, roleId), [&](Builder& b) {
    auto i = b.initRoot<schema::Intern>();
    i.setId(roleId);
    i.setName(*name);
    i.setIsRole(true);
  }, 256, false);
  if (r) target.knownRoles.insert(roleId);
}

bool Router::allowed(std::uint64_t channel, std::uint64_t roleId) const {
  auto it = policies_.find(channel);
  return it == policies_.end() || it->second.empty() || it->second.count(roleId) != 0;
}

std::int64_t Router::deadlineFor(const FrameHeader& h, std::int64_t now, std::int64_t& timeoutMs) const {
  if (h.deadlineNs != 0) {
    // The caller's own figure when it sent one (what it waited since it called, not since the
    // frame got here); else what is left of it.
    timeoutMs = h.status != 0 ? static_cast<std::int64_t>(h.status)
                              : std::max<std::int64_t>(0, (h.deadlineNs - now + 500'000) / 1'000'000);
    return h.deadlineNs;
  }
  auto it = channelTimeoutMs_.find(h.channel);
  timeoutMs = it != channelTimeoutMs_.end() ? it->second : kDefaultTimeout.count();
  return now + timeoutMs * 1'000'000;
}

// ---- frames from windows

void Router::replyError(Conn& w, const FrameHeader& req, Error e) {
  counters_.error(req.channel, e.code);
  FrameHeader h{};
  h.channel = req.channel;
  h.requestId = req.requestId;
  (void)writeToWindow(w, [&] { return writeErrorFrame(w.inbox, h, e); });
}

void Router::process(Conn& w, const RecordView& rec) {
  auto f = parseFrame(rec);
  if (!f) return doom(w, f.error().message, true);
  const FrameHeader& h = f->header;
  switch (static_cast<FrameKind>(h.kind)) {
    case FrameKind::Intern: return onIntern(w, *f);
    case FrameKind::HandlerAdd:
      w.handled.insert(h.channel);
      registryCv_.notify_all();
      return;
    case FrameKind::HandlerRemove: w.handled.erase(h.channel); return;
    case FrameKind::Listen: w.listens.insert(h.channel); return;
    case FrameKind::Send: return onSend(w, *f);
    case FrameKind::Invoke: return onInvoke(w, *f);
    case FrameKind::Reply:
    case FrameKind::Error: return onReply(w, *f);
    case FrameKind::Cancel: return onCancel(w, h);
  }
}

void Router::onIntern(Conn& w, const FrameView& f) {
  InPlaceMessage m;
  if (auto r = m.parse(f.payload, f.payloadBytes); !r || m.empty()) return doom(w, "malformed intern frame", true);
  try {
    auto i = m.reader().getRoot<schema::Intern>();
    std::string name = i.getName();
    if (name.size() > 256) return doom(w, "intern name longer than 256 bytes", true);
    if (i.getId() != nameId(name)) {
      // Typed channel ids do not hash from their names: keep the name for this window's own
      // messages only (see Conn::ownNames), and as a stats label.
      if (!i.getIsRole()) {
        registry_.addStatLabel(i.getId(), name);
        if (w.ownNames.size() < kMaxOwnNames) w.ownNames.emplace(i.getId(), std::move(name));
      }
      return;
    }
    registry_.addName(i.getId(), std::move(name));
  } catch (const kj::Exception& e) {
    doom(w, std::string("malformed intern frame: ") + e.getDescription().cStr(), true);
  }
}

MainJob Router::jobFor(Conn& w, const FrameView& f, MainJob::Kind kind) {
  MainJob job;
  job.kind = kind;
  job.header = f.header;
  job.sourceId = w.id;
  job.sourceRole = w.role;
  job.channelName = registry_.nameOf(f.header.channel, w.id);
  job.payload = f.payload;
  job.payloadBytes = f.payloadBytes;
  job.pinnedConn = w.id;
  return job;
}

bool Router::deliverToMain(Conn& w, MainJob& job) {
  if (!main_.deliver(job, mayInline_)) return false;
  // Taken in place: keep the record (and the Conn) until Router::unpin, end this round.
  // drain() set pinPos to this record (or an older one still in use) before process().
  ++w.pinDepth;
  endRound_ = true;
  return true;
}

void Router::onSend(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  if (!allowed(h.channel, w.roleId)) {
    ++counters_.undeliverable;
    counters_.error(h.channel, ErrorCode::Denied);
    log_(LogLevel::Warn, "denied send '{}' from {}", registry_.nameOf(h.channel), w.describe());
    return;
  }
  if (h.target == kTargetMain) {
    ++counters_.at(h.channel).messages;
    if (mainCallbacks_->listenerCount(h.channel) == 0) {
      ++counters_.undeliverable;
      log_(LogLevel::Debug, "send '{}' from {} has no listener", registry_.nameOf(h.channel), w.describe());
      return;
    }
    InPlaceMessage m;
    if (auto r = m.parse(f.payload, f.payloadBytes); !r) return doom(w, r.error().message, true);
    MainJob job = jobFor(w, f, MainJob::Kind::Listen);
    deliverToMain(w, job);
    return;
  }
  Conn* t = registry_.resolve(h.target, h.role);
  if (t == nullptr) {
    ++counters_.undeliverable;
    counters_.error(h.channel, ErrorCode::NoTarget);
    log_(LogLevel::Warn, "send '{}' from {}: no live window with {}", registry_.nameOf(h.channel), w.describe(),
         registry_.describeTarget(h.target, h.role));
    return;
  }
  FrameHeader out = h;
  out.source = w.id;
  out.role = w.roleId;
  out.target = t->id;
  out.requestId = 0;
  internRole(*t, w.roleId);
  auto r = writeToWindow(*t, [&] { return writeFrameCopy(t->inbox, out, f.payload, f.payloadBytes); });
  if (!r) {
    ++counters_.undeliverable;
    counters_.error(h.channel, r.code());
    log_(LogLevel::Warn, "send '{}' from {} to {} dropped: {}", registry_.nameOf(h.channel), w.describe(),
         t->describe(), r.error().message);
    return;
  }
  ++counters_.at(h.channel).messages;
}

void Router::onInvoke(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  if (routes_.byCaller(w.id, h.requestId) != 0) return doom(w, "request id reused while pending", true);
  ++counters_.at(h.channel).calls;
  const std::int64_t now = monotonicNowNs();
  if (!allowed(h.channel, w.roleId)) {
    return replyError(w, h, makeError(ErrorCode::Denied, fmt::format("invoke '{}' from {}: denied by policy",
                                                                     registry_.nameOf(h.channel, w.id), w.describe())));
  }
  if (h.target == kTargetMain) return invokeMain(w, f, now);
  Conn* t = registry_.resolve(h.target, h.role);
  if (t == nullptr) {
    return replyError(w, h, makeError(ErrorCode::NoTarget, fmt::format("invoke '{}': no live window with {}",
                                                                       registry_.nameOf(h.channel, w.id),
                                                                       registry_.describeTarget(h.target, h.role))));
  }
  if (t->handled.count(h.channel) == 0) {
    return replyError(w, h, makeError(ErrorCode::NoHandler, fmt::format("invoke '{}' to {}: no handler",
                                                                        registry_.nameOf(h.channel, w.id),
                                                                        t->describe())));
  }
  Route p;
  p.callerId = w.id;
  p.callerReq = h.requestId;
  p.targetId = t->id;
  p.channel = h.channel;
  p.start = now;
  p.deadline = deadlineFor(h, now, p.timeoutMs);
  FrameHeader out = h;
  out.source = w.id;
  out.role = w.roleId;
  out.target = t->id;
  out.deadlineNs = p.deadline;
  const std::uint64_t rid = routes_.add(std::move(p));
  out.requestId = rid;
  internRole(*t, w.roleId);
  auto r = writeToWindow(*t, [&] { return writeFrameCopy(t->inbox, out, f.payload, f.payloadBytes); });
  if (!r) {
    Route gone = *routes_.take(rid);
    failCaller(gone, Error{r.code(), fmt::format("invoke '{}' to {}: {}", registry_.nameOf(h.channel, w.id),
                                                 t->describe(), r.error().message)});
  }
}

void Router::invokeMain(Conn& w, const FrameView& f, std::int64_t now) {
  const FrameHeader& h = f.header;
  auto slot = mainCallbacks_->handler(h.channel);
  auto what = [&] { return fmt::format("invoke '{}' to main", registry_.nameOf(h.channel, w.id)); };
  if (!slot) return replyError(w, h, makeError(ErrorCode::NoHandler, what() + ": no handler"));
  if (slot->schemaId != 0 && h.schemaId != 0 && slot->schemaId != h.schemaId) {
    return replyError(w, h, makeError(ErrorCode::InvalidMessage,
                                      fmt::format("{}: request schema {:016x} does not match the handler's {:016x}",
                                                  what(), h.schemaId, slot->schemaId)));
  }
  InPlaceMessage m;
  if (auto r = m.parse(f.payload, f.payloadBytes); !r) {
    return replyError(w, h, Error{ErrorCode::InvalidMessage, what() + ": " + r.error().message});
  }
  // The router keeps the deadline of a call to main like any other: the caller gets Timeout at
  // its deadline even while the handler still runs (its reply is then late).
  Route p;
  p.callerId = w.id;
  p.callerReq = h.requestId;
  p.targetId = kTargetMain;
  p.channel = h.channel;
  p.start = now;
  p.deadline = deadlineFor(h, now, p.timeoutMs);
  MainJob job = jobFor(w, f, MainJob::Kind::Invoke);
  job.deadlineNs = p.deadline;
  job.timeoutMs = p.timeoutMs;
  job.routeId = routes_.add(std::move(p));
  deliverToMain(w, job);
}

std::optional<Route> Router::takeMainOutcome(std::uint64_t routeId) {
  auto p = routes_.take(routeId);
  if (!p) {
    // The call ended first (deadline, cancel, caller gone): a late reply, dropped and counted.
    ++counters_.lateReplies;
    return std::nullopt;
  }
  const std::int64_t now = monotonicNowNs();
  if (now >= p->deadline) {
    // The handler outran the caller's deadline before the timer had its turn: the call has
    // timed out all the same and this outcome is late.
    ++counters_.lateReplies;
    ++counters_.at(p->channel).late;
    failCaller(*p, timeoutError(*p));
    return std::nullopt;
  }
  counters_.at(p->channel).sample(static_cast<double>(now - p->start) / 1e6);
  return p;
}

void Router::replyFromMain(std::uint64_t routeId, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                           std::uint64_t replySchemaId) {
  std::lock_guard lk(mu_);
  auto p = takeMainOutcome(routeId);
  if (!p) return;
  Conn* caller = registry_.live(p->callerId);
  if (caller == nullptr) return;
  FrameHeader r = header(FrameKind::Reply, p->channel);
  r.requestId = p->callerReq;
  r.schemaId = replySchemaId;
  r.role = nameId(kMainRole);
  auto wr = writeToWindow(*caller, [&] { return writeFrameSegments(caller->inbox, r, segments); });
  if (!wr) {
    failCaller(*p, Error{wr.code(), fmt::format("invoke '{}' to main: the reply could not be written: {}",
                                                registry_.nameOf(p->channel, p->callerId), wr.error().message)});
  }
}

void Router::failFromMain(std::uint64_t routeId, Error e) {
  std::lock_guard lk(mu_);
  if (auto p = takeMainOutcome(routeId)) failCaller(*p, std::move(e));
}

void Router::countUnanswered(std::uint64_t channel) {
  std::lock_guard lk(mu_);
  ++counters_.unanswered;
  log_(LogLevel::Warn, "a handler of '{}' dropped its responder without replying (the caller times out)",
       registry_.nameOf(channel));
}

void Router::unpin(std::uint32_t connId) {
  std::lock_guard lk(mu_);
  Conn* c = registry_.find(connId);
  if (c == nullptr) return;
  if (--c->pinDepth == 0) c->outbox.releaseAll();
  reapDoomed();
}

void Router::onReply(Conn& w, const FrameView& f) {
  const FrameHeader& h = f.header;
  const Route* found = routes_.find(h.requestId);
  if (found == nullptr) {
    ++counters_.lateReplies;
    ++counters_.at(h.channel).late;
    return;
  }
  if (found->targetId != w.id) {
    ++counters_.spoofedReplies;
    log_(LogLevel::Warn, "dropped a reply to route {} from {}: the call was routed to window {}", h.requestId,
         w.describe(), found->targetId);
    return;
  }
  const std::int64_t now = monotonicNowNs();
  Route p = *routes_.take(h.requestId);
  if (now >= p.deadline) {
    // The deadline passed before this reply was read (the timer had not had its turn yet): the
    // call has timed out all the same, and the reply is late. The target has answered, so it
    // needs no Cancel.
    ++counters_.lateReplies;
    ++counters_.at(p.channel).late;
    return failCaller(p, timeoutError(p));
  }
  counters_.at(p.channel).sample(static_cast<double>(now - p.start) / 1e6);
  const bool isError = h.kind == static_cast<std::uint16_t>(FrameKind::Error);
  if (p.state) {  // a call made by the main process
    auto held = copyMessage(f.payload, f.payloadBytes);
    if (!held) return failCaller(p, held.error());
    if (isError) return failCaller(p, decodeError(h, (*held)->msg));
    completeCall(p.state, Message(std::move(*held), h.schemaId));
    return;
  }
  if (isError) counters_.error(p.channel, static_cast<ErrorCode>(h.status));
  Conn* caller = registry_.live(p.callerId);
  if (caller == nullptr) return;
  FrameHeader out = h;
  out.source = w.id;
  out.role = w.roleId;
  out.target = caller->id;
  out.requestId = p.callerReq;
  auto r = writeToWindow(*caller, [&] { return writeFrameCopy(caller->inbox, out, f.payload, f.payloadBytes); });
  if (!r) {
    failCaller(p, Error{r.code(), fmt::format("invoke '{}' to {}: the reply could not be delivered: {}",
                                              registry_.nameOf(p.channel, p.callerId), w.describe(),
                                              r.error().message)});
  }
}

void Router::onCancel(Conn& w, const FrameHeader& h) {
  const std::uint64_t rid = routes_.byCaller(w.id, h.requestId);
  if (rid == 0) return;
  Route p = *routes_.take(rid);
  counters_.error(p.channel, ErrorCode::Cancelled);
  sendCancel(p.targetId, p.routeId);
}

// ---- dispatch

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
  if (drain() > 0 || endRound_) return;
  if (spin_.spin.count() > 0) {
    const std::int64_t end = monotonicNowNs() + spin_.spin.count();
    while (monotonicNowNs() < end) {
      if (anyData()) return;
      cpuRelax();
    }
  }
  // The words armed for this park, each with its segment kept mapped until the park ends (another
  // round may disconnect the window meanwhile). Reused per thread: no allocation per park.
  thread_local std::vector<std::pair<WaitWord*, std::shared_ptr<Segment>>> armed;
  thread_local std::vector<WaitWord*> words;
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
    }
  }
  if (!endRound_) reapDoomed();
  if (!endRound_) drain();
}

void Router::wake() {
  const std::uint64_t one = 1;
  [[maybe_unused]] auto r = ::write(wakeFd_.get(), &one, sizeof one);
}

// ---- main process API

std::vector<WindowInfo> Router::windows() const {
  std::lock_guard lk(mu_);
  std::vector<WindowInfo> out;
  for (auto& [id, c] : registry_.all()) {
    if (c->live()) out.push_back({c->id, c->role, c->pid, c->spawned});
  }
  return out;
}

std::optional<WindowInfo> Router::window(std::uint32_t id) const {
  std::lock_guard lk(mu_);
  auto it = registry_.all().find(id);
  if (it == registry_.all().end() || !it->second->live()) return std::nullopt;
  const Conn& c = *it->second;
  return WindowInfo{c.id, c.role, c.pid, c.spawned};
}

std::optional<WindowInfo> Router::findWindow(std::uint64_t roleId, std::uint64_t channel) const {
  std::lock_guard lk(mu_);
  for (auto& [id, c] : registry_.all()) {
    if (c->roleId != roleId || !c->live()) continue;
    if (channel != 0 && c->handled.count(channel) == 0) continue;
    return WindowInfo{c->id, c->role, c->pid, c->spawned};
  }
  return std::nullopt;
}

void Router::awaitRegistryChange(std::chrono::nanoseconds ns) {
  std::unique_lock lk(mu_);
  registryCv_.wait_for(lk, ns);
}

Result<void> Router::send(const Target& target, const Channel& channel, const BuildFn& build) {
  std::lock_guard lk(mu_);
  if (stopping()) return makeError(ErrorCode::BusClosed, "the supervisor stopped");
  Conn* t = registry_.resolve(target);
  if (t == nullptr) {
    return makeError(ErrorCode::NoTarget, fmt::format("send '{}': no live window with {}", channel.name, target.describe()));
  }
  FrameHeader h = header(FrameKind::Send, channel.id);
  h.schemaId = channel.schemaId;
  h.target = t->id;
  h.role = nameId(kMainRole);
  ++counters_.at(channel.id).messages;
  mainCallbacks_->rememberName(channel.id, channel.name);
  return writeToWindow(*t, [&] { return writeFrame(t->inbox, h, build); });
}

Result<BroadcastReport> Router::broadcast(const Channel& channel, const BuildFn& build, const BroadcastOptions& options) {
  capnp::MallocMessageBuilder mb;
  if (build) build(mb);
  auto segs = mb.getSegmentsForOutput();
  std::lock_guard lk(mu_);
  BroadcastReport report;
  FrameHeader h = header(FrameKind::Send, channel.id);
  h.schemaId = channel.schemaId;
  h.role = nameId(kMainRole);
  auto has = [](const std::vector<std::string>& v, const std::string& r) {
    return std::find(v.begin(), v.end(), r) != v.end();
  };
  for (auto& [id, c] : registry_.all()) {
    if (!c->live()) continue;
    if (!options.roles.empty() && !has(options.roles, c->role)) continue;
    if (has(options.excludeRoles, c->role)) continue;
    h.target = c->id;
    auto r = writeToWindow(*c, [&] { return writeFrameSegments(c->inbox, h, segs); });
    if (r) {
      ++report.delivered;
    } else if (r.code() == ErrorCode::TooLarge) {
      return r.error();
    } else {
      report.failed.emplace_back(c->id, r.error());
    }
  }
  counters_.at(channel.id).messages += report.delivered;
  return report;
}

void Router::invoke(const Target& target, const Channel& channel, const BuildFn& build, const CallOptions& options,
                    const std::shared_ptr<CallState>& s) {
  std::lock_guard lk(mu_);
  mainCallbacks_->rememberName(channel.id, channel.name);
  auto fail = [&](ErrorCode code, std::string m) {
    counters_.error(channel.id, code);
    completeCall(s, makeError(code, std::move(m)));
  };
  if (stopping()) return fail(ErrorCode::BusClosed, s->what + ": the supervisor stopped");
  Conn* t = registry_.resolve(target);
  if (t == nullptr) return fail(ErrorCode::NoTarget, s->what + ": no live window with " + target.describe());
  if (t->handled.count(channel.id) == 0) return fail(ErrorCode::NoHandler, s->what + ": no handler");
  ++counters_.at(channel.id).calls;
  Route p;
  p.targetId = t->id;
  p.channel = channel.id;
  p.start = monotonicNowNs();
  FrameHeader h = header(FrameKind::Invoke, channel.id);
  h.schemaId = channel.schemaId;
  h.deadlineNs = options.timeout.count() > 0 ? p.start + std::chrono::nanoseconds(options.timeout).count() : 0;
  p.deadline = deadlineFor(h, p.start, p.timeoutMs);
  // The waiter's own give-up time, in case no thread dispatches (Call::get()).
  s->deadlineNs = p.deadline + kLocalGraceNs;
  p.state = s;
  h.deadlineNs = p.deadline;
  h.target = t->id;
  h.role = nameId(kMainRole);
  const std::uint64_t rid = routes_.add(std::move(p));
  s->requestId = rid;
  h.requestId = rid;
  auto r = writeToWindow(*t, [&] { return writeFrame(t->inbox, h, build, options.sizeHint); });
  if (!r) {
    Route gone = *routes_.take(rid);
    failCaller(gone, Error{r.code(), s->what + ": " + r.error().message});
  }
}

void Router::cancelMainCall(const std::shared_ptr<CallState>& s) {
  {
    std::lock_guard lk(mu_);
    auto gone = routes_.takeIf([&](const Route& r) { return r.state == s; });
    for (const Route& r : gone) {
      sendCancel(r.targetId, r.routeId);
      counters_.error(r.channel, ErrorCode::Cancelled);
    }
  }
  completeCall(s, makeError(ErrorCode::Cancelled, s->what + ": cancelled by the caller"));
}

void Router::setPolicy(const Channel& channel, const ChannelPolicy& policy) {
  std::lock_guard lk(mu_);
  auto& set = policies_[channel.id];
  set.clear();
  for (const auto& r : policy.callers) set.insert(nameId(r));
  mainCallbacks_->rememberName(channel.id, channel.name);
}

void Router::setChannelTimeout(const Channel& channel, std::chrono::milliseconds timeout) {
  std::lock_guard lk(mu_);
  channelTimeoutMs_[channel.id] = timeout.count();
  mainCallbacks_->rememberName(channel.id, channel.name);
}

RouterStats Router::stats() const {
  std::lock_guard lk(mu_);
  RouterStats s;
  const std::int64_t now = monotonicNowNs();
  for (auto& [rid, p] : routes_.all()) {
    s.pending.push_back({registry_.nameOf(p.channel), p.callerId, registry_.roleOf(p.callerId), p.targetId,
                         registry_.roleOf(p.targetId), static_cast<double>(now - p.start) / 1e6});
  }
  for (auto& [ch, c] : counters_.channels()) {
    RouterStats::ChannelStats cs;
    cs.channel = registry_.statName(ch);
    cs.calls = c.calls;
    cs.messages = c.messages;
    cs.lateReplies = c.late;
    for (auto& [code, n] : c.errors) cs.errors[errorCodeName(code)] = n;
    if (!c.latencyMs.empty()) {
      std::vector<double> v = c.latencyMs;
      std::sort(v.begin(), v.end());
      cs.p50Ms = v[(v.size() - 1) / 2];
      cs.p99Ms = v[std::min(v.size() - 1, static_cast<std::size_t>(static_cast<double>(v.size()) * 0.99))];
    }
    s.channels.push_back(std::move(cs));
  }
  std::sort(s.channels.begin(), s.channels.end(), [](auto& a, auto& b) { return a.channel < b.channel; });
  s.lateReplies = counters_.lateReplies;
  s.spoofedReplies = counters_.spoofedReplies;
  s.undeliverable = counters_.undeliverable;
  s.badMessages = counters_.badMessages;
  s.unansweredCalls = counters_.unanswered;
  return s;
}

void Router::beginStop() {
  stopping_.store(true, std::memory_order_release);  // pairs with stopping()'s acquire load
  wake();
}

void Router::stop() {
  std::lock_guard lk(mu_);
  for (auto& [id, c] : registry_.all()) doom(*c, "the supervisor stopped", false);
  mayInline_ = false;
  reapDoomed();
  auto left = routes_.takeIf([](const Route&) { return true; });
  for (const Route& r : left) {
    failCaller(r, makeError(ErrorCode::BusClosed,
                            fmt::format("invoke '{}': the supervisor stopped", registry_.nameOf(r.channel))));
  }
  ::unlink(path_.c_str());
  listenFd_.reset();
}

}  // namespace shmbus::detail
