// Ports (docs/architecture.md §16): a window's side of opening and accepting them, and the Port
// facade. A port's end is a Window::Impl over the port's ring pair (`port` set), so sends,
// calls, handlers, cancels, deadlines and the dispatch loop are the window's own code.
#include "shmbus/port.hpp"

#include <fcntl.h>
#include <sys/sysinfo.h>

#include <fmt/format.h>

#include <cstring>

#include "bus.capnp.h"
#include "control/control_protocol.hpp"
#include "trace/trace_event.hpp"
#include "window/window_impl.hpp"

namespace shmbus {

using namespace detail;

struct Port::Impl final : Window::Impl {};

namespace {

// How long a window waits for a port's descriptor once the frame naming the port is read: the
// supervisor sends the descriptor first, so only the watchdog thread's turn is awaited.
constexpr auto kFdWait = std::chrono::seconds(1);

Result<Fd> takeFd(Window::Impl::PortHub& hub, std::uint64_t portId) {
  std::unique_lock lk(hub.mu);
  if (!hub.cv.wait_for(lk, kFdWait, [&] { return hub.fds.count(portId) != 0; })) {
    return makeError(ErrorCode::SystemError, fmt::format("the descriptor of port {} did not arrive", portId));
  }
  Fd fd = std::move(hub.fds[portId]);
  hub.fds.erase(portId);
  return fd;
}

/// One end of port `info.portId` for window `w`, mapped from `fd`.
Result<std::shared_ptr<Port::Impl>> makePort(Window::Impl& w, const WelcomeInfo& info, const Fd& fd, bool opener,
                                             std::string channel, std::chrono::milliseconds callTimeout) {
  auto seg = Segment::map(fd.get(), info.segmentName);
  if (!seg) return seg.error();
  auto p = std::make_shared<Port::Impl>();
  p->opts = w.opts;
  p->bus = w.bus;
  p->spin = w.spin;
  p->replySpin.configure(w.replySpin.capNs(), ::get_nprocs());  // a port learns its own channels
  // Both producers zero what they claim: the peer is another window, which may not zero what it
  // consumed. No doorbell: the peer parks on the ring's own futex word.
  if (auto ok = attachLink(p->link, info, std::move(*seg), true, -1); !ok) return ok.error();
  p->link.id = w.link.id;  // the Welcome named the peer; this end is still this window
  p->link.role = w.link.role;
  p->port = std::make_unique<Window::Impl::PortSide>();
  p->port->id = info.portId;
  p->port->channel = std::move(channel);
  p->port->peerId = info.id;
  p->port->peerRole = info.role;
  p->port->opener = opener;
  p->port->callTimeout = callTimeout;
  // The welcome's board offset is checked to hold 512 bytes, the size of the two boards.
  auto* boards = reinterpret_cast<PortCancelBoards*>(p->link.segment->base() + info.boardOffset);
  p->port->ownCancels = opener ? &boards->byOpener : &boards->byAcceptor;
  p->port->peerCancels = opener ? &boards->byAcceptor : &boards->byOpener;
  p->port->hub = w.hub;
  p->port->windowSegment = w.link.segment;
  if (p->link.blobBytes != 0) {
    // The arena keeps a descriptor of the segment's file to find the pages that hold data
    // (BlobProducer::zeroFree); without one (dup failed) it zeroes every released record.
    p->blobs = blobLinkOf(p->link, Fd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0)), callTimeout);
  }
  p->log = Logger{"port", fmt::format("{}/{}#{} port {}", w.bus, w.link.role, w.link.id, info.portId), w.opts.logLevel};
  std::lock_guard lk(w.hub->mu);
  w.hub->ports[info.portId] = p;
  return p;
}

std::string portName(const Window::Impl& p) {
  return fmt::format("port {} on '{}' to window {} (role '{}')", p.port->id, p.port->channel, p.port->peerId,
                     p.port->peerRole);
}

}  // namespace

Result<std::shared_ptr<Window::Impl>> mapPortEnd(Window::Impl& w, const WelcomeInfo& info, const Fd& fd, bool opener,
                                                 std::string channel, std::chrono::milliseconds callTimeout) {
  auto p = makePort(w, info, fd, opener, std::move(channel), callTimeout);
  if (!p) return p.error();
  return std::shared_ptr<Window::Impl>(std::move(*p));
}

Result<Fd> takePortFd(Window::Impl::PortHub& hub, std::uint64_t portId) { return takeFd(hub, portId); }

// ---- the window's side

void Window::Impl::endPort(std::uint32_t reason, ErrorCode code, const std::string& text, bool tell) {
  // Ended here first, so this side's own dispatcher, which may see the close word below before
  // this thread is done, finds the port closed and does not end it again as the peer's doing.
  const std::string why = fmt::format("{}: {}", portName(*this), text);
  const bool first = markClosed(why, code);
  std::uint32_t expected = kPortOpen;
  // SYNC POINT "port close": the release half publishes the reason to the peer's and the
  // supervisor's acquire loads (portEnded, Router); the acquire half reads a reason set first.
  (void)closeWord(link.segment->base())
      .compare_exchange_strong(expected, reason, std::memory_order_acq_rel, std::memory_order_acquire);
  // The peer parks on our outbox's data word or our inbox's space word; wakeAll's release
  // increment orders the close word before the wake-up (wait.hpp SYNC POINT seq).
  for (RingControl* c : {link.inbox.control(), link.outbox.control()}) {
    wakeAll(c->dataReady);
    wakeAll(c->spaceReady);
  }
  if (!first) return;
  if (auto h = port->hub.lock()) {
    std::lock_guard lk(h->mu);
    h->ports.erase(port->id);
    // Before the PortClose on the same outbox: the port's last calls reach the trace before its end.
    flushPortTraceLocked(*h);
    if (tell && h->window != nullptr) h->window->control(FrameKind::PortClose, 0, port->id);
  }
  std::vector<std::pair<std::uint64_t, PortCloseListener>> listeners;
  {
    std::lock_guard lk(port->mu);
    port->ended = Error{code, why};
    listeners.swap(port->closeListeners);
  }
  for (auto& [token, fn] : listeners) {
    try {
      fn(*port->ended);
    } catch (const std::exception& e) {
      log(LogLevel::Warn, "a close listener of {} threw: {}", portName(*this), e.what());
    }
  }
}

// ---- blobs (docs/architecture.md §17)

namespace {
/// Runs `attempt` (tryBuildBlob or tryCopyBlob on the end's arena) until it is not Full, waiting
/// for the peer's releases until `deadline`: the committed record's descriptor. Caller holds outMu.
template <typename Attempt>
Result<BlobDescriptor> claimBlob(Window::Impl& w, std::int64_t deadline, Attempt&& attempt) {
  for (;;) {
    if (w.closed.load(std::memory_order_acquire)) return makeError(w.closeCode(), w.busClosedMessage());  // pairs with markClosed
    Result<BlobDescriptor> d = attempt();
    if (d || d.code() != ErrorCode::Full) return d;
    Error why = d.error();
    const auto st = w.blobs.out.waitForRelease(deadline, w.spin, [&] {
      // acquire: pairs with markClosed; a port's close word: SYNC POINT "port close".
      return w.closed.load(std::memory_order_acquire) || w.portEnded();
    });
    if (st == WaitStatus::Timeout) {
      why.message = fmt::format("{} (the peer released nothing in time)", why.message);
      return why;
    }
  }
}

/// The deadline of a blob's waits: the frame's, else the end's blob timeout from now.
std::int64_t blobDeadline(const Window::Impl& w, const FrameHeader& h) {
  return h.deadlineNs != 0 ? h.deadlineNs : deadlineAfter(monotonicNowNs(), w.blobs.timeout);
}

/// Sends the descriptor of a committed blob in a kFlagBlob frame, waiting for ring room until
/// `deadline`; a descriptor that cannot be sent gives its record back. Caller holds outMu.
Result<void> sendBlob(Window::Impl& w, FrameHeader h, const BlobDescriptor& d, std::int64_t deadline) {
  h.flags |= kFlagBlob;
  for (;;) {
    auto r = writeFrameCopy(w.link.outbox, h, reinterpret_cast<const std::uint8_t*>(&d), sizeof d);
    if (r || r.code() != ErrorCode::Full || w.waitForSpace(deadline) == WaitStatus::Timeout ||
        w.closed.load(std::memory_order_acquire)) {  // acquire: pairs with markClosed
      if (!r) w.blobs.out.dropLast();
      return r;
    }
  }
}
}  // namespace

Result<void> Window::Impl::writeBlobLocked(const FrameHeader& h, const BuildFn& build,
                                           std::atomic<std::size_t>* payloadBytes) {
  const std::int64_t deadline = blobDeadline(*this, h);
  auto d = claimBlob(*this, deadline, [&] { return tryBuildBlob(blobs.out, build); });
  if (!d) return d.error();
  // relaxed: the ring's commit (SYNC POINT "record") publishes it with the frame, as writeFrame's.
  if (payloadBytes != nullptr) payloadBytes->store(d->bytes, std::memory_order_relaxed);
  // The ring's frame would have held the table, the segments and the two headers.
  blobs.note(h.channel, kRecordHeaderBytes + sizeof(FrameHeader) + d->bytes > link.outbox.geometry().maxRecord);
  return sendBlob(*this, h, *d, deadline);
}

Result<void> Window::Impl::writeBlobSegmentsLocked(const FrameHeader& h,
                                                   kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  const std::int64_t deadline = blobDeadline(*this, h);
  auto d = claimBlob(*this, deadline, [&] { return tryCopyBlob(blobs.out, segments); });
  if (!d) return d.error();
  return sendBlob(*this, h, *d, deadline);
}

Result<std::pair<const std::uint8_t*, std::size_t>> Window::Impl::payloadOf(const FrameView& f,
                                                                             BlobRecordHeader*& blob) {
  if ((f.header.flags & kFlagBlob) == 0) return std::pair{f.payload, f.payloadBytes};
  if (!hasBlobs()) return makeError(ErrorCode::InvalidMessage, "a blob frame where there is no blob arena");
  if (f.payloadBytes != sizeof(BlobDescriptor)) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("a blob frame of {} payload bytes (a descriptor is {})", f.payloadBytes,
                                 sizeof(BlobDescriptor)));
  }
  BlobDescriptor d;
  std::memcpy(&d, f.payload, sizeof d);  // copy before use: the peer may be hostile
  auto v = checkBlobDescriptor(d, blobs.in, blobs.inBytes);
  if (!v) {
    log(LogLevel::Warn, "{}: {}", port ? portName(*this) : std::string("a frame from the supervisor"), v.error().message);
    return v.error();
  }
  blob = v->record;
  return std::pair{v->message, v->bytes};
}

// ---- the trace of a port's calls and sends (docs/architecture.md §14 "Ports")

void Window::Impl::tracePort(const std::weak_ptr<PortHub>& weakHub, PortTraceRecord rec) {
  auto hub = weakHub.lock();
  if (!hub) return;  // the window is gone: nobody to send it
  bool full = false;
  {
    std::lock_guard lk(hub->traceMu);
    if (hub->traceBatch.empty()) {
      hub->traceSince = monotonicNowNs();
      // The watchdog, parked without a timeout, now polls for kPortTraceDelayNs at most.
      const std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(hub->traceKick.get(), &one, sizeof one);
    }
    hub->traceBatch.push_back(std::move(rec));
    full = hub->traceBatch.size() >= kPortTraceBatch;
  }
  if (full) {
    std::lock_guard lk(hub->mu);
    flushPortTraceLocked(*hub);
  }
}

std::function<void(const CallState&, const Result<Message>&)> Window::Impl::portCallTracer(const FrameHeader& h,
                                                                                            std::string channel) {
  PortTraceRecord base;
  base.portId = port->id;
  base.kind = TraceKind::Invoke;
  base.channelId = h.channel;
  base.channel = std::move(channel);
  base.traceId = h.traceId;
  base.startNs = monotonicNowNs();
  // The Port::Impl may be gone when the call ends (a caller that dropped its port keeps its
  // Call): the hook keeps what it needs, and the window's batch by a weak reference.
  return [hub = port->hub, base = std::move(base)](const CallState& s, const Result<Message>& r) {
    PortTraceRecord rec = base;
    rec.requestId = s.requestId;
    rec.endNs = monotonicNowNs();
    rec.requestBytes = static_cast<std::uint32_t>(s.requestBytes.load(std::memory_order_relaxed));  // see CallState
    if (r) {
      rec.replyBytes = s.replyBytes;
    } else {
      rec.status = r.code();
      rec.error = r.error().message;
    }
    tracePort(hub, std::move(rec));
  };
}

void Window::Impl::flushPortTraceLocked(PortHub& hub) {
  std::vector<PortTraceRecord> batch;
  {
    std::lock_guard lk(hub.traceMu);
    batch.swap(hub.traceBatch);
  }
  if (batch.empty() || hub.window == nullptr) return;
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(FrameKind::PortTrace);
  // No wait for room: tracing never holds up a caller; a batch that does not fit is dropped.
  auto r = hub.window->writeOut(h, [&](Builder& b) {
    auto list = b.initRoot<schema::PortTrace>().initRecords(static_cast<unsigned>(batch.size()));
    for (unsigned i = 0; i < list.size(); ++i) {
      const PortTraceRecord& rec = batch[i];
      auto row = list[i];
      row.setPortId(rec.portId);
      row.setKind(static_cast<std::uint16_t>(rec.kind));
      row.setChannelId(rec.channelId);
      row.setChannel(rec.channel);
      row.setRequestId(rec.requestId);
      row.setTraceId(rec.traceId);
      row.setStartNs(rec.startNs);
      row.setEndNs(rec.endNs);
      row.setStatus(static_cast<std::uint16_t>(rec.status));
      row.setError(rec.error.size() <= kTraceErrorMax ? rec.error : rec.error.substr(0, kTraceErrorMax));
      row.setRequestBytes(rec.requestBytes);
      row.setReplyBytes(rec.replyBytes);
    }
  }, 0, 0);
  if (!r) hub.window->log(LogLevel::Debug, "dropped {} port trace records: {}", batch.size(), r.error().message);
}

void Window::Impl::onPortEnded() {
  if (closed.load(std::memory_order_acquire)) return;  // acquire: pairs with markClosed
  // acquire: SYNC POINT "port close".
  const std::uint32_t reason = closeWord(link.segment->base()).load(std::memory_order_acquire);
  endPort(reason, ErrorCode::TargetGone, portCloseText(reason, port->opener), true);
}

void Window::Impl::endPortCorrupt(const Error& e) {
  log(LogLevel::Warn, "{}: the peer's ring is corrupt: {}", portName(*this), e.message);
  endPort(port->opener ? kPortCorruptAtOpener : kPortCorruptAtAcceptor, ErrorCode::Corrupt,
          "the peer's ring is corrupt: " + e.message, true);
}

void Window::Impl::closePorts() {
  if (!hub) return;
  std::vector<std::shared_ptr<Impl>> open;
  {
    std::lock_guard lk(hub->mu);
    hub->window = nullptr;
    for (auto& [id, weak] : hub->ports) {
      if (auto p = weak.lock()) open.push_back(std::move(p));
    }
    hub->ports.clear();
    hub->acceptors.clear();
    hub->fds.clear();
  }
  for (auto& p : open) {
    p->endPort(p->port->opener ? kPortOpenerGone : kPortAcceptorGone, ErrorCode::BusClosed, "this window closed", false);
  }
}

void Window::Impl::onPortOffer(const FrameView& f, InPlaceMessage& msg) {
  const std::uint64_t portId = f.header.requestId;
  const std::string name = callbacks->name(f.header.channel);
  auto reject = [&](Error e) {
    FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(FrameKind::PortReject);
    h.channel = f.header.channel;
    h.requestId = portId;
    h.status = static_cast<std::uint32_t>(e.code);
    (void)writeOut(h, [&](Builder& b) { buildErrorInfo(b, e); }, 0, monotonicNowNs() + 1'000'000'000);
  };
  const std::string what = fmt::format("port {} on '{}' to window {} (role '{}')", portId, name, link.id, link.role);
  // The descriptor first, whatever comes next: a refused port must not leave it filed.
  auto fd = takeFd(*hub, portId);
  if (!fd) return reject(makeError(fd.code(), what + ": " + fd.error().message));
  PortListener fn;
  {
    std::lock_guard lk(hub->mu);
    if (auto it = hub->acceptors.find(f.header.channel); it != hub->acceptors.end()) fn = it->second.fn;
  }
  if (!fn) return reject(makeError(ErrorCode::NoHandler, what + ": no onPort listener"));
  if (msg.empty()) return reject(makeError(ErrorCode::InvalidMessage, what + ": the offer has no description"));
  auto info = readWelcome(msg.reader());
  if (!info) return reject(makeError(ErrorCode::InvalidMessage, what + ": " + info.error().message));
  info->portId = portId;
  auto p = makePort(*this, *info, *fd, false, name, kDefaultTimeout);
  if (!p) return reject(makeError(p.code(), what + ": " + p.error().message));
  // Held here until the answer is written: a listener that throws must not close the port (and
  // report TargetGone) before the refusal says why.
  auto handle = std::make_shared<Port>(*p);
  try {
    fn(handle);
  } catch (const std::exception& e) {
    reject(makeError(ErrorCode::HandlerError, fmt::format("{}: the onPort listener threw: {}", what, e.what())));
    (*p)->endPort(kPortClosedByAcceptor, ErrorCode::Cancelled, "the onPort listener threw", false);
    return;
  }
  // The listener returned (its handlers are in place): the opener may now use the port. A port
  // the listener closed was reported as such (PortClose); one it did not keep closes below.
  // acquire: pairs with markClosed's release store.
  if (!(*p)->closed.load(std::memory_order_acquire)) control(FrameKind::PortAccept, f.header.channel, portId);
}

Result<std::shared_ptr<Port>> Window::openPort(const Target& target, const Channel& channel, PortOptions options) {
  if (target.isMain()) {
    return makeError(ErrorCode::NoTarget, fmt::format("open port on '{}': ports connect two windows, and the main "
                                                      "process is not one",
                                                      channel.name));
  }
  if (auto v = validateTarget(target); !v) return v.error();
  const std::uint32_t ring = options.ringBytes != 0 ? options.ringBytes : kDefaultPortRingBytes;
  if (auto v = checkRingSizes(ring, ring); !v) return v.error();
  auto callTimeout = checkCallTimeout(options.callTimeout, "PortOptions::callTimeout");
  if (!callTimeout) return callTimeout.error();
  if (options.blobBytes > kMaxPortBlobBytes) {
    return makeError(ErrorCode::InvalidArgument, fmt::format("open port on '{}': PortOptions::blobBytes {} is more "
                                                             "than {}", channel.name, options.blobBytes,
                                                             kMaxPortBlobBytes));
  }
  CallOptions co;
  // 0 = kDefaultTimeout, never a window call's "the channel's default": the router keeps the
  // open's deadline too (a negative one fails in invokeImpl with InvalidArgument).
  co.timeout = options.timeout.count() != 0 ? options.timeout : kDefaultTimeout;
  Call call = impl_->invokeImpl(
      target, channel,
      [ring, blob = options.blobBytes](Builder& b) {
        // A port's rings are asked for as a window's are.
        auto h = b.initRoot<schema::Hello>();
        h.setInboxBytes(ring);
        h.setOutboxBytes(ring);
        h.setBlobBytes(blob);
      },
      co, FrameKind::PortOpen);
  auto reply = call.get();
  if (!reply) return reply.error();
  Result<WelcomeInfo> info = makeError(ErrorCode::InvalidMessage, "empty");
  try {
    info = readWelcome(reply->reader());
  } catch (const std::exception& e) {
    info = makeError(ErrorCode::InvalidMessage, e.what());
  }
  if (!info) return info.error();
  const std::uint64_t portId = info->portId;
  auto fd = takeFd(*impl_->hub, portId);
  Result<std::shared_ptr<Port::Impl>> p = fd ? makePort(*impl_, *info, *fd, true, std::string(channel.name),
                                                        callTimeout->count() != 0 ? *callTimeout : kDefaultTimeout)
                                             : Result<std::shared_ptr<Port::Impl>>(fd.error());
  if (!p) {
    impl_->control(FrameKind::PortClose, 0, portId);  // the acceptor must not wait for us
    return makeError(p.code(), fmt::format("open port on '{}' to {}: {}", channel.name, target.describe(),
                                           p.error().message));
  }
  return std::make_shared<Port>(*p);
}

Registration Window::onPort(const Channel& channel, PortListener listener) {
  auto hub = impl_->hub;
  std::uint64_t token = 0;
  {
    std::lock_guard lk(hub->mu);
    token = hub->nextToken++;
    hub->acceptors[channel.id] = Impl::PortHub::Acceptor{token, std::move(listener)};
  }
  impl_->callbacks->rememberName(channel.id, channel.name);
  // The name first, so the supervisor's policy can judge openers by it (docs/architecture.md §15).
  {
    std::lock_guard lk(impl_->outMu);
    (void)impl_->internLocked(channel.id, channel.name, false);
  }
  impl_->control(FrameKind::PortListen, channel.id);
  Impl* raw = impl_.get();
  return Registration([hub, raw, token, id = channel.id] {
    std::lock_guard lk(hub->mu);
    auto it = hub->acceptors.find(id);
    if (it == hub->acceptors.end() || it->second.token != token) return;
    hub->acceptors.erase(it);
    if (hub->window == raw) raw->control(FrameKind::PortUnlisten, id);
  });
}

// ---- the Port facade

Port::Port(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Port::~Port() { close(); }

std::uint64_t Port::id() const noexcept { return impl_->port->id; }
const std::string& Port::channel() const noexcept { return impl_->port->channel; }
std::uint32_t Port::peerId() const noexcept { return impl_->port->peerId; }
const std::string& Port::peerRole() const noexcept { return impl_->port->peerRole; }
bool Port::isOpener() const noexcept { return impl_->port->opener; }

Result<void> Window::Impl::portSend(const Target& t, const Channel& channel, const BuildFn& build,
                                    std::atomic<std::size_t>* payloadBytes) {
  Result<void> r;
  if (!port->tracing()) {
    r = sendImpl(t, channel, build, payloadBytes);
  } else {
    // Traced (an inspector is attached): the same send, measured and recorded by this end.
    PortTraceRecord rec;
    rec.portId = port->id;
    rec.channelId = channel.id;
    rec.channel = std::string(channel.name);
    rec.traceId = currentTraceId();
    rec.startNs = rec.endNs = monotonicNowNs();
    std::atomic<std::size_t> bytes{0};
    std::atomic<std::size_t>* counted = payloadBytes != nullptr ? payloadBytes : &bytes;
    r = sendImpl(t, channel, build, counted);
    rec.requestBytes = static_cast<std::uint32_t>(counted->load(std::memory_order_relaxed));  // this thread's store
    if (!r) {
      rec.status = r.code();
      rec.error = r.error().message;
    }
    tracePort(port->hub, std::move(rec));
  }
  if (!r && r.code() == ErrorCode::Corrupt) endPortCorrupt(r.error());
  return r;
}

Result<void> Port::send(const Channel& channel, const BuildFn& build) {
  // Ended by the peer or the supervisor but not yet seen by a dispatcher: end it here, so the
  // message fails instead of going into a ring nobody reads.
  if (impl_->portEnded()) impl_->onPortEnded();
  return impl_->portSend(Target(impl_->port->peerId), channel, build);
}

Call Port::invoke(const Channel& channel, const BuildFn& build, CallOptions options) {
  if (impl_->portEnded()) impl_->onPortEnded();  // as in send()
  Call call = impl_->invokeImpl(Target(impl_->port->peerId), channel, build, options);
  // A write refused as Corrupt (the peer scribbled this side's ring indices) fails at once: the
  // port ends here, outside the outbox lock, as for send().
  if (call.ready()) {
    if (auto r = call.get(); !r && r.code() == ErrorCode::Corrupt) impl_->endPortCorrupt(r.error());
  }
  return call;
}

Registration Port::on(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), false);
}

Registration Port::once(const Channel& channel, Listener listener) {
  return impl_->callbacks->addListener(channel, std::move(listener), true);
}

Registration Port::handle(const Channel& channel, Handler handler) {
  return impl_->callbacks->setHandler(channel, std::move(handler));
}

Registration Port::handleAsync(const Channel& channel, AsyncHandler handler) {
  return impl_->callbacks->setAsyncHandler(channel, std::move(handler));
}

Registration Port::onClose(PortCloseListener listener) {
  auto& side = *impl_->port;
  std::unique_lock lk(side.mu);
  if (side.ended) {
    const Error why = *side.ended;
    lk.unlock();
    listener(why);
    return Registration();
  }
  const std::uint64_t token = side.nextListener++;
  side.closeListeners.emplace_back(token, std::move(listener));
  std::weak_ptr<Impl> weak = impl_;
  return Registration([weak, token] {
    auto p = weak.lock();
    if (!p) return;
    std::lock_guard lk(p->port->mu);
    auto& v = p->port->closeListeners;
    std::erase_if(v, [&](const auto& e) { return e.first == token; });
  });
}

void Port::start() {
  SHMBUS_REQUIRE(!impl_->dispatcher.joinable(), "the port's dispatch thread is already running");
  // The thread keeps the port's state alive: a Port dropped by one of its own callbacks ends
  // the loop, and the state goes with the thread.
  std::shared_ptr<Impl> self = impl_;
  impl_->dispatcher = startDispatcher(impl_->gate, [self] { self->runLoop(); });
}

Result<void> Port::poll(std::chrono::milliseconds timeout) { return impl_->pollFor(timeout, "Port::poll"); }

void Port::close() {
  impl_->endPort(impl_->port->opener ? kPortClosedByOpener : kPortClosedByAcceptor, ErrorCode::Cancelled,
                 "this side closed it", true);
  std::lock_guard lk(impl_->port->joinMu);
  if (!impl_->dispatcher.joinable()) return;
  if (impl_->dispatcher.get_id() == std::this_thread::get_id()) {
    impl_->dispatcher.detach();  // closed from one of its callbacks: the loop ends on return
  } else {
    impl_->dispatcher.join();
  }
}

BlobStats Port::blobStats() const { return impl_->blobStats(); }

BlobStats Window::Impl::blobStats() {
  std::lock_guard lk(outMu);
  BlobProducer& a = blobs.out;
  if (!a.valid()) return {};
  a.reclaim();
  return BlobStats{a.bytesHeld(), a.messagesHeld(), a.bytesHighWater(), a.arenaBytes()};
}

bool Port::closed() const noexcept {
  return impl_->closed.load(std::memory_order_acquire);  // acquire: pairs with markClosed's release store
}

}  // namespace shmbus
