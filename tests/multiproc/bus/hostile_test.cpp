// Hostile windows (docs/architecture.md §5): a window that writes garbage into its outbox or sends malformed
// frames is disconnected with a logged reason, while two good windows keep invoking unaffected.
// The hostile child is a normal Window that then writes raw bytes into its own outbox through its
// mapping of the segment (RawOutbox).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

#include "blob/blob.hpp"
#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t kRing = 65536;
constexpr std::uint32_t kMaxRecord = kRing / 2;  // min(the supervisor's maximum, smaller ring / 2)

/// Calls the good windows made, in memory shared with the test process (mapped before the fork),
/// so the test can take the call rate before, during and after the attacks.
struct CallCounts {
  std::atomic<std::uint64_t> calls[2];

  static CallCounts* map() {
    void* p = ::mmap(nullptr, sizeof(CallCounts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return new (p) CallCounts{};
  }
  std::uint64_t total() const {
    // relaxed: a counter sampled for a rate; nothing else is published through it.
    return calls[0].load(std::memory_order_relaxed) + calls[1].load(std::memory_order_relaxed);
  }
};

/// A good window: calls `target`'s `channel` in a loop until the parent speaks, counting each
/// call in `*count`, then reports "<calls> <failures> <first failure>" to main.
void goodCaller(const std::string& bus, const char* role, const Link& link, const Target& target,
                const char* channel, std::atomic<std::uint64_t>* count) {
  auto w = connectWindow(bus, role);
  auto h = w->handle("echo", echoHandler());
  announceReady(*w);
  long calls = 0, failures = 0;
  std::string firstFailure = "-";
  while (!link.parentSpoke()) {
    auto r = target.isMain() ? w->invoke(channel, text("x")).get() : w->invokeIn(target, channel, text("x")).get();
    ++calls;
    count->fetch_add(1, std::memory_order_relaxed);  // relaxed: see CallCounts::total
    if (!r || textOf(*r) != "x") {
      if (failures++ == 0) firstFailure = r ? "wrong reply" : r.error().toString();
    }
  }
  link.tellParent(std::to_string(calls) + " " + std::to_string(failures) + " " + firstFailure);
}

enum class Attack {
  Garbage, UnknownKind, ShortFrame, MalformedPayload, BadPointerSend, BadPointerInvoke, BadBlobDescriptor, BlobIntern
};

const char* attackName(Attack a) {
  switch (a) {
    case Attack::Garbage: return "random bytes over the outbox";
    case Attack::UnknownKind: return "a frame of an unknown kind";
    case Attack::ShortFrame: return "a frame shorter than its header";
    case Attack::MalformedPayload: return "a send whose message table overruns the record";
    case Attack::BadPointerSend: return "a send to main whose root pointer is out of bounds";
    case Attack::BadPointerInvoke: return "a routed invoke whose root pointer is out of bounds";
    case Attack::BadBlobDescriptor: return "an invoke whose blob descriptor lies past the window's arena";
    case Attack::BlobIntern: return "a blob frame of a kind that is not a message (an Intern)";
  }
  return "";
}

void attack(RawOutbox& out, Attack a, unsigned seed) {
  detail::FrameHeader f{};
  switch (a) {
    case Attack::Garbage: out.garbage(8192, seed); break;
    case Attack::UnknownKind:
      f.kind = 200;
      out.frame(f);
      break;
    case Attack::ShortFrame: {
      const std::uint64_t junk[2] = {0x1234, 0x5678};
      out.record(junk, sizeof junk);
      break;
    }
    case Attack::MalformedPayload: {
      f.kind = static_cast<std::uint16_t>(detail::FrameKind::Send);
      f.channel = nameId("note");
      std::uint8_t body[sizeof f + sizeof(detail::MessageTable)] = {};
      detail::MessageTable t{};
      t.segmentCount = 1;
      t.segmentWords[0] = 1u << 20;  // far past the end of the record
      std::memcpy(body, &f, sizeof f);
      std::memcpy(body + sizeof f, &t, sizeof t);
      out.record(body, sizeof body);
      break;
    }
    case Attack::BadPointerSend:
      f.kind = static_cast<std::uint16_t>(detail::FrameKind::Send);
      f.channel = nameId("note");
      out.frameWithBadPointer(f);
      break;
    case Attack::BadPointerInvoke:
      f.kind = static_cast<std::uint16_t>(detail::FrameKind::Invoke);
      f.channel = nameId("echo");
      f.requestId = 1;
      f.target = detail::kTargetByRole;
      f.role = nameId("dashboard");
      out.frameWithBadPointer(f);
      break;
    case Attack::BadBlobDescriptor:
    case Attack::BlobIntern: {
      // docs/architecture.md §17: only a send, invoke or reply may be a blob, and its descriptor
      // must name a record of the window's own arena.
      f.kind = static_cast<std::uint16_t>(a == Attack::BlobIntern ? detail::FrameKind::Intern : detail::FrameKind::Invoke);
      f.channel = nameId("echo");
      f.requestId = 1;
      f.flags = detail::kFlagBlob;
      f.target = detail::kTargetByRole;
      f.role = nameId("dashboard");
      const detail::BlobDescriptor d{a == Attack::BlobIntern ? 64u : std::uint64_t{1} << 40, 64, 1, 0, 0};
      std::uint8_t body[sizeof f + sizeof d];
      std::memcpy(body, &f, sizeof f);
      std::memcpy(body + sizeof f, &d, sizeof d);
      out.record(body, sizeof body);
      break;
    }
  }
  RawOutbox::ringDoorbell();
}

/// What the supervisor's "window-closed" listener heard: each closed window's reason, by id.
class ClosedWindows {
 public:
  explicit ClosedWindows(Supervisor& sup)
      : reg_(sup.on("window-closed", [this](const Message& m, const CallContext&) {
          auto e = m.root<schema::WindowEvent>();
          {
            std::lock_guard lk(mu_);
            reasons_[e.getWindowId()] = e.getReason();
          }
          cv_.notify_all();
        })) {}

  /// Waits up to 10 s for window `id` to close (0: any window); its reason, or nullopt.
  std::optional<std::string> await(std::uint32_t id = 0) {
    std::unique_lock lk(mu_);
    auto heard = [&] { return id == 0 ? !reasons_.empty() : reasons_.count(id) != 0; };
    if (!cv_.wait_for(lk, 10s, heard)) return std::nullopt;
    return id == 0 ? reasons_.begin()->second : reasons_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint32_t, std::string> reasons_;
  Registration reg_;  // last: unregistered first
};

}  // namespace

TEST_CASE("a window writing garbage or malformed frames into its outbox is disconnected; good windows keep working") {
  TestBus tb("hostile", {}, /*dispatch=*/false);
  auto echo = tb->handle("echo", echoHandler());
  auto note = tb->on("note", [](const Message&, const CallContext&) {});  // so a send to main is decoded
  ClosedWindows closed(*tb.sup);
  // Every child is forked before the dispatch thread runs (see TestBus); the editor calls the
  // dashboard, so it connects once the dashboard is ready, and each intruder once released.
  Link toG1, toG2;
  CallCounts* counts = CallCounts::map();
  Child g1 = Child::fork([&] { goodCaller(tb.bus, "dashboard", toG1, Target::main(), "echo", &counts->calls[0]); });
  GatedChild g2([&] { goodCaller(tb.bus, "editor", toG2, Target("dashboard"), "echo", &counts->calls[1]); });
  constexpr std::array kAttacks{Attack::Garbage,        Attack::UnknownKind,      Attack::ShortFrame,
                                Attack::MalformedPayload, Attack::BadPointerSend, Attack::BadPointerInvoke,
                                Attack::BadBlobDescriptor, Attack::BlobIntern, Attack::Garbage, Attack::Garbage};
  std::array<Link, kAttacks.size()> toH;
  std::deque<GatedChild> intruders;
  for (std::size_t i = 0; i < kAttacks.size(); ++i) {
    const Attack a = kAttacks[i];
    const unsigned seed = static_cast<unsigned>(i) + 1;
    const Link& link = toH[i];
    intruders.emplace_back([&tb, &link, a, seed] {
      auto w = connectWindow(tb.bus, "intruder", {.inboxBytes = kRing, .outboxBytes = kRing});
      link.tellParent(std::to_string(w->id()));
      RawOutbox out(tb.bus, w->id(), kRing, kRing, kMaxRecord);
      attack(out, a, seed);
      // The supervisor hangs up on us: our calls fail with BusClosed from then on, and write
      // nothing (after the garbage, the ring's free space is not zero any more).
      childCheck(awaitCondition([&] { return w->closed(); }, 10s), "still connected after the attack");
      childCheck(w->invoke("echo").get().code() == ErrorCode::BusClosed, "calls after the disconnect");
    });
  }
  tb->startDispatchThread();
  tb.awaitReady("dashboard");
  g2.go();
  tb.awaitReady("editor");
  // The honest windows' call rate over their next 2000 calls, before and after the attacks, and
  // across the attacks: figures for the log (speed is bench/'s business), and proof that the
  // calls went on while the intruders were cut off.
  struct Sample {
    std::int64_t ns;
    std::uint64_t calls;
  };
  auto sample = [&] { return Sample{nowNs(), counts->total()}; };
  auto rate = [](Sample a, Sample b) { return static_cast<double>(b.calls - a.calls) * 1e9 / static_cast<double>(b.ns - a.ns); };
  const Sample beforeStart = sample();
  REQUIRE(awaitCondition([&] { return counts->total() >= beforeStart.calls + 2000; }, 30s));
  const Sample attacksStart = sample();

  std::uint64_t bad = 0;
  for (std::size_t i = 0; i < kAttacks.size(); ++i) {
    const std::string what = attackName(kAttacks[i]);
    CAPTURE(what);
    GatedChild& h = intruders[i];
    h.go();
    const auto id = static_cast<std::uint32_t>(std::stoul(toH[i].hearChild()));
    const auto reason = closed.await(id);
    REQUIRE(reason.has_value());
    MESSAGE(what << ": window " << id << " closed: " << *reason);
    CHECK(reason->starts_with("bad message: "));
    CHECK(tb->stats().badMessages == ++bad);
    CHECK(h.join(10s) == 0);
  }
  const Sample attacksEnd = sample();
  REQUIRE(awaitCondition([&] { return counts->total() >= attacksEnd.calls + 2000; }, 30s));
  const Sample afterEnd = sample();
  MESSAGE("honest windows' calls/s: before " << rate(beforeStart, attacksStart) << ", during the "
          << kAttacks.size() << " attacks " << rate(attacksStart, attacksEnd) << " (" << attacksEnd.calls - attacksStart.calls
          << " calls in " << (attacksEnd.ns - attacksStart.ns) / 1e6 << " ms), after " << rate(attacksEnd, afterEnd));
  CHECK(attacksEnd.calls > attacksStart.calls);  // they kept calling while intruders were cut off
  CHECK(tb->windows().size() == 2);  // only the good ones are left
  // The editor calls the dashboard: it stops first.
  for (const Link* l : {&toG2, &toG1}) {
    l->tellChild("stop");
    const std::string report = l->hearChild();
    const auto r = words(report);
    REQUIRE(r.size() >= 3);
    MESSAGE("good window: " << r[0] << " calls, " << r[1] << " failed; first failure: "
                            << report.substr(report.find(r[2], r[0].size() + r[1].size())));
    CHECK(std::stol(r[0]) > 0);
    CHECK(r[1] == "0");
  }
  CHECK(g1.join(10s) == 0);
  CHECK(g2.join(10s) == 0);
  ::munmap(counts, sizeof *counts);
}

TEST_CASE("a window whose reply is malformed is cut off, and its caller gets InvalidMessage") {
  TestBus tb("hostile-reply", {}, /*dispatch=*/false);  // the child is forked first (see TestBus)
  ClosedWindows closed(*tb.sup);
  Child intruder = Child::fork([&] {
    auto w = connectWindow(tb.bus, "intruder", {.inboxBytes = kRing, .outboxBytes = kRing});
    std::optional<Responder> held;  // never answered through the library: the raw reply is the answer
    auto h = w->handleAsync("trap", [&](const Message&, Responder r, const CallContext& ctx) {
      // On the dispatch thread, which writes nothing else meanwhile: the raw producer starts
      // at the published tail ("ready" and the handler registration are behind it).
      RawOutbox out(tb.bus, w->id(), kRing, kRing, kMaxRecord);
      detail::FrameHeader f{};
      f.kind = static_cast<std::uint16_t>(detail::FrameKind::Reply);
      f.channel = ctx.channelId;
      f.requestId = ctx.requestId;
      out.frameWithBadPointer(f);
      RawOutbox::ringDoorbell();
      held = std::move(r);
    });
    announceReady(*w);
    childCheck(awaitCondition([&] { return w->closed(); }, 10s), "still connected after the malformed reply");
  });
  tb->startDispatchThread();
  const Heard ready = tb.ready->next();
  auto r = tb->invoke(Target(ready.windowId), "trap", text("x")).get();
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == ErrorCode::InvalidMessage);
  MESSAGE("the caller got: " << r.error().toString());
  CHECK(r.error().message.find("the reply was malformed") != std::string::npos);
  const auto reason = closed.await(ready.windowId);
  REQUIRE(reason.has_value());
  CHECK(reason->starts_with("bad message: malformed payload of reply 'trap'"));
  CHECK(tb->stats().badMessages == 1);
  CHECK(intruder.join(10s) == 0);
}

TEST_CASE("a spawned window that writes a malformed payload is killed") {
  TestBus tb("hostile-spawned");
  ClosedWindows closed(*tb.sup);
  auto info = tb->spawn("rogue", {windowProgram(), "malformed"});
  REQUIRE(info.ok());
  const auto reason = closed.await(info->id);
  REQUIRE(reason.has_value());
  MESSAGE("closed: " << *reason);
  // (the window never named "note" in an Intern frame, so the reason gives the channel's id)
  CHECK(reason->starts_with("bad message: malformed payload of send '"));
  CHECK(reason->find("out-of-bounds struct pointer") != std::string::npos);
  // The program itself would wait forever (test_window's "malformed" mode): only the
  // supervisor's SIGKILL ends it, and the supervisor's reaper then reaps it.
  CHECK(awaitCondition([&] { return processGone(info->pid); }, 10s));
  CHECK(tb->stats().badMessages == 1);
}

TEST_CASE("a window cannot resize its segment: ftruncate on the descriptor it was handed fails, the supervisor serves on") {
  // Every mapper of a segment gets a read/write descriptor. Were the file not sealed, a window
  // that shrank it would make the supervisor's next access to its rings (the push below) raise
  // SIGBUS in this process: the test dies instead of failing one check.
  TestBus tb("hostile-resize");
  Link link;
  Child resizer = Child::fork([&] {
    // The handshake by hand, keeping what a Window closes once mapped: the segment's descriptor.
    auto sock = detail::connectSeqpacket(tb->socketPath());
    childCheck(sock.ok(), "connect");
    capnp::MallocMessageBuilder mb;
    auto hello = mb.initRoot<schema::Hello>();
    hello.setRole("resizer");
    hello.setPid(static_cast<std::int32_t>(::getpid()));
    childCheck(detail::sendControl(sock->get(), detail::ControlType::Hello, 0, &mb).ok(), "hello");
    auto pkt = detail::recvPacket(sock->get());
    childCheck(pkt.ok() && pkt->fds.size() == 2, "a welcome with the doorbell and the segment");
    const int seg = pkt->fds[1].get();
    struct stat before {}, after {};
    childCheck(::fstat(seg, &before) == 0 && before.st_size > 0, "fstat");
    const int grow = ::ftruncate(seg, before.st_size * 2) == 0 ? 0 : errno;
    const int seal = ::fcntl(seg, F_ADD_SEALS, F_SEAL_WRITE) == 0 ? 0 : errno;  // no more seals either
    const int shrink = ::ftruncate(seg, 0) == 0 ? 0 : errno;  // last: an unsealed file stays empty
    childCheck(::fstat(seg, &after) == 0, "fstat");
    childCheck(detail::sendControl(sock->get(), detail::ControlType::Mapped, 0).ok(), "mapped");
    link.tellParent(fmt::format("{} {} {} {}", shrink, grow, seal, after.st_size == before.st_size ? "same" : "resized"));
    link.hearParent(30s);
  });
  CHECK(link.hearChild(30s) == fmt::format("{} {} {} same", EPERM, EPERM, EPERM));
  REQUIRE(awaitCondition([&] { return tb->windows().size() == 1; }));
  const std::uint32_t id = tb->windows()[0].id;
  // The supervisor writes into the window's inbox and still serves other windows.
  for (int i = 0; i < 100; ++i) REQUIRE(tb->send(Target(id), "note", text("still here")).ok());
  auto other = connectWindow(tb.bus, "other");
  auto h = tb->handle("echo", echoHandler());
  auto back = other->invoke("echo", text("x")).get();
  REQUIRE_MESSAGE(back.ok(), back.error().toString());
  CHECK(textOf(*back) == "x");
  link.tellChild("done");
  CHECK(resizer.join(10s) == 0);
}
