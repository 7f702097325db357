#include "shmbus/supervisor.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "bus.capnp.h"
#include "call/call.hpp"
#include "call/callbacks.hpp"
#include "control/control_protocol.hpp"
#include "control/socket.hpp"
#include "protocol/frame_io.hpp"
#include "ring/ring.hpp"
#include "segment/segment.hpp"
#include "wait/wait.hpp"

extern char** environ;

namespace shmbus {

using namespace detail;

namespace {
constexpr int kBatch = 64;
constexpr std::size_t kMaxNames = 1u << 16;
constexpr std::size_t kMaxOwnNames = 1u << 12;  // per window (Conn::ownNames)
constexpr std::size_t kLatencySamples = 4096;
constexpr int kSpawnedExitGraceMs = 2000;
// How long after a call's deadline a waiter gives up by itself when the dispatcher cannot.
constexpr std::int64_t kLocalGraceNs = 20'000'000;
constexpr std::string_view kMainRole = "main";  // the main process's role; only spawn() may give it to a window

enum EpollTag : std::uint64_t { kTagListen = 1, kTagDoorbell = 2, kTagTimer = 3, kTagWake = 4, kTagConn = 5 };
std::uint64_t tag(EpollTag t, std::uint32_t id = 0) { return (static_cast<std::uint64_t>(t) << 32) | id; }

bool isPowerOfTwo(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
}  // namespace

struct Supervisor::Impl final : CallOwner {
  struct Conn {
    std::uint32_t id = 0;
    std::string role;
    std::uint64_t roleId = 0;
    pid_t pid = 0;
    bool spawned = false;
    enum class State { AwaitHello, AwaitMapped, Live } state = State::AwaitHello;
    Fd sock;
    std::string segName;  // non-empty until unlinked
    std::shared_ptr<Segment> seg;
    RingProducer inbox;   // supervisor → window (guarded by mu)
    RingConsumer outbox;  // window → supervisor (dispatcher only)
    std::unordered_set<std::uint64_t> handled;
    std::unordered_set<std::uint64_t> listens;
    std::unordered_set<std::uint64_t> knownRoles;
    // Names this window gave ids that do not hash to them (typed channels: methodChannelId cannot
    // be checked against a name). Unverified, so they name channels only in this window's own
    // errors (nameOf(id, this id)), never in other windows' messages or in stats.
    std::unordered_map<std::uint64_t, std::string> ownNames;
    std::string doomed;  // non-empty: disconnect after the current batch, with this reason
    bool bad = false;
    // Re-entrant dispatch (a main handler that blocks in Call::get() keeps dispatching): while a
    // record of this outbox is being processed, nested rounds may read further records but must
    // not release (zero) the one in progress, and must not free the Conn under it.
    int pinDepth = 0;
    std::uint64_t pinPos = 0;  // ring position of the outermost record in progress
  };

  struct Pending {
    std::uint64_t routeId = 0;
    std::uint32_t callerId = 0;  // 0 = main (state set)
    std::uint64_t callerReq = 0;
    std::uint32_t targetId = 0;
    std::uint64_t channel = 0;
    std::int64_t deadline = 0;
    std::int64_t start = 0;
    std::int64_t timeoutMs = 0;
    std::shared_ptr<CallState> state;
  };

  struct ChannelCounters {
    std::uint64_t calls = 0, messages = 0, late = 0;
    std::map<ErrorCode, std::uint64_t> errors;
    std::vector<double> latencyMs;
    std::size_t next = 0;
    void sample(double ms) {
      if (latencyMs.size() < kLatencySamples) {
        latencyMs.push_back(ms);
      } else {
        latencyMs[next++ % kLatencySamples] = ms;
      }
    }
  };

  SupervisorOptions opts;
  std::string path;
  Fd listenFd, epollFd, doorbellFd, timerFd, wakeFd;
  SpinPolicy spin;

  mutable std::recursive_mutex mu;
  std::condition_variable_any registryCv;
  std::map<std::uint32_t, std::unique_ptr<Conn>> conns;  // by id: registration order
  std::uint32_t nextId = 1;
  std::unordered_map<std::uint64_t, std::string> names;
  // Display labels of typed channel ids for stats() only (first claim wins; a window cannot
  // rename a channel in other windows' error messages through them).
  std::unordered_map<std::uint64_t, std::string> statLabels;
  std::unordered_map<std::uint64_t, Pending> pending;
  std::map<std::pair<std::uint32_t, std::uint64_t>, std::uint64_t> byCaller;
  std::set<std::pair<std::int64_t, std::uint64_t>> deadlines;
  std::int64_t armedAt = 0;
  // dispatchOnce(): the outboxes' data words armed for one park (whoever holds `gate`; reused).
  std::vector<WaitWord*> armed;
  std::uint64_t nextRoute = 1;
  std::unordered_map<std::uint64_t, std::unordered_set<std::uint64_t>> policies;
  std::unordered_map<std::uint64_t, std::int64_t> channelTimeoutMs;
  std::unordered_map<std::uint64_t, ChannelCounters> counters;
  std::uint64_t lateReplies = 0, spoofedReplies = 0, undeliverable = 0, badMessages = 0;
  std::vector<pid_t> children;

  std::shared_ptr<CallbackTable> callbacks = std::make_shared<CallbackTable>();
  std::recursive_mutex gate;
  std::atomic<bool> stopping{false};
  std::thread dispatcher;

  // ---- logging

  template <typename... A>
  void log(LogLevel level, fmt::format_string<A...> f, A&&... a) const {
    if (static_cast<int>(level) > static_cast<int>(opts.logLevel)) return;
    static const char* kNames[] = {"", "error", "warn", "info", "debug"};
    fmt::print(stderr, "shmbus[{}] {}: {}\n", opts.bus, kNames[static_cast<int>(level)],
               fmt::format(f, std::forward<A>(a)...));
  }

  /// Name of channel `id`: a verified one (interned names that hash to their id, or the main
  /// process's own), else the name window `callerId` gave it itself (for messages to that window),
  /// else its id in hex.
  std::string nameOf(std::uint64_t id, std::uint32_t callerId = 0) const {
    auto it = names.find(id);
    if (it != names.end()) return it->second;
    auto n = callbacks->name(id);
    if (!n.empty()) return n;
    if (auto c = conns.find(callerId); callerId != 0 && c != conns.end()) {
      if (auto own = c->second->ownNames.find(id); own != c->second->ownNames.end()) return own->second;
    }
    return fmt::format("#{:016x}", id);
  }

  std::string describe(const Conn& c) const { return fmt::format("role '{}' (window {})", c.role, c.id); }

  // ---- registry

  Conn* live(std::uint32_t id) {
    auto it = conns.find(id);
    if (it == conns.end() || it->second->state != Conn::State::Live || !it->second->doomed.empty()) return nullptr;
    return it->second.get();
  }

  Conn* resolve(std::uint32_t target, std::uint64_t roleId) {
    if (target != kTargetByRole) return live(target);
    for (auto& [id, c] : conns) {
      if (c->roleId == roleId && c->state == Conn::State::Live && c->doomed.empty()) return c.get();
    }
    return nullptr;
  }

  Conn* resolve(const Target& t) { return t.role.empty() ? live(t.windowId) : resolve(kTargetByRole, nameId(t.role)); }

  std::string describeTarget(std::uint32_t target, std::uint64_t roleId) const {
    if (target == kTargetByRole) return fmt::format("role '{}'", nameOf(roleId));
    return fmt::format("window {}", target);
  }

  // ---- control plane

  void epollAdd(int fd, std::uint64_t t) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = t;
    ::epoll_ctl(epollFd.get(), EPOLL_CTL_ADD, fd, &ev);
  }

  Conn& addConn(Fd sock, std::string role, pid_t pid, bool spawned) {
    auto c = std::make_unique<Conn>();
    c->id = nextId++;
    c->role = std::move(role);
    c->pid = pid;
    c->spawned = spawned;
    c->sock = std::move(sock);
    Conn& ref = *c;
    epollAdd(ref.sock.get(), tag(kTagConn, ref.id));
    conns.emplace(ref.id, std::move(c));
    return ref;
  }

  void acceptAll() {
    for (;;) {
      Fd fd(::accept4(listenFd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) return;
      auto cred = peerCred(fd.get());
      if (!cred || cred->uid != ::getuid()) {
        log(LogLevel::Warn, "refused a connection from uid {}", cred ? static_cast<long>(cred->uid) : -1L);
        continue;
      }
      addConn(std::move(fd), "", cred->pid, false);
    }
  }

  void sendWelcomeError(Conn& c, const Error& e) {
    capnp::MallocMessageBuilder mb;
    auto w = mb.initRoot<schema::Welcome>();
    w.setOk(false);
    auto info = w.initError();
    info.setCode(static_cast<std::uint16_t>(e.code));
    info.setMessage(e.message);
    sendControl(c, ControlType::Welcome, 0, &mb, -1);
  }

  void sendControl(Conn& c, ControlType type, std::uint64_t value, capnp::MessageBuilder* mb, int fd) {
    std::vector<std::uint8_t> pkt(sizeof(ControlHeader));
    ControlHeader h{static_cast<std::uint32_t>(type), 0, value};
    std::memcpy(pkt.data(), &h, sizeof h);
    if (mb != nullptr) {
      auto words = capnp::messageToFlatArray(*mb);
      auto bytes = words.asBytes();
      pkt.insert(pkt.end(), bytes.begin(), bytes.end());
    }
    std::vector<int> fds;
    if (fd >= 0) fds.push_back(fd);
    (void)sendPacket(c.sock.get(), pkt.data(), pkt.size(), fds);
  }

  static bool validRole(std::string_view r) {
    if (r.empty() || r.size() > 64) return false;
    return std::all_of(r.begin(), r.end(), [](char ch) { return ch > ' ' && ch < 127; });
  }

  void onHello(Conn& c, const Packet& pkt) {
    if (c.state != Conn::State::AwaitHello) return doom(c, "a second hello", true);
    std::vector<capnp::word> words((pkt.bytes.size() - sizeof(ControlHeader)) / sizeof(capnp::word));
    std::memcpy(words.data(), pkt.bytes.data() + sizeof(ControlHeader), words.size() * sizeof(capnp::word));
    std::string role;
    std::uint32_t inCap = opts.inboxBytes, outCap = opts.outboxBytes;
    try {
      capnp::ReaderOptions ro;
      ro.traversalLimitInWords = 4096;
      capnp::FlatArrayMessageReader reader(kj::arrayPtr(words.data(), words.size()), ro);
      auto hello = reader.getRoot<schema::Hello>();
      role = hello.getRole();
      if (hello.getInboxBytes() != 0) inCap = hello.getInboxBytes();
      if (hello.getOutboxBytes() != 0) outCap = hello.getOutboxBytes();
    } catch (const kj::Exception& e) {
      return doom(c, std::string("malformed hello: ") + e.getDescription().cStr(), true);
    }
    if (!c.spawned) {
      if (!validRole(role)) {
        sendWelcomeError(c, makeError(ErrorCode::Denied, fmt::format("role '{}' is not a valid role name", role)));
        return doom(c, "invalid role", false);
      }
      // "main" names the main process in every context (CallContext::sourceRole, frames'
      // role ids): a window claiming it by path would pass for the supervisor to a handler that
      // checks the caller's role. No window may claim it by path, whatever allowedRoles says; the
      // application's own main window (DESIGN.md §1, Electron's mainWindow registered as 'main')
      // gets it only through spawn(), which the supervisor itself authenticates.
      if (role == kMainRole) {
        sendWelcomeError(c, makeError(ErrorCode::Denied, fmt::format("role '{}' is reserved for the main process of "
                                                                     "bus '{}'", role, opts.bus)));
        log(LogLevel::Warn, "denied role '{}' (pid {}): reserved", role, c.pid);
        return doom(c, "denied", false);
      }
      if (!opts.allowedRoles.empty() &&
          std::find(opts.allowedRoles.begin(), opts.allowedRoles.end(), role) == opts.allowedRoles.end()) {
        sendWelcomeError(c, makeError(ErrorCode::Denied, fmt::format("role '{}' may not connect to bus '{}' by path "
                                                                     "(allowed: {})", role, opts.bus,
                                                                     fmt::join(opts.allowedRoles, ", "))));
        log(LogLevel::Warn, "denied role '{}' (pid {})", role, c.pid);
        return doom(c, "denied", false);
      }
      c.role = role;
    }
    c.roleId = nameId(c.role);
    if (!isPowerOfTwo(inCap) || inCap < 4096 || inCap > (64u << 20) || !isPowerOfTwo(outCap) || outCap < 4096 ||
        outCap > (64u << 20)) {
      sendWelcomeError(c, makeError(ErrorCode::InvalidMessage,
                                    fmt::format("ring sizes {} / {} bytes must be powers of two in [4 KiB, 64 MiB]",
                                                inCap, outCap)));
      return doom(c, "bad ring sizes", false);
    }
    const std::uint32_t maxRecord = std::min<std::uint32_t>(opts.maxRecordBytes, std::min(inCap, outCap) / 2);
    const std::size_t inOff = sizeof(SegmentHeader);
    const std::size_t outOff = inOff + ringFootprint(inCap);
    const std::size_t total = outOff + ringFootprint(outCap);
    c.segName = Segment::makeName(opts.bus, c.id);
    auto seg = Segment::create(c.segName, total);
    if (!seg) {
      sendWelcomeError(c, seg.error());
      c.segName.clear();
      return doom(c, seg.error().message, false);
    }
    c.seg = std::make_shared<Segment>(std::move(*seg));
    std::uint8_t* base = c.seg->base();
    c.inbox = RingProducer(reinterpret_cast<RingControl*>(base + inOff), base + inOff + sizeof(RingControl),
                           RingGeometry{inCap, maxRecord}, /*zeroOnClaim=*/true);
    c.outbox = RingConsumer(reinterpret_cast<RingControl*>(base + outOff), base + outOff + sizeof(RingControl),
                            RingGeometry{outCap, maxRecord});
    capnp::MallocMessageBuilder mb;
    auto w = mb.initRoot<schema::Welcome>();
    w.setOk(true);
    w.setWindowId(c.id);
    w.setRole(c.role);
    w.setSegmentName(c.segName);
    w.setSegmentBytes(total);
    w.setInboxOffset(inOff);
    w.setInboxCapacity(inCap);
    w.setOutboxOffset(outOff);
    w.setOutboxCapacity(outCap);
    w.setMaxRecord(maxRecord);
    w.setBusName(opts.bus);
    sendControl(c, ControlType::Welcome, 0, &mb, doorbellFd.get());
    c.state = Conn::State::AwaitMapped;
  }

  void onMapped(Conn& c) {
    if (c.state != Conn::State::AwaitMapped) return doom(c, "unexpected mapped", true);
    Segment::unlink(c.segName);
    c.segName.clear();
    c.state = Conn::State::Live;
    names.emplace(c.roleId, c.role);
    log(LogLevel::Info, "window {} connected: role '{}', pid {}{}", c.id, c.role, c.pid, c.spawned ? " (spawned)" : "");
    emitWindowEvent(kWindowOpened, c, "");
    registryCv.notify_all();
  }

  void onConnReadable(std::uint32_t id) {
    auto it = conns.find(id);
    if (it == conns.end()) return;
    Conn& c = *it->second;
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

  void doom(Conn& c, std::string reason, bool bad) {
    if (c.doomed.empty()) {
      c.doomed = std::move(reason);
      c.bad = bad;
    }
  }

  void reapDoomed() {
    std::vector<std::uint32_t> ids;
    for (auto& [id, c] : conns) {
      if (!c->doomed.empty() && c->pinDepth == 0) ids.push_back(id);
    }
    for (auto id : ids) {
      auto it = conns.find(id);
      // A window that closed (not one that misbehaved) gets what it wrote before closing
      // delivered first: sends and replies committed before the hang-up are never lost.
      if (it != conns.end() && !it->second->bad && it->second->state == Conn::State::Live) drainClosing(*it->second);
      disconnect(id);
    }
  }

  void drainClosing(Conn& c) {
    for (std::size_t n = 0; n < (1u << 20); ++n) {
      auto r = c.outbox.tryRead();
      if (!r || !*r) break;
      const std::string reason = std::exchange(c.doomed, std::string());  // live while it drains
      process(c, **r);
      if (c.doomed.empty()) c.doomed = reason;
      if (c.bad) break;
    }
    c.outbox.releaseAll();
  }

  /// Removes a window: every call pending on it fails with TargetGone, calls it made are
  /// cancelled at their targets, its segment is unmapped and any name unlinked, and listeners
  /// of "window-closed" hear of it (DESIGN.md §5).
  void disconnect(std::uint32_t id) {
    auto it = conns.find(id);
    if (it == conns.end()) return;
    std::unique_ptr<Conn> c = std::move(it->second);
    conns.erase(it);
    const bool wasLive = c->state == Conn::State::Live;
    if (c->bad) {
      ++badMessages;
      log(LogLevel::Warn, "disconnected {}: bad message: {}", describe(*c), c->doomed);
    } else {
      log(LogLevel::Info, "window {} ({}) disconnected: {}", c->id, c->role, c->doomed);
    }
    ::epoll_ctl(epollFd.get(), EPOLL_CTL_DEL, c->sock.get(), nullptr);
    if (!c->segName.empty()) Segment::unlink(c->segName);
    std::vector<std::uint64_t> routes;
    for (auto& [rid, p] : pending) {
      if (p.targetId == id || p.callerId == id) routes.push_back(rid);
    }
    for (auto rid : routes) {
      Pending p = takePending(rid);
      if (p.targetId == id) {
        failCaller(p, makeError(ErrorCode::TargetGone,
                                fmt::format("invoke '{}' to {}: the target {} before replying ({})",
                                            nameOf(p.channel, p.callerId), describe(*c),
                                            c->bad ? "was disconnected" : "closed", c->doomed)));
      } else {
        sendCancel(p.targetId, p.routeId);
      }
    }
    if (c->spawned) children.push_back(c->pid);
    reapChildren();
    c->sock.reset();
    c->seg.reset();
    if (wasLive) {
      std::string reason = c->bad ? "bad message: " + c->doomed : c->doomed;
      emitWindowEvent(kWindowClosed, *c, reason);
    }
    registryCv.notify_all();
  }

  void reapChildren() {
    children.erase(std::remove_if(children.begin(), children.end(),
                                  [](pid_t p) { return ::waitpid(p, nullptr, WNOHANG) != 0; }),
                   children.end());
  }

  void emitWindowEvent(std::string_view channel, const Conn& c, const std::string& reason) {
    const std::uint64_t ch = nameId(channel);
    BuildFn build = [&](Builder& b) {
      auto e = b.initRoot<schema::WindowEvent>();
      e.setWindowId(c.id);
      e.setRole(c.role);
      e.setPid(c.pid);
      e.setReason(reason);
    };
    for (auto& [id, other] : conns) {
      if (other.get() == &c || other->state != Conn::State::Live || !other->listens.count(ch)) continue;
      FrameHeader h{};
      h.kind = static_cast<std::uint16_t>(FrameKind::Send);
      h.channel = ch;
      h.role = nameId("main");
      (void)writeFrame(other->inbox, h, build, 512);
    }
    // Main-process listeners get it too (read from a scratch copy).
    auto listeners = callbacks->takeListeners(ch);
    if (listeners.empty()) return;
    capnp::MallocMessageBuilder mb;
    build(mb);
    auto flat = capnp::messageToFlatArray(mb);
    (void)flat;
    // Re-encode into our table layout for a uniform Message.
    auto segs = mb.getSegmentsForOutput();
    std::vector<std::uint8_t> bytes(sizeof(MessageTable));
    MessageTable t{};
    t.segmentCount = static_cast<std::uint32_t>(std::min<std::size_t>(segs.size(), kMaxSegments));
    for (std::uint32_t i = 0; i < t.segmentCount; ++i) {
      t.segmentWords[i] = static_cast<std::uint32_t>(segs[i].size());
      auto b = segs[i].asBytes();
      bytes.insert(bytes.end(), b.begin(), b.end());
    }
    std::memcpy(bytes.data(), &t, sizeof t);
    auto held = copyMessage(bytes.data(), bytes.size());
    if (!held) return;
    Message m(*held, 0);
    CallContext ctx;
    ctx.sourceWindowId = c.id;
    ctx.sourceRole = c.role;
    ctx.channel = channel;
    ctx.channelId = ch;
    for (auto& l : listeners) runListener(*l, m, ctx);
  }

  void runListener(ListenerSlot& l, const Message& m, const CallContext& ctx) {
    try {
      l.fn(m, ctx);
    } catch (const std::exception& e) {
      log(LogLevel::Error, "listener for '{}' threw: {}", ctx.channel, e.what());
    } catch (const kj::Exception& e) {
      log(LogLevel::Error, "listener for '{}' threw: {}", ctx.channel, e.getDescription().cStr());
    }
  }

  // ---- pending calls and deadlines

  void armTimer() {
    const std::int64_t first = deadlines.empty() ? 0 : deadlines.begin()->first;
    if (first == armedAt) return;
    armedAt = first;
    itimerspec its{};
    if (first != 0) {
      its.it_value.tv_sec = first / 1'000'000'000;
      its.it_value.tv_nsec = first % 1'000'000'000;
      if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    }
    ::timerfd_settime(timerFd.get(), TFD_TIMER_ABSTIME, &its, nullptr);
  }

  std::uint64_t addPending(Pending p) {
    p.routeId = nextRoute++;
    deadlines.emplace(p.deadline, p.routeId);
    if (p.callerId != 0) byCaller[{p.callerId, p.callerReq}] = p.routeId;
    const auto rid = p.routeId;
    pending.emplace(rid, std::move(p));
    armTimer();
    return rid;
  }

  Pending takePending(std::uint64_t rid) {
    auto it = pending.find(rid);
    Pending p = std::move(it->second);
    pending.erase(it);
    deadlines.erase({p.deadline, rid});
    if (p.callerId != 0) byCaller.erase({p.callerId, p.callerReq});
    armTimer();
    return p;
  }

  void countError(std::uint64_t channel, ErrorCode code) { ++counters[channel].errors[code]; }

  /// Delivers an error to whoever made the call (a window's inbox, or a main-process Call).
  void failCaller(const Pending& p, Error e) {
    countError(p.channel, e.code);
    if (p.state) {
      completeCall(p.state, std::move(e));
      return;
    }
    Conn* caller = live(p.callerId);
    if (caller == nullptr) return;
    FrameHeader h{};
    h.channel = p.channel;
    h.requestId = p.callerReq;
    auto r = writeToWindow(*caller, [&] { return writeErrorFrame(caller->inbox, h, e); });
    // The caller's own fallback timer ends the call if its inbox cannot take the error now.
    if (!r) log(LogLevel::Warn, "could not deliver '{}' to window {}: {}", e.toString(), p.callerId, r.error().message);
  }

  void sendCancel(std::uint32_t targetId, std::uint64_t routeId) {
    auto it = conns.find(targetId);
    if (it != conns.end() && it->second->state == Conn::State::Live) {
      sendControl(*it->second, ControlType::Cancel, routeId, nullptr, -1);
    }
  }

  Error timeoutError(const Pending& p) {
    Conn* t = live(p.targetId);
    const std::string target = t ? describe(*t) : fmt::format("window {}", p.targetId);
    return makeError(ErrorCode::Timeout, fmt::format("invoke '{}' to {} timed out after {} ms",
                                                     nameOf(p.channel, p.callerId), target, p.timeoutMs));
  }

  void expireDeadlines() {
    std::uint64_t expirations = 0;
    [[maybe_unused]] auto n = ::read(timerFd.get(), &expirations, sizeof expirations);
    const std::int64_t now = monotonicNowNs();
    while (!deadlines.empty() && deadlines.begin()->first <= now) {
      Pending p = takePending(deadlines.begin()->second);
      failCaller(p, timeoutError(p));
      sendCancel(p.targetId, p.routeId);
    }
    armedAt = -1;
    armTimer();
  }

  /// Runs `write` against `target`'s inbox; a corrupt inbox dooms the target (its own fault).
  template <typename W>
  Result<void> writeToWindow(Conn& target, W&& write) {
    auto r = write();
    if (!r && r.code() == ErrorCode::Corrupt) {
      doom(target, "inbox corrupt: " + r.error().message, true);
      return makeError(ErrorCode::TargetGone, fmt::format("{} was disconnected: {}", describe(target), r.error().message));
    }
    if (!r && r.code() == ErrorCode::Full) {
      return makeError(ErrorCode::Full, fmt::format("the inbox of {} is full", describe(target)));
    }
    return r;
  }

  void internRole(Conn& target, std::uint64_t roleId) {
    if (target.knownRoles.count(roleId)) return;
    auto it = names.find(roleId);
    if (it == names.end()) return;
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(FrameKind::Intern);
    h.channel = roleId;
    auto r = writeFrame(target.inbox, h, [&](Builder& b) {
      auto i = b.initRoot<schema::Intern>();
      i.setId(roleId);
      i.setName(it->second);
      i.setIsRole(true);
    }, 256, false);
    if (r) target.knownRoles.insert(roleId);
  }

  bool allowed(std::uint64_t channel, std::uint64_t roleId) const {
    auto it = policies.find(channel);
    return it == policies.end() || it->second.empty() || it->second.count(roleId) != 0;
  }

  std::int64_t deadlineFor(const FrameHeader& h, std::int64_t now, std::int64_t& timeoutMs) const {
    if (h.deadlineNs != 0) {
      // The caller's own figure when it sent one (what it waited since it called, not since the
      // frame got here); else what is left of it.
      timeoutMs = h.status != 0 ? static_cast<std::int64_t>(h.status)
                                : std::max<std::int64_t>(0, (h.deadlineNs - now + 500'000) / 1'000'000);
      return h.deadlineNs;
    }
    auto it = channelTimeoutMs.find(h.channel);
    timeoutMs = it != channelTimeoutMs.end() ? it->second : kDefaultTimeout.count();
    return now + timeoutMs * 1'000'000;
  }

  // ---- frames from windows

  void replyError(Conn& w, const FrameHeader& req, Error e) {
    countError(req.channel, e.code);
    FrameHeader h{};
    h.channel = req.channel;
    h.requestId = req.requestId;
    (void)writeToWindow(w, [&] { return writeErrorFrame(w.inbox, h, e); });
  }

  void process(Conn& w, const RecordView& rec) {
    auto f = parseFrame(rec);
    if (!f) return doom(w, f.error().message, true);
    const FrameHeader& h = f->header;
    switch (static_cast<FrameKind>(h.kind)) {
      case FrameKind::Intern: return onIntern(w, *f);
      case FrameKind::HandlerAdd:
        w.handled.insert(h.channel);
        registryCv.notify_all();
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

  void onIntern(Conn& w, const FrameView& f) {
    InPlaceMessage m;
    if (auto r = m.parse(f.payload, f.payloadBytes); !r || m.empty()) return doom(w, "malformed intern frame", true);
    try {
      auto i = m.reader().getRoot<schema::Intern>();
      std::string name = i.getName();
      if (name.size() > 256) return doom(w, "intern name longer than 256 bytes", true);
      const std::uint64_t expect = nameId(name);
      if (i.getId() != expect) {
        // Typed channel ids do not hash from their names: keep the name for this window's own
        // messages only (see Conn::ownNames).
        if (!i.getIsRole() && statLabels.size() < kMaxNames) statLabels.emplace(i.getId(), name);
        if (!i.getIsRole() && w.ownNames.size() < kMaxOwnNames) w.ownNames.emplace(i.getId(), std::move(name));
        return;
      }
      if (names.size() < kMaxNames) names.emplace(i.getId(), std::move(name));
    } catch (const kj::Exception& e) {
      doom(w, std::string("malformed intern frame: ") + e.getDescription().cStr(), true);
    }
  }

  void onSend(Conn& w, const FrameView& f) {
    const FrameHeader& h = f.header;
    if (!allowed(h.channel, w.roleId)) {
      ++undeliverable;
      countError(h.channel, ErrorCode::Denied);
      log(LogLevel::Warn, "denied send '{}' from {}", nameOf(h.channel), describe(w));
      return;
    }
    if (h.target == kTargetMain) {
      auto listeners = callbacks->takeListeners(h.channel);
      ++counters[h.channel].messages;
      if (listeners.empty()) {
        ++undeliverable;
        log(LogLevel::Debug, "send '{}' from {} has no listener", nameOf(h.channel), describe(w));
        return;
      }
      InPlaceMessage m;
      if (auto r = m.parse(f.payload, f.payloadBytes); !r) return doom(w, r.error().message, true);
      CallContext ctx;
      ctx.sourceWindowId = w.id;
      ctx.sourceRole = w.role;
      const std::string chName = nameOf(h.channel);
      ctx.channel = chName;
      ctx.channelId = h.channel;
      Message msg(&m, h.schemaId);
      for (auto& l : listeners) runListener(*l, msg, ctx);
      return;
    }
    Conn* t = resolve(h.target, h.role);
    if (t == nullptr) {
      ++undeliverable;
      countError(h.channel, ErrorCode::NoTarget);
      log(LogLevel::Warn, "send '{}' from {}: no live window with {}", nameOf(h.channel), describe(w),
          describeTarget(h.target, h.role));
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
      ++undeliverable;
      countError(h.channel, r.code());
      log(LogLevel::Warn, "send '{}' from {} to {} dropped: {}", nameOf(h.channel), describe(w), describe(*t),
          r.error().message);
      return;
    }
    ++counters[h.channel].messages;
  }

  void onInvoke(Conn& w, const FrameView& f) {
    const FrameHeader& h = f.header;
    if (byCaller.count({w.id, h.requestId}) != 0) return doom(w, "request id reused while pending", true);
    ++counters[h.channel].calls;
    const std::int64_t now = monotonicNowNs();
    if (!allowed(h.channel, w.roleId)) {
      return replyError(w, h, makeError(ErrorCode::Denied, fmt::format("invoke '{}' from {}: denied by policy",
                                                                       nameOf(h.channel, w.id), describe(w))));
    }
    if (h.target == kTargetMain) return invokeMain(w, f, now);
    Conn* t = resolve(h.target, h.role);
    if (t == nullptr) {
      return replyError(w, h, makeError(ErrorCode::NoTarget, fmt::format("invoke '{}': no live window with {}",
                                                                         nameOf(h.channel, w.id),
                                                                         describeTarget(h.target, h.role))));
    }
    if (t->handled.count(h.channel) == 0) {
      return replyError(w, h, makeError(ErrorCode::NoHandler, fmt::format("invoke '{}' to {}: no handler",
                                                                          nameOf(h.channel, w.id), describe(*t))));
    }
    Pending p;
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
    const std::uint64_t rid = addPending(std::move(p));
    out.requestId = rid;
    internRole(*t, w.roleId);
    auto r = writeToWindow(*t, [&] { return writeFrameCopy(t->inbox, out, f.payload, f.payloadBytes); });
    if (!r) {
      Pending gone = takePending(rid);
      failCaller(gone, Error{r.code(), fmt::format("invoke '{}' to {}: {}", nameOf(h.channel, w.id), describe(*t),
                                                   r.error().message)});
    }
  }

  void invokeMain(Conn& w, const FrameView& f, std::int64_t now) {
    const FrameHeader& h = f.header;
    const std::string chName = nameOf(h.channel, w.id);
    auto slot = callbacks->handler(h.channel);
    const std::string what = fmt::format("invoke '{}' to main", chName);
    if (!slot) return replyError(w, h, makeError(ErrorCode::NoHandler, what + ": no handler"));
    if (slot->schemaId != 0 && h.schemaId != 0 && slot->schemaId != h.schemaId) {
      return replyError(w, h, makeError(ErrorCode::InvalidMessage,
                                        fmt::format("{}: request schema {:016x} does not match the handler's {:016x}",
                                                    what, h.schemaId, slot->schemaId)));
    }
    InPlaceMessage m;
    if (auto r = m.parse(f.payload, f.payloadBytes); !r) {
      return replyError(w, h, Error{ErrorCode::InvalidMessage, what + ": " + r.error().message});
    }
    CallContext ctx;
    ctx.sourceWindowId = w.id;
    ctx.sourceRole = w.role;
    ctx.channel = chName;
    ctx.channelId = h.channel;
    ctx.requestId = h.requestId;
    std::int64_t timeoutMs = 0;
    ctx.deadlineNs = deadlineFor(h, now, timeoutMs);
    capnp::MallocMessageBuilder reply;
    std::optional<Error> err;
    try {
      slot->fn(Message(&m, h.schemaId), reply, ctx);
    } catch (...) {
      err = handlerError(what, std::current_exception());
    }
    const std::int64_t done = monotonicNowNs();
    counters[h.channel].sample(static_cast<double>(done - now) / 1e6);
    if (done >= ctx.deadlineNs) {
      // The handler outran the caller's deadline: the call has timed out (DESIGN.md §3), and
      // what it produced is a late reply, dropped and counted.
      ++lateReplies;
      ++counters[h.channel].late;
      return replyError(w, h, makeError(ErrorCode::Timeout, fmt::format("{} timed out after {} ms", what, timeoutMs)));
    }
    if (err) return replyError(w, h, std::move(*err));
    FrameHeader r{};
    r.kind = static_cast<std::uint16_t>(FrameKind::Reply);
    r.channel = h.channel;
    r.requestId = h.requestId;
    r.schemaId = slot->replySchemaId;
    auto segs = reply.getSegmentsForOutput();
    auto wr = writeToWindow(w, [&] { return writeFrameSegments(w.inbox, r, segs); });
    if (!wr) replyError(w, h, Error{wr.code(), what + ": the reply could not be written: " + wr.error().message});
  }

  void onReply(Conn& w, const FrameView& f) {
    const FrameHeader& h = f.header;
    auto it = pending.find(h.requestId);
    if (it == pending.end()) {
      ++lateReplies;
      ++counters[h.channel].late;
      return;
    }
    if (it->second.targetId != w.id) {
      ++spoofedReplies;
      log(LogLevel::Warn, "dropped a reply to route {} from {}: the call was routed to window {}", h.requestId,
          describe(w), it->second.targetId);
      return;
    }
    const std::int64_t now = monotonicNowNs();
    if (now >= it->second.deadline) {
      // The deadline passed before this reply was read (the timer had not had its turn yet): the
      // call has timed out all the same, and the reply is late (DESIGN.md §3). The target has
      // answered, so it needs no Cancel.
      Pending p = takePending(h.requestId);
      ++lateReplies;
      ++counters[p.channel].late;
      return failCaller(p, timeoutError(p));
    }
    Pending p = takePending(h.requestId);
    auto& cc = counters[p.channel];
    cc.sample(static_cast<double>(now - p.start) / 1e6);
    const bool isError = h.kind == static_cast<std::uint16_t>(FrameKind::Error);
    if (p.state) {  // a call made by the main process
      auto held = copyMessage(f.payload, f.payloadBytes);
      if (!held) return (void)failCaller(p, held.error());
      if (isError) return failCaller(p, decodeError(h, (*held)->msg));
      completeCall(p.state, Message(std::move(*held), h.schemaId));
      return;
    }
    if (isError) countError(p.channel, static_cast<ErrorCode>(h.status));
    Conn* caller = live(p.callerId);
    if (caller == nullptr) return;
    FrameHeader out = h;
    out.source = w.id;
    out.role = w.roleId;
    out.target = caller->id;
    out.requestId = p.callerReq;
    auto r = writeToWindow(*caller, [&] { return writeFrameCopy(caller->inbox, out, f.payload, f.payloadBytes); });
    if (!r) {
      Error e{r.code(), fmt::format("invoke '{}' to {}: the reply could not be delivered: {}",
                                    nameOf(p.channel, p.callerId), describe(w), r.error().message)};
      failCaller(p, std::move(e));
    }
  }

  void onCancel(Conn& w, const FrameHeader& h) {
    auto it = byCaller.find({w.id, h.requestId});
    if (it == byCaller.end()) return;
    Pending p = takePending(it->second);
    countError(p.channel, ErrorCode::Cancelled);
    sendCancel(p.targetId, p.routeId);
  }

  // ---- dispatch

  std::size_t drain() {
    std::size_t total = 0;
    for (auto& [id, c] : conns) {
      if (c->state != Conn::State::Live || !c->doomed.empty()) continue;
      int n = 0;
      while (n < kBatch && c->doomed.empty()) {
        auto r = c->outbox.tryRead();
        if (!r) {
          doom(*c, r.error().message, true);
          break;
        }
        if (!*r) break;
        if (c->pinDepth++ == 0) c->pinPos = (*r)->pos;
        process(*c, **r);
        --c->pinDepth;
        ++n;
      }
      // Batch release (one head publication per batch); never past a record still in progress.
      if (n > 0) c->pinDepth > 0 ? c->outbox.releaseTo(c->pinPos) : c->outbox.releaseAll();
      total += static_cast<std::size_t>(n);
    }
    reapDoomed();
    return total;
  }

  bool anyData() {
    for (auto& [id, c] : conns) {
      if (c->state == Conn::State::Live && c->outbox.hasData()) return true;
    }
    return false;
  }

  /// One dispatch round: drains every outbox; when there was nothing, spins briefly, then parks
  /// in epoll (sockets, doorbell, deadline timer) until something happens or `deadline`.
  void dispatchOnce(std::int64_t deadline) {
    std::unique_lock lk(mu);
    if (drain() > 0) return;
    if (spin.spin.count() > 0) {
      const std::int64_t end = monotonicNowNs() + spin.spin.count();
      while (monotonicNowNs() < end) {
        if (anyData()) return;
        cpuRelax();
      }
    }
    armed.clear();  // reused: no allocation per park once it has grown
    for (auto& [id, c] : conns) {
      if (c->state != Conn::State::Live) continue;
      // SYNC POINT W (wait.hpp): seq_cst RMW pairs with notify() in the window.
      c->outbox.control()->dataReady.waiters.fetch_add(1, std::memory_order_seq_cst);
      armed.push_back(&c->outbox.control()->dataReady);
    }
    // SYNC POINT W, the waiter's half for every armed outbox at once (one membarrier call).
    const bool newMark = waiterBarrier(armed.data(), armed.size());
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
    if (!ready && !stopping.load(std::memory_order_acquire)) {
      lk.unlock();  // let other threads send while we sleep
      n = ::epoll_wait(epollFd.get(), evs, 32, timeoutMs);
      lk.lock();
    }
    for (WaitWord* word : armed) {
      // relaxed: a hint for notifiers; a stale value costs one spurious doorbell write. Only this
      // thread disconnects windows, and not before this loop, so every block is still mapped.
      word->waiters.fetch_sub(1, std::memory_order_relaxed);
    }
    for (int i = 0; i < n; ++i) {
      const auto t = static_cast<EpollTag>(evs[i].data.u64 >> 32);
      const auto id = static_cast<std::uint32_t>(evs[i].data.u64 & 0xffffffffu);
      switch (t) {
        case kTagListen: acceptAll(); break;
        case kTagDoorbell: {
          std::uint64_t v;
          [[maybe_unused]] auto r = ::read(doorbellFd.get(), &v, sizeof v);
          break;
        }
        case kTagTimer: expireDeadlines(); break;
        case kTagWake: {
          std::uint64_t v;
          [[maybe_unused]] auto r = ::read(wakeFd.get(), &v, sizeof v);
          break;
        }
        case kTagConn: onConnReadable(id); break;
      }
    }
    reapDoomed();
    drain();
  }

  /// Dispatches (or, when another thread dispatches, waits on the registry) until a live window
  /// with `role` exists (that handles `channel`, when given) or `timeout` passes.
  Result<WindowInfo> waitForWindow(const std::string& role, const Channel* channel, std::chrono::milliseconds timeout) {
    const std::int64_t deadline = monotonicNowNs() + std::chrono::nanoseconds(timeout).count();
    const std::uint64_t roleId = nameId(role);
    for (;;) {
      {
        std::lock_guard lk(mu);
        for (auto& [id, c] : conns) {
          if (c->roleId != roleId || c->state != Conn::State::Live || !c->doomed.empty()) continue;
          if (channel != nullptr && c->handled.count(channel->id) == 0) continue;
          return WindowInfo{c->id, c->role, c->pid, c->spawned};
        }
      }
      if (monotonicNowNs() >= deadline) {
        return makeError(ErrorCode::Timeout,
                         channel == nullptr
                             ? fmt::format("no window with role '{}' registered within {} ms", role, timeout.count())
                             : fmt::format("no window with role '{}' handles '{}' within {} ms", role, channel->name,
                                           timeout.count()));
      }
      if (gate.try_lock()) {
        dispatchOnce(deadline);
        gate.unlock();
      } else {
        std::unique_lock lk(mu);
        registryCv.wait_for(lk, std::chrono::milliseconds(10));
      }
    }
  }

  Result<Message> waitFor(const std::shared_ptr<CallState>& s) override {
    for (;;) {
      {
        std::lock_guard lk(s->mu);
        if (s->result) return *s->result;
      }
      if (gate.try_lock()) {
        while (!stopping.load(std::memory_order_acquire)) {
          {
            std::lock_guard lk(s->mu);
            if (s->result) break;
          }
          dispatchOnce(kNoDeadline);
        }
        gate.unlock();
        std::lock_guard lk(s->mu);
        if (s->result) return *s->result;
        return makeError(ErrorCode::BusClosed, s->what + ": the supervisor stopped");
      }
      // Another thread dispatches: wait for the result, re-checking now and then in case that
      // thread stops dispatching (then this thread takes over).
      const std::int64_t left = s->deadlineNs - monotonicNowNs();
      {
        std::unique_lock lk(s->mu);
        const auto slice = std::chrono::nanoseconds(std::clamp<std::int64_t>(left, 0, 10'000'000));
        if (s->cv.wait_for(lk, slice, [&] { return s->result.has_value(); })) return *s->result;
      }
      // The dispatching thread may be the reason no answer comes (stuck in a handler that waits
      // for this thread: a cycle whose return leg cannot run). End the wait at the deadline
      // without the router lock that thread may hold; the pending entry expires there later
      // (its completion is then a no-op).
      if (s->deadlineNs != 0 && left <= 0) {
        completeCall(s, makeError(ErrorCode::Timeout, s->what + " timed out (the dispatching thread never got to "
                                                                "the answer)"));
      }
    }
  }

  void cancel(const std::shared_ptr<CallState>& s) override {
    std::lock_guard lk(mu);
    for (auto& [rid, p] : pending) {
      if (p.state == s) {
        Pending gone = takePending(rid);
        sendCancel(gone.targetId, gone.routeId);
        countError(gone.channel, ErrorCode::Cancelled);
        break;
      }
    }
    completeCall(s, makeError(ErrorCode::Cancelled, s->what + ": cancelled by the caller"));
  }

  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(wakeFd.get(), &one, sizeof one);
  }

  void stop() {
    if (stopping.exchange(true)) {
      if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
      return;
    }
    wake();
    if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
    std::lock_guard lk(mu);
    for (auto& [id, c] : conns) doom(*c, "the supervisor stopped", false);
    reapDoomed();
    std::vector<std::uint64_t> left;
    for (auto& [rid, p] : pending) left.push_back(rid);
    for (auto rid : left) {
      Pending p = takePending(rid);
      failCaller(p, makeError(ErrorCode::BusClosed, fmt::format("invoke '{}': the supervisor stopped", nameOf(p.channel))));
    }
    ::unlink(path.c_str());
    listenFd.reset();
    // Spawned windows saw their socket hang up (BusClosed) and should exit; give each
    // kSpawnedExitGraceMs to do so, then kill it: a spawned window belongs to its supervisor.
    for (pid_t pid : children) {
      Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
      if (pidfd) {
        pollfd p{pidfd.get(), POLLIN, 0};
        if (::poll(&p, 1, kSpawnedExitGraceMs) == 0) {
          log(LogLevel::Warn, "spawned window pid {} did not exit {} ms after the bus closed: killing it", pid,
              kSpawnedExitGraceMs);
          ::kill(pid, SIGKILL);
        }
      }
      ::waitpid(pid, nullptr, 0);
    }
    children.clear();
  }
};

// ---------------------------------------------------------------------------------------------

Supervisor::Supervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Supervisor::~Supervisor() {
  if (impl_) {
    impl_->stop();
    impl_->callbacks->clearHooks();
  }
}

Result<std::unique_ptr<Supervisor>> Supervisor::create(SupervisorOptions options) {
  if (auto v = validateBusName(options.bus); !v) return v.error();
  if (!isPowerOfTwo(options.inboxBytes) || !isPowerOfTwo(options.outboxBytes) || options.inboxBytes < 4096 ||
      options.outboxBytes < 4096 || options.maxRecordBytes < 256 || options.maxRecordBytes % 8 != 0) {
    return makeError(ErrorCode::InvalidMessage, "ring sizes must be powers of two >= 4 KiB and the maximum record a "
                                                "multiple of 8 bytes >= 256");
  }
  auto impl = std::make_unique<Impl>();
  impl->opts = options;
  impl->spin.spin = options.spin;
  if (options.socketPath.empty()) {
    auto p = detail::socketPath(options.bus);
    if (!p) return p.error();
    impl->path = *p;
  } else {
    impl->path = options.socketPath;
  }
  const std::size_t stale = Segment::removeStale(options.bus);
  auto l = listenSeqpacket(impl->path);
  if (!l) return l.error();
  impl->listenFd = std::move(*l);
  impl->epollFd.reset(::epoll_create1(EPOLL_CLOEXEC));
  impl->doorbellFd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  impl->timerFd.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  impl->wakeFd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!impl->epollFd || !impl->doorbellFd || !impl->timerFd || !impl->wakeFd) {
    return makeError(ErrorCode::SystemError, std::string("epoll/eventfd/timerfd: ") + std::strerror(errno));
  }
  impl->epollAdd(impl->listenFd.get(), tag(kTagListen));
  impl->epollAdd(impl->doorbellFd.get(), tag(kTagDoorbell));
  impl->epollAdd(impl->timerFd.get(), tag(kTagTimer));
  impl->epollAdd(impl->wakeFd.get(), tag(kTagWake));
  impl->names.emplace(nameId("main"), "main");
  if (stale > 0) impl->log(LogLevel::Info, "removed {} stale segment names", stale);
  return std::unique_ptr<Supervisor>(new Supervisor(std::move(impl)));
}

const std::string& Supervisor::bus() const noexcept { return impl_->opts.bus; }
const std::string& Supervisor::socketPath() const noexcept { return impl_->path; }

Result<WindowInfo> Supervisor::spawn(const std::string& role, const std::vector<std::string>& argv,
                                     const std::vector<std::string>& env) {
  SHMBUS_REQUIRE(!argv.empty(), "spawn needs argv[0]");
  SHMBUS_REQUIRE(Impl::validRole(role), "spawn needs a valid role name");
  auto pair = seqpacketPair();
  if (!pair) return pair.error();
  auto [mine, theirs] = std::move(*pair);
  // Everything the child needs is prepared before fork: only async-signal-safe calls after it.
  std::vector<std::string> envStrings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    if (kv.starts_with("SHMBUS_FD=") || kv.starts_with("SHMBUS_BUS=") || kv.starts_with("SHMBUS_ROLE=")) continue;
    envStrings.emplace_back(kv);
  }
  envStrings.push_back(fmt::format("{}={}", kEnvFd, theirs.get()));
  envStrings.push_back(fmt::format("{}={}", kEnvBus, impl_->opts.bus));
  envStrings.push_back(fmt::format("{}={}", kEnvRole, role));
  for (const auto& e : env) envStrings.push_back(e);
  std::vector<char*> envp, args;
  for (auto& s : envStrings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argvCopy = argv;
  for (auto& s : argvCopy) args.push_back(s.data());
  args.push_back(nullptr);
  const int childFd = theirs.get();
  const pid_t pid = ::fork();
  if (pid < 0) return makeError(ErrorCode::SystemError, std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::fcntl(childFd, F_SETFD, 0);  // keep the pre-authenticated socket across exec
    ::execvpe(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  theirs.reset();
  ::fcntl(mine.get(), F_SETFL, O_NONBLOCK);
  std::lock_guard lk(impl_->mu);
  auto& c = impl_->addConn(std::move(mine), role, pid, true);
  return WindowInfo{c.id, role, pid, true};
}

Result<WindowInfo> Supervisor::waitForRole(const std::string& role, std::chrono::milliseconds timeout) {
  return impl_->waitForWindow(role, nullptr, timeout);
}

Result<WindowInfo> Supervisor::waitForHandler(const std::string& role, const Channel& channel,
                                              std::chrono::milliseconds timeout) {
  return impl_->waitForWindow(role, &channel, timeout);
}

std::vector<WindowInfo> Supervisor::windows() const {
  std::lock_guard lk(impl_->mu);
  std::vector<WindowInfo> out;
  for (auto& [id, c] : impl_->conns) {
    if (c->state == Impl::Conn::State::Live && c->doomed.empty()) out.push_back({c->id, c->role, c->pid, c->spawned});
  }
  return out;
}

std::optional<WindowInfo> Supervisor::window(std::uint32_t id) const {
  std::lock_guard lk(impl_->mu);
  if (auto* c = impl_->live(id)) return WindowInfo{c->id, c->role, c->pid, c->spawned};
  return std::nullopt;
}

Registration Supervisor::on(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), false);
}

Registration Supervisor::once(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), true);
}

Registration Supervisor::handle(const Channel& channel, Handler handler) {
  return impl_->callbacks->setHandler(channel, std::move(handler));
}

Result<void> Supervisor::send(const Target& target, const Channel& channel, const BuildFn& build) {
  std::lock_guard lk(impl_->mu);
  if (impl_->stopping.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, "the supervisor stopped");
  auto* t = impl_->resolve(target);
  if (t == nullptr) {
    return makeError(ErrorCode::NoTarget, fmt::format("send '{}': no live window with {}", channel.name, target.describe()));
  }
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::Send);
  h.channel = channel.id;
  h.schemaId = channel.schemaId;
  h.target = t->id;
  h.role = nameId("main");
  ++impl_->counters[channel.id].messages;
  impl_->callbacks->rememberName(channel.id, channel.name);
  return impl_->writeToWindow(*t, [&] { return writeFrame(t->inbox, h, build); });
}

Result<BroadcastReport> Supervisor::broadcast(const Channel& channel, const BuildFn& build,
                                              const BroadcastOptions& options) {
  capnp::MallocMessageBuilder mb;
  if (build) build(mb);
  auto segs = mb.getSegmentsForOutput();
  std::lock_guard lk(impl_->mu);
  BroadcastReport report;
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::Send);
  h.channel = channel.id;
  h.schemaId = channel.schemaId;
  h.role = nameId("main");
  auto has = [](const std::vector<std::string>& v, const std::string& r) {
    return std::find(v.begin(), v.end(), r) != v.end();
  };
  for (auto& [id, c] : impl_->conns) {
    if (c->state != Impl::Conn::State::Live || !c->doomed.empty()) continue;
    if (!options.roles.empty() && !has(options.roles, c->role)) continue;
    if (has(options.excludeRoles, c->role)) continue;
    h.target = c->id;
    auto r = impl_->writeToWindow(*c, [&] { return writeFrameSegments(c->inbox, h, segs); });
    if (r) {
      ++report.delivered;
    } else if (r.code() == ErrorCode::TooLarge) {
      return r.error();
    } else {
      report.failed.emplace_back(c->id, r.error());
    }
  }
  impl_->counters[channel.id].messages += report.delivered;
  return report;
}

Call Supervisor::invoke(const Target& target, const Channel& channel, const BuildFn& build, CallOptions options) {
  auto s = std::make_shared<CallState>();
  s->owner = impl_.get();
  s->what = fmt::format("invoke '{}' to {}", channel.name, target.describe());
  std::lock_guard lk(impl_->mu);
  impl_->callbacks->rememberName(channel.id, channel.name);
  auto fail = [&](ErrorCode code, std::string m) {
    impl_->countError(channel.id, code);
    completeCall(s, makeError(code, std::move(m)));
    return Call(s);
  };
  if (impl_->stopping.load(std::memory_order_acquire)) return fail(ErrorCode::BusClosed, s->what + ": the supervisor stopped");
  auto* t = impl_->resolve(target);
  if (t == nullptr) return fail(ErrorCode::NoTarget, s->what + ": no live window with " + target.describe());
  if (t->handled.count(channel.id) == 0) return fail(ErrorCode::NoHandler, s->what + ": no handler");
  ++impl_->counters[channel.id].calls;
  Impl::Pending p;
  p.targetId = t->id;
  p.channel = channel.id;
  p.start = monotonicNowNs();
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::Invoke);
  h.channel = channel.id;
  h.schemaId = channel.schemaId;
  h.deadlineNs = options.timeout.count() > 0 ? p.start + std::chrono::nanoseconds(options.timeout).count() : 0;
  p.deadline = impl_->deadlineFor(h, p.start, p.timeoutMs);
  // The waiter's own give-up time, in case the dispatching thread cannot expire the call (waitFor).
  s->deadlineNs = p.deadline + kLocalGraceNs;
  p.state = s;
  h.deadlineNs = p.deadline;
  h.target = t->id;
  h.role = nameId("main");
  const std::uint64_t rid = impl_->addPending(std::move(p));
  s->requestId = rid;
  h.requestId = rid;
  auto r = impl_->writeToWindow(*t, [&] { return writeFrame(t->inbox, h, build, options.sizeHint); });
  if (!r) {
    Impl::Pending gone = impl_->takePending(rid);
    impl_->failCaller(gone, Error{r.code(), s->what + ": " + r.error().message});
  }
  return Call(s);
}

void Supervisor::setPolicy(const Channel& channel, ChannelPolicy policy) {
  std::lock_guard lk(impl_->mu);
  auto& set = impl_->policies[channel.id];
  set.clear();
  for (const auto& r : policy.callers) set.insert(nameId(r));
  impl_->callbacks->rememberName(channel.id, channel.name);
}

void Supervisor::setChannelTimeout(const Channel& channel, std::chrono::milliseconds timeout) {
  std::lock_guard lk(impl_->mu);
  impl_->channelTimeoutMs[channel.id] = timeout.count();
  impl_->callbacks->rememberName(channel.id, channel.name);
}

RouterStats Supervisor::stats() const {
  std::lock_guard lk(impl_->mu);
  RouterStats s;
  const std::int64_t now = monotonicNowNs();
  auto roleOf = [&](std::uint32_t id) -> std::string {
    if (id == 0) return "main";
    auto it = impl_->conns.find(id);
    return it == impl_->conns.end() ? std::string() : it->second->role;
  };
  for (auto& [rid, p] : impl_->pending) {
    s.pending.push_back({impl_->nameOf(p.channel), p.callerId, roleOf(p.callerId), p.targetId, roleOf(p.targetId),
                         static_cast<double>(now - p.start) / 1e6});
  }
  for (auto& [ch, c] : impl_->counters) {
    RouterStats::ChannelStats cs;
    cs.channel = impl_->nameOf(ch);
    if (auto l = impl_->statLabels.find(ch); cs.channel.starts_with("#") && l != impl_->statLabels.end()) {
      cs.channel = l->second;
    }
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
  s.lateReplies = impl_->lateReplies;
  s.spoofedReplies = impl_->spoofedReplies;
  s.undeliverable = impl_->undeliverable;
  s.badMessages = impl_->badMessages;
  return s;
}

void Supervisor::run() {
  std::lock_guard g(impl_->gate);
  while (!impl_->stopping.load(std::memory_order_acquire)) impl_->dispatchOnce(kNoDeadline);
}

Result<void> Supervisor::poll(std::chrono::milliseconds timeout) {
  if (impl_->stopping.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, "the supervisor stopped");
  std::lock_guard g(impl_->gate);
  impl_->dispatchOnce(monotonicNowNs() + std::chrono::nanoseconds(timeout).count());
  return {};
}

void Supervisor::startDispatchThread() {
  SHMBUS_REQUIRE(!impl_->dispatcher.joinable(), "the dispatch thread is already running");
  impl_->dispatcher = startDispatcher(impl_->gate, [this] { run(); });
}

void Supervisor::stop() { impl_->stop(); }

}  // namespace shmbus
