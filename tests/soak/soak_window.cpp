// The soak's window process: connects (by path, or over the socket Supervisor::spawn handed
// down), serves kEcho, and calls other windows and main in a loop until main says quiet. A window
// that connected by path now and then closes and connects again in the same process; a spawned
// one now and then exits (main starts another). Counts go to main in tallies (soak.hpp).
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "soak.hpp"
#include "test.capnp.h"

namespace shmbus::soak {
namespace {

using namespace std::chrono_literals;

// One in this many iterations of a connected window closes and reconnects; one in kExitOdds of a
// spawned window exits. With ~50 iterations per window and second on two cores, every window
// does one or the other every ten to twenty seconds.
constexpr unsigned kReconnectOdds = 500;
constexpr unsigned kExitOdds = 1000;
constexpr unsigned kTallyEvery = 32;  // iterations between tallies (a kill -9 loses at most these)
constexpr std::chrono::milliseconds kCallTimeout{2000};

// Window ids this window heard of (window-opened); a call by id to one that closed meanwhile
// fails with NoTarget, as churn explains.
class Peers {
 public:
  void add(std::uint32_t id) {
    std::lock_guard lk(mu_);
    if (ids_.size() >= 64) ids_.erase(ids_.begin());
    ids_.push_back(id);
  }
  void remove(std::uint32_t id) {
    std::lock_guard lk(mu_);
    std::erase(ids_, id);
  }
  std::uint32_t pick(std::mt19937& rng) {
    std::lock_guard lk(mu_);
    return ids_.empty() ? 0 : ids_[rng() % ids_.size()];
  }

 private:
  std::mutex mu_;
  std::vector<std::uint32_t> ids_;
};

// What main said (kGo, kQuiet) and whether the connection ended, for the calling thread.
class Phase {
 public:
  void set(bool go, bool quiet, bool closed) {
    {
      std::lock_guard lk(mu_);
      go_ = go_ || go;
      quiet_ = quiet_ || quiet;
      closed_ = closed_ || closed;
    }
    cv_.notify_all();
  }
  // Waits for go, quiet or the end of the connection; true when the loop may call.
  bool awaitGo() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return go_ || quiet_ || closed_; });
    return !quiet_ && !closed_;
  }
  bool stop() {
    std::lock_guard lk(mu_);
    return quiet_ || closed_;
  }
  bool quiet() {
    std::lock_guard lk(mu_);
    return quiet_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool go_ = false, quiet_ = false, closed_ = false;
};

enum class End { Quiet, Reconnect, Exit, Closed };

// Sends the supervisor could not deliver and sent back (Window::onSendFailed, on the dispatch
// thread), by code, until the calling thread's next tally takes them.
using SendFailures = std::array<std::atomic<std::uint64_t>, kCodes>;

// The calling thread of one connection.
class Caller {
 public:
  Caller(Window& w, const WindowArgs& args, Phase& phase, Peers& peers, SendFailures& sendFailed, unsigned round)
      : w_(w), args_(args), phase_(phase), peers_(peers), sendFailed_(sendFailed), rng_(args.seed * 7919u + round) {}

  End run() {
    if (!phase_.awaitGo()) return finish(phase_.quiet() ? End::Quiet : End::Closed);
    for (unsigned i = 0; !phase_.stop(); ++i) {
      const std::string payload = fmt::format("{}-{}-{}", args_.slot, ::getpid(), i);
      const std::uint32_t peer = rng_() % 2 ? peers_.pick(rng_) : 0;
      const Target target = peer != 0 ? Target(peer) : Target(randomRole());
      count(Op::RoutedCall, w_.invokeIn(target, kEcho, text(payload), {.timeout = kCallTimeout}).get(), payload);
      count(Op::RoutedSend, w_.sendTo(randomRole(), kNote, text(payload)));
      count(Op::MainCall, w_.invoke(kPing, text(payload), {.timeout = kCallTimeout}).get(), payload);
      if ((i + 1) % kTallyEvery == 0) sendTally("tally");
      if (!args_.spawned && rng_() % kReconnectOdds == 0) return finish(End::Reconnect);
      if (args_.spawned && rng_() % kExitOdds == 0) return finish(End::Exit);
    }
    return finish(phase_.quiet() ? End::Quiet : End::Closed);
  }

 private:
  std::string randomRole() { return fmt::format("r{}", rng_() % args_.roles); }

  void count(Op op, const Result<void>& r) { ++tally_[static_cast<unsigned>(op)][static_cast<unsigned>(r.code())]; }
  void count(Op op, const Result<Message>& r, const std::string& payload) {
    unsigned code = static_cast<unsigned>(r.code());
    if (r && textOf(r.value()) != payload) code = kWrongReply;
    if (!expected(op, code)) fmt::print(stderr, "soak window {}: {} failed: {}\n", args_.slot, opName(op), r.error().toString());
    ++tally_[static_cast<unsigned>(op)][code];
  }

  End finish(End end) {
    sendTally(end == End::Quiet ? "final" : "tally");
    return end;
  }

  void sendTally(const char* kind) {
    // relaxed: counters only; the send below carries nothing else that depends on them.
    for (unsigned c = 0; c < kCodes; ++c) tally_[static_cast<unsigned>(Op::RoutedSend)][c] += sendFailed_[c].exchange(0, std::memory_order_relaxed);
    auto sent = w_.send(kTally, [&](Builder& b) {
      auto m = b.initRoot<test::TestMessage>();
      m.setSeq(args_.slot);
      m.setText(kind);
      auto numbers = m.initNumbers(kOps * kCodes);
      for (unsigned op = 0; op < kOps; ++op) {
        for (unsigned c = 0; c < kCodes; ++c) numbers.set(op * kCodes + c, static_cast<std::uint32_t>(tally_[op][c]));
      }
    });
    // A tally lost to a closed bus is what the supervisor's stop does; anything else is reported.
    if (!sent && sent.code() != ErrorCode::BusClosed) {
      fmt::print(stderr, "soak window {}: tally: {}\n", args_.slot, sent.error().toString());
    }
    tally_ = {};
  }

  Window& w_;
  const WindowArgs& args_;
  Phase& phase_;
  Peers& peers_;
  SendFailures& sendFailed_;
  std::mt19937 rng_;
  Tally tally_{};
};

}  // namespace

int runWindow(const WindowArgs& args) {
  for (unsigned round = 0;; ++round) {
    WindowOptions options{.bus = args.bus, .role = args.role, .logLevel = LogLevel::Error};
    options.replySpinCap = std::chrono::microseconds(args.replySpinCapUs);
    auto connected = args.spawned ? Window::fromSpawn(options) : Window::connect(options);
    if (!connected && round > 0 && connected.code() == ErrorCode::BusClosed) return 0;  // stopped meanwhile
    if (!connected) {
      fmt::print(stderr, "soak window {}: connect: {}\n", args.slot, connected.error().toString());
      return 3;
    }
    Window& w = **connected;
    Phase phase;
    Peers peers;
    SendFailures sendFailed{};
    std::vector<Registration> regs;
    regs.push_back(w.handle(kEcho, [](const Message& req, Builder& reply, const CallContext&) {
      reply.initRoot<test::TestMessage>().setText(textOf(req));
    }));
    regs.push_back(w.on(kNote, [](const Message&, const CallContext&) {}));
    regs.push_back(w.on(kBeat, [](const Message&, const CallContext&) {}));
    regs.push_back(w.on(kGo, [&](const Message&, const CallContext&) { phase.set(true, false, false); }));
    regs.push_back(w.on(kQuiet, [&](const Message&, const CallContext&) { phase.set(false, true, false); }));
    regs.push_back(w.onWindowOpened([&](const WindowEvent& e) { peers.add(e.windowId); }));
    regs.push_back(w.onWindowClosed([&](const WindowEvent& e) { peers.remove(e.windowId); }));
    regs.push_back(w.onSendFailed([&](const SendFailure& f) {
      if (!expected(Op::RoutedSend, static_cast<unsigned>(f.error.code))) {
        fmt::print(stderr, "soak window {}: {} failed: {}\n", args.slot, opName(Op::RoutedSend), f.error.toString());
      }
      sendFailed[static_cast<unsigned>(f.error.code)].fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
    }));
    // Main hears the hello after the registrations above (one ordered outbox), and answers with
    // the phase: a window that connects after kGo or kQuiet went out learns it here. The reply is
    // dropped at once: a held reply keeps its inbox record, and the inbox cannot move past it.
    std::string said;
    if (auto hello = w.invoke(kHello, text(fmt::format("{} {}", args.slot, ::getpid())), {.timeout = 10s}).get()) {
      said = textOf(*hello);
    } else {
      fmt::print(stderr, "soak window {}: hello: {}\n", args.slot, hello.error().toString());
      return 4;
    }
    phase.set(said == kPhaseRun, said == kPhaseQuiet, false);
    End end = End::Closed;
    std::thread caller([&] {
      end = Caller(w, args, phase, peers, sendFailed, round).run();
      if (end == End::Reconnect || end == End::Exit) w.close();
    });
    w.run();  // until main stops the bus, or the caller closed this connection
    phase.set(false, false, true);
    caller.join();
    regs.clear();
    if (end != End::Reconnect) return 0;
  }
}

}  // namespace shmbus::soak
