// The inspector (docs/architecture.md §14) against a live bus: the shmbus-inspect CLI in its own
// process sees a scripted scenario complete and in order; a stalled in-process Inspector loses
// the oldest events and is told how many while calls go on.
#include <capnp/compat/json.h>
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>

#include "bus_test.hpp"
#include "shmbus/inspect.hpp"

using namespace shmbus;
using namespace shmbus::test;

namespace {

/// shmbus-inspect (meson passes its path in $SHMBUS_INSPECT) with `args`.
class InspectProcess : public ToolProcess {
 public:
  explicit InspectProcess(std::vector<std::string> args) : ToolProcess(toolPath("SHMBUS_INSPECT"), std::move(args)) {}
};

/// The value of `key` in one line of `tail --json` (a string without its quotes, or a number).
std::string field(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  const auto at = json.find(k);
  if (at == std::string::npos) return "<missing>";
  auto v = at + k.size();
  if (json[v] == '"') {
    std::string out;
    for (++v; v < json.size() && json[v] != '"'; ++v) {
      if (json[v] == '\\') ++v;
      out += json[v];
    }
    return out;
  }
  const auto end = json.find_first_of(",}", v);
  return json.substr(v, end - v);
}

}  // namespace

TEST_CASE("shmbus-inspect tail shows every message and call of a scenario in order; nested calls share a trace id") {
  TestBus tb("inspect", {}, /*dispatch=*/false);
  auto mainEcho = tb->handle("main-echo", echoHandler());
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    regs.push_back(w.handle("echo", echoHandler()));
    regs.push_back(w.handle("nested", textHandler([&w](const std::string& req, const CallContext&) {
      auto r = w.invoke("main-echo", text(req)).get();
      return r.ok() ? textOf(*r) : std::string(errorCodeName(r.code()));
    })));
  });
  Link toEditor;
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    childCheck(replyText(w->invokeIn("dashboard", "echo", text("hello")), "echo") == "hello", "echo");
    childCheck(w->invokeIn("dashboard", "missing").get().code() == ErrorCode::NoHandler, "missing: NoHandler");
    childCheck(w->invokeIn("nobody", "echo").get().code() == ErrorCode::NoTarget, "nobody: NoTarget");
    childCheck(replyText(w->invokeIn("dashboard", "nested", text("deep")), "nested") == "deep", "nested");
    expectOk(w->send("note", text("n")), "send note");
    toEditor.tellParent(std::to_string(w->id()));
    toEditor.hearParent();
  });
  tb->startDispatchThread();
  InspectProcess insp({tb.bus, "tail", "--json"});
  const std::string hello = insp.errLine();
  REQUIRE_MESSAGE(hello.find("tailing bus") != std::string::npos, "shmbus-inspect said: " << hello);

  dashboard.start();
  const std::uint32_t dashId = dashboard.id();
  editor.go();
  const std::uint32_t editorId = static_cast<std::uint32_t>(std::stoul(toEditor.hearChild()));
  toEditor.tellChild("done");
  CHECK(editor.join(10s) == 0);
  CHECK(dashboard.finish() == 0);

  struct Want {
    std::string kind, channel, source, target, status;
  };
  const std::string d = std::to_string(dashId), e = std::to_string(editorId);
  const std::vector<Want> want = {
      {"window-open", "", d, "0", "Ok"},
      {"send", "ready", d, "0", "Ok"},
      {"window-open", "", e, "0", "Ok"},
      {"invoke", "echo", e, d, "Ok"},
      {"invoke", "missing", e, "0", "NoHandler"},
      {"invoke", "echo", e, "0", "NoTarget"},
      {"invoke", "main-echo", d, "0", "Ok"},  // the nested call ends first
      {"invoke", "nested", e, d, "Ok"},
      {"send", "note", e, "0", "Ok"},
      {"window-close", "", e, "0", "Ok"},
      {"window-close", "", d, "0", "Ok"},
  };
  std::vector<std::string> got;
  for (std::size_t i = 0; i < want.size(); ++i) got.push_back(insp.line());
  std::uint64_t prevSeq = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO("event " << i << ": " << got[i]);
    CHECK(field(got[i], "kind") == want[i].kind);
    if (!want[i].channel.empty()) CHECK(field(got[i], "channel") == want[i].channel);
    CHECK(field(got[i], "sourceId") == want[i].source);
    CHECK(field(got[i], "targetId") == want[i].target);
    CHECK(field(got[i], "status") == want[i].status);
    const auto seq = std::stoull(field(got[i], "seq"));
    CHECK(seq == prevSeq + 1);  // nothing lost, nothing reordered
    prevSeq = seq;
    CHECK(std::stoll(field(got[i], "endNs")) >= std::stoll(field(got[i], "startNs")));
  }
  CHECK(field(got[1], "sourceRole") == "dashboard");
  CHECK(field(got[3], "targetRole") == "dashboard");
  CHECK(std::stoul(field(got[3], "requestBytes")) > 0);
  CHECK(std::stoul(field(got[3], "replyBytes")) > 0);
  CHECK(field(got[5], "targetRole") == "nobody");
  CHECK(field(got[4], "error").find("no handler") != std::string::npos);
  // A→B→main is one flow: the nested call carries its caller's trace id.
  CHECK(field(got[6], "traceId") != "0");
  CHECK(field(got[6], "traceId") == field(got[7], "traceId"));
  CHECK(field(got[3], "traceId") != field(got[7], "traceId"));
  CHECK(field(got[9], "pid") != "0");

  tb->stop();  // the inspector hears the bus close and exits 0
  CHECK(insp.line() == "");
  CHECK(insp.wait() == 0);
}

TEST_CASE("a stalled inspector loses the oldest events and is told how many; the bus never waits for it") {
  SupervisorOptions o;
  o.traceRingBytes = 64 * 1024;  // the smallest ring: a few hundred events
  TestBus tb("stall", o, /*dispatch=*/false);
  std::atomic<int> heard{0};
  auto count = tb->on("tick", [&](const Message&, const CallContext&) { heard.fetch_add(1, std::memory_order_relaxed); });
  auto echo = tb->handle("echo", echoHandler());
  constexpr int kCalls = 3000;
  Link toWin;
  GatedChild win = echoCaller(tb, toWin, kCalls, [](int i) { return std::to_string(i); });
  tb->startDispatchThread();
  auto insp = Inspector::attach(tb.bus);
  REQUIRE_MESSAGE(insp.ok(), insp.error().toString());
  win.go();
  CHECK(toWin.hearChild(60s) == "done");  // every call answered while the inspector read nothing
  std::vector<TraceEvent> events;
  for (;;) {
    auto e = (*insp)->next(0ms);
    REQUIRE_MESSAGE(e.ok(), e.error().toString());
    if (!*e) break;
    events.push_back(std::move(**e));
  }
  toWin.tellChild("finish");
  CHECK(win.join(10s) == 0);
  // 1 window-open + kCalls invokes were written; the ring holds a fraction of them.
  REQUIRE(!events.empty());
  const std::uint64_t lost = (*insp)->lost();
  MESSAGE("read " << events.size() << " events, lost " << lost);
  CHECK(lost > 0);
  CHECK(events.size() + lost == kCalls + 1);
  for (std::size_t i = 1; i < events.size(); ++i) CHECK(events[i].seq == events[i - 1].seq + 1);
  CHECK(events.back().kind == TraceKind::Invoke);
  CHECK(events.back().channel == "echo");
  CHECK(events.back().status == ErrorCode::Ok);
  // It keeps reading from where it is: the window's close comes next.
  CHECK((*insp)->next(-1ms).code() == ErrorCode::InvalidArgument);  // a timeout as everywhere else
  auto closeEv = (*insp)->next(std::chrono::milliseconds(LONG_MAX / 2));  // clamped, not overflowed
  REQUIRE(closeEv.ok());
  REQUIRE(closeEv->has_value());
  CHECK((*closeEv)->kind == TraceKind::WindowClose);
  CHECK((*closeEv)->seq == events.back().seq + 1);
}

TEST_CASE("shmbus-inspect names a bus that does not run") {
  InspectProcess insp({uniqueBus("none"), "tail"});
  const std::string err = insp.errLine();
  CHECK(err.find("no supervisor of bus") != std::string::npos);
  CHECK(insp.wait() == 1);
}

TEST_CASE("shmbus-inspect windows and stats show the registry, the counters and the calls in flight") {
  TestBus tb("status", {}, /*dispatch=*/false);
  auto echo = tb->handle("echo", echoHandler());
  Link held;
  ServedWindow slow(ServedWindow::deferred, tb, "slow", [&held](Window& w, auto& regs) {
    regs.push_back(w.handle("stuck", textHandler([&held](const std::string&, const CallContext&) {
      held.tellParent("in-handler");
      held.hearParent(60s);
      return std::string("late");
    })));
  });
  Link toCaller;
  GatedChild caller([&] {
    auto w = connectWindow(tb.bus, "caller");
    for (int i = 0; i < 10; ++i) childCheck(replyText(w->invoke("echo", text("x")), "echo") == "x", "echo");
    auto stuck = w->invokeIn("slow", "stuck", {}, {.timeout = 30000ms});
    toCaller.tellParent("calling");
    childCheck(replyText(stuck, "stuck") == "late", "stuck answered");
  });
  tb->startDispatchThread();
  slow.start();
  caller.go();
  CHECK(toCaller.hearChild() == "calling");
  CHECK(held.hearChild() == "in-handler");  // one call in flight now

  InspectProcess win({tb.bus, "windows"});
  std::vector<std::string> rows;
  for (std::string l = win.line(); !l.empty(); l = win.line()) rows.push_back(l);
  CHECK(win.wait() == 0);
  REQUIRE(rows.size() == 4);  // header, two windows, summary
  CHECK(rows[1].find("slow") != std::string::npos);
  CHECK(rows[1].find(" open ") != std::string::npos);
  CHECK(rows[1].find(" " + std::to_string(::getuid()) + " ") != std::string::npos);
  CHECK(rows[2].find("caller") != std::string::npos);
  CHECK(words(rows[2]).back() == "1");  // the caller's one call in flight
  CHECK(rows[3].find("2 windows") != std::string::npos);

  InspectProcess st({tb.bus, "stats"});
  std::string all;
  for (std::string l = st.line(); !l.empty(); l = st.line()) all += l + "\n";
  CHECK(st.wait() == 0);
  INFO(all);
  CHECK(all.find("echo") != std::string::npos);
  CHECK(all.find("pending: stuck caller#") != std::string::npos);
  // The echo row: 10 calls, no messages.
  const auto at = all.find("\necho");
  REQUIRE(at != std::string::npos);
  const auto row = words(all.substr(at + 1, all.find('\n', at + 1) - at - 1));
  CHECK(row[1] == "10");
  CHECK(row[2] == "0");

  held.tellChild("reply");
  CHECK(caller.join(10s) == 0);
  CHECK(slow.finish() == 0);
}

TEST_CASE("shmbus-inspect record writes a timeline that parses as JSON, with the call as two slices and a flow") {
  TestBus tb("record", {}, /*dispatch=*/false);
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard",
                         [](Window& w, auto& regs) { regs.push_back(w.handle("echo", echoHandler())); });
  tb->startDispatchThread();
  const std::string path = "/tmp/shmbus-record-" + tb.bus + ".json";
  InspectProcess insp({tb.bus, "record", "-o", path, "--count", "3"});
  const std::string hello = insp.errLine();
  REQUIRE_MESSAGE(hello.find("recording bus") != std::string::npos, "shmbus-inspect said: " << hello);
  dashboard.start();  // window-open, then its "ready" send
  const std::uint32_t dashId = dashboard.id();
  auto r = tb->invoke(Target("dashboard"), "echo", text("x")).get();  // the third event
  REQUIRE(r.ok());
  const std::string summary = insp.line();
  CHECK(insp.wait() == 0);
  INFO(summary);
  CHECK(summary.find("wrote 3 events to " + path + " (invoke 1, send 1, window-open 1); 0 lost") == 0);
  CHECK(insp.line().find("ui.perfetto.dev") != std::string::npos);

  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(path.c_str());
  capnp::MallocMessageBuilder mb;
  auto root = mb.initRoot<capnp::JsonValue>();
  capnp::JsonCodec().decodeRaw(kj::StringPtr(text.c_str()), root);  // throws unless it is JSON
  std::map<std::string, std::vector<std::string>> byPhase;  // ph → "name@pid"
  for (auto e : root.asReader().getObject()) {
    if (e.getName() != "traceEvents") continue;
    for (auto ev : e.getValue().getArray()) {
      std::string ph, name, pid;
      for (auto f : ev.getObject()) {
        if (f.getName() == "ph") ph = f.getValue().getString();
        if (f.getName() == "name") name = f.getValue().getString();
        if (f.getName() == "pid") pid = std::to_string(static_cast<long>(f.getValue().getNumber()));
      }
      byPhase[ph].push_back(name + "@" + pid);
    }
  }
  const std::string dashTrack = std::to_string(dashId + 1);  // tracks are window id + 1; main is 1
  CHECK(byPhase["X"] == std::vector<std::string>{"echo@1", "echo@" + dashTrack});
  CHECK(byPhase["s"] == std::vector<std::string>{"call@1"});
  CHECK(byPhase["f"] == std::vector<std::string>{"call@" + dashTrack});
  CHECK(byPhase["i"] == std::vector<std::string>{"window-open@" + dashTrack, "send ready@" + dashTrack});
  CHECK(dashboard.finish() == 0);
}
