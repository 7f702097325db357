// Blobs on ports (docs/architecture.md §17) across real processes: two windows, each in a forked
// child driven by the test process through a Link, send messages far larger than the port's
// ring both ways, call with large requests and replies, and are killed with SIGKILL while blobs
// are held. Each side checks what it read in place (the pattern, and that the bytes lie in the
// port's shared mapping, not in a copy); the sender's Port::blobStats tell when the receiver
// released. Tens of MiB per case: the program runs alone (meson is_parallel: false).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <csignal>
#include <mutex>
#include <thread>

#include "blob/blob.hpp"
#include "bus_test.hpp"
#include "port_peer.hpp"
#include "protocol/frame_io.hpp"
#include "segment/segment.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// The byte at `i` of a blob made with `seed`.
std::uint8_t patternByte(std::uint64_t seed, std::size_t i) {
  return static_cast<std::uint8_t>((i * 2654435761u + seed) >> 7);
}

/// Builds a TestMessage whose blob holds `n` pattern bytes of `seed` (and `seq` = n).
BuildFn bigMessage(std::size_t n, std::uint64_t seed) {
  return [n, seed](Builder& b) {
    auto m = b.initRoot<TestMessage>();
    m.setSeq(seed);
    auto data = m.initBlob(static_cast<unsigned>(n));
    for (std::size_t i = 0; i < n; ++i) data[i] = patternByte(seed, i);
  };
}

/// "ok SIZE inplace" when `m` holds the pattern its seq names over `expected` bytes, read where
/// the peer wrote it (inside a segment's mapping); else what is wrong.
std::string checkBig(const Message& m, std::size_t expected) {
  auto r = m.tryRoot<TestMessage>();
  if (!r) return "bad " + r.error().message;
  const auto data = r->getBlob();
  if (data.size() != expected) return fmt::format("bad size {}", data.size());
  const std::uint64_t seed = r->getSeq();
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (data[i] != patternByte(seed, i)) return fmt::format("bad byte {}", i);
  }
  const auto at = reinterpret_cast<std::uintptr_t>(data.begin());
  bool inPlace = false;
  for (const auto& m : segmentMappings()) inPlace = inPlace || (at >= m.from && at + data.size() <= m.to);
  return fmt::format("ok {} {}", data.size(), inPlace ? "inplace" : "copied");
}

/// One window of a blob test, in a forked child (DrivenWindow). Commands, one line each:
///   listen CHANNEL              → "listening" (accepts ports on CHANNEL)
///   open TARGET CHANNEL [BLOB]  → "opened ID" | "error CODE MESSAGE" (BLOB: PortOptions::blobBytes)
///   send N SEED [why]           → "sent" | "error CODE" (a TestMessage with N blob bytes, on "big";
///                                 why: "error CODE MESSAGE")
///   heard                       → the check of the next "big" message heard (checkBig)
///   invoke N SEED               → "reply " + checkBig of the reply | "error CODE"; the "big-echo"
///                                 handler checks the request and answers N bytes of SEED + 1
///   invoke-async N SEED         → the same through "big-echo-async" (a Responder replying from
///                                 another thread)
///   handled                     → the handler's check of the last request
///   stats                       → "stats HELD MESSAGES HIGHWATER ARENA" (Port::blobStats)
///   await-free                  → "free" once blobStats holds nothing (bounded poll, 10 s), else "held N"
///   main-send N SEED [why]      → as send, to main on "big" (Window::send)
///   main-send-on CHANNEL N SEED → as main-send, on CHANNEL
///   main-invoke N SEED          → "reply TEXT" (the main handler "big-check" answers its check of
///                                 the request as text) | "error CODE"
///   main-echo N SEED            → as invoke, to main's "big-echo" (answers N bytes of SEED + 1)
///   send-to ROLE N SEED         → "sent" | "error CODE MESSAGE" (Window::sendTo, routed)
///   invoke-to ROLE N SEED       → as invoke, to window ROLE's "big-echo" (Window::invokeIn, routed)
/// The window itself serves main as a port's end does ("big", "big-echo", "big-echo-async"):
/// "heard" and "handled" report those too.
///   wstats, await-wfree         → stats and await-free of the window's own arena (Window::blobStats)
///   await-close                 → "closed CODE" once the port ended
///   hostile                     → "written": as a hostile peer, writes kFlagBlob frames with bad
///                                 descriptors on "big" into the port's ring to the peer, then a
///                                 good 1000-byte message (use it before this side sent anything;
///                                 this side's own producer is out of step afterwards)
///   done                        → exits.
class BlobPeer : public DrivenWindow {
 public:
  BlobPeer(TestBus& tb, std::string role) : DrivenWindow(std::move(role)) {
    forkBody(tb, [this](const std::string& bus) { body(bus); });
  }

 private:
  struct State : PortHolder {
    std::deque<std::string> heard;  // checks of "big" messages
    std::string handled;            // the handler's check of its last request
    std::string closed;             // the close code once ended
  };

  void setup(State& st, const std::shared_ptr<Port>& p) {
    std::lock_guard lk(st.mu);
    st.port = p;
    serve(st, *p, st.regs);
    st.regs.push_back(p->onClose([&st](const Error& why) {
      std::lock_guard lk2(st.mu);
      st.closed = errorCodeName(why.code);
      st.cv.notify_all();
    }));
    p->start();
  }

  /// The listener on "big" and the handlers "big-echo" and "big-echo-async" of a port's end or a
  /// window (its messages from main), recording into `st`.
  template <typename Endpoint>
  static void serve(State& st, Endpoint& p, std::vector<Registration>& regs) {
    regs.push_back(p.on("big", [&st](const Message& m, const CallContext&) {
      const std::string c = checkBig(m, m.root<TestMessage>().getBlob().size());
      std::lock_guard lk2(st.mu);
      st.heard.push_back(c);
      st.cv.notify_all();
    }));
    regs.push_back(p.handle("big-echo", [&st](const Message& req, Builder& reply, const CallContext&) {
      const auto r = req.root<TestMessage>();
      const std::size_t n = r.getBlob().size();
      {
        std::lock_guard lk2(st.mu);
        st.handled = checkBig(req, n);
      }
      bigMessage(n, r.getSeq() + 1)(reply);
    }));
    // The same from an async handler: its Responder replies from another thread.
    regs.push_back(p.handleAsync("big-echo-async", [&st](const Message& req, Responder r, const CallContext&) {
      const auto m = req.root<TestMessage>();
      const std::size_t n = m.getBlob().size();
      const std::uint64_t seed = m.getSeq() + 1;
      {
        std::lock_guard lk2(st.mu);
        st.handled = checkBig(req, n);
      }
      std::thread([r, n, seed]() mutable { (void)r.reply(bigMessage(n, seed)); }).detach();
    }));
  }

  /// The "hostile" command: a second producer over this side's ring of port `id` (found by the
  /// segment's name in /proc/self/maps, at position 0: nothing was sent on it yet).
  static void hostile(const std::string& bus, std::uint64_t id) {
    std::uint8_t* base = portMapping(bus, id);
    constexpr std::uint32_t kRing = detail::kDefaultPortRingBytes;
    const auto layout = detail::segmentLayout(kRing, kRing, detail::kDefaultPortBlobBytes);
    detail::RingProducer raw(reinterpret_cast<detail::RingControl*>(base + layout.outboxOffset),
                             base + layout.outboxOffset + sizeof(detail::RingControl),
                             detail::RingGeometry{kRing, kRing / 2}, true);
    detail::FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(detail::FrameKind::Send);
    h.channel = Channel("big").id;
    detail::FrameHeader blob = h;
    blob.flags = detail::kFlagBlob;
    const std::uint64_t arena = detail::kDefaultPortBlobBytes;
    const detail::BlobDescriptor bad[] = {
        {64, std::uint64_t{1} << 40, 1, 0, 0},  // past the arena
        {72, 64, 1, 0, 0},                      // misaligned
        {arena - 64, 64, 1, 0, 0},              // the body past the end
        {64, 64, 0, 0, 0},                      // generation 0
        {64, 64, 7, 0, 0},                      // no such record
    };
    for (const auto& d : bad) {
      expectOk(detail::writeFrameCopy(raw, blob, reinterpret_cast<const std::uint8_t*>(&d), sizeof d), "bad frame");
    }
    // A blob frame whose payload is not a descriptor at all.
    expectOk(detail::writeFrame(raw, blob, bigMessage(100, 60)), "short frame");
    expectOk(detail::writeFrame(raw, h, bigMessage(1000, 61)), "good frame");
  }

  void body(const std::string& bus) {
    auto w = connectWindow(bus, role_);
    State st;
    std::vector<Registration> regs;
    serve(st, *w, regs);  // what main sends and invokes here
    announceReady(*w);
    auto port = [&] { return st.get(); };
    for (;;) {
      const auto cmd = words(link_.hearParent(120s));
      if (cmd.empty() || cmd[0] == "done") break;
      if (cmd[0] == "listen") {
        regs.push_back(w->onPort(cmd[1], [this, &st](std::shared_ptr<Port> p) { setup(st, p); }));
        link_.tellParent("listening");
      } else if (cmd[0] == "open") {
        const std::uint64_t blob = cmd.size() > 3 ? std::stoull(cmd[3]) : 0;
        answerOpen(link_, *w, cmd[1], cmd[2], {.blobBytes = blob, .timeout = 5000ms},
                   [&](const std::shared_ptr<Port>& p) { setup(st, p); });
      } else if (cmd[0] == "send") {
        auto r = port()->send("big", bigMessage(std::stoull(cmd[1]), std::stoull(cmd[2])));
        // "why": the whole error ("error CODE MESSAGE").
        link_.tellParent(r ? "sent" : "error " + std::string(errorCodeName(r.code())) +
                                          (cmd.size() > 3 && cmd[3] == "why" ? " " + r.error().message : ""));
      } else if (cmd[0] == "heard") {
        std::unique_lock lk(st.mu);
        st.cv.wait_for(lk, 20s, [&] { return !st.heard.empty(); });
        std::string c = st.heard.empty() ? "nothing" : st.heard.front();
        if (!st.heard.empty()) st.heard.pop_front();
        lk.unlock();
        link_.tellParent(c);
      } else if (cmd[0] == "invoke" || cmd[0] == "invoke-async") {
        const std::size_t n = std::stoull(cmd[1]);
        const char* channel = cmd[0] == "invoke" ? "big-echo" : "big-echo-async";
        auto r = port()->invoke(channel, bigMessage(n, std::stoull(cmd[2])), {.timeout = 20000ms}).get();
        link_.tellParent(r ? "reply " + checkBig(*r, n) : "error " + std::string(errorCodeName(r.code())));
      } else if (cmd[0] == "handled") {
        std::lock_guard lk(st.mu);
        link_.tellParent(st.handled);
      } else if (cmd[0] == "main-send") {
        auto r = w->send("big", bigMessage(std::stoull(cmd[1]), std::stoull(cmd[2])));
        link_.tellParent(r ? "sent" : "error " + std::string(errorCodeName(r.code())) +
                                          (cmd.size() > 3 && cmd[3] == "why" ? " " + r.error().message : ""));
      } else if (cmd[0] == "main-send-on") {
        auto r = w->send(cmd[1], bigMessage(std::stoull(cmd[2]), std::stoull(cmd[3])));
        link_.tellParent(r ? "sent" : "error " + std::string(errorCodeName(r.code())));
      } else if (cmd[0] == "main-invoke") {
        auto r = w->invoke("big-check", bigMessage(std::stoull(cmd[1]), std::stoull(cmd[2])), {.timeout = 20000ms}).get();
        link_.tellParent(r ? "reply " + std::string(r->root<TestMessage>().getText().cStr())
                           : "error " + std::string(errorCodeName(r.code())));
      } else if (cmd[0] == "main-echo") {
        const std::size_t n = std::stoull(cmd[1]);
        auto r = w->invoke("big-echo", bigMessage(n, std::stoull(cmd[2])), {.timeout = 20000ms}).get();
        link_.tellParent(r ? "reply " + checkBig(*r, n) : "error " + std::string(errorCodeName(r.code())));
      } else if (cmd[0] == "invoke-to") {
        const std::size_t n = std::stoull(cmd[2]);
        auto r = w->invokeIn(cmd[1], "big-echo", bigMessage(n, std::stoull(cmd[3])), {.timeout = 20000ms}).get();
        link_.tellParent(r ? "reply " + checkBig(*r, n) : "error " + std::string(errorCodeName(r.code())) + " " + r.error().message);
      } else if (cmd[0] == "send-to") {
        auto r = w->sendTo(cmd[1], "big", bigMessage(std::stoull(cmd[2]), std::stoull(cmd[3])));
        link_.tellParent(r ? "sent" : "error " + std::string(errorCodeName(r.code())) + " " + r.error().message);
      } else if (cmd[0] == "stats" || cmd[0] == "wstats") {
        const BlobStats s = cmd[0] == "stats" ? port()->blobStats() : w->blobStats();
        link_.tellParent(fmt::format("stats {} {} {} {}", s.bytesHeld, s.messagesHeld, s.bytesHighWater, s.arenaBytes));
      } else if (cmd[0] == "await-free" || cmd[0] == "await-wfree") {
        // The event is the peer's release store in shared memory, which has no notification this
        // process can wait on outside a send: a bounded poll of that condition.
        auto stats = [&] { return cmd[0] == "await-free" ? port()->blobStats() : w->blobStats(); };
        const std::int64_t until = nowNs() + 10'000'000'000;
        BlobStats s = stats();
        while (s.messagesHeld != 0 && nowNs() < until) {
          std::this_thread::sleep_for(1ms);  // allowed: bounded poll of the condition under test
          s = stats();
        }
        link_.tellParent(s.messagesHeld == 0 ? "free" : fmt::format("held {}", s.messagesHeld));
      } else if (cmd[0] == "hostile") {
        hostile(bus, port()->id());
        link_.tellParent("written");
      } else if (cmd[0] == "await-close") {
        std::unique_lock lk(st.mu);
        st.cv.wait_for(lk, 10s, [&] { return !st.closed.empty(); });
        link_.tellParent("closed " + st.closed);
      }
    }
    st.drop();
  }
};

/// The two ends of a port on "blobs", forked before the supervisor's dispatch thread runs.
struct BlobPair {
  explicit BlobPair(std::string_view tag, SupervisorOptions options = {})
      : tb(tag, std::move(options), false), acceptor(tb, "acceptor"), opener(tb, "opener") {
    tb->startDispatchThread();
    acceptor.start(tb);
    opener.start(tb);
    REQUIRE(acceptor.ask("listen blobs") == "listening");
  }
  /// Opens the port (BLOB: PortOptions::blobBytes, 0 = default); the opener's answer.
  std::string open(std::uint64_t blob = 0) {
    return opener.ask(blob == 0 ? "open acceptor blobs" : fmt::format("open acceptor blobs {}", blob));
  }
  /// Lets both children exit; each must have held every check.
  void finish() {
    CHECK(opener.finish() == 0);
    CHECK(acceptor.finish() == 0);
  }
  TestBus tb;
  BlobPeer acceptor, opener;
};

constexpr std::size_t k64MiB = 64u << 20;

}  // namespace

TEST_CASE("a 64 MiB message each way on a port is read in place and freed once its listener returned") {
  BlobPair bp("blob-each-way");
  REQUIRE(words(bp.open())[0] == "opened");
  // The port's ring is 64 KiB (its largest message 32 KiB): these travel as blobs.
  CHECK(bp.opener.ask("send 67108864 11", 30s) == "sent");
  CHECK(bp.acceptor.ask("heard", 30s) == fmt::format("ok {} inplace", k64MiB));
  CHECK(bp.opener.ask("await-free", 15s) == "free");
  CHECK(bp.acceptor.ask("send 67108864 12", 30s) == "sent");
  CHECK(bp.opener.ask("heard", 30s) == fmt::format("ok {} inplace", k64MiB));
  CHECK(bp.acceptor.ask("await-free", 15s) == "free");
  const auto s = words(bp.opener.ask("stats"));
  REQUIRE(s.size() == 5);
  CHECK(s[1] == "0");                                    // bytes held
  CHECK(std::stoull(s[3]) >= k64MiB);                    // high-water
  CHECK(std::stoull(s[4]) == 256u << 20);                // the default arena
  // Small messages go on: the first after a blob on the same channel as a blob (the sender
  // builds it in the arena first, BlobLink::first), the next through the ring again.
  CHECK(bp.opener.ask("send 1000 13") == "sent");
  CHECK(bp.acceptor.ask("heard") == "ok 1000 inplace");
  CHECK(bp.opener.ask("send 1000 14") == "sent");
  CHECK(bp.acceptor.ask("heard") == "ok 1000 inplace");
  CHECK(bp.opener.ask("send 67108864 15", 30s) == "sent");
  CHECK(bp.acceptor.ask("heard", 30s) == fmt::format("ok {} inplace", k64MiB));
  bp.finish();
}

TEST_CASE("a large invoke request and a large reply (sync or async handler) travel as blobs, and a reply's blob is freed when dropped") {
  BlobPair bp("blob-invoke");
  REQUIRE(words(bp.open())[0] == "opened");
  CHECK(bp.opener.ask("invoke 8388608 21", 30s) == "reply ok 8388608 inplace");
  CHECK(bp.acceptor.ask("handled") == "ok 8388608 inplace");
  // The caller dropped its reply after checking it: the handler's side holds nothing; the request
  // was released when the handler returned.
  CHECK(bp.acceptor.ask("await-free", 15s) == "free");
  CHECK(bp.opener.ask("await-free", 15s) == "free");
  // And the other way.
  CHECK(bp.acceptor.ask("invoke 1048576 22", 30s) == "reply ok 1048576 inplace");
  CHECK(bp.opener.ask("await-free", 15s) == "free");
  // An async handler's reply, from its Responder on another thread.
  CHECK(bp.opener.ask("invoke-async 4194304 23", 30s) == "reply ok 4194304 inplace");
  CHECK(bp.acceptor.ask("handled") == "ok 4194304 inplace");
  CHECK(bp.acceptor.ask("await-free", 15s) == "free");
  bp.finish();
}

TEST_CASE("a message larger than the port's arena is TooLarge, and the port keeps serving") {
  BlobPair bp("blob-too-large");
  REQUIRE(words(bp.open(1u << 20))[0] == "opened");
  CHECK(words(bp.opener.ask("stats"))[4] == std::to_string(1u << 20));
  CHECK(bp.opener.ask("send 2097152 31") == "error TooLarge");
  CHECK(bp.opener.ask("send 524288 32") == "sent");
  CHECK(bp.acceptor.ask("heard") == "ok 524288 inplace");
  CHECK(bp.opener.ask("invoke 2097152 33") == "error TooLarge");
  bp.finish();
}

TEST_CASE("the supervisor's blob limits: an explicit size past them fails with TooLarge, the default is clamped") {
  SupervisorOptions o;
  o.blobBytesPerWindow = 64u << 20;  // 32 MiB per direction for a window's ports together
  BlobPair bp("blob-limits", o);
  const auto refused = words(bp.open(64u << 20));
  REQUIRE(refused.size() >= 2);
  CHECK(refused[1] == "TooLarge");
  REQUIRE(words(bp.open())[0] == "opened");
  CHECK(words(bp.opener.ask("stats"))[4] == std::to_string(32u << 20));
  CHECK(bp.opener.ask("send 16777216 41") == "sent");
  CHECK(bp.acceptor.ask("heard", 30s) == "ok 16777216 inplace");
  bp.finish();
}

TEST_CASE("a port the blob limits left no arena: a large message is TooLarge and says why, small ones go on") {
  SupervisorOptions o;
  o.blobBytesPerWindow = 4u << 10;  // half a page per direction: arenas are whole pages, so none
  BlobPair bp("blob-none", o);
  REQUIRE(words(bp.open())[0] == "opened");
  CHECK(words(bp.opener.ask("stats"))[4] == "0");
  const std::string refused = bp.opener.ask("send 2097152 61 why");
  CHECK(refused.starts_with("error TooLarge "));
  CHECK(refused.find("this port has no blob arena") != std::string::npos);
  CHECK(bp.opener.ask("send 1024 62") == "sent");
  CHECK(bp.acceptor.ask("heard") == "ok 1024 inplace");
  bp.finish();
}

/// The main process's side of the window → main blob cases: a listener on "big" and a handler
/// "big-check" (answers its check of the request as text), each recording checkBig of what it
/// got, read where the window wrote it.
struct MainBlobs {
  explicit MainBlobs(TestBus& tb) {
    regs.push_back(tb->on("big", [this](const Message& m, const CallContext&) {
      const std::string c = checkBig(m, m.root<TestMessage>().getBlob().size());
      std::lock_guard lk(mu);
      heard.push_back(c);
      cv.notify_all();
    }));
    regs.push_back(tb->handle("big-check", [](const Message& req, Builder& reply, const CallContext&) {
      const std::string c = checkBig(req, req.root<TestMessage>().getBlob().size());
      reply.initRoot<TestMessage>().setText(c);
    }));
    regs.push_back(tb->handle("big-echo", [](const Message& req, Builder& reply, const CallContext&) {
      const auto r = req.root<TestMessage>();
      bigMessage(r.getBlob().size(), r.getSeq() + 1)(reply);
    }));
  }
  /// The check of the next message heard on "big" ("nothing" after 30 s).
  std::string next() {
    std::unique_lock lk(mu);
    cv.wait_for(lk, 30s, [&] { return !heard.empty(); });
    if (heard.empty()) return "nothing";
    std::string c = heard.front();
    heard.pop_front();
    return c;
  }
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> heard;
  std::vector<Registration> regs;
};

TEST_CASE("a window's send and invoke to main larger than its ring travel as blobs, read in place by main and freed when done") {
  BlobPair bp("blob-main");
  MainBlobs main(bp.tb);
  // The window's outbox ring is 64 KiB by default (its largest message 32 KiB): these are blobs.
  const auto st = words(bp.opener.ask("wstats"));
  REQUIRE(st.size() == 5);
  CHECK(std::stoull(st[4]) == SupervisorOptions{}.windowBlobBytes);
  CHECK(bp.opener.ask("main-send 16777216 71", 30s) == "sent");
  CHECK(main.next() == "ok 16777216 inplace");
  CHECK(bp.opener.ask("await-wfree", 15s) == "free");
  CHECK(bp.opener.ask("main-invoke 8388608 72", 30s) == "reply ok 8388608 inplace");
  CHECK(bp.opener.ask("await-wfree", 15s) == "free");
  // Again and again over the kept pages (the warm front), small and large on the same channel.
  for (int i = 0; i < 3; ++i) {
    CHECK(bp.opener.ask(fmt::format("main-send 4194304 {}", 73 + i), 30s) == "sent");
    CHECK(main.next() == "ok 4194304 inplace");
    CHECK(bp.opener.ask(fmt::format("main-send 1000 {}", 80 + i)) == "sent");
    CHECK(main.next().starts_with("ok 1000 "));  // a ring message: copied when main's job is queued
  }
  CHECK(bp.opener.ask("main-invoke 100 76").starts_with("reply ok 100 "));  // a ring message
  // Larger than the arena: TooLarge, and the window goes on.
  CHECK(bp.opener.ask("main-send 134217728 77", 30s) == "error TooLarge");
  CHECK(bp.opener.ask("main-invoke 2097152 78", 30s) == "reply ok 2097152 inplace");
  CHECK(bp.opener.ask("await-wfree", 15s) == "free");
  CHECK(bp.opener.ask("main-send 1000 83") == "sent");
  CHECK(main.next().starts_with("ok 1000 "));  // a ring message: copied when main's job is queued
  bp.finish();
}

TEST_CASE("main's replies, sends, invokes and broadcasts to a window larger than its ring travel as blobs in the window's segment") {
  BlobPair bp("blob-from-main");
  MainBlobs main(bp.tb);
  // A large reply from main's handler, read in place by the caller.
  CHECK(bp.opener.ask("main-echo 8388608 101", 30s) == "reply ok 8388608 inplace");
  // A push and a broadcast (a copy into each window's own arena), heard in place.
  REQUIRE(bp.tb->send("opener", "big", bigMessage(16u << 20, 102)));
  CHECK(bp.opener.ask("heard", 30s) == "ok 16777216 inplace");
  auto report = bp.tb->broadcast("big", bigMessage(4u << 20, 103));
  REQUIRE(report);
  CHECK(report->delivered == 2);
  CHECK(report->failed.empty());
  CHECK(bp.opener.ask("heard", 30s) == "ok 4194304 inplace");
  CHECK(bp.acceptor.ask("heard", 30s) == "ok 4194304 inplace");
  // A call from main with a large request and a large reply (the window's, read in place here).
  for (const char* channel : {"big-echo", "big-echo-async"}) {
    CAPTURE(channel);
    auto r = bp.tb->invoke("opener", channel, bigMessage(6u << 20, 104), {.timeout = 20000ms}).get();
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    CHECK(checkBig(*r, 6u << 20) == "ok 6291456 inplace");
    CHECK(bp.opener.ask("handled") == "ok 6291456 inplace");
  }
  CHECK(bp.opener.ask("await-wfree", 15s) == "free");  // main dropped the replies: released
  // Larger than the window's arena: TooLarge, and main goes on.
  const auto tooLarge = bp.tb->send("opener", "big", bigMessage(100u << 20, 105));
  CHECK(tooLarge.code() == ErrorCode::TooLarge);
  CHECK(tooLarge.error().message.find("windowBlobBytes") != std::string::npos);
  REQUIRE(bp.tb->send("opener", "big", bigMessage(1000, 106)));
  CHECK(bp.opener.ask("heard") == "ok 1000 inplace");
  bp.finish();
}

TEST_CASE("a window's large send and invoke to another window: routed (one copy into the target's arena), then over the direct route (none)") {
  for (const bool direct : {true, false}) {
    CAPTURE(direct);
    SupervisorOptions o;
    o.directRoutes = direct;
    BlobPair bp(direct ? "blob-routed" : "blob-routed-only", o);
    // The first of a channel goes through the supervisor; with direct routes the next ones go
    // over the route port it opened then (its own arenas). Either way, read in place.
    for (int i = 0; i < 3; ++i) {
      CHECK(bp.opener.ask(fmt::format("send-to acceptor 8388608 {}", 111 + i), 30s) == "sent");
      CHECK(bp.acceptor.ask("heard", 30s) == "ok 8388608 inplace");
      CHECK(bp.opener.ask(fmt::format("invoke-to acceptor 4194304 {}", 121 + i), 30s) == "reply ok 4194304 inplace");
      CHECK(bp.acceptor.ask("handled") == "ok 4194304 inplace");
    }
    // Small ones in between keep their order with the large ones.
    CHECK(bp.opener.ask("send-to acceptor 1000 131") == "sent");
    CHECK(bp.acceptor.ask("heard") == "ok 1000 inplace");
    const auto routes = bp.tb->ports();
    const bool routePort = std::any_of(routes.begin(), routes.end(), [](const PortInfo& p) { return p.route; });
    CHECK(routePort == direct);
    CHECK(bp.opener.ask("await-wfree", 15s) == "free");
    bp.finish();
  }
}

TEST_CASE("a supervisor with windowBlobBytes 0 gives windows no arena: a large send to main is TooLarge and says why") {
  SupervisorOptions o;
  o.windowBlobBytes = 0;
  BlobPair bp("blob-main-none", o);
  MainBlobs main(bp.tb);
  CHECK(words(bp.opener.ask("wstats"))[4] == "0");
  const std::string refused = bp.opener.ask("main-send 1048576 91 why");
  CHECK(refused.starts_with("error TooLarge "));
  CHECK(refused.find("windowBlobBytes is 0") != std::string::npos);
  const std::string routed = bp.opener.ask("send-to acceptor 1048576 93");
  CHECK(routed.starts_with("error TooLarge "));
  CHECK(routed.find("windowBlobBytes is 0") != std::string::npos);
  CHECK(bp.opener.ask("main-send 1000 92") == "sent");
  CHECK(main.next().starts_with("ok 1000 "));  // a ring message: copied when main's job is queued
  bp.finish();
}

TEST_CASE("kill -9 of either side of a port holding blobs: the supervisor lets go of its segment") {
  for (const bool killSender : {true, false}) {
    CAPTURE(killSender);
    BlobPair bp(killSender ? "blob-kill-sender" : "blob-kill-receiver");
    REQUIRE(words(bp.open())[0] == "opened");
    // A blob the receiver has read (and released) and one it holds while the sender dies: the
    // acceptor's listener has returned for the first; the second is in flight.
    CHECK(bp.opener.ask("send 33554432 51", 30s) == "sent");
    CHECK(bp.acceptor.ask("heard", 30s) == "ok 33554432 inplace");
    CHECK(bp.opener.ask("send 33554432 52", 30s) == "sent");
    BlobPeer& victim = killSender ? bp.opener : bp.acceptor;
    BlobPeer& survivor = killSender ? bp.acceptor : bp.opener;
    ::kill(victim.pid(), SIGKILL);
    CHECK(victim.join() == 128 + SIGKILL);
    CHECK(survivor.ask("await-close", 15s) == "closed TargetGone");
    // The supervisor no longer maps the port's segment (its arenas, with the blob in flight);
    // the survivor's Port object holds its mapping and descriptor until the survivor drops it.
    REQUIRE(awaitCondition([&] { return bp.tb->ports().empty(); }));
    CHECK(segmentsHeld(bp.tb.bus) == SegmentsHeld{1, 0});
    CHECK(survivor.finish() == 0);
  }
}

TEST_CASE("kill -9 of a window while main reads its blob: the read completes, then the supervisor lets go of the window's segment") {
  BlobPair bp("blob-main-kill");
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, go = false;
  std::string check;
  // Main's listener holds the blob (in the window's arena) until the test lets it go on.
  auto hold = bp.tb->on("big-hold", [&](const Message& m, const CallContext&) {
    {
      std::unique_lock lk(mu);
      entered = true;
      cv.notify_all();
      cv.wait_for(lk, 30s, [&] { return go; });
    }
    const std::string c = checkBig(m, m.root<TestMessage>().getBlob().size());
    std::lock_guard lk(mu);
    check = c;
    cv.notify_all();
  });
  CHECK(bp.opener.ask("main-send-on big-hold 16777216 141", 30s) == "sent");
  {
    std::unique_lock lk(mu);
    REQUIRE(cv.wait_for(lk, 30s, [&] { return entered; }));
  }
  ::kill(bp.opener.pid(), SIGKILL);
  CHECK(bp.opener.join() == 128 + SIGKILL);
  // The supervisor sees the death while the listener blocks (another thread dispatches), and
  // still maps the dead window's segment: the blob main reads is in it.
  REQUIRE(awaitCondition([&] { return bp.tb->windows().size() == 1; }));
  CHECK(segmentsHeld(bp.tb.bus) == SegmentsHeld{2, 0});
  {
    std::unique_lock lk(mu);
    go = true;
    cv.notify_all();
    REQUIRE(cv.wait_for(lk, 30s, [&] { return !check.empty(); }));
  }
  CHECK(check == "ok 16777216 inplace");
  // The listener returned: only the survivor's window segment is left.
  CHECK(awaitCondition([&] { return segmentsHeld(bp.tb.bus) == SegmentsHeld{1, 0}; }));
  CHECK(bp.acceptor.finish() == 0);
}

TEST_CASE("bad blob descriptors from a hostile peer are dropped as InvalidMessage and the port keeps serving") {
  BlobPair bp("blob-hostile");
  REQUIRE(words(bp.open())[0] == "opened");
  CHECK(bp.opener.ask("hostile") == "written");
  // Only the good message after the bad ones is heard; the port did not end.
  CHECK(bp.acceptor.ask("heard") == "ok 1000 inplace");
  CHECK(bp.acceptor.ask("send 1048576 62") == "sent");
  CHECK(bp.opener.ask("heard") == "ok 1048576 inplace");
  bp.finish();
}
