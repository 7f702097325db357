// Announced schemas across real processes (docs/architecture.md §6, §14 "Payloads"): typed
// windows (golden.capnp's Studio) announce their contract; the real shmbus-inspect decodes the
// captured request and reply without --schema (a --schema file still wins); a hostile window's
// malformed or oversized announcements are logged and dropped while the bus goes on.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "bus_test.hpp"
#include "golden.shmbus.h"
#include "raw_outbox.hpp"
#include "shmbus/inspect.hpp"
#include "trace/schema_announce.hpp"

using namespace shmbus;
using namespace shmbus::golden;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// shmbus-inspect (meson passes its path in $SHMBUS_INSPECT) with `args`.
class InspectProcess : public ToolProcess {
 public:
  explicit InspectProcess(std::vector<std::string> args) : ToolProcess(toolPath("SHMBUS_INSPECT"), std::move(args)) {}
};

/// The router's Warn lines (the supervisor runs in this process), for the test thread to wait on.
class RouterWarnings {
 public:
  RouterWarnings() {
    setLogSink([this](const LogRecord& r) {
      if (r.level != LogLevel::Warn || r.component != "router") return;
      std::lock_guard lk(mu_);
      lines_.emplace_back(r.text);
      cv_.notify_all();
    });
  }
  ~RouterWarnings() { setLogSink({}); }
  RouterWarnings(const RouterWarnings&) = delete;
  RouterWarnings& operator=(const RouterWarnings&) = delete;

  /// Waits until `n` lines containing `text` were logged; returns the last of them.
  std::string await(const std::string& text, std::size_t n = 1, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lk(mu_);
    std::string last;
    const bool ok = cv_.wait_for(lk, timeout, [&] {
      std::size_t seen = 0;
      for (const auto& l : lines_) {
        if (l.find(text) != std::string::npos) {
          ++seen;
          last = l;
        }
      }
      return seen >= n;
    });
    if (!ok) {
      std::string all;
      for (const auto& l : lines_) all += "\n  " + l;
      throw std::runtime_error("the router logged no " + std::to_string(n) + " warnings with '" + text + "'; it logged:" +
                               all);
    }
    return last;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

/// A studio window: a typed echo handler (its registration announces Studio).
ServedWindow::Setup studioSetup() {
  return [](Window& w, std::vector<Registration>& regs) {
    regs.push_back(StudioHandlers::handleEcho(w, [](auto params, auto results) {
      results.setText(params.getText());
      results.setLength(params.getText().size());
    }));
  };
}

/// An editor window (a gated child): for each word the parent says until "finish", a typed
/// echo of it to role "studio" (its first use announces Studio), then "called".
GatedChild typedEditor(const TestBus& tb, const Link& link) {
  return GatedChild([&tb, &link] {
    auto w = connectWindow(tb.bus, "editor");
    for (std::string step = link.hearParent(); step != "finish"; step = link.hearParent()) {
      auto r = StudioClient(*w).echo([&](auto p) { p.setText(step); }).get();
      childCheck(r.ok() && std::string(r->reader().getText().cStr()) == step, "echo " + step);
      link.tellParent("called");
    }
  });
}

/// A schema frame of `mb`'s message as a window writes it: header, segment table, segments.
void schemaFrame(RawOutbox& out, capnp::MessageBuilder& mb) {
  auto segments = mb.getSegmentsForOutput();
  childCheck(segments.size() == 1, "one segment");
  std::vector<std::uint8_t> body(sizeof(detail::FrameHeader) + sizeof(detail::MessageTable) + segments[0].asBytes().size());
  detail::FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(detail::FrameKind::Schema);
  detail::MessageTable t{};
  t.segmentCount = 1;
  t.segmentWords[0] = static_cast<std::uint32_t>(segments[0].size());
  std::memcpy(body.data(), &h, sizeof h);
  std::memcpy(body.data() + sizeof h, &t, sizeof t);
  std::memcpy(body.data() + sizeof h + sizeof t, segments[0].begin(), segments[0].asBytes().size());
  out.recordWhenRoom(body.data(), body.size());
  RawOutbox::ringDoorbell();
}

/// Studio's announcement, changed by `edit`.
void studioFrame(RawOutbox& out, const std::function<void(schema::SchemaAnnouncement::Builder)>& edit = {}) {
  capnp::MallocMessageBuilder mb(1u << 16);
  auto a = mb.initRoot<schema::SchemaAnnouncement>();
  detail::encodeAnnouncement(StudioContract::schema(), a);
  if (edit) edit(a);
  schemaFrame(out, mb);
}

}  // namespace

TEST_CASE("typed windows announce their contract; shmbus-inspect decodes request and reply without --schema") {
  SupervisorOptions o;
  o.payloadCapture.maxBytes = 4096;
  TestBus tb("sa-tail", o, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(payloadPolicy()).ok());
  ServedWindow studio(ServedWindow::deferred, tb, "studio", studioSetup());
  Link toEditor;
  GatedChild editor = typedEditor(tb, toEditor);
  tb->startDispatchThread();
  // Capture is on and nobody has announced yet: Studio is unknown to the bus.
  {
    auto insp = Inspector::attach(tb.bus);
    REQUIRE(insp.ok());
    auto none = (*insp)->schemas();
    REQUIRE_MESSAGE(none.ok(), none.error().toString());
    CHECK(none->contracts.empty());
  }
  InspectProcess text({tb.bus, "tail", "--payloads", "--channel", "Studio.echo", "--count", "1"});
  InspectProcess json({tb.bus, "tail", "--payloads", "--json", "--channel", "Studio.echo", "--count", "1"});
  // A schema file that declares Studio's interface id with other field names: it wins.
  const std::string file = fmt::format("/tmp/shmbus-sa-{}.capnp", ::getpid());
  {
    std::ofstream f(file);
    f << fmt::format("@0xd1d2d3d4d5d6d7d8;\ninterface Other @0x{:016x} {{\n  echo @0 (said :Text) -> (heard :Text);\n}}\n",
                     capnp::typeId<Studio>());
  }
  InspectProcess withFile({tb.bus, "tail", "--payloads", "--schema", file, "--channel", "Studio.echo", "--count", "1"});
  for (ToolProcess* p : {static_cast<ToolProcess*>(&text), static_cast<ToolProcess*>(&json),
                         static_cast<ToolProcess*>(&withFile)}) {
    // Cap'n Proto's filesystem may warn first (meson runs tests with a PWD that is not the cwd).
    std::string hello = p->errLine();
    if (hello.find("PWD environment variable") != std::string::npos) hello = p->errLine();
    REQUIRE_MESSAGE(hello.find("tailing bus") != std::string::npos, "shmbus-inspect said: " << hello);
  }
  studio.start();
  editor.go();
  toEditor.tellChild("hello");
  CHECK(toEditor.hearChild() == "called");

  const std::string event = text.line();
  CHECK_MESSAGE(event.find("Studio.echo") != std::string::npos, event);
  CHECK(text.line() == "    request (text = \"hello\")");
  CHECK(text.line() == "    reply   (text = \"hello\", length = 5)");
  CHECK(text.wait() == 0);

  const std::string line = json.line();
  CHECK_MESSAGE(line.find("\"request\":{\"bytes\":") != std::string::npos, line);
  CHECK_MESSAGE(line.find("\"value\":{\"text\":\"hello\"}") != std::string::npos, line);
  CHECK_MESSAGE(line.find("\"value\":{\"text\":\"hello\",\"length\":5}") != std::string::npos, line);
  CHECK(json.wait() == 0);

  (void)withFile.line();
  CHECK(withFile.line() == "    request (said = \"hello\")");
  CHECK(withFile.line() == "    reply   (heard = \"hello\")");
  CHECK(withFile.wait() == 0);
  std::remove(file.c_str());

  // The library's view: every method of the one contract, by channel id.
  auto insp = Inspector::attach(tb.bus);
  REQUIRE(insp.ok());
  auto schemas = (*insp)->schemas();
  REQUIRE_MESSAGE(schemas.ok(), schemas.error().toString());
  CHECK(schemas->contracts == std::vector<std::string>{"Studio"});
  CHECK(schemas->methods.size() == StudioContract::methods.size());
  REQUIRE(schemas->methods.count(StudioChannels::describe().id) == 1);
  CHECK(schemas->methods.at(StudioChannels::describe().id).name == "Studio.describe");
  // The schemas outlive the windows that announced them: they describe a contract.
  toEditor.tellChild("finish");
  CHECK(editor.join(10s) == 0);
  CHECK(studio.finish() == 0);
  auto after = (*insp)->schemas();
  REQUIRE(after.ok());
  CHECK(after->contracts == std::vector<std::string>{"Studio"});
}

TEST_CASE("the main process's typed stubs give their schema to the router directly") {
  TestBus tb("sa-main", {}, /*dispatch=*/true);
  auto reg = StudioHandlers::handleEcho(*tb.sup, [](auto params, auto results) { results.setText(params.getText()); });
  auto insp = Inspector::attach(tb.bus);
  REQUIRE(insp.ok());
  auto schemas = (*insp)->schemas();
  REQUIRE_MESSAGE(schemas.ok(), schemas.error().toString());
  CHECK(schemas->contracts == std::vector<std::string>{"Studio"});
  CHECK(schemas->methods.count(StudioChannels::echo().id) == 1);
}

TEST_CASE("malformed and oversized schema announcements are logged and dropped; the window and the bus go on") {
  constexpr std::uint32_t kRing = 65536;
  constexpr std::uint32_t kMaxRecord = kRing / 2;  // min(the supervisor's maximum, smaller ring / 2)
  // Payloads that add up to the window's limit exactly; each below a quarter of the ring, so a
  // record the router has logged but not yet released leaves room for the next.
  constexpr std::size_t kJunkFrames = 32;
  constexpr std::size_t kJunkPayload = kMaxSchemaBytesPerWindow / kJunkFrames;
  static_assert(kJunkPayload <= kRing / 8);
  RouterWarnings warnings;
  TestBus tb("sa-hostile", {}, /*dispatch=*/false);
  Link toIntruder;
  GatedChild intruder([&] {
    auto w = connectWindow(tb.bus, "intruder", {.inboxBytes = kRing, .outboxBytes = kRing});
    RawOutbox out(tb.bus, w->id(), kRing, kRing, kMaxRecord);
    toIntruder.tellParent(std::to_string(w->id()));
    toIntruder.hearParent();
    // A pointer past its segment: the copy's check finds it.
    detail::FrameHeader h{};
    h.kind = static_cast<std::uint16_t>(detail::FrameKind::Schema);
    out.frameWithBadPointer(h);
    RawOutbox::ringDoorbell();
    toIntruder.tellParent("sent");
    toIntruder.hearParent();
    // Inconsistent: a method's channel that is not its id.
    studioFrame(out, [](auto a) { a.getMethods()[0].setChannel(1); });
    toIntruder.tellParent("sent");
    toIntruder.hearParent();
    // Thirty-two 8 KiB announcements of nothing (refused one by one), which use up the window's
    // 256 KiB; then a sound one, refused for the limit.
    for (std::size_t i = 0; i < kJunkFrames; ++i) {
      std::vector<std::uint8_t> body(sizeof(detail::FrameHeader) + kJunkPayload);
      detail::MessageTable t{};
      t.segmentCount = 1;
      // The root pointer (null: an empty SchemaAnnouncement, whose name is refused) and zeros.
      t.segmentWords[0] = (kJunkPayload - sizeof t) / sizeof(capnp::word);
      std::memcpy(body.data(), &h, sizeof h);
      std::memcpy(body.data() + sizeof h, &t, sizeof t);
      out.recordWhenRoom(body.data(), body.size());
      RawOutbox::ringDoorbell();
      toIntruder.tellParent("sent");
      toIntruder.hearParent();
    }
    studioFrame(out);
    toIntruder.tellParent("sent");
    toIntruder.hearParent();
  });
  ServedWindow studio(ServedWindow::deferred, tb, "studio", studioSetup());
  Link toEditor;
  GatedChild editor = typedEditor(tb, toEditor);
  tb->startDispatchThread();
  intruder.go();
  const std::uint32_t intruderId = static_cast<std::uint32_t>(std::stoul(toIntruder.hearChild()));
  const std::string who = fmt::format("window {}", intruderId);
  auto stillThere = [&] {
    for (const auto& w : tb->windows()) {
      if (w.id == intruderId) return true;
    }
    return false;
  };
  auto insp = Inspector::attach(tb.bus);
  REQUIRE(insp.ok());

  toIntruder.tellChild("go");
  CHECK(toIntruder.hearChild() == "sent");
  std::string logged = warnings.await("refused", 1);
  CHECK_MESSAGE(logged.find("refused") != std::string::npos, logged);
  CHECK(stillThere());

  toIntruder.tellChild("go");
  CHECK(toIntruder.hearChild() == "sent");
  logged = warnings.await("refused", 2);
  CHECK_MESSAGE(logged.find("is not the method's id") != std::string::npos, logged);
  CHECK(stillThere());
  auto none = (*insp)->schemas();
  REQUIRE(none.ok());
  CHECK(none->contracts.empty());

  // The junk is refused for its name until the window's bytes (these and the two above) are
  // used up, then for the limit; the sound announcement after it, for the limit.
  for (std::size_t i = 0; i < kJunkFrames; ++i) {
    toIntruder.tellChild("go");
    CHECK(toIntruder.hearChild() == "sent");
    logged = warnings.await("refused", 3 + i);
    CHECK_MESSAGE((logged.find("contract name") != std::string::npos || logged.find("per window") != std::string::npos),
                  logged);
  }
  CHECK(warnings.await("per window").find(fmt::format("schema announcement of {} B", kJunkPayload)) != std::string::npos);
  toIntruder.tellChild("go");
  CHECK(toIntruder.hearChild() == "sent");
  logged = warnings.await("refused", 3 + kJunkFrames);
  CHECK_MESSAGE(logged.find("per window") != std::string::npos, logged);
  CHECK_MESSAGE(logged.find(who) != std::string::npos, logged);
  CHECK(stillThere());
  none = (*insp)->schemas();
  REQUIRE(none.ok());
  CHECK(none->contracts.empty());  // the sound announcement past the limit was not kept

  // Other windows announce and call as ever.
  studio.start();
  editor.go();
  toEditor.tellChild("still");
  CHECK(toEditor.hearChild() == "called");
  auto kept = (*insp)->schemas();
  REQUIRE(kept.ok());
  CHECK(kept->contracts == std::vector<std::string>{"Studio"});
  CHECK(stillThere());
  toEditor.tellChild("finish");
  CHECK(editor.join(10s) == 0);
  toIntruder.tellChild("finish");
  CHECK(intruder.join(10s) == 0);
  CHECK(studio.finish() == 0);
}
