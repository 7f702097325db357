#include "shmbus/window.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
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

namespace shmbus {

using namespace detail;

namespace {
// The caller's own give-up time after a deadline, in case the supervisor cannot answer (it
// answers Timeout itself at the deadline; its death is noticed at once through the socket).
constexpr std::int64_t kLocalGraceNs = 20'000'000;
// Local fallback for calls without a timeout of their own: the supervisor applies the channel's
// default (5 s unless configured); this only bounds a wait on a supervisor that is alive but wedged.
constexpr std::int64_t kUnknownDeadlineFallbackNs = 60'000'000'000;
constexpr int kBatch = 64;
}  // namespace

struct Window::Impl final : CallOwner {
  WindowOptions opts;
  std::uint32_t id = 0;
  std::string role;
  std::string bus;
  SpinPolicy spin;

  Fd sock;
  Fd doorbell;
  std::shared_ptr<Segment> segment;  // shared with held reply messages, so their memory stays mapped
  RingConsumer in;                   // dispatcher only
  RingProducer out;                  // guarded by outMu
  std::mutex outMu;
  std::unordered_set<std::uint64_t> interned;  // guarded by outMu

  std::atomic<bool> closed{false};
  std::string closeReason;  // written once before closed turns true
  std::thread watchdog;
  std::thread dispatcher;

  std::recursive_mutex gate;  // held by whichever thread dispatches
  std::atomic<std::thread::id> dispatchingThread{};

  std::shared_ptr<CallbackTable> callbacks = std::make_shared<CallbackTable>();

  std::mutex callMu;
  std::unordered_map<std::uint64_t, std::shared_ptr<CallState>> pending;  // guarded by callMu
  std::uint64_t nextRequestId = 1;                                        // guarded by callMu
  std::atomic<std::int64_t> nextExpiryNs{kNoDeadline};

  std::mutex runMu;
  std::unordered_map<std::uint64_t, std::shared_ptr<std::atomic<bool>>> running;  // handler cancel flags
  // A Cancel (control socket) can overtake its Invoke (inbox ring). Request ids reach this inbox
  // in increasing order (the supervisor numbers routes as it writes them), so a Cancel for an id
  // above the last one started is for a call still on its way: its handler starts cancelled.
  std::set<std::uint64_t> earlyCancels;  // guarded by runMu
  std::uint64_t lastStarted = 0;         // guarded by runMu

  std::unordered_map<std::uint64_t, std::string> roleNames;  // dispatcher only

  // In-order release of inbox records (a reply held by a Message keeps its record reserved).
  struct Lease {
    std::mutex mu;
    std::deque<std::pair<std::uint64_t, bool>> held;  // (record end, released)
    std::atomic<bool> dirty{false};
  };
  std::shared_ptr<Lease> lease = std::make_shared<Lease>();

  ~Impl() override { callbacks->clearHooks(); }

  // ---- outbox

  Result<void> writeOut(const FrameHeader& h, const BuildFn& build, std::size_t hint, std::int64_t waitUntil) {
    std::lock_guard lk(outMu);
    for (;;) {
      if (closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, busClosedMessage());
      auto r = writeFrame(out, h, build, hint);
      if (r || r.code() != ErrorCode::Full || waitUntil == 0) return r;
      if (waitForSpace(waitUntil) == WaitStatus::Timeout) return r;
    }
  }

  WaitStatus waitForSpace(std::int64_t deadline) {
    const std::uint64_t seen = out.control()->head.load(std::memory_order_acquire);  // SYNC POINT "head"
    return spinThenPark(
        out.control()->spaceReady,
        [&] {
          // acquire: SYNC POINT "head" (RingConsumer::releaseTo); any progress is worth a retry.
          return closed.load(std::memory_order_acquire) ||
                 out.control()->head.load(std::memory_order_acquire) != seen;
        },
        spin, deadline);
  }

  /// Sends the name behind `id` once (caller holds outMu).
  void internLocked(std::uint64_t nameIdValue, std::string_view name, bool isRole) {
    // Nothing is written once closed (the call fails with BusClosed in writeOut): the supervisor
    // reads this ring no more, and after a disconnect for a corrupt ring its space is not free.
    // acquire: pairs with markClosed's release store.
    if (closed.load(std::memory_order_acquire)) return;
    if (name.empty() || !interned.insert(nameIdValue).second) return;
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(FrameKind::Intern);
    h.channel = nameIdValue;
    auto r = writeFrame(out, h, [&](Builder& b) {
      auto i = b.initRoot<schema::Intern>();
      i.setId(nameIdValue);
      i.setName(std::string(name.substr(0, 256)));
      i.setIsRole(isRole);
    }, 512);
    if (!r) interned.erase(nameIdValue);  // try again with the next message
  }

  void control(FrameKind kind, std::uint64_t channel) {
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(kind);
    h.channel = channel;
    (void)writeOut(h, {}, 0, monotonicNowNs() + 1'000'000'000);
  }

  std::string busClosedMessage() const {
    return closeReason.empty() ? fmt::format("bus '{}' is closed", bus) : closeReason;
  }

  FrameHeader headerFor(FrameKind kind, const Target& t, const Channel& ch) {
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(kind);
    h.channel = ch.id;
    h.schemaId = ch.schemaId;
    if (!t.role.empty()) {
      h.target = kTargetByRole;
      h.role = nameId(t.role);
    } else {
      h.target = t.windowId;
    }
    return h;
  }

  Result<void> sendImpl(const Target& t, const Channel& ch, const BuildFn& build) {
    FrameHeader h = headerFor(FrameKind::Send, t, ch);
    {
      std::lock_guard lk(outMu);
      internLocked(ch.id, ch.name, false);
      if (!t.role.empty()) internLocked(h.role, t.role, true);
    }
    return writeOut(h, build, 0, 0);
  }

  Call invokeImpl(const Target& t, const Channel& ch, const BuildFn& build, const CallOptions& o) {
    auto s = std::make_shared<CallState>();
    s->owner = this;
    s->what = fmt::format("invoke '{}' to {}", ch.name, t.describe());
    s->timeoutMs = o.timeout.count();
    const auto timeout = o.timeout.count() > 0 ? o.timeout : std::chrono::milliseconds(0);
    FrameHeader h = headerFor(FrameKind::Invoke, t, ch);
    // A zero timeout asks the supervisor for the channel's default (Supervisor::setChannelTimeout),
    // which this window does not know; its local fallback then waits kUnknownDeadlineFallbackNs.
    const std::int64_t now = monotonicNowNs();
    h.deadlineNs = timeout.count() > 0 ? now + std::chrono::nanoseconds(timeout).count() : 0;
    h.status = static_cast<std::uint32_t>(std::min<std::int64_t>(timeout.count(), UINT32_MAX));
    s->deadlineNs = (h.deadlineNs != 0 ? h.deadlineNs : now + kUnknownDeadlineFallbackNs) + kLocalGraceNs;
    {
      std::lock_guard lk(callMu);
      s->requestId = h.requestId = nextRequestId++;
      pending.emplace(s->requestId, s);
    }
    std::int64_t e = nextExpiryNs.load(std::memory_order_relaxed);
    // relaxed: the expiry hint is only an optimisation of when to scan; the scan itself locks callMu.
    while (s->deadlineNs < e && !nextExpiryNs.compare_exchange_weak(e, s->deadlineNs, std::memory_order_relaxed)) {
    }
    {
      std::lock_guard lk(outMu);
      internLocked(ch.id, ch.name, false);
      if (!t.role.empty()) internLocked(h.role, t.role, true);
    }
    auto r = writeOut(h, build, o.sizeHint, 0);
    if (!r) {
      {
        std::lock_guard lk(callMu);
        pending.erase(s->requestId);
      }
      Error err = r.error();
      err.message = fmt::format("{}: {}", s->what, err.message);
      completeCall(s, std::move(err));
    }
    return Call(s);
  }

  // ---- calls

  void failAll(const Error& e) {
    std::unordered_map<std::uint64_t, std::shared_ptr<CallState>> all;
    {
      std::lock_guard lk(callMu);
      all.swap(pending);
    }
    for (auto& [rid, s] : all) {
      Error err = e;
      err.message = fmt::format("{}: {}", s->what, e.message);
      completeCall(s, std::move(err));
    }
  }

  void expireLocal(std::int64_t now) {
    if (now < nextExpiryNs.load(std::memory_order_relaxed)) return;  // relaxed: a hint (see invokeImpl)
    std::vector<std::shared_ptr<CallState>> expired;
    std::int64_t next = kNoDeadline;
    {
      std::lock_guard lk(callMu);
      for (auto it = pending.begin(); it != pending.end();) {
        if (it->second->deadlineNs <= now) {
          expired.push_back(it->second);
          it = pending.erase(it);
        } else {
          next = std::min(next, it->second->deadlineNs);
          ++it;
        }
      }
      nextExpiryNs.store(next, std::memory_order_relaxed);
    }
    for (auto& s : expired) {
      completeCall(s, makeError(ErrorCode::Timeout,
                                fmt::format("{} timed out after {} ms (no answer from the supervisor)", s->what,
                                            s->timeoutMs > 0 ? s->timeoutMs : kUnknownDeadlineFallbackNs / 1'000'000)));
    }
  }

  Result<Message> waitFor(const std::shared_ptr<CallState>& s) override {
    for (;;) {
      {
        std::lock_guard lk(s->mu);
        if (s->result) return *s->result;
      }
      if (gate.try_lock()) {
        const auto prev = dispatchingThread.exchange(std::this_thread::get_id());
        bool done = false;
        while (!done && !closed.load(std::memory_order_acquire)) {
          dispatchOnce(s->deadlineNs, s.get());
          std::lock_guard lk(s->mu);
          done = s->result.has_value();
        }
        dispatchingThread.store(prev);
        gate.unlock();
        if (!done) expireLocal(monotonicNowNs());
        std::lock_guard lk(s->mu);
        if (s->result) return *s->result;
        if (closed.load(std::memory_order_acquire)) {
          return makeError(ErrorCode::BusClosed, fmt::format("{}: {}", s->what, busClosedMessage()));
        }
        continue;
      }
      // Another thread dispatches: wait for completion; re-check now and then in case that
      // thread stops dispatching (then this thread takes over).
      const std::int64_t left = s->deadlineNs - monotonicNowNs();
      {
        std::unique_lock lk(s->mu);
        const auto slice = std::chrono::nanoseconds(std::clamp<std::int64_t>(left, 0, 10'000'000));
        if (s->cv.wait_for(lk, slice, [&] { return s->result.has_value(); })) return *s->result;
      }
      // The dispatching thread may be the reason no answer comes (a handler blocked on something
      // this thread holds: a cycle whose return leg cannot run). Give up at the local deadline as
      // a dispatcher would, so the wait never outlives it.
      if (left <= 0) expireLocal(monotonicNowNs());
    }
  }

  void cancel(const std::shared_ptr<CallState>& s) override {
    bool wasPending;
    {
      std::lock_guard lk(callMu);
      wasPending = pending.erase(s->requestId) != 0;
    }
    completeCall(s, makeError(ErrorCode::Cancelled, s->what + ": cancelled by the caller"));
    if (wasPending) {
      FrameHeader h{};
      h.kind = static_cast<std::uint16_t>(FrameKind::Cancel);
      h.requestId = s->requestId;
      (void)writeOut(h, {}, 0, monotonicNowNs() + 1'000'000'000);
    }
  }

  // ---- dispatch

  /// Reads and handles up to kBatch records; parks until something arrives or `deadline` when
  /// there was nothing. `waiting` (optional) is a call whose completion ends the wait early.
  void dispatchOnce(std::int64_t deadline, CallState* waiting = nullptr) {
    int n = 0;
    while (n < kBatch) {
      auto r = in.tryRead();
      if (!r) {
        markClosed(fmt::format("the inbox of window {} is corrupt: {}", id, r.error().message));
        return;
      }
      if (!*r) break;
      handleRecord(**r);
      ++n;
      if (waiting != nullptr) {
        std::lock_guard lk(waiting->mu);
        if (waiting->result) break;
      }
    }
    advanceHead();
    const std::int64_t now = monotonicNowNs();
    expireLocal(now);
    if (n > 0 || closed.load(std::memory_order_acquire)) return;
    const std::int64_t until = std::min(deadline, nextExpiryNs.load(std::memory_order_relaxed));
    if (until <= now) return;
    in.wait(until, spin, [&] {
      // acquire: pairs with markClosed's / the lease release's release stores.
      return closed.load(std::memory_order_acquire) || lease->dirty.load(std::memory_order_acquire);
    });
    advanceHead();
  }

  void advanceHead() {
    std::uint64_t to = 0;
    {
      std::lock_guard lk(lease->mu);
      lease->dirty.store(false, std::memory_order_relaxed);  // relaxed: we hold the lock that orders it
      while (!lease->held.empty() && lease->held.front().second) {
        to = lease->held.front().first;
        lease->held.pop_front();
      }
    }
    if (to != 0) in.releaseTo(to);
  }

  void markReleased(std::uint64_t end) {
    std::lock_guard lk(lease->mu);
    for (auto& e : lease->held) {
      if (e.first == end) {
        e.second = true;
        break;
      }
    }
  }

  void handleRecord(const RecordView& rec) {
    {
      std::lock_guard lk(lease->mu);
      lease->held.emplace_back(rec.end, false);
    }
    bool leased = false;
    auto f = parseFrame(rec);
    if (f) {
      InPlaceMessage msg;
      auto parsed = msg.parse(f->payload, f->payloadBytes);
      const auto kind = static_cast<FrameKind>(f->header.kind);
      if (!parsed) {
        if (kind == FrameKind::Invoke) reply(f->header, parsed.error());
      } else {
        switch (kind) {
          case FrameKind::Intern: onIntern(msg); break;
          case FrameKind::Send: onPush(*f, msg); break;
          case FrameKind::Invoke: onInvoke(*f, msg); break;
          case FrameKind::Reply:
          case FrameKind::Error: leased = onReply(*f, rec); break;
          default: break;
        }
      }
    }
    if (!leased) markReleased(rec.end);
  }

  void onIntern(InPlaceMessage& msg) {
    try {
      auto i = msg.reader().getRoot<schema::Intern>();
      if (i.getIsRole()) roleNames[i.getId()] = i.getName();
    } catch (const kj::Exception&) {
    }
  }

  CallContext contextFor(const FrameHeader& h, std::string& channelName) {
    CallContext ctx;
    ctx.sourceWindowId = h.source;
    auto it = roleNames.find(h.role);
    ctx.sourceRole = h.source == 0 ? std::string_view("main")
                                   : (it != roleNames.end() ? std::string_view(it->second) : std::string_view());
    channelName = callbacks->name(h.channel);
    ctx.channel = channelName;
    ctx.channelId = h.channel;
    ctx.requestId = h.requestId;
    ctx.deadlineNs = h.deadlineNs;
    return ctx;
  }

  void onPush(const FrameView& f, InPlaceMessage& msg) {
    auto listeners = callbacks->takeListeners(f.header.channel);
    if (listeners.empty()) return;
    std::string name;
    CallContext ctx = contextFor(f.header, name);
    Message m(&msg, f.header.schemaId);
    for (auto& l : listeners) {
      try {
        l->fn(m, ctx);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shmbus: window %u: listener for '%s' threw: %s\n", id, name.c_str(), e.what());
      } catch (const kj::Exception& e) {
        std::fprintf(stderr, "shmbus: window %u: listener for '%s' threw: %s\n", id, name.c_str(),
                     e.getDescription().cStr());
      }
    }
  }

  void reply(const FrameHeader& req, const Error& e) {
    FrameHeader h{};
    h.channel = req.channel;
    h.requestId = req.requestId;
    (void)writeErrorFramed(h, e, req.deadlineNs);
  }

  Result<void> writeErrorFramed(FrameHeader h, const Error& e, std::int64_t deadline) {
    std::lock_guard lk(outMu);
    for (;;) {
      if (closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, busClosedMessage());
      auto r = writeErrorFrame(out, h, e);
      if (r || r.code() != ErrorCode::Full) return r;
      if (waitForSpace(deadline != 0 ? deadline : monotonicNowNs() + 1'000'000'000) == WaitStatus::Timeout) return r;
    }
  }

  void onInvoke(const FrameView& f, InPlaceMessage& msg) {
    const FrameHeader& h = f.header;
    auto slot = callbacks->handler(h.channel);
    std::string name;
    CallContext ctx = contextFor(h, name);
    // Only error paths name the call: format it on demand, not once per call.
    auto what = [&] { return fmt::format("invoke '{}' on window {} (role '{}')", name, id, role); };
    if (!slot) {
      reply(h, makeError(ErrorCode::NoHandler, fmt::format("{}: no handler", what())));
      return;
    }
    if (slot->schemaId != 0 && h.schemaId != 0 && slot->schemaId != h.schemaId) {
      reply(h, makeError(ErrorCode::InvalidMessage,
                         fmt::format("{}: request schema {:016x} does not match the handler's {:016x} "
                                     "(the two sides were compiled from different contract versions)",
                                     what(), h.schemaId, slot->schemaId)));
      return;
    }
    auto flag = std::make_shared<std::atomic<bool>>(false);
    {
      std::lock_guard lk(runMu);
      running[h.requestId] = flag;
      lastStarted = std::max(lastStarted, h.requestId);
      // relaxed: the flag is published to this thread's handler by program order; other readers
      // (none yet) would take runMu.
      if (earlyCancels.erase(h.requestId) != 0) flag->store(true, std::memory_order_relaxed);
      earlyCancels.erase(earlyCancels.begin(), earlyCancels.lower_bound(h.requestId));
    }
    ctx.cancelFlag = flag.get();
    capnp::MallocMessageBuilder replyBuilder;
    std::optional<Error> err;
    try {
      slot->fn(Message(&msg, h.schemaId), replyBuilder, ctx);
    } catch (...) {
      err = handlerError(what(), std::current_exception());
    }
    {
      std::lock_guard lk(runMu);
      running.erase(h.requestId);
    }
    FrameHeader r{};
    r.channel = h.channel;
    r.requestId = h.requestId;
    if (err) {
      (void)writeErrorFramed(r, *err, h.deadlineNs);
      return;
    }
    r.kind = static_cast<std::uint16_t>(FrameKind::Reply);
    r.schemaId = slot->replySchemaId;
    auto segs = replyBuilder.getSegmentsForOutput();
    std::lock_guard lk(outMu);
    for (;;) {
      if (closed.load(std::memory_order_acquire)) return;
      auto w = writeFrameSegments(out, r, segs);
      if (w) return;
      if (w.code() != ErrorCode::Full ||
          waitForSpace(h.deadlineNs != 0 ? h.deadlineNs : monotonicNowNs() + 1'000'000'000) == WaitStatus::Timeout) {
        // The reply cannot be sent (too large, or the outbox stayed full): fail the call instead.
        Error e = w.error();
        e.message = fmt::format("{}: the reply could not be written: {}", what(), e.message);
        (void)writeErrorFrame(out, r, e);
        return;
      }
    }
  }

  /// Completes a pending call from a Reply/Error record. Returns true when the record is now
  /// leased to a Message (released when that Message dies).
  bool onReply(const FrameView& f, const RecordView& rec) {
    std::shared_ptr<CallState> s;
    {
      std::lock_guard lk(callMu);
      auto it = pending.find(f.header.requestId);
      if (it == pending.end()) return false;  // cancelled or timed out locally: dropped
      s = std::move(it->second);
      pending.erase(it);
    }
    if (f.header.kind == static_cast<std::uint16_t>(FrameKind::Error)) {
      InPlaceMessage m;
      (void)m.parse(f.payload, f.payloadBytes);
      Error e = decodeError(f.header, m);
      completeCall(s, std::move(e));
      return false;
    }
    auto held = std::make_shared<HeldMessage>();
    auto parsed = held->msg.parse(f.payload, f.payloadBytes);
    if (!parsed) {
      completeCall(s, parsed.error());
      return false;
    }
    const std::uint64_t end = rec.end;
    std::weak_ptr<Lease> weakLease = lease;
    RingControl* ctl = in.control();
    auto seg = segment;
    const auto dispatcherId = &dispatchingThread;
    held->release = [weakLease, end, ctl, seg, dispatcherId] {
      auto l = weakLease.lock();
      if (!l) return;
      {
        std::lock_guard lk(l->mu);
        for (auto& e : l->held) {
          if (e.first == end) {
            e.second = true;
            break;
          }
        }
      }
      // release: pairs with the dispatcher's acquire load in its wait predicate.
      l->dirty.store(true, std::memory_order_release);
      if (dispatcherId->load() != std::this_thread::get_id()) wakeAll(ctl->dataReady);
    };
    completeCall(s, Message(std::move(held), f.header.schemaId));
    return true;
  }

  // ---- lifecycle

  void markClosed(const std::string& reason) {
    if (closed.load(std::memory_order_acquire)) return;
    closeReason = reason;
    closed.store(true, std::memory_order_release);  // pairs with the acquire loads of `closed`
    failAll(makeError(ErrorCode::BusClosed, reason));
    if (in.valid()) wakeAll(in.control()->dataReady);
    if (out.valid()) wakeAll(out.control()->spaceReady);
  }

  void watch() {
    for (;;) {
      pollfd p{sock.get(), POLLIN, 0};
      const int r = ::poll(&p, 1, -1);
      if (r < 0 && errno == EINTR) continue;
      if (closed.load(std::memory_order_acquire)) return;
      auto pkt = recvPacket(sock.get());
      if (!pkt || pkt->hangup) {
        markClosed(fmt::format("the supervisor of bus '{}' is gone", bus));
        return;
      }
      if (pkt->bytes.size() >= sizeof(ControlHeader)) {
        ControlHeader ch;
        std::memcpy(&ch, pkt->bytes.data(), sizeof ch);
        if (ch.type == static_cast<std::uint32_t>(ControlType::Cancel)) {
          std::lock_guard lk(runMu);
          auto it = running.find(ch.value);
          if (it != running.end()) {
            // release: pairs with CallContext::cancelled()'s acquire load.
            it->second->store(true, std::memory_order_release);
          } else if (ch.value > lastStarted && earlyCancels.size() < 4096) {
            earlyCancels.insert(ch.value);  // its Invoke is still in the inbox (see earlyCancels)
          }
        }
      }
    }
  }

  void close(const std::string& reason) {
    markClosed(reason);
    if (sock) ::shutdown(sock.get(), SHUT_RDWR);
    if (watchdog.joinable() && watchdog.get_id() != std::this_thread::get_id()) watchdog.join();
    if (dispatcher.joinable() && dispatcher.get_id() != std::this_thread::get_id()) dispatcher.join();
  }
};

// ---------------------------------------------------------------------------------------------

namespace {

Result<std::unique_ptr<Window::Impl>> handshake(Fd sock, WindowOptions opts, const std::string& bus, bool spawned) {
  auto impl = std::make_unique<Window::Impl>();
  impl->opts = opts;
  impl->bus = bus;
  impl->spin.spin = opts.spin;
  impl->sock = std::move(sock);
  {
    capnp::MallocMessageBuilder mb;
    auto hello = mb.initRoot<schema::Hello>();
    hello.setRole(opts.role);
    hello.setPid(static_cast<std::int32_t>(::getpid()));
    hello.setInboxBytes(opts.inboxBytes);
    hello.setOutboxBytes(opts.outboxBytes);
    hello.setSpawnToken(spawned ? 1 : 0);
    auto words = capnp::messageToFlatArray(mb);
    std::vector<std::uint8_t> pkt(sizeof(ControlHeader) + words.asBytes().size());
    ControlHeader ch{static_cast<std::uint32_t>(ControlType::Hello), 0, 0};
    std::memcpy(pkt.data(), &ch, sizeof ch);
    std::memcpy(pkt.data() + sizeof ch, words.asBytes().begin(), words.asBytes().size());
    if (auto r = sendPacket(impl->sock.get(), pkt.data(), pkt.size()); !r) return r.error();
  }
  pollfd p{impl->sock.get(), POLLIN, 0};
  const int pr = ::poll(&p, 1, static_cast<int>(opts.connectTimeout.count()));
  if (pr == 0) {
    return makeError(ErrorCode::Timeout, fmt::format("no welcome from the supervisor of bus '{}' within {} ms", bus,
                                                     opts.connectTimeout.count()));
  }
  auto pkt = recvPacket(impl->sock.get());
  if (!pkt) return pkt.error();
  if (pkt->hangup || pkt->bytes.size() < sizeof(ControlHeader) + 8) {
    return makeError(ErrorCode::BusClosed, fmt::format("the supervisor of bus '{}' closed the connection", bus));
  }
  const auto* words = reinterpret_cast<const capnp::word*>(pkt->bytes.data() + sizeof(ControlHeader));
  std::vector<capnp::word> aligned((pkt->bytes.size() - sizeof(ControlHeader)) / sizeof(capnp::word));
  std::memcpy(aligned.data(), words, aligned.size() * sizeof(capnp::word));
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(aligned.data(), aligned.size()));
    auto w = reader.getRoot<schema::Welcome>();
    if (!w.getOk()) {
      auto e = w.getError();
      return makeError(static_cast<ErrorCode>(e.getCode()), e.getMessage());
    }
    if (pkt->fds.empty()) return makeError(ErrorCode::InvalidMessage, "welcome without a doorbell descriptor");
    impl->doorbell = std::move(pkt->fds[0]);
    impl->id = w.getWindowId();
    impl->role = w.getRole();
    auto seg = Segment::open(w.getSegmentName());
    if (!seg) return seg.error();
    impl->segment = std::make_shared<Segment>(std::move(*seg));
    const std::size_t size = impl->segment->size();
    RingGeometry inG{w.getInboxCapacity(), w.getMaxRecord()};
    RingGeometry outG{w.getOutboxCapacity(), w.getMaxRecord()};
    if (!validateGeometry(inG) || !validateGeometry(outG) ||
        w.getInboxOffset() + ringFootprint(inG.capacity) > size ||
        w.getOutboxOffset() + ringFootprint(outG.capacity) > size) {
      return makeError(ErrorCode::InvalidMessage, "welcome describes rings outside the segment");
    }
    std::uint8_t* base = impl->segment->base();
    auto* inCtl = reinterpret_cast<RingControl*>(base + w.getInboxOffset());
    auto* outCtl = reinterpret_cast<RingControl*>(base + w.getOutboxOffset());
    impl->in = RingConsumer(inCtl, base + w.getInboxOffset() + sizeof(RingControl), inG);
    // The supervisor zeroes what it consumed, so the outbox's free space is zero: no memset.
    impl->out = RingProducer(outCtl, base + w.getOutboxOffset() + sizeof(RingControl), outG, false,
                             impl->doorbell.get());
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage, std::string("malformed welcome: ") + e.getDescription().cStr());
  }
  ControlHeader mapped{static_cast<std::uint32_t>(ControlType::Mapped), 0, 0};
  if (auto r = sendPacket(impl->sock.get(), &mapped, sizeof mapped); !r) return r.error();
  impl->roleNames[nameId("main")] = "main";
  Window::Impl* raw = impl.get();
  impl->callbacks->setHooks(
      [raw](std::uint64_t ch, bool present) { raw->control(present ? FrameKind::HandlerAdd : FrameKind::HandlerRemove, ch); },
      [raw](std::uint64_t ch) {
        if (ch == nameId(kWindowOpened) || ch == nameId(kWindowClosed)) raw->control(FrameKind::Listen, ch);
      });
  impl->watchdog = std::thread([raw] { raw->watch(); });
  return impl;
}

}  // namespace

Window::Window(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Window::~Window() {
  if (impl_) impl_->close(fmt::format("window {} is closed", impl_->id));
}

Result<std::unique_ptr<Window>> Window::connect(WindowOptions options) {
  std::string bus = options.bus;
  if (bus.empty()) {
    if (const char* b = std::getenv(kEnvBus)) bus = b;
  }
  if (auto v = validateBusName(bus); !v) return v.error();
  SHMBUS_REQUIRE(!options.role.empty(), "WindowOptions::role must name the role to claim");
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
  SHMBUS_REQUIRE(fdText != nullptr, "Window::fromSpawn outside a process started by Supervisor::spawn");
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

std::uint32_t Window::id() const noexcept { return impl_->id; }
const std::string& Window::role() const noexcept { return impl_->role; }
const std::string& Window::bus() const noexcept { return impl_->bus; }

Result<void> Window::send(const Channel& channel, const BuildFn& build) {
  return impl_->sendImpl(Target::main(), channel, build);
}

Result<void> Window::sendTo(const Target& target, const Channel& channel, const BuildFn& build) {
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

Registration Window::handle(const Channel& channel, Handler handler) {
  return impl_->callbacks->setHandler(channel, std::move(handler));
}

void Window::run() {
  std::lock_guard g(impl_->gate);
  const auto prev = impl_->dispatchingThread.exchange(std::this_thread::get_id());
  while (!impl_->closed.load(std::memory_order_acquire)) impl_->dispatchOnce(kNoDeadline);
  impl_->dispatchingThread.store(prev);
}

Result<void> Window::poll(std::chrono::milliseconds timeout) {
  if (impl_->closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, impl_->busClosedMessage());
  std::lock_guard g(impl_->gate);
  const auto prev = impl_->dispatchingThread.exchange(std::this_thread::get_id());
  impl_->dispatchOnce(monotonicNowNs() + std::chrono::nanoseconds(timeout).count());
  impl_->dispatchingThread.store(prev);
  if (impl_->closed.load(std::memory_order_acquire)) return makeError(ErrorCode::BusClosed, impl_->busClosedMessage());
  return {};
}

void Window::startDispatchThread() {
  SHMBUS_REQUIRE(!impl_->dispatcher.joinable(), "the dispatch thread is already running");
  impl_->dispatcher = startDispatcher(impl_->gate, [this] { run(); });
}

void Window::close() { impl_->close(fmt::format("window {} is closed", impl_->id)); }

bool Window::closed() const noexcept { return impl_->closed.load(std::memory_order_acquire); }

}  // namespace shmbus
