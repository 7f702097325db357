// Payload capture (docs/architecture.md §14, "Payloads") across real processes: what an inspector
// gets of the messages' bytes, when capture is on or off, cut at its limit, and who may read them
// (the policy's inspectPayloads, the supervisor's own uid).
#include <capnp/serialize.h>
#include <doctest/doctest.h>

#include <cstring>

#include "bus_test.hpp"
#include "shmbus/inspect.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

/// The text of a captured TestMessage, read as Cap'n Proto's standard serialization.
std::string capturedText(const TracePayload& p) {
  REQUIRE(p.bytes.size() % sizeof(capnp::word) == 0);
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(p.bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), p.bytes.data(), p.bytes.size());
  capnp::FlatArrayMessageReader r(words);
  return r.getRoot<TestMessage>().getText();
}

/// The next event of `kind` on `channel` (others, such as window-open and ready, are skipped).
TraceEvent nextOn(Inspector& insp, const std::string& channel, TraceKind kind) {
  for (;;) {
    auto e = insp.next(std::chrono::milliseconds(10000));
    REQUIRE_MESSAGE(e.ok(), e.error().toString());
    REQUIRE_MESSAGE(e->has_value(), "no " << traceKindName(kind) << " on '" << channel << "' within 10 s");
    if ((*e)->channel == channel && (*e)->kind == kind) return std::move(**e);
  }
}

/// An inspector of `tb`'s bus that asks for payloads.
std::unique_ptr<Inspector> payloadInspector(const std::string& bus, const std::string& socket = "") {
  auto insp = Inspector::attach(bus, InspectOptions{.socketPath = socket, .payloads = true});
  REQUIRE_MESSAGE(insp.ok(), insp.error().toString());
  return std::move(*insp);
}

}  // namespace

TEST_CASE("a permitted inspector sees a routed call's request and reply and a send's message; long ones are cut") {
  SupervisorOptions o;
  o.payloadCapture.maxBytes = 256;
  TestBus tb("pl-routed", o, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(payloadPolicy()).ok());
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard",
                         [](Window& w, auto& regs) { regs.push_back(w.handle("echo", echoHandler())); });
  const std::string big(1000, 'x');
  Link toEditor;
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    childCheck(replyText(w->invokeIn("dashboard", "echo", text("hello")), "echo") == "hello", "echo");
    childCheck(replyText(w->invokeIn("dashboard", "echo", text(big)), "echo big") == big, "echo big");
    expectOk(w->send("note", text("n")), "send note");
    toEditor.tellParent("done");
    toEditor.hearParent();
  });
  tb->startDispatchThread();
  auto insp = payloadInspector(tb.bus);
  CHECK(insp->payloadsGranted());
  dashboard.start();
  editor.go();
  CHECK(toEditor.hearChild() == "done");

  const TraceEvent small = nextOn(*insp, "echo", TraceKind::Invoke);
  REQUIRE(small.request.has_value());
  REQUIRE(small.reply.has_value());
  CHECK_FALSE(small.request->truncated());
  CHECK(small.request->bytes.size() == small.request->fullBytes);
  CHECK(capturedText(*small.request) == "hello");
  CHECK(capturedText(*small.reply) == "hello");

  const TraceEvent cut = nextOn(*insp, "echo", TraceKind::Invoke);
  REQUIRE(cut.request.has_value());
  REQUIRE(cut.reply.has_value());
  CHECK(cut.request->truncated());
  CHECK(cut.request->bytes.size() == 256);
  CHECK(cut.request->fullBytes > big.size());
  CHECK(cut.reply->truncated());
  CHECK(cut.reply->bytes.size() == 256);

  const TraceEvent note = nextOn(*insp, "note", TraceKind::Send);
  REQUIRE(note.request.has_value());
  CHECK_FALSE(note.reply.has_value());
  CHECK(capturedText(*note.request) == "n");
  CHECK(insp->payloadsDropped() == 0);
  toEditor.tellChild("finish");
  CHECK(editor.join(std::chrono::milliseconds(10000)) == 0);
  CHECK(dashboard.finish() == 0);
}

TEST_CASE("payload capture is off by default; setPayloadCapture switches it on for the channels its globs match") {
  TestBus tb("pl-off", {}, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(payloadPolicy()).ok());
  auto echo = tb->handle("echo", echoHandler());
  auto other = tb->handle("other", echoHandler());
  Link toWin;
  GatedChild win([&] {
    auto w = connectWindow(tb.bus, "worker");
    for (std::string step = toWin.hearParent(); step != "finish"; step = toWin.hearParent()) {
      childCheck(replyText(w->invoke("echo", text("e")), "echo") == "e", "echo");
      childCheck(replyText(w->invoke("other", text("o")), "other") == "o", "other");
      toWin.tellParent("called");
    }
  });
  tb->startDispatchThread();
  auto insp = payloadInspector(tb.bus);
  CHECK(insp->payloadsGranted());  // permitted, but nothing is captured yet
  win.go();
  toWin.tellChild("call");
  CHECK(toWin.hearChild() == "called");
  for (const char* ch : {"echo", "other"}) {
    const TraceEvent e = nextOn(*insp, ch, TraceKind::Invoke);
    CHECK(e.requestBytes > 0);
    CHECK_FALSE(e.request.has_value());
    CHECK_FALSE(e.reply.has_value());
  }
  CHECK(tb->setPayloadCapture({.maxBytes = kMaxPayloadCaptureBytes + 1}).code() == ErrorCode::InvalidArgument);
  REQUIRE(tb->setPayloadCapture({.maxBytes = 4096, .channels = {"ech*"}}).ok());
  toWin.tellChild("call");
  CHECK(toWin.hearChild() == "called");
  const TraceEvent e = nextOn(*insp, "echo", TraceKind::Invoke);
  REQUIRE(e.request.has_value());
  REQUIRE(e.reply.has_value());
  CHECK(capturedText(*e.request) == "e");
  CHECK(capturedText(*e.reply) == "e");
  const TraceEvent o = nextOn(*insp, "other", TraceKind::Invoke);
  CHECK_FALSE(o.request.has_value());  // no glob matches "other"
  toWin.tellChild("finish");
  CHECK(win.join(std::chrono::milliseconds(10000)) == 0);
}

TEST_CASE("an inspector the policy does not permit gets no payloads; a policy that revokes it stops them") {
  SupervisorOptions o;
  o.payloadCapture.maxBytes = 1024;
  TestBus tb("pl-policy", o, /*dispatch=*/false);
  auto echo = tb->handle("echo", echoHandler());
  Link toWin;
  GatedChild win([&] {
    auto w = connectWindow(tb.bus, "worker");
    for (std::string step = toWin.hearParent(); step != "finish"; step = toWin.hearParent()) {
      childCheck(replyText(w->invoke("echo", text(step)), "echo") == step, "echo");
      toWin.tellParent("called");
    }
  });
  tb->startDispatchThread();
  auto refused = payloadInspector(tb.bus);  // the default policy: inspectPayloads false
  CHECK_FALSE(refused->payloadsGranted());
  REQUIRE(tb->setPolicy(payloadPolicy()).ok());
  auto permitted = payloadInspector(tb.bus);
  CHECK(permitted->payloadsGranted());
  win.go();
  toWin.tellChild("one");
  CHECK(toWin.hearChild() == "called");
  CHECK_FALSE(nextOn(*refused, "echo", TraceKind::Invoke).request.has_value());
  const TraceEvent seen = nextOn(*permitted, "echo", TraceKind::Invoke);
  REQUIRE(seen.request.has_value());
  CHECK(capturedText(*seen.request) == "one");
  REQUIRE(tb->setPolicy(Policy{}).ok());  // revoked: the ring stays mapped, nothing more goes in
  toWin.tellChild("two");
  CHECK(toWin.hearChild() == "called");
  CHECK_FALSE(nextOn(*permitted, "echo", TraceKind::Invoke).request.has_value());
  CHECK_FALSE(nextOn(*refused, "echo", TraceKind::Invoke).request.has_value());
  toWin.tellChild("finish");
  CHECK(win.join(std::chrono::milliseconds(10000)) == 0);
}

TEST_CASE("an inspector of another uid gets events but no payloads, whatever the policy") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to start an inspector as uid 65534");
    return;
  }
  SharedDir dir;
  SupervisorOptions o;
  o.allowedUids = {kNobody};
  o.socketPath = dir.socket();
  o.payloadCapture.maxBytes = 1024;
  TestBus tb("pl-uid", o, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(payloadPolicy()).ok());
  auto echo = tb->handle("echo", echoHandler());
  Link toSpy;
  GatedChild spy([&] {
    becomeNobody();
    auto insp = Inspector::attach(tb.bus, InspectOptions{.socketPath = dir.socket(), .payloads = true});
    childCheck(insp.ok(), insp ? "" : insp.error().toString());
    childCheck(!(*insp)->payloadsGranted(), "another uid was given the payload ring");
    toSpy.tellParent("attached");
    for (;;) {
      auto e = (*insp)->next(std::chrono::milliseconds(10000));
      childCheck(e.ok() && e->has_value(), "no event within 10 s");
      if ((*e)->channel != "echo") continue;
      childCheck(!(*e)->request.has_value() && !(*e)->reply.has_value(), "another uid read a payload");
      break;
    }
  });
  GatedChild win([&] {
    auto w = connectWindow(tb.bus, "worker", {.socketPath = dir.socket()});
    childCheck(replyText(w->invoke("echo", text("secret")), "echo") == "secret", "echo");
  });
  tb->startDispatchThread();
  auto owner = payloadInspector(tb.bus, dir.socket());  // the supervisor's own uid: permitted
  CHECK(owner->payloadsGranted());
  spy.go();
  CHECK(toSpy.hearChild() == "attached");
  win.go();
  const TraceEvent e = nextOn(*owner, "echo", TraceKind::Invoke);
  REQUIRE(e.request.has_value());
  CHECK(capturedText(*e.request) == "secret");  // captured: the other uid is refused, not the bus
  CHECK(win.join(std::chrono::milliseconds(10000)) == 0);
  CHECK(spy.join(std::chrono::milliseconds(10000)) == 0);
}

TEST_CASE("a stalled payload reader loses payloads, counted, and never pairs one with another call's event") {
  SupervisorOptions o;
  o.traceRingBytes = 64 * 1024;  // the smallest rings: the payload ring laps after ~60 calls
  o.payloadCapture.maxBytes = 1024;
  TestBus tb("pl-stall", o, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(payloadPolicy()).ok());
  auto echo = tb->handle("echo", echoHandler());
  constexpr int kCalls = 2000;
  Link toWin;
  GatedChild win = echoCaller(tb, toWin, kCalls, [](int i) {
    return std::to_string(i) + std::string(static_cast<std::size_t>(i % 400), '.');  // 0 to 400 bytes
  });
  tb->startDispatchThread();
  auto insp = payloadInspector(tb.bus);
  REQUIRE(insp->payloadsGranted());
  win.go();
  CHECK(toWin.hearChild(std::chrono::milliseconds(60000)) == "done");  // the bus never waited for the reader
  int withPayloads = 0;
  for (;;) {
    auto e = insp->next(std::chrono::milliseconds(0));
    REQUIRE_MESSAGE(e.ok(), e.error().toString());
    if (!*e) break;
    const TraceEvent& ev = **e;
    if (ev.kind != TraceKind::Invoke || !ev.request || !ev.reply) continue;
    ++withPayloads;
    // The echo's reply is its request: a payload joined to the wrong call would differ.
    CHECK(capturedText(*ev.request) == capturedText(*ev.reply));
  }
  MESSAGE("events with both payloads: " << withPayloads << ", payload records dropped: " << insp->payloadsDropped()
                                        << ", events lost: " << insp->lost());
  CHECK(withPayloads > 0);
  CHECK(insp->payloadsDropped() > 0);
  toWin.tellChild("finish");
  CHECK(win.join(std::chrono::milliseconds(10000)) == 0);
}
