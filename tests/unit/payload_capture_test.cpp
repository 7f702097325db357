// Payload capture records (trace/payload_capture): a window's payload and main's segments become
// Cap'n Proto's standard serialization that capnp reads back, cut at the limit and flagged;
// malformed records are refused with a reason; the channel globs and their checks.
#include <capnp/serialize.h>
#include <doctest/doctest.h>

#include <cstring>

#include "bus_test.hpp"
#include "message/message.hpp"
#include "trace/payload_capture.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
/// A TestMessage with `text`, built in a heap message of small segments (so it has several).
struct Built {
  capnp::MallocMessageBuilder mb{4, capnp::AllocationStrategy::FIXED_SIZE};
  explicit Built(const std::string& text) {
    auto m = mb.initRoot<test::TestMessage>();
    m.setText(text);
    m.setSeq(7);
  }
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments() { return mb.getSegmentsForOutput(); }
};

/// The same message as a window lays it out in its ring: MessageTable, then the segments.
std::vector<capnp::word> windowForm(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segs) {
  MessageTable t{};
  t.segmentCount = static_cast<std::uint32_t>(segs.size());
  std::vector<capnp::word> out(sizeof t / sizeof(capnp::word));
  for (std::size_t i = 0; i < segs.size(); ++i) {
    t.segmentWords[i] = static_cast<std::uint32_t>(segs[i].size());
    out.insert(out.end(), segs[i].begin(), segs[i].end());
  }
  std::memcpy(static_cast<void*>(out.data()), &t, sizeof t);
  return out;
}

/// Reads a captured payload back with Cap'n Proto's own reader.
std::string textOfCapture(const TracePayload& p) {
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(p.bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), p.bytes.data(), p.bytes.size());
  capnp::FlatArrayMessageReader r(words);
  return r.getRoot<test::TestMessage>().getText();
}
}  // namespace

TEST_CASE("a window's payload and main's segments are captured as the same standard serialization") {
  Built b("payload text that spans several small segments");
  REQUIRE(b.segments().size() > 1);
  const auto flat = capnp::messageToFlatArray(b.segments());
  const auto wf = windowForm(b.segments());
  std::vector<std::uint8_t> fromWindow, fromMain;
  REQUIRE(encodePayloadRecord(PayloadPart::Request, 3, 42, 99,
                              PayloadView{reinterpret_cast<const std::uint8_t*>(wf.data()), wf.size() * 8}, 4096,
                              fromWindow)
              .ok());
  REQUIRE(encodePayloadRecord(PayloadPart::Reply, 0, 5, 99, PayloadView{.segments = b.segments()}, 4096, fromMain).ok());
  auto w = decodePayloadRecord(fromWindow);
  auto m = decodePayloadRecord(fromMain);
  REQUIRE(w.ok());
  REQUIRE(m.ok());
  CHECK(w->part == PayloadPart::Request);
  CHECK(w->sourceId == 3);
  CHECK(w->key == 42);
  CHECK(w->channelId == 99);
  CHECK(m->part == PayloadPart::Reply);
  CHECK(w->payload.bytes == m->payload.bytes);
  CHECK(w->payload.fullBytes == flat.asBytes().size());
  CHECK(std::memcmp(w->payload.bytes.data(), flat.asBytes().begin(), flat.asBytes().size()) == 0);
  CHECK_FALSE(w->payload.truncated());
  CHECK(textOfCapture(w->payload) == "payload text that spans several small segments");
}

TEST_CASE("a payload longer than the limit is cut there and flagged; an empty one is empty") {
  Built b(std::string(500, 'y'));
  std::vector<std::uint8_t> rec;
  REQUIRE(encodePayloadRecord(PayloadPart::Message, 1, 1, 1, PayloadView{.segments = b.segments()}, 64, rec).ok());
  auto r = decodePayloadRecord(rec);
  REQUIRE(r.ok());
  CHECK(r->payload.bytes.size() == 64);
  CHECK(r->payload.fullBytes > 500);
  CHECK(r->payload.truncated());
  REQUIRE(encodePayloadRecord(PayloadPart::Message, 1, 1, 1, PayloadView{}, 64, rec).ok());
  r = decodePayloadRecord(rec);
  REQUIRE(r.ok());
  CHECK(r->payload.bytes.empty());
  CHECK(r->payload.fullBytes == 0);
}

TEST_CASE("malformed records and window payloads are refused with a reason") {
  Built b("x");
  std::vector<std::uint8_t> rec;
  REQUIRE(encodePayloadRecord(PayloadPart::Message, 1, 1, 1, PayloadView{.segments = b.segments()}, 64, rec).ok());
  CHECK(decodePayloadRecord(std::span(rec).first(31)).error().message.find("at least 32") != std::string::npos);
  auto bad = rec;
  bad[0] = 9;
  CHECK(decodePayloadRecord(bad).error().message.find("unknown part 9") != std::string::npos);
  bad = rec;
  bad.pop_back();  // captured bytes no longer what the header says
  CHECK(decodePayloadRecord(bad).code() == ErrorCode::InvalidMessage);
  bad = rec;
  const std::uint32_t tooSmall = 1;  // fullBytes below the captured bytes
  std::memcpy(bad.data() + 4, &tooSmall, 4);
  CHECK(decodePayloadRecord(bad).code() == ErrorCode::InvalidMessage);
  // A window table that claims more than its record: nothing is encoded.
  auto wf = windowForm(b.segments());
  MessageTable t{};
  t.segmentCount = 1;
  t.segmentWords[0] = 1000;
  std::memcpy(static_cast<void*>(wf.data()), &t, sizeof t);
  CHECK(encodePayloadRecord(PayloadPart::Request, 1, 1, 1,
                            PayloadView{reinterpret_cast<const std::uint8_t*>(wf.data()), wf.size() * 8}, 64, rec)
            .code() == ErrorCode::InvalidMessage);
}

TEST_CASE("capture globs select channels by name; no glob is every channel; settings are checked") {
  CaptureFilter f;
  f.set({.maxBytes = 16, .channels = {"Dashboard.*", "echo"}});
  int asked = 0;
  auto name = [&](std::string n) {
    return [&asked, n] {
      ++asked;
      return n;
    };
  };
  CHECK(f.matches(1, name("Dashboard.getData")));
  CHECK(f.matches(2, name("echo")));
  CHECK_FALSE(f.matches(3, name("#00000000000000ff")));
  CHECK(f.matches(1, name("ignored: cached")));
  CHECK(asked == 3);
  f.set({.maxBytes = 16});
  CHECK(f.matches(3, name("anything")));
  CHECK(asked == 3);
  CHECK(checkPayloadCapture({.maxBytes = kMaxPayloadCaptureBytes}).ok());
  CHECK(checkPayloadCapture({.maxBytes = kMaxPayloadCaptureBytes + 1}).code() == ErrorCode::InvalidArgument);
  CHECK(checkPayloadCapture({.maxBytes = 1, .channels = {""}}).code() == ErrorCode::InvalidArgument);
}
