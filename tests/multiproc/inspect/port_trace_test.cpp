// The trace of ports (docs/architecture.md §14 "Ports") across real processes: an in-process
// Inspector watches two forked windows open a port, call and send over it and end it (close,
// kill -9), a refused open, and a third window that forges PortTrace frames. No times are
// asserted (suite multiproc, so the ThreadSanitizer run has it).
#include <capnp/message.h>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <csignal>
#include <functional>
#include <mutex>

#include "bus.capnp.h"
#include "bus_test.hpp"
#include "raw_outbox.hpp"
#include "shmbus/inspect.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t kRing = 65536;  // the forger's rings (RawOutbox must know them)
constexpr std::size_t kTableBytes = sizeof(detail::MessageTable);  // a payload's bytes = table + words

/// One window in a forked child, driven by the test through a Link (one line each way):
///   listen          → "listening": takes ports on "chat"; each gets handlers "size" (replies the
///                     request's size in words) and "fail" (throws "boom"), and a listener on "note"
///   open            → "opened ID" | "error CODE" (a port on "chat" to role "acceptor")
///   call            → "ok" | "error CODE" (one "size" call on the port, outside any handler)
///   close           → "closed" (the port)
///   forge ID        → "forged": raw frames in its own outbox (kRing rings): a PortTrace naming
///                     port ID, then a Send on "forged" to main (read after it)
///   forge-malformed → "forged": a PortTrace frame whose payload's root points out of bounds
///   done            → exits.
/// Its handler "run" (main calls it with "N M") makes N "size" calls of growing requests, one
/// "fail" call and M sends on "note" over the port, and answers "REQWORDS:REPLYWORDS ..." for
/// the size calls and the fail call's code: inside a handler, so they carry its trace id.
class PortEnd : public DrivenWindow {
 public:
  PortEnd(TestBus& tb, std::string role) : DrivenWindow(std::move(role)) {
    forkBody(tb, [this](const std::string& bus) { body(bus); });
  }

 private:
  struct State {
    std::mutex mu;
    std::shared_ptr<Port> port;
    std::vector<Registration> regs;
  };

  static void setup(State& st, const std::shared_ptr<Port>& p) {
    std::lock_guard lk(st.mu);
    st.port = p;
    st.regs.push_back(p->handle("size", [](const Message& req, Builder& reply, const CallContext&) {
      reply.initRoot<TestMessage>().setText(std::to_string(req.words()));
    }));
    st.regs.push_back(p->handle("fail", [](const Message&, Builder&, const CallContext&) {
      throw std::runtime_error("boom");
    }));
    st.regs.push_back(p->on("note", [](const Message&, const CallContext&) {}));
    p->start();
  }

  void body(const std::string& bus) {
    WindowOptions options;
    options.inboxBytes = options.outboxBytes = kRing;
    auto w = connectWindow(bus, role_, options);
    State st;
    auto port = [&] {
      std::lock_guard lk(st.mu);
      return st.port;
    };
    auto run = w->handle("run", textHandler([&](const std::string& req, const CallContext&) {
      const auto nm = words(req);
      std::string out;
      for (int i = 0; i < std::stoi(nm.at(0)); ++i) {
        auto r = port()->invoke("size", text(std::string(static_cast<std::size_t>(20 * (i + 1)), 'x'))).get();
        out += r ? fmt::format("{}:{} ", textOf(*r), r->words()) : fmt::format("{} ", errorCodeName(r.code()));
      }
      auto f = port()->invoke("fail", text("f")).get();
      out += f ? std::string("ok") : std::string(errorCodeName(f.code()));
      for (int i = 0; i < std::stoi(nm.at(1)); ++i) expectOk(port()->send("note", text("n")), "send note");
      return out;
    }));
    std::vector<Registration> regs;
    announceReady(*w);
    for (;;) {
      const auto cmd = words(link_.hearParent(120s));
      if (cmd.empty() || cmd[0] == "done") break;
      if (cmd[0] == "listen") {
        regs.push_back(w->onPort("chat", [&st](std::shared_ptr<Port> p) { setup(st, p); }));
        link_.tellParent("listening");
      } else if (cmd[0] == "open") {
        auto p = w->openPort("acceptor", "chat", {.timeout = 5000ms});
        if (!p) {
          link_.tellParent(fmt::format("error {}", errorCodeName(p.code())));
          continue;
        }
        setup(st, *p);
        link_.tellParent(fmt::format("opened {}", (*p)->id()));
      } else if (cmd[0] == "call") {
        auto r = port()->invoke("size", text("c")).get();
        link_.tellParent(r ? std::string("ok") : fmt::format("error {}", errorCodeName(r.code())));
      } else if (cmd[0] == "close") {
        port()->close();
        link_.tellParent("closed");
      } else if (cmd[0] == "forge" || cmd[0] == "forge-malformed") {
        RawOutbox out(bus, w->id(), kRing, kRing, kRing / 2);
        detail::FrameHeader h{};
        h.kind = static_cast<std::uint16_t>(detail::FrameKind::PortTrace);
        if (cmd[0] == "forge-malformed") {
          out.frameWithBadPointer(h);
        } else {
          capnp::MallocMessageBuilder mb;
          auto rec = mb.initRoot<schema::PortTrace>().initRecords(2);
          for (unsigned i = 0; i < 2; ++i) {
            rec[i].setPortId(std::stoull(cmd[1]));
            rec[i].setKind(static_cast<std::uint16_t>(TraceKind::Invoke));
            rec[i].setChannelId(nameId("size"));
            rec[i].setRequestId(7);
          }
          rec[1].setPortId(std::stoull(cmd[1]) + 1000);  // no port at all
          out.frameWithMessage(h, mb);
          detail::FrameHeader marker{};
          marker.kind = static_cast<std::uint16_t>(detail::FrameKind::Send);
          marker.channel = nameId("forged");
          marker.target = detail::kTargetMain;
          out.frame(marker);
        }
        RawOutbox::ringDoorbell();
        link_.tellParent("forged");
      }
    }
    std::lock_guard lk(st.mu);
    st.regs.clear();
    st.port.reset();
  }
};

/// Reads events until one satisfies `last` (included); fails the test after 10 s without one.
std::vector<TraceEvent> readUntil(Inspector& in, const std::function<bool(const TraceEvent&)>& last) {
  std::vector<TraceEvent> out;
  for (;;) {
    auto e = in.next(10s);
    REQUIRE(e.ok());
    REQUIRE_MESSAGE(e->has_value(), "no more events; the last: " << (out.empty() ? "-" : toText(out.back())));
    out.push_back(**e);
    if (last(out.back())) return out;
  }
}

/// Reads events until port `port`'s PortClose and `calls` invokes and `sends` sends over it were
/// seen (the closer sends its records before its PortClose, but the peer, seeing the port end,
/// may tell the router first: the last records may follow the PortClose).
std::vector<TraceEvent> readPort(Inspector& in, std::uint64_t port, std::size_t calls, std::size_t sends) {
  bool closed = false;
  std::size_t c = 0, s = 0;
  return readUntil(in, [&](const TraceEvent& e) {
    if (e.portId == port) {
      closed = closed || e.kind == TraceKind::PortClose;
      c += e.kind == TraceKind::Invoke ? 1 : 0;
      s += e.kind == TraceKind::Send ? 1 : 0;
    }
    return closed && c >= calls && s >= sends;
  });
}

/// The events of `events` with `kind` over port `port`.
std::vector<TraceEvent> ofKind(const std::vector<TraceEvent>& events, TraceKind kind, std::uint64_t port) {
  std::vector<TraceEvent> out;
  for (const auto& e : events) {
    if (e.kind == kind && e.portId == port) out.push_back(e);
  }
  return out;
}

/// A bus with an inspector attached and two windows, "acceptor" (listening or not) and "opener",
/// and a third, "forger", when asked (forked, like the others, before the dispatch thread runs).
struct Traced {
  explicit Traced(std::string_view tag, bool listen = true, bool withForger = false)
      : tb(tag, {}, false), acceptor(tb, "acceptor"), opener(tb, "opener") {
    if (withForger) forger = std::make_unique<PortEnd>(tb, "forger");
    tb->startDispatchThread();
    auto in = Inspector::attach(tb.bus);
    REQUIRE(in.ok());
    insp = std::move(*in);
    acceptorId = acceptor.start(tb);
    openerId = opener.start(tb);
    if (listen) REQUIRE(acceptor.ask("listen") == "listening");
  }
  std::uint64_t open() {
    const auto r = words(opener.ask("open"));
    REQUIRE_MESSAGE(r.at(0) == "opened", fmt::format("{}", fmt::join(r, " ")));
    return std::stoull(r.at(1));
  }
  /// Checks that `e` is about port `port` between the two windows.
  void checkEnds(const TraceEvent& e, std::uint64_t port) const {
    INFO(toText(e));
    CHECK(e.portId == port);
    CHECK(e.sourceId == openerId);
    CHECK(e.sourceRole == "opener");
    CHECK(e.targetId == acceptorId);
    CHECK(e.targetRole == "acceptor");
  }
  TestBus tb;
  PortEnd acceptor, opener;
  std::unique_ptr<PortEnd> forger;
  std::unique_ptr<Inspector> insp;
  std::uint32_t acceptorId = 0, openerId = 0;
};

}  // namespace

TEST_CASE("with an inspector attached, a port's open, its calls and sends, and its close are traced") {
  Traced t("port-trace");
  const std::uint64_t id = t.open();
  auto snap = t.insp->snapshot();
  REQUIRE(snap.ok());
  REQUIRE(snap->ports.size() == 1);
  CHECK(snap->ports[0].id == id);
  CHECK(snap->ports[0].opener == t.openerId);
  CHECK(snap->ports[0].acceptor == t.acceptorId);
  CHECK(snap->ports[0].channel == "chat");
  CHECK(snap->ports[0].accepted);
  // `shmbus-inspect BUS windows` lists the port under both windows.
  ToolProcess win(toolPath("SHMBUS_INSPECT"), {t.tb.bus, "windows"});
  std::string listed;
  for (std::string l = win.line(); !l.empty(); l = win.line()) listed += l + "\n";
  CHECK(win.wait() == 0);
  INFO(listed);
  CHECK(listed.find(fmt::format("port {} on 'chat' → acceptor#{}", id, t.acceptorId)) != std::string::npos);
  CHECK(listed.find(fmt::format("port {} on 'chat' ← opener#{}", id, t.openerId)) != std::string::npos);
  CHECK(listed.find("1 port(s)") != std::string::npos);

  constexpr int kCalls = 3, kSends = 2;
  auto run = t.tb->invoke(Target(t.openerId), "run", text(fmt::format("{} {}", kCalls, kSends))).get();
  REQUIRE(run.ok());
  const auto results = words(textOf(*run));  // "REQWORDS:REPLYWORDS" per call, then the fail's code
  REQUIRE(results.size() == kCalls + 1);
  CHECK(results.back() == "HandlerError");
  REQUIRE(t.opener.ask("close") == "closed");
  const auto events = readPort(*t.insp, id, kCalls + 1, kSends);

  const auto opens = ofKind(events, TraceKind::PortOpen, id);
  REQUIRE(opens.size() == 1);
  t.checkEnds(opens[0], id);
  CHECK(opens[0].status == ErrorCode::Ok);
  CHECK(opens[0].channel == "chat");

  // The main → opener "run" call, whose trace id the port's calls and sends carry.
  std::uint64_t flow = 0;
  for (const auto& e : events) {
    if (e.kind == TraceKind::Invoke && e.channel == "run") flow = e.traceId;
  }
  CHECK(flow != 0);

  const auto calls = ofKind(events, TraceKind::Invoke, id);
  REQUIRE(calls.size() == kCalls + 1);
  std::uint64_t prevReq = 0;
  for (int i = 0; i <= kCalls; ++i) {
    const TraceEvent& e = calls[static_cast<std::size_t>(i)];
    INFO(toText(e));
    t.checkEnds(e, id);
    CHECK(e.requestId > prevReq);  // one end's request ids, in the order it made the calls
    prevReq = e.requestId;
    CHECK(e.traceId == flow);
    CHECK(e.endNs >= e.startNs);
    CHECK(e.startNs > 0);
    if (i < kCalls) {
      const auto sizes = std::string(results[static_cast<std::size_t>(i)]);
      const auto colon = sizes.find(':');
      CHECK(e.channel == "size");
      CHECK(e.status == ErrorCode::Ok);
      CHECK(e.requestBytes == kTableBytes + 8 * std::stoul(sizes.substr(0, colon)));
      CHECK(e.replyBytes == kTableBytes + 8 * std::stoul(sizes.substr(colon + 1)));
    } else {
      CHECK(e.channel == "fail");
      CHECK(e.status == ErrorCode::HandlerError);
      CHECK(e.error.find("boom") != std::string::npos);
      CHECK(e.requestBytes > kTableBytes);
      CHECK(e.replyBytes == 0);
    }
  }
  // Growing requests: the sizes are each call's own.
  CHECK(calls[0].requestBytes < calls[kCalls - 1].requestBytes);

  const auto sends = ofKind(events, TraceKind::Send, id);
  REQUIRE(sends.size() == kSends);
  for (const auto& e : sends) {
    t.checkEnds(e, id);
    CHECK(e.channel == "note");
    CHECK(e.status == ErrorCode::Ok);
    CHECK(e.traceId == flow);
    CHECK(e.requestBytes > kTableBytes);
    CHECK(e.requestId == 0);
  }

  const auto closes = ofKind(events, TraceKind::PortClose, id);
  REQUIRE(closes.size() == 1);
  const TraceEvent& close = closes[0];
  t.checkEnds(close, id);
  CHECK(close.status == ErrorCode::Ok);
  CHECK(close.error == "closed by the opener");
  CHECK(toText(close).find(fmt::format("port {}", id)) != std::string::npos);
  CHECK(toJson(close).find(fmt::format("\"portId\":{}", id)) != std::string::npos);

  snap = t.insp->snapshot();
  REQUIRE(snap.ok());
  CHECK(snap->ports.empty());
  CHECK(t.opener.finish() == 0);
  CHECK(t.acceptor.finish() == 0);
}

TEST_CASE("a kill -9 of a port's end gives a PortClose with the death as its reason") {
  Traced t("port-trace-kill");
  const std::uint64_t id = t.open();
  REQUIRE(t.opener.ask("call") == "ok");
  REQUIRE(::kill(t.acceptor.pid(), SIGKILL) == 0);
  // The opener's end flushes its record of the call when it sees the port end, after the router
  // recorded the end: it is still attributed (the router remembers ended ports).
  const auto events = readPort(*t.insp, id, 1, 0);
  const auto closes = ofKind(events, TraceKind::PortClose, id);
  REQUIRE(closes.size() == 1);
  t.checkEnds(closes[0], id);
  CHECK(closes[0].status == ErrorCode::TargetGone);
  CHECK(closes[0].error.find("the acceptor's window closed or died") != std::string::npos);
  const auto calls = ofKind(events, TraceKind::Invoke, id);
  REQUIRE(calls.size() == 1);
  t.checkEnds(calls[0], id);
  CHECK(calls[0].status == ErrorCode::Ok);
  t.acceptor.join();
  CHECK(t.opener.finish() == 0);
}

TEST_CASE("an open refused for want of an onPort listener is a PortOpen event with NoHandler") {
  Traced t("port-trace-refused", /*listen=*/false);
  CHECK(t.opener.ask("open") == "error NoHandler");
  const auto events = readUntil(*t.insp, [](const TraceEvent& e) { return e.kind == TraceKind::PortOpen; });
  const TraceEvent& open = events.back();
  INFO(toText(open));
  CHECK(open.status == ErrorCode::NoHandler);
  CHECK(open.portId == 0);  // no port was made
  CHECK(open.sourceId == t.openerId);
  CHECK(open.targetId == t.acceptorId);
  CHECK(open.targetRole == "acceptor");
  CHECK(open.error.find("no onPort listener") != std::string::npos);
  for (const auto& e : events) CHECK(e.kind != TraceKind::Invoke);  // the refusal is not also an invoke
  CHECK(t.opener.finish() == 0);
  CHECK(t.acceptor.finish() == 0);
}

TEST_CASE("a PortTrace frame naming a port the window does not hold changes nothing for others") {
  Traced t("port-trace-forged", true, true);
  Mailbox forged(*t.tb.sup, "forged");
  PortEnd& forger = *t.forger;
  const std::uint32_t forgerId = forger.start(t.tb);
  const std::uint64_t id = t.open();
  REQUIRE(forger.ask(fmt::format("forge {}", id)) == "forged");
  CHECK(forged.nextFrom(forgerId).text.empty());  // read after the PortTrace frame
  CHECK(t.tb->window(forgerId).has_value());      // dropped records do not cut it off
  REQUIRE(t.opener.ask("call") == "ok");
  REQUIRE(t.opener.ask("close") == "closed");
  auto events = readPort(*t.insp, id, 1, 0);
  const auto calls = ofKind(events, TraceKind::Invoke, id);
  REQUIRE(calls.size() == 1);  // the opener's call, not the forged ones
  t.checkEnds(calls[0], id);
  for (const auto& e : events) CHECK(!(e.kind == TraceKind::Invoke && e.sourceId == forgerId));

  // A PortTrace whose payload is malformed is a bad message: the window is cut off.
  REQUIRE(forger.ask("forge-malformed") == "forged");
  events = readUntil(*t.insp, [&](const TraceEvent& e) { return e.sourceId == forgerId && e.kind == TraceKind::BadMessage; });
  CHECK(events.back().error.find("port trace") != std::string::npos);
  CHECK(forger.finish() == 0);
  CHECK(t.opener.finish() == 0);
  CHECK(t.acceptor.finish() == 0);
}
