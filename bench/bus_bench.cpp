// Bus-level benchmarks (issues 3, 4, 5, 9), each against baselines measured in the same run:
//
//   PingPong/ring_spin|ring_parked/<bytes>         the foundation's ring round trip (baseline)
//   Invoke/window_to_main/<bytes>/spin|parked      Window::invoke → Supervisor::handle (2 processes)
//   Invoke/window_to_window_routed/<bytes>/spin|parked
//   Invoke/window_to_window_direct/64/spin|parked|learned|learned_1ms|parked_1ms
//                                                  invokeIn over a direct route (docs/architecture.md §19):
//                                                  window to window, the supervisor out of the path
//   Stream/window_to_window_direct/64              sendTo with direct routes on (the first message routed)
//   Stream/direct_stream/65536                     the routed 1 GiB chunk stream with direct routes on
//   Invoke/port/64/spin|parked                     Port::invoke → Port::handle, window to window over a
//                                                  port (no supervisor in the path)
//                                                  Window::invokeIn → supervisor → Window::handle (3 processes;
//                                                  "spin" = the default 4 µs budget: 3 spinners on 2 cores starve)
//   Invoke/window_to_main_blob/<bytes>/default     the same to a Supervisor::handle (the window's own arena)
//   Invoke/window_to_window_direct_blob/<bytes>/default  the same over a direct route (the route port's arenas)
//   Invoke/port_blob/<bytes>/default|spin          a request of <bytes> (allocated, not filled) answered with
//                                                  its size, over a port: larger than the ring, it is a blob;
//                                                  "default": every wait policy the default (4 µs spin, the
//                                                  caller's learned reply spin); "spin": both ends never park
//   Invoke/<route>/64/learned                      the default wait policy of every process (4 µs spin) and the
//                                                  caller's learned reply spin (replySpinCap 50 µs, the default)
//   Invoke/window_to_window_routed/64/learned_1ms|parked_1ms, PingPong/ring_parked/64/1ms,
//   Invoke/dbus_method/64/1ms                      calls spaced 1 ms apart (untimed): every process parks
//                                                  between calls, the figure of sporadic desktop traffic
//   Invoke/dbus_method/<bytes>                     the desktop-bus peer: sd-bus method call Echo(ay) → ay,
//                                                  client → private dbus-daemon → server and back (3 processes)
//   Invoke/window_to_main_typed/<bytes>/parked     the same call through capnpc-shmbus stubs, vs
//   Invoke/window_to_main_untyped/<bytes>/parked   the untyped API with the same payload struct
//   Stream/window_to_main/64                       Window::send of 64 B payloads, a Supervisor::on listener counts
//   Stream/window_to_window_routed/64              Window::sendTo → supervisor → Window::on, with credits (below)
//   Stream/port/64                                 Port::send → Port::on, window to window over a port
//   Stream/dbus_signal/64                          sd-bus signal Tick(ay) of 64 B → dbus-daemon → subscriber
//   Stream/port_stream|routed_stream/65536         a shmbus::Stream of 1 GiB in 64 KiB chunks (credit-based flow
//                                                  control), over a port or routed; bytes_per_s
//   Stream/memcpy/67108864                         single-core memcpy bandwidth, the baseline of the chunk streams
//   Message/build_read_in_place/1024               build a ~1 KiB struct in a ring claim and read it in place
//   Message/build_read_malloc_copy/1024            MallocMessageBuilder + flat-array copy + reader
//
// Counters: p50_ns, p99_ns (per round trip), msgs_per_s (round trips/s, or messages/s for Stream);
// Stream adds full_retries (sends refused with Full and retried), credit_waits (routed: times the
// sender waited for credit) and dbus_flushes (D-Bus: sends that stayed queued in the client, so the
// client blocked in sd_bus_flush). bench/compare.py prints the ratios, also against D-Bus.
//
// Pinning rule: the two ENDPOINTS of a measurement are pinned to different CPUs (the caller or
// sender, i.e. the benchmark process, to CPU 0; the process that answers or receives to CPU 1); a
// ROUTER in the middle is never pinned. A pinned router turns every hop through it into a
// cross-CPU wake-up (docs/architecture.md §13, 2026-12-04: routed call 142 µs pinned, 83-87 µs unpinned).
//   window → main:   caller CPU 0, supervisor CPU 1 (the supervisor's handler/listener is the
//                    other endpoint, so here it is pinned)
//   window → window: caller CPU 0, target window CPU 1, supervisor unpinned (the router)
//   port:            caller CPU 0, target window CPU 1 (its port's dispatch thread), supervisor
//                    unpinned and idle (it opened the port; it is not in the path)
//   D-Bus:           client CPU 0, server/subscriber CPU 1, dbus-daemon unpinned (the router)
//   ring PingPong:   CPU 0 and CPU 1 (no router)
//
// No stream message may be lost, and every one is checked for its sequence number at the
// receiver. A full ring makes send/sendTo return Full (nothing written): the sender yields and
// retries. A routed send that finds the TARGET's inbox full is dropped by the supervisor (counted
// as undeliverable, never reported to the sender), so the routed stream runs under credit-based
// flow control: the target sends one "stream-credit" message back per kCreditBatch messages, and
// the sender keeps at most kCreditWindow messages in flight, which fit in the target's inbox.
// Processes synchronise on events (EventPipe, Window::poll), never on sleeps; a Watchdog ends a
// run that hangs (a lost message) after 60 s.
#include <benchmark/benchmark.h>
#include <capnp/serialize.h>

#include <fmt/format.h>

#include <sched.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <optional>
#include <utility>
#include <string>

#include "bench_support.hpp"
#include "dbus_peer.hpp"
#include "bus_bench.capnp.h"
#include "bus_bench.shmbus.h"
#include "control/socket.hpp"
#include "message/message.hpp"
#include "ring/ring.hpp"
#include "segment/segment.hpp"
#include "shmbus/inspect.hpp"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace shmbus::bench;
using detail::RingConsumer;
using detail::RingGeometry;
using detail::RingProducer;

namespace {

constexpr std::chrono::nanoseconds kSpinLong = std::chrono::milliseconds(20);  // never parks between calls
constexpr std::chrono::nanoseconds kParkNow{0};

std::string uniqueName(const char* what) {
  static int n = 0;
  return fmt::format("bench-{}-{}-{}", what, ::getpid(), n++);
}

void finish(benchmark::State& state, std::vector<std::uint64_t>& ticks, double totalNs) {
  const Percentiles p = percentiles(ticks);
  state.counters["p50_ns"] = p.p50Ns;
  state.counters["p99_ns"] = p.p99Ns;
  state.counters["msgs_per_s"] = totalNs > 0 ? static_cast<double>(ticks.size()) * 1e9 / totalNs : 0;
}

/// Sleeps `gap` (nothing when zero): the caller of a spaced row lets every process park.
void pause(std::chrono::nanoseconds gap) {
  if (gap.count() <= 0) return;
  timespec ts{static_cast<time_t>(gap.count() / 1'000'000'000), static_cast<long>(gap.count() % 1'000'000'000)};
  while (::clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

/// Times `roundTrip()` per iteration (manual time). `gap` > 0: the calls are spaced that far apart
/// (untimed), so that every process has parked before each call: the figure of sporadic traffic.
template <typename F>
void timeLoop(benchmark::State& state, F&& roundTrip, std::chrono::nanoseconds gap = {}) {
  std::vector<std::uint64_t> ticks;
  ticks.reserve(1 << 20);
  // Warm-up: page faults, caches, first wake-ups (and, spaced, the learned reply spin).
  for (int i = 0; i < (gap.count() > 0 ? 50 : 200); ++i) {
    roundTrip();
    pause(gap);
  }
  const double nsTick = nsPerTick();
  double total = 0;
  for (auto _ : state) {
    pause(gap);
    const std::uint64_t t0 = ticksNow();
    roundTrip();
    const std::uint64_t dt = ticksNow() - t0;
    ticks.push_back(dt);
    const double ns = static_cast<double>(dt) * nsTick;
    total += ns;
    state.SetIterationTime(ns / 1e9);
  }
  finish(state, ticks, total);
}

// ---- baseline: the foundation's ring ping-pong (one record each way)

/// The next record of `in`, waiting with `policy`. hasData() is also true for the padding a
/// producer commits at the ring's end before the record itself (ring.hpp), which tryRead skips:
/// then it finds nothing yet, and the wait goes on.
detail::RecordView nextRecord(RingConsumer& in, const detail::SpinPolicy& policy, const char* who) {
  for (;;) {
    while (!in.hasData()) in.wait(detail::kNoDeadline, policy, [] { return false; });
    auto r = in.tryRead();
    if (!r) fatal(fmt::format("{}: read failed: {}", who, r.error().message).c_str());
    if (*r) return **r;
  }
}

void ringPingPong(benchmark::State& state, std::size_t bytes, detail::SpinPolicy policy,
                  std::chrono::nanoseconds gap = {}) {
  const RingGeometry g{1u << 20, 1u << 18};
  const std::string name = detail::Segment::makeName(uniqueName("ring"), 0);
  auto seg = detail::Segment::create(name, 2 * detail::ringFootprint(g.capacity) + 4096);
  if (!seg) return state.SkipWithError(seg.error().message.c_str());
  detail::Segment::unlink(name);
  std::uint8_t* base = seg->base() + 4096;  // after the header, cache-line aligned
  auto* ctlA = reinterpret_cast<detail::RingControl*>(base);
  auto* ctlB = reinterpret_cast<detail::RingControl*>(base + detail::ringFootprint(g.capacity));
  auto* dataA = base + sizeof(detail::RingControl);
  auto* dataB = base + detail::ringFootprint(g.capacity) + sizeof(detail::RingControl);
  const std::int64_t total = static_cast<std::int64_t>(state.max_iterations) + (gap.count() > 0 ? 50 : 200);
  Partner echo = Partner::spawn(kPartnerCpu, [&] {
    RingConsumer in(ctlA, dataA, g);
    RingProducer out(ctlB, dataB, g);
    for (std::int64_t i = 0; i < total; ++i) {
      const detail::RecordView r = nextRecord(in, policy, "ring echo");
      auto c = out.tryClaim(r.bodyBytes);
      if (!c) fatal("ring echo: claim failed");
      std::memcpy(c->body, r.body, r.bodyBytes);
      out.publish(*c, r.bodyBytes);
      in.releaseAll();
    }
  });
  ScopedPin pin(kMainCpu);
  RingProducer out(ctlA, dataA, g);
  RingConsumer in(ctlB, dataB, g);
  std::vector<std::uint8_t> payload = touchedBuffer(bytes, 0x5a);
  timeLoop(state, [&] {
    auto c = out.tryClaim(bytes);
    if (!c) fatal("ring ping: claim failed");
    std::memcpy(c->body, payload.data(), bytes);
    out.publish(*c, bytes);
    const detail::RecordView r = nextRecord(in, policy, "ring ping");
    benchmark::DoNotOptimize(r.body[0]);
    in.releaseAll();
  }, gap);
}

// ---- bus processes

constexpr std::size_t kStreamBytes = 64;       ///< payload of every Stream message (as D-Bus signals)
constexpr std::uint64_t kCreditBatch = 256;    ///< routed stream: messages per credit message
/// Routed stream: messages the sender may have in flight. A routed 64 B record is about 170 bytes
/// (64-byte frame header, record header, Cap'n Proto framing), so 2048 of them are about a third
/// of the default 1 MiB inbox: the supervisor never finds the target's inbox full.
constexpr std::uint64_t kCreditWindow = 2048;
constexpr unsigned kWatchdogSeconds = 60;

/// Writes `seq` into the first 8 bytes of a stream payload.
void putSeq(std::uint8_t* payload, std::uint64_t seq) noexcept { std::memcpy(payload, &seq, sizeof seq); }

/// Counts stream messages at the receiving endpoint and checks each one: payload size
/// kStreamBytes, sequence number the next one (from 1). Used on the receiver's dispatch thread.
struct StreamCheck {
  std::uint64_t expected = 0;  ///< messages the run sends (0: this process takes no stream)
  std::size_t bytes = kStreamBytes;  ///< the size of each message's data
  std::uint64_t received = 0;
  std::uint64_t errors = 0;

  /// Checks one message; returns true when it was the last expected one.
  bool take(const Message& m) {
    auto d = m.root<benchschema::Echo::EchoParams>().getData();
    std::uint64_t seq = 0;
    if (d.size() != bytes) {
      ++errors;
    } else {
      std::memcpy(&seq, d.begin(), sizeof seq);
      errors += seq != received + 1;
    }
    return ++received == expected;
  }
};

/// Echoes `echo-untyped` requests (the untyped handler of the benchmarks).
void echoUntyped(const Message& req, Builder& reply, const CallContext&) {
  reply.initRoot<benchschema::Echo::EchoResults>().setData(req.root<benchschema::Echo::EchoParams>().getData());
}

/// Answers a request of any size with its data's size (8 bytes): the large-request rows
/// (Invoke/port_blob), whose reply must stay small.
void sizeUntyped(const Message& req, Builder& reply, const CallContext&) {
  const std::uint64_t n = req.root<benchschema::Echo::EchoParams>().getData().size();
  reply.initRoot<benchschema::Echo::EchoResults>().setData(
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(&n), sizeof n));
}

/// A supervisor in a partner process on `cpu` (kPartnerCpu when it is an endpoint, kUnpinned when
/// it routes between two windows), echoing `echo` calls (typed and untyped handlers share the
/// channel's payload struct) and counting `stream` sends. Notifies `ev` once it listens (value 1)
/// and, when `streamCount` > 0, again after the last stream message, with the number of bad ones.
/// Runs until killed (Partner's destructor).
Partner spawnSupervisor(const std::string& bus, std::chrono::nanoseconds spin, int cpu, const EventPipe& ev,
                        std::uint64_t streamCount = 0, bool direct = false) {
  return Partner::spawn(cpu, [&, bus, spin, streamCount, direct] {
    SupervisorOptions o;
    o.bus = bus;
    o.spin = spin;
    o.directRoutes = direct;
    o.logLevel = LogLevel::Error;
    auto sup = Supervisor::create(o);
    if (!sup) fatal("supervisor create failed");
    auto untyped = (*sup)->handle("echo-untyped", echoUntyped);
    auto sized = (*sup)->handle("size-untyped", sizeUntyped);
    auto typed = benchschema::EchoHandlers::handleEcho(**sup, [](auto params, auto results) {
      results.setData(params.getData());
    });
    StreamCheck check{streamCount};
    auto stream = (*sup)->on("stream", [&](const Message& m, const CallContext&) {
      if (check.take(m)) ev.notify(check.errors);
    });
    ev.notify(1);
    (*sup)->run();
  });
}

/// The target window of a routed call or stream (role "echo"), in a partner process pinned to
/// kPartnerCpu: echoes `echo-untyped` calls and counts `stream` messages, sending one
/// `stream-credit` back to the sender per kCreditBatch of them. Notifies `ev` once connected with
/// its handler and listener registered (value 1) and, when `streamCount` > 0, again after the last
/// stream message with the number of bad ones. Runs until killed.
Partner spawnTarget(const std::string& bus, std::chrono::nanoseconds spin, const EventPipe& ev,
                    std::uint64_t streamCount = 0, std::size_t streamBytes = kStreamBytes) {
  return Partner::spawn(kPartnerCpu, [&, bus, spin, streamCount, streamBytes] {
    WindowOptions o;
    o.bus = bus;
    o.role = "echo";
    o.spin = spin;
    std::unique_ptr<Window> w;
    for (int i = 0; i < 5000 && !w; ++i) {
      auto c = Window::connect(o);
      if (c) w = std::move(*c);
    }
    if (!w) fatal("target window connect failed");
    auto h = w->handle("echo-untyped", echoUntyped);
    auto sized = w->handle("size-untyped", sizeUntyped);  // Invoke/window_to_window_direct_blob
    // Invoke/port rows: the caller opens a port on "bench-port"; its calls are echoed on the
    // port's own dispatch thread (this process, so this CPU), with no supervisor in the path.
    StreamCheck check{streamCount, streamBytes};
    // Stream/{port,routed}_stream rows: each write of a shmbus::Stream is a call on "chunk",
    // acknowledged by returning (an empty reply).
    const Handler chunk = [&](const Message& m, Builder&, const CallContext&) {
      if (check.take(m)) ev.notify(check.errors);
    };
    auto routedChunks = w->handle("chunk", chunk);
    std::vector<std::shared_ptr<Port>> ports;
    std::vector<Registration> portHandlers;
    auto acceptPorts = w->onPort("bench-port", [&](std::shared_ptr<Port> p) {
      portHandlers.push_back(p->handle("echo-untyped", echoUntyped));
      portHandlers.push_back(p->handle("size-untyped", sizeUntyped));
      portHandlers.push_back(p->handle("chunk", chunk));
      // Stream/port/64: the stream arrives on the port (no credits: a full port ring refuses).
      portHandlers.push_back(p->on("stream", [&](const Message& m, const CallContext&) {
        if (check.take(m)) ev.notify(check.errors);
      }));
      p->start();
      ports.push_back(std::move(p));
    });
    auto stream = w->on("stream", [&](const Message& m, const CallContext& ctx) {
      const bool last = check.take(m);
      if (check.received % kCreditBatch == 0) {
        const Target sender(ctx.sourceWindowId);
        for (;;) {
          auto r = w->sendTo(sender, "stream-credit");
          if (r) break;
          if (r.code() != ErrorCode::Full) fatal("target: sending credit failed");
          ::sched_yield();
        }
      }
      if (last) ev.notify(check.errors);
    });
    (void)w->send("target-ready");
    ev.notify(1);
    w->run();
  });
}

/// An inspector in a partner process of its own (unpinned, like `shmbus-inspect BUS tail` would
/// run): attaches to `bus`, notifies `ev` (value 1) and reads every event until killed, so the
/// supervisor records them all. The traced rows' third party.
Partner spawnInspector(const std::string& bus, const EventPipe& ev) {
  return Partner::spawn(kUnpinned, [&, bus] {
    auto insp = Inspector::attach(bus);
    if (!insp) fatal("inspector attach failed");
    ev.notify(1);
    std::uint64_t events = 0;
    for (;;) {
      auto e = (*insp)->next(std::chrono::milliseconds(1000));
      if (!e) return;  // the bus is gone
      if (*e) benchmark::DoNotOptimize(events += (*e)->seq);
    }
  });
}

/// The processes of one bus run: a supervisor, and for routed runs a target window. Started by
/// start(), which returns false (with `error` set) when one of them does not come up; killed and
/// reaped by the destructors of the Partners.
struct BusProcesses {
  std::string bus = uniqueName("bus");
  EventPipe supEvents, targetEvents, inspectorEvents;
  std::optional<Partner> sup, target, inspector;
  std::string error;

  /// Starts the supervisor (pinned to kPartnerCpu, or unpinned when `routed`: it is then the router)
  /// and, when `routed`, the target window on kPartnerCpu, waiting until each is ready.
  /// `streamCount` > 0 makes the receiving endpoint count that many stream messages. `traced`
  /// attaches an inspector (spawnInspector) before any window connects.
  /// `direct`: SupervisorOptions::directRoutes (docs/architecture.md §19).
  bool start(bool routed, std::chrono::nanoseconds spin, std::uint64_t streamCount, bool traced = false,
             std::size_t streamBytes = kStreamBytes, bool direct = false) {
    sup.emplace(spawnSupervisor(bus, spin, routed ? kUnpinned : kPartnerCpu, supEvents, routed ? 0 : streamCount, direct));
    supEvents.closeWriter();
    if (!supEvents.wait()) {
      error = "supervisor failed to start";
      return false;
    }
    if (traced) {
      inspector.emplace(spawnInspector(bus, inspectorEvents));
      inspectorEvents.closeWriter();
      if (!inspectorEvents.wait()) {
        error = "inspector failed to attach";
        return false;
      }
    }
    if (routed) {
      target.emplace(spawnTarget(bus, spin, targetEvents, streamCount, streamBytes));
      targetEvents.closeWriter();
      if (!targetEvents.wait()) {
        error = "target window failed to start";
        return false;
      }
    }
    return true;
  }

  /// The receiving endpoint's second event: the number of bad stream messages, or nullopt when it
  /// exited first.
  std::optional<std::uint64_t> streamDone(bool routed) { return (routed ? targetEvents : supEvents).wait(); }

  ~BusProcesses() {
    if (auto path = detail::socketPath(bus)) ::unlink(path->c_str());
  }
};

/// The benchmark process's window (role "caller") on `bus`, with spin budget `spin` and
/// WindowOptions::replySpinCap `replySpinCap`.
Result<std::unique_ptr<Window>> connectCaller(const std::string& bus, std::chrono::nanoseconds spin,
                                              std::chrono::nanoseconds replySpinCap = {}) {
  WindowOptions o;
  o.bus = bus;
  o.role = "caller";
  o.spin = spin;
  o.replySpinCap = replySpinCap;
  return Window::connect(o);
}

/// A port from `win` to the target window on "bench-port", asked again while the target has not
/// registered its onPort yet (NoHandler).
Result<std::shared_ptr<Port>> openBenchPort(Window& win, PortOptions options = {}) {
  for (;;) {
    auto p = win.openPort("echo", "bench-port", options);
    if (p || p.code() != ErrorCode::NoHandler) return p;
  }
}

/// Direct: routed with SupervisorOptions::directRoutes, warmed until the route is granted.
/// MainBlob: large requests to main (blobs in the window's own arena, docs/architecture.md §17);
/// DirectBlob: large requests over a direct route (blobs in the route port's arenas).
enum class Route { ToMain, Routed, Direct, Typed, Port, PortBlob, MainBlob, DirectBlob };

/// One call round trip per iteration over `route`; `traced`: with an inspector reading every
/// event the supervisor records (the cost of tracing, issue "The inspector" item 5).
/// `replySpinCap`: the caller's WindowOptions::replySpinCap (0 in the spin/parked rows, so that
/// they measure the named policy alone; kLearnedCap in the "learned" rows). `gap`: see timeLoop.
void invoke(benchmark::State& state, Route route, std::size_t bytes, std::chrono::nanoseconds spin,
            bool traced = false, std::chrono::nanoseconds replySpinCap = {}, std::chrono::nanoseconds gap = {}) {
  Watchdog dog("Invoke", kWatchdogSeconds);
  BusProcesses procs;
  const bool direct = route == Route::Direct || route == Route::DirectBlob;
  const bool twoWindows = route == Route::Routed || direct || route == Route::Port || route == Route::PortBlob;
  if (!procs.start(twoWindows, spin, 0, traced, kStreamBytes, direct)) {
    return state.SkipWithError(procs.error.c_str());
  }
  ScopedPin pin(kMainCpu);
  if (!pin.ok()) return state.SkipWithError("cannot pin to CPU 0");
  auto w = connectCaller(procs.bus, spin, replySpinCap);
  if (!w) return state.SkipWithError(w.error().toString().c_str());
  Window& win = **w;
  std::vector<std::uint8_t> payload = touchedBuffer(bytes, 0x5a);
  auto build = [&](Builder& b) {
    b.initRoot<benchschema::Echo::EchoParams>().setData(kj::arrayPtr(payload.data(), bytes));
  };
  benchschema::EchoClient client(win);
  bool failed = false;
  std::string firstError;  // the PortBlob rows report why a call failed
  // A routed call may race the target's handler registration: wait until it answers. The
  // DirectBlob rows warm their route with small requests: a large one written in full would
  // leave the arena's pages holding data, which each later claim zeroes (§17), where the timed
  // requests touch two bytes.
  const char* routedChannel = route == Route::DirectBlob ? "size-untyped" : "echo-untyped";
  auto small = [&](Builder& b) {
    b.initRoot<benchschema::Echo::EchoParams>().setData(kj::arrayPtr(payload.data(), std::min<std::size_t>(bytes, 64)));
  };
  const BuildFn warm = route == Route::DirectBlob ? BuildFn(small) : BuildFn(build);
  if (route == Route::Routed || direct) {
    while (win.invokeIn("echo", routedChannel, warm).get().code() == ErrorCode::NoHandler) {
    }
  }
  // The first call made the grant; the caller reads it while it waits for a reply.
  if (direct) {
    for (int i = 0; i < 16; ++i) (void)win.invokeIn("echo", routedChannel, warm).get();
  }
  // A port's calls are dispatched by the thread waiting in get() (no start(): no hand-off).
  std::shared_ptr<Port> port;
  if (route == Route::Port || route == Route::PortBlob) {
    auto p = openBenchPort(win);
    if (!p) return state.SkipWithError(p.error().toString().c_str());
    port = std::move(*p);
  }
  timeLoop(state, [&] {
    switch (route) {
      case Route::ToMain: {
        auto r = win.invoke("echo-untyped", build).get();
        failed |= !r;
        break;
      }
      case Route::Routed:
      case Route::Direct: {
        auto r = win.invokeIn("echo", "echo-untyped", build).get();
        failed |= !r;
        break;
      }
      case Route::Port: {
        auto r = port->invoke("echo-untyped", build).get();
        failed |= !r;
        break;
      }
      case Route::PortBlob:
      case Route::MainBlob:
      case Route::DirectBlob: {
        // The request's data is allocated, not filled (two bytes touched): what is timed is the
        // bus's cost for a large message (docs/architecture.md §17), not the caller's writing.
        auto large = [&](Builder& b) {
          auto d = b.initRoot<benchschema::Echo::EchoParams>().initData(static_cast<unsigned>(bytes));
          d[0] = 1;
          d[bytes - 1] = 1;
        };
        auto r = route == Route::PortBlob   ? port->invoke("size-untyped", large).get()
                 : route == Route::MainBlob ? win.invoke("size-untyped", large).get()
                                            : win.invokeIn("echo", "size-untyped", large).get();
        failed |= !r;
        if (!r && firstError.empty()) firstError = r.error().toString();
        break;
      }
      case Route::Typed: {
        auto r = client.echo(Target::main(), [&](auto p) { p.setData(kj::arrayPtr(payload.data(), bytes)); }).get();
        failed |= !r;
        if (r) benchmark::DoNotOptimize(r->reader().getData().size());
        break;
      }
    }
  }, gap);
  if (failed) state.SkipWithError(firstError.empty() ? "a call failed" : firstError.c_str());
  port.reset();
  win.close();
}

/// Reports a stream run: N messages in `ticks` ticks, plus the sender's counters.
void finishStream(benchmark::State& state, std::uint64_t n, std::uint64_t ticks) {
  const double seconds = static_cast<double>(ticks) * nsPerTick() * 1e-9;
  state.SetIterationTime(seconds);
  state.counters["msgs_per_s"] = seconds > 0 ? static_cast<double>(n) / seconds : 0;
  state.SetBytesProcessed(static_cast<std::int64_t>(n * kStreamBytes));
}

enum class StreamRoute { ToMain, Routed, Direct, Port };


/// Stream/window_to_main/64, Stream/window_to_window_routed/64 and Stream/port/64: the benchmark
/// process (a window, CPU 0) sends state.max_iterations messages of kStreamBytes as fast as the
/// bus (the port) takes them; the time runs from the first send until the receiver reports the
/// last one (EventPipe). Default spin budgets everywhere (what an application gets). A full port
/// ring refuses with Full (nothing written), so the port stream needs no credits.
void stream(benchmark::State& state, StreamRoute route) {
  // A direct stream is a routed one on a bus with direct routes: its first message goes through
  // the supervisor (and makes the grant), the following ones over the route once it is read.
  const bool routed = route == StreamRoute::Routed || route == StreamRoute::Direct;
  const bool twoWindows = route != StreamRoute::ToMain;
  Watchdog dog(route == StreamRoute::Direct ? "Stream/window_to_window_direct"
               : routed                     ? "Stream/window_to_window_routed"
               : twoWindows                 ? "Stream/port"
                                            : "Stream/window_to_main",
               kWatchdogSeconds);
  const auto spin = WindowOptions{}.spin;
  const std::uint64_t n = static_cast<std::uint64_t>(state.max_iterations);
  BusProcesses procs;
  if (!procs.start(twoWindows, spin, n, false, kStreamBytes, route == StreamRoute::Direct)) {
    return state.SkipWithError(procs.error.c_str());
  }
  ScopedPin pin(kMainCpu);
  if (!pin.ok()) return state.SkipWithError("cannot pin to CPU 0");
  auto w = connectCaller(procs.bus, spin);
  if (!w) return state.SkipWithError(w.error().toString().c_str());
  Window& win = **w;
  std::vector<std::uint8_t> payload = touchedBuffer(kStreamBytes, 0x5a);
  const BuildFn build = [&](Builder& b) {
    b.initRoot<benchschema::Echo::EchoParams>().setData(kj::arrayPtr(payload.data(), kStreamBytes));
  };
  std::uint64_t credited = 0, creditWaits = 0, retries = 0, seq = 0;
  auto credits = win.on("stream-credit", [&](const Message&, const CallContext&) { credited += kCreditBatch; });
  const Target target("echo");
  std::shared_ptr<Port> port;
  if (route == StreamRoute::Port) {
    auto p = openBenchPort(win);
    if (!p) return state.SkipWithError(p.error().toString().c_str());
    port = std::move(*p);
  }
  bool failed = false;
  const std::uint64_t start = ticksNow();
  for (auto _ : state) {
    if (routed) {
      while (seq - credited >= kCreditWindow && !failed) {
        ++creditWaits;
        failed |= !win.poll(std::chrono::milliseconds(1000));
      }
    }
    putSeq(payload.data(), ++seq);
    for (;;) {
      auto r = port ? port->send("stream", build) : routed ? win.sendTo(target, "stream", build) : win.send("stream", build);
      if (r) break;
      if (r.code() != ErrorCode::Full) {
        failed = true;
        break;
      }
      ++retries;
      ::sched_yield();  // on a full ring, let a router that shares this CPU drain it
    }
    if (failed) break;
  }
  if (failed) return state.SkipWithError("a send failed");
  const auto errors = procs.streamDone(twoWindows);
  const std::uint64_t end = ticksNow();
  if (!errors) return state.SkipWithError("the receiver exited before the last message");
  if (*errors != 0) return state.SkipWithError("the receiver saw messages lost, reordered or malformed");
  finishStream(state, n, end - start);
  state.counters["full_retries"] = static_cast<double>(retries);
  if (routed) state.counters["credit_waits"] = static_cast<double>(creditWaits);
  port.reset();
  win.close();
}

/// Stream/port_stream/65536 and Stream/routed_stream/65536: a shmbus::Stream (docs/architecture.md
/// §18) of state.max_iterations chunks of kChunkBytes from the benchmark process (CPU 0) to the
/// target window (CPU 1), over a port or routed through the (unpinned) supervisor, with the
/// default flow window; each chunk is copied once from a source buffer into the ring (the write's
/// build) and checked in place by the receiver. The time runs from the first write until the
/// receiver reports the last chunk. bytes_per_s is compared with Stream/memcpy (issue 13: a 1 GiB
/// stream at least half the single-core memcpy bandwidth).
constexpr std::size_t kChunkBytes = 64u << 10;

/// `direct`: routed on a bus with direct routes (docs/architecture.md §19): the first write goes
/// through the supervisor, the rest over the route once the grant is read.
void chunkStream(benchmark::State& state, bool routed, bool direct = false) {
  Watchdog dog(direct ? "Stream/direct_stream" : routed ? "Stream/routed_stream" : "Stream/port_stream", kWatchdogSeconds);
  const auto spin = WindowOptions{}.spin;
  const std::uint64_t n = static_cast<std::uint64_t>(state.max_iterations);
  BusProcesses procs;
  if (!procs.start(true, spin, n, false, kChunkBytes, direct)) return state.SkipWithError(procs.error.c_str());
  ScopedPin pin(kMainCpu);
  if (!pin.ok()) return state.SkipWithError("cannot pin to CPU 0");
  auto w = connectCaller(procs.bus, spin);
  if (!w) return state.SkipWithError(w.error().toString().c_str());
  Window& win = **w;
  std::shared_ptr<Port> port;
  if (!routed) {
    // Rings of 1 MiB, as a window's: a 64 KiB chunk fits a ring record (on the default 64 KiB
    // ring it would be a blob, docs/architecture.md §17).
    auto p = openBenchPort(win, {.ringBytes = 1u << 20});
    if (!p) return state.SkipWithError(p.error().toString().c_str());
    port = std::move(*p);
  }
  Stream stream = routed ? Stream::to(win, Target("echo")) : Stream::to(*port);
  std::vector<std::uint8_t> payload = touchedBuffer(kChunkBytes, 0x5a);
  const BuildFn build = [&](Builder& b) {
    b.initRoot<benchschema::Echo::EchoParams>().setData(kj::arrayPtr(payload.data(), kChunkBytes));
  };
  std::uint64_t seq = 0;
  bool failed = false;
  const std::uint64_t start = ticksNow();
  for (auto _ : state) {
    putSeq(payload.data(), ++seq);
    if (!stream.write("chunk", build)) {
      failed = true;
      break;
    }
  }
  if (failed || !stream.flush()) return state.SkipWithError(stream.status().error().toString().c_str());
  const auto errors = procs.streamDone(true);
  const std::uint64_t end = ticksNow();
  if (!errors) return state.SkipWithError("the receiver exited before the last chunk");
  if (*errors != 0) return state.SkipWithError("the receiver saw chunks lost, reordered or malformed");
  const double seconds = static_cast<double>(end - start) * nsPerTick() * 1e-9;
  state.SetIterationTime(seconds);
  state.SetBytesProcessed(static_cast<std::int64_t>(n * kChunkBytes));
  state.counters["msgs_per_s"] = seconds > 0 ? static_cast<double>(n) / seconds : 0;
  state.counters["bytes_per_s"] = seconds > 0 ? static_cast<double>(n * kChunkBytes) / seconds : 0;
  state.counters["credit_waits"] = static_cast<double>(stream.stats().waits);
  port.reset();
  win.close();
}

/// Stream/memcpy/67108864: the single-core memcpy bandwidth of this machine in the same run (64 MiB
/// from one buffer to another, both touched first; bytes_per_s), the baseline of the chunk streams.
void memcpyBandwidth(benchmark::State& state) {
  constexpr std::size_t kBytes = 64u << 20;
  ScopedPin pin(kMainCpu);
  std::vector<std::uint8_t> from = touchedBuffer(kBytes, 0x5a), to = touchedBuffer(kBytes, 0);
  const std::uint64_t start = ticksNow();
  for (auto _ : state) {
    std::memcpy(to.data(), from.data(), kBytes);
    benchmark::DoNotOptimize(to.data());
    benchmark::ClobberMemory();
  }
  const double seconds = static_cast<double>(ticksNow() - start) * nsPerTick() * 1e-9;
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kBytes));
  state.counters["bytes_per_s"] = seconds > 0 ? static_cast<double>(state.iterations() * kBytes) / seconds : 0;
}

// ---- the D-Bus peer (sd-bus through a private dbus-daemon)

/// Invoke/dbus_method/<bytes>: sd-bus Echo(ay) → ay round trips from the benchmark process
/// (CPU 0) to a server partner (CPU 1) through a private, unpinned dbus-daemon.
void dbusMethod(benchmark::State& state, std::size_t bytes, std::chrono::nanoseconds gap = {}) {
  Watchdog dog("Invoke/dbus_method", kWatchdogSeconds);
  auto daemon = dbus::Daemon::start();
  if (!daemon) return state.SkipWithError(daemon.error().message.c_str());
  const std::string address = (*daemon)->address();
  EventPipe ev;
  Partner server = Partner::spawn(kPartnerCpu, [&] { dbus::serveEcho(address, ev); });
  ev.closeWriter();
  if (!ev.wait()) return state.SkipWithError("D-Bus server failed to start");
  ScopedPin pin(kMainCpu);
  if (!pin.ok()) return state.SkipWithError("cannot pin to CPU 0");
  auto bus = dbus::connect(address);
  if (!bus) return state.SkipWithError(bus.error().message.c_str());
  std::vector<std::uint8_t> payload = touchedBuffer(bytes, 0x5a);
  bool failed = false;
  timeLoop(state, [&] {
    const long got = dbus::callEcho(bus->get(), payload.data(), bytes);
    failed |= got != static_cast<long>(bytes);
  }, gap);
  if (failed) state.SkipWithError("a D-Bus call failed or echoed the wrong size");
}

/// Stream/dbus_signal/64: the benchmark process (CPU 0) emits state.max_iterations Tick signals of
/// kStreamBytes; a subscriber partner (CPU 1) receives them through a private, unpinned
/// dbus-daemon and checks their sequence. The time runs from the first emit until the subscriber
/// reports the last one.
void dbusSignals(benchmark::State& state) {
  Watchdog dog("Stream/dbus_signal", kWatchdogSeconds);
  const std::uint64_t n = static_cast<std::uint64_t>(state.max_iterations);
  auto daemon = dbus::Daemon::start();
  if (!daemon) return state.SkipWithError(daemon.error().message.c_str());
  const std::string address = (*daemon)->address();
  EventPipe ev;
  Partner subscriber = Partner::spawn(kPartnerCpu, [&] { dbus::countTicks(address, n, kStreamBytes, ev); });
  ev.closeWriter();
  if (!ev.wait()) return state.SkipWithError("D-Bus subscriber failed to start");
  ScopedPin pin(kMainCpu);
  if (!pin.ok()) return state.SkipWithError("cannot pin to CPU 0");
  auto bus = dbus::connect(address);
  if (!bus) return state.SkipWithError(bus.error().message.c_str());
  std::vector<std::uint8_t> payload = touchedBuffer(kStreamBytes, 0x5a);
  std::uint64_t seq = 0, flushes = 0;
  bool failed = false;
  const std::uint64_t start = ticksNow();
  for (auto _ : state) {
    putSeq(payload.data(), ++seq);
    if (dbus::emitTick(bus->get(), payload.data(), kStreamBytes, &flushes) < 0) {
      failed = true;
      break;
    }
  }
  if (failed || sd_bus_flush(bus->get()) < 0) return state.SkipWithError("sending a D-Bus signal failed");
  const auto errors = ev.wait();
  const std::uint64_t end = ticksNow();
  if (!errors) return state.SkipWithError("the D-Bus subscriber exited before the last signal");
  if (*errors != 0) return state.SkipWithError("the D-Bus subscriber saw signals lost, reordered or malformed");
  finishStream(state, n, end - start);
  state.counters["dbus_flushes"] = static_cast<double>(flushes);
}

// ---- message build + read

void fillRecord(benchschema::Record::Builder r) {
  r.setId(42);
  r.setName("quarterly-revenue-by-region");
  auto tags = r.initTags(8);
  for (unsigned i = 0; i < 8; ++i) tags.set(i, "tag-number");
  auto values = r.initValues(32);
  for (unsigned i = 0; i < 32; ++i) values.set(i, i * 1.5);
  auto nested = r.initNested(12);
  for (unsigned i = 0; i < 12; ++i) {
    nested[i].setKey("region-key");
    nested[i].setValue(i);
  }
}

double readRecord(benchschema::Record::Reader r) {
  double acc = static_cast<double>(r.getId()) + r.getName().size();
  for (auto t : r.getTags()) acc += t.size();
  for (double v : r.getValues()) acc += v;
  for (auto n : r.getNested()) acc += static_cast<double>(n.getValue()) + n.getKey().size();
  return acc;
}

void buildReadInPlace(benchmark::State& state) {
  const RingGeometry g{1u << 20, 1u << 18};
  const std::string name = detail::Segment::makeName(uniqueName("msg"), 0);
  auto seg = detail::Segment::create(name, detail::ringFootprint(g.capacity) + 4096);
  if (!seg) return state.SkipWithError(seg.error().message.c_str());
  detail::Segment::unlink(name);
  auto* ctl = reinterpret_cast<detail::RingControl*>(seg->base() + 4096);
  RingProducer p(ctl, seg->base() + 4096 + sizeof(detail::RingControl), g);
  RingConsumer c(ctl, seg->base() + 4096 + sizeof(detail::RingControl), g);
  std::size_t bytes = 0;
  std::vector<std::uint64_t> ticks;
  double total = 0;
  for (auto _ : state) {
    const std::uint64_t t0 = ticksNow();
    auto claim = p.tryClaimUpTo(256, 4096);
    if (!claim) fatal("claim failed");
    detail::RingMessageBuilder mb(p, *claim, 0);
    fillRecord(mb.initRoot<benchschema::Record>());
    bytes = mb.finish();
    p.commit(*claim, bytes);
    auto r = c.tryRead();
    detail::InPlaceMessage m;
    if (!r || !*r || !m.parse((*r)->body, (*r)->bodyBytes)) fatal("read failed");
    benchmark::DoNotOptimize(readRecord(m.reader().getRoot<benchschema::Record>()));
    c.releaseAll();
    const std::uint64_t dt = ticksNow() - t0;
    ticks.push_back(dt);
    total += static_cast<double>(dt) * nsPerTick();
  }
  state.counters["message_bytes"] = static_cast<double>(bytes);
  finish(state, ticks, total);
}

void buildReadMallocCopy(benchmark::State& state) {
  std::vector<std::uint8_t> ring(1 << 16);  // where the copy lands (a stand-in for a ring slot)
  std::size_t bytes = 0;
  std::vector<std::uint64_t> ticks;
  double total = 0;
  for (auto _ : state) {
    const std::uint64_t t0 = ticksNow();
    capnp::MallocMessageBuilder mb;
    fillRecord(mb.initRoot<benchschema::Record>());
    auto flat = capnp::messageToFlatArray(mb);
    bytes = flat.asBytes().size();
    std::memcpy(ring.data(), flat.begin(), bytes);
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(reinterpret_cast<const capnp::word*>(ring.data()), bytes / 8));
    benchmark::DoNotOptimize(readRecord(reader.getRoot<benchschema::Record>()));
    const std::uint64_t dt = ticksNow() - t0;
    ticks.push_back(dt);
    total += static_cast<double>(dt) * nsPerTick();
  }
  state.counters["message_bytes"] = static_cast<double>(bytes);
  finish(state, ticks, total);
}

benchmark::internal::Benchmark* manual(benchmark::internal::Benchmark* b) {
  return b->UseManualTime()->MinTime(0.3)->Unit(benchmark::kMicrosecond);
}

void registerAll() {
  for (std::size_t bytes : {std::size_t{64}, std::size_t{1024}, std::size_t{65536}}) {
    for (bool spin : {true, false}) {
      const auto policy = spin ? detail::SpinPolicy{kSpinLong} : detail::SpinPolicy{kParkNow};
      const char* mode = spin ? "spin" : "parked";
      manual(benchmark::RegisterBenchmark(fmt::format("PingPong/ring_{}/{}", mode, bytes).c_str(),
                                          [=](benchmark::State& s) { ringPingPong(s, bytes, policy); }));
      const auto wspin = spin ? kSpinLong : kParkNow;
      manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_main/{}/{}", bytes, mode).c_str(),
                                          [=](benchmark::State& s) { invoke(s, Route::ToMain, bytes, wspin); }));
      // Three processes on two cores cannot all spin: the unpinned supervisor shares a core with
      // one of the pinned windows. In "spin" mode the routed call therefore uses the default spin
      // budget (4 µs), so a waiting window parks and frees its core for the supervisor.
      const auto rspin = spin ? detail::SpinPolicy{}.spin : kParkNow;
      manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_window_routed/{}/{}", bytes, mode).c_str(),
                                          [=](benchmark::State& s) { invoke(s, Route::Routed, bytes, rspin); }));
      // The same call over a direct route (docs/architecture.md §19): the supervisor is idle and
      // out of the path, so both pinned endpoints may spin.
      if (bytes == 64) {
        manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_window_direct/{}/{}", bytes, mode).c_str(),
                                            [=](benchmark::State& s) { invoke(s, Route::Direct, bytes, wspin); }));
      }
      // Window to window through a port (docs/architecture.md §16): two pinned endpoints, the
      // supervisor idle and out of the path, so both sides may spin.
      if (bytes == 64) {
        manual(benchmark::RegisterBenchmark(fmt::format("Invoke/port/{}/{}", bytes, mode).c_str(),
                                            [=](benchmark::State& s) { invoke(s, Route::Port, bytes, wspin); }));
      }
      // The same call with an inspector attached (every call recorded and read): compare.py's
      // "traced ÷ untraced" ratio (target <= 1.1).
      if (bytes == 64) {
        manual(benchmark::RegisterBenchmark(
            fmt::format("Invoke/window_to_window_routed_traced/{}/{}", bytes, mode).c_str(),
            [=](benchmark::State& s) { invoke(s, Route::Routed, bytes, rspin, /*traced=*/true); }));
      }
    }
  }
  // The default wait policy of every process (WindowOptions{} and SupervisorOptions{}: 4 µs spin)
  // with the caller's learned reply spin (50 µs, the default since 2026-12-07, docs/architecture.md §4),
  // calls back to back and spaced 1 ms apart (issue 13 item 3), the baselines spaced the same way.
  const auto defSpin = detail::SpinPolicy{}.spin;
  constexpr std::chrono::nanoseconds defCap = std::chrono::microseconds(50);
  constexpr auto kGap = std::chrono::milliseconds(1);
  for (auto [name, route] : {std::pair{"window_to_main", Route::ToMain}, std::pair{"window_to_window_routed", Route::Routed},
                             std::pair{"window_to_window_direct", Route::Direct}, std::pair{"port", Route::Port}}) {
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/{}/64/learned", name).c_str(),
                                        [=](benchmark::State& s) { invoke(s, route, 64, defSpin, false, defCap); }));
  }
  // A fixed count (about 2.5 s each): MinTime would count the untimed gaps as nothing.
  // Large requests over a port (blobs, issue 13 item 4: RTT of 1 MiB and 64 MiB ÷ RTT of 64 B).
  for (std::size_t bytes : {std::size_t{64}, std::size_t{1} << 20, std::size_t{64} << 20}) {
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/port_blob/{}/default", bytes).c_str(),
                                        [=](benchmark::State& s) { invoke(s, Route::PortBlob, bytes, defSpin, false, defCap); }));
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/port_blob/{}/spin", bytes).c_str(),
                                        [=](benchmark::State& s) { invoke(s, Route::PortBlob, bytes, kSpinLong); }));
  }
  // Large requests to main (blobs in the window's arena, 64 MiB by default): the same ratio, up
  // to the arena's warm front (half of it; a record ending past it has its pages punched out when
  // released: a 32 MiB request took 62 µs here, 2026-12-08).
  for (std::size_t bytes : {std::size_t{64}, std::size_t{1} << 20, std::size_t{16} << 20}) {
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_main_blob/{}/default", bytes).c_str(),
                                        [=](benchmark::State& s) { invoke(s, Route::MainBlob, bytes, defSpin, false, defCap); }));
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_window_direct_blob/{}/default", bytes).c_str(),
                                        [=](benchmark::State& s) { invoke(s, Route::DirectBlob, bytes, defSpin, false, defCap); }));
  }
  auto spaced = [](benchmark::internal::Benchmark* b) {
    b->UseManualTime()->Iterations(2000)->Unit(benchmark::kMicrosecond);
  };
  spaced(benchmark::RegisterBenchmark("Invoke/window_to_window_routed/64/learned_1ms", [=](benchmark::State& s) {
    invoke(s, Route::Routed, 64, defSpin, false, defCap, kGap);
  }));
  spaced(benchmark::RegisterBenchmark("Invoke/window_to_window_routed/64/parked_1ms", [=](benchmark::State& s) {
    invoke(s, Route::Routed, 64, kParkNow, false, {}, kGap);
  }));
  spaced(benchmark::RegisterBenchmark("Invoke/window_to_window_direct/64/learned_1ms", [=](benchmark::State& s) {
    invoke(s, Route::Direct, 64, defSpin, false, defCap, kGap);
  }));
  spaced(benchmark::RegisterBenchmark("Invoke/window_to_window_direct/64/parked_1ms", [=](benchmark::State& s) {
    invoke(s, Route::Direct, 64, kParkNow, false, {}, kGap);
  }));
  spaced(benchmark::RegisterBenchmark("PingPong/ring_parked/64/1ms", [=](benchmark::State& s) {
    ringPingPong(s, 64, detail::SpinPolicy{kParkNow}, kGap);
  }));
  spaced(benchmark::RegisterBenchmark("Invoke/dbus_method/64/1ms", [=](benchmark::State& s) { dbusMethod(s, 64, kGap); }));
  for (std::size_t bytes : {std::size_t{64}, std::size_t{1024}, std::size_t{65536}}) {
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/dbus_method/{}", bytes).c_str(),
                                        [=](benchmark::State& s) { dbusMethod(s, bytes); }));
  }
  manual(benchmark::RegisterBenchmark("Stream/window_to_main/64",
                                      [](benchmark::State& s) { stream(s, StreamRoute::ToMain); }));
  manual(benchmark::RegisterBenchmark("Stream/window_to_window_routed/64",
                                      [](benchmark::State& s) { stream(s, StreamRoute::Routed); }));
  manual(benchmark::RegisterBenchmark("Stream/window_to_window_direct/64",
                                      [](benchmark::State& s) { stream(s, StreamRoute::Direct); }));
  manual(benchmark::RegisterBenchmark("Stream/port/64", [](benchmark::State& s) { stream(s, StreamRoute::Port); }));
  manual(benchmark::RegisterBenchmark("Stream/dbus_signal/64", dbusSignals));
  // 1 GiB per run in 64 KiB chunks, against memcpy's bandwidth in the same run.
  for (const bool routed : {false, true}) {
    benchmark::RegisterBenchmark(routed ? "Stream/routed_stream/65536" : "Stream/port_stream/65536",
                                 [routed](benchmark::State& s) { chunkStream(s, routed); })
        ->UseManualTime()->Iterations(16384)->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("Stream/direct_stream/65536", [](benchmark::State& s) { chunkStream(s, true, true); })
      ->UseManualTime()->Iterations(16384)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("Stream/memcpy/67108864", memcpyBandwidth)->Iterations(32)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (std::size_t bytes : {std::size_t{64}, std::size_t{1024}}) {
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_main_untyped/{}/parked", bytes).c_str(),
                                        [=](benchmark::State& s) { invoke(s, Route::ToMain, bytes, kParkNow); }));
    manual(benchmark::RegisterBenchmark(fmt::format("Invoke/window_to_main_typed/{}/parked", bytes).c_str(),
                                        [=](benchmark::State& s) { invoke(s, Route::Typed, bytes, kParkNow); }));
  }
  benchmark::RegisterBenchmark("Message/build_read_in_place/1024", buildReadInPlace)->MinTime(0.3);
  benchmark::RegisterBenchmark("Message/build_read_malloc_copy/1024", buildReadMallocCopy)->MinTime(0.3);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::AddCustomContext("pinning",
                              "endpoints CPU 0 (caller/sender) and CPU 1 (answerer/receiver); routers unpinned "
                              "(supervisor of routed runs, dbus-daemon)");
  registerAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
