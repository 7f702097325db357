// Unit tests of ChromeTrace (lib/src/trace/chrome_trace.cpp): the document parses as JSON
// (Cap'n Proto's own JSON parser reads it back) and holds the slices, flows, instants and tracks
// that docs/architecture.md §14 describes.
#include <capnp/compat/json.h>
#include <capnp/message.h>
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "shmbus/inspect.hpp"

using namespace shmbus;

namespace {

using Json = capnp::JsonValue::Reader;

/// One parsed document (kept alive with its message).
struct Doc {
  capnp::MallocMessageBuilder message;
  capnp::JsonValue::Builder root = message.initRoot<capnp::JsonValue>();
  explicit Doc(const std::string& text) {
    capnp::JsonCodec codec;
    codec.decodeRaw(kj::StringPtr(text.c_str()), root);
  }
};

const Json* find(const Json& object, const char* name, Json& out) {
  for (auto f : object.getObject()) {
    if (f.getName() == name) {
      out = f.getValue();
      return &out;
    }
  }
  return nullptr;
}

Json at(const Json& object, const char* name) {
  Json v;
  REQUIRE_MESSAGE(find(object, name, v) != nullptr, "no field " << name);
  return v;
}

std::string str(const Json& object, const char* name) { return at(object, name).getString(); }
double num(const Json& object, const char* name) { return at(object, name).getNumber(); }
bool has(const Json& object, const char* name) {
  Json v;
  return find(object, name, v) != nullptr;
}

/// The trace events of phase `ph` (X, i, s, f, M).
std::vector<Json> ofPhase(const Json& doc, const char* ph) {
  std::vector<Json> out;
  for (auto e : at(doc, "traceEvents").getArray()) {
    if (str(e, "ph") == ph) out.push_back(e);
  }
  return out;
}

TraceEvent call(std::uint64_t seq, std::uint32_t from, const char* fromRole, std::uint32_t to, const char* toRole,
                std::int64_t start, std::int64_t end, ErrorCode status = ErrorCode::Ok) {
  TraceEvent e;
  e.kind = TraceKind::Invoke;
  e.seq = seq;
  e.channel = "echo";
  e.sourceId = from;
  e.sourceRole = fromRole;
  e.targetId = to;
  e.targetRole = toRole;
  e.startNs = start;
  e.endNs = end;
  e.status = status;
  e.traceId = 77;
  return e;
}

}  // namespace

TEST_CASE("a call is a slice on each side joined by a flow; failures are named and coloured; times are µs") {
  ChromeTrace t;
  t.add(call(1, 2, "editor", 3, "dashboard", 1'000'000, 1'250'500));
  t.add(call(2, 2, "editor", 0, "analytics", 2'000'000, 2'000'000, ErrorCode::NoTarget));
  t.setLost(5);
  CHECK(t.size() == 2);
  CHECK(t.countsByKind() == std::map<std::string, std::uint64_t>{{"invoke", 2}});
  Doc d(t.json());
  const Json doc = d.root.asReader();
  CHECK(num(at(doc, "otherData"), "lostEvents") == 5);

  const auto slices = ofPhase(doc, "X");
  REQUIRE(slices.size() == 3);  // caller + handler of the first call, caller only of the second
  CHECK(str(slices[0], "cat") == "invoke");
  CHECK(num(slices[0], "pid") == 3);  // window 2's track (id + 1)
  CHECK(num(slices[0], "ts") == 0);
  CHECK(num(slices[0], "dur") == doctest::Approx(250.5));
  CHECK(str(slices[1], "cat") == "handle");
  CHECK(num(slices[1], "pid") == 4);
  CHECK(str(at(slices[1], "args"), "from") == "editor#2");
  CHECK(num(at(slices[1], "args"), "traceId") == 77);
  CHECK(str(slices[2], "name") == "echo [NoTarget]");
  CHECK(str(slices[2], "cname") == "terrible");
  CHECK(num(slices[2], "ts") == 1000);
  CHECK_FALSE(has(slices[0], "cname"));

  const auto starts = ofPhase(doc, "s");
  const auto ends = ofPhase(doc, "f");
  REQUIRE(starts.size() == 1);  // no flow for the call that reached no handler
  REQUIRE(ends.size() == 1);
  CHECK(num(starts[0], "id") == 1);
  CHECK(num(ends[0], "id") == 1);
  CHECK(num(starts[0], "pid") == 3);
  CHECK(num(ends[0], "pid") == 4);
  CHECK(str(ends[0], "bp") == "e");

  std::map<double, std::string> tracks;
  for (const Json& m : ofPhase(doc, "M")) {
    if (str(m, "name") == "process_name") tracks[num(m, "pid")] = str(at(m, "args"), "name");
  }
  CHECK(tracks == std::map<double, std::string>{{1, "main"}, {3, "editor#2"}, {4, "dashboard#3"}});
}

TEST_CASE("slices of one window that overlap without nesting go to separate threads; nested ones share one") {
  ChromeTrace t;
  t.add(call(1, 2, "a", 3, "b", 100'000, 300'000));  // a's two concurrent calls overlap
  t.add(call(2, 2, "a", 3, "b", 200'000, 400'000));
  t.add(call(3, 3, "b", 4, "c", 120'000, 280'000));  // b's nested call inside its first handler
  Doc d(t.json());
  const Json doc = d.root.asReader();
  std::map<std::pair<double, double>, std::vector<double>> byTrack;  // (pid, tid) → slice starts
  for (const Json& x : ofPhase(doc, "X")) byTrack[{num(x, "pid"), num(x, "tid")}].push_back(num(x, "ts"));
  // a (pid 3): one call per thread. b (pid 4): handler 1 and its nested call on thread 1,
  // handler 2 (overlapping handler 1, not inside it) on thread 2.
  CHECK(byTrack[{3, 1}] == std::vector<double>{0});
  CHECK(byTrack[{3, 2}] == std::vector<double>{100});
  CHECK(byTrack[{4, 1}] == std::vector<double>{0, 20});
  CHECK(byTrack[{4, 2}] == std::vector<double>{100});
  CHECK(byTrack[{5, 1}] == std::vector<double>{20});
  int threadNames = 0;
  for (const Json& m : ofPhase(doc, "M")) {
    if (str(m, "name") == "thread_name" && str(at(m, "args"), "name") == "calls 2") ++threadNames;
  }
  CHECK(threadNames == 2);  // a and b each have a second thread
}

TEST_CASE("one-way messages and window events are instants; names are escaped; pids name the tracks") {
  ChromeTrace t;
  TraceEvent open;
  open.kind = TraceKind::WindowOpen;
  open.seq = 1;
  open.sourceId = 2;
  open.sourceRole = "editor";
  open.pid = 4242;
  open.startNs = open.endNs = 10;
  t.add(open);
  TraceEvent send;
  send.kind = TraceKind::Send;
  send.seq = 2;
  send.channel = "say \"hi\"\n";
  send.sourceId = 2;
  send.sourceRole = "editor";
  send.startNs = send.endNs = 1010;
  t.add(send);
  Doc d(t.json());
  const Json doc = d.root.asReader();
  const auto instants = ofPhase(doc, "i");
  REQUIRE(instants.size() == 2);
  CHECK(str(instants[0], "name") == "window-open");
  CHECK(str(instants[1], "name") == "send say \"hi\"\n");
  CHECK(num(instants[1], "ts") == 1);
  CHECK(num(instants[1], "pid") == 3);
  bool named = false;
  for (const Json& m : ofPhase(doc, "M")) {
    if (str(m, "name") == "process_name" && str(at(m, "args"), "name") == "editor#2 (pid 4242)") named = true;
  }
  CHECK(named);
}

TEST_CASE("an empty trace is a valid document, and write() reports a path it cannot create") {
  ChromeTrace t;
  Doc d(t.json());
  CHECK(at(d.root.asReader(), "traceEvents").getArray().size() == 3);  // main's track metadata only
  auto w = t.write("/nonexistent-dir/trace.json");
  CHECK(w.code() == ErrorCode::SystemError);
  CHECK(w.error().message.find("/nonexistent-dir/trace.json") != std::string::npos);
}
