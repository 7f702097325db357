// Writes the seed corpora of the libFuzzer harnesses: real frames, control packets, ring images
// and payloads, made by the library's own writers. Run from the build directory of a -Dfuzzing
// build: `fuzz/make_seeds ../fuzz/corpus` (existing files of the same name are replaced; crash
// regressions, named crash-*, are left alone). The plugin's seeds are requests printed by
// `capnp compile -o-` (scripts/fuzz.sh --seeds does both).
#include <capnp/message.h>
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "blob/blob.hpp"
#include "control/socket.hpp"
#include "fuzz_util.hpp"
#include "payload_layout.hpp"
#include "protocol/frame_io.hpp"
#include "trace/trace_event.hpp"
#include "wire/handshake.hpp"

#include "bus.capnp.h"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
namespace fs = std::filesystem;

/// Writes `bytes` to `dir`/`name`.
void save(const fs::path& dir, const std::string& name, const std::vector<std::uint8_t>& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Appends the bytes of `v`.
template <class T>
void put(std::vector<std::uint8_t>& out, const T& v) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

/// A ring in heap memory, laid out as in a segment (the ring harness's geometry).
struct ScratchRing {
  static constexpr RingGeometry kGeometry{4096, 1024};
  fuzz::Bytes area{nullptr, sizeof(RingControl) + kGeometry.capacity};
  RingControl* control = new (area.data()) RingControl{};
  std::uint8_t* data = area.data() + sizeof(RingControl);
  RingProducer producer{control, data, kGeometry, true};
  RingConsumer consumer{control, data, kGeometry};

  ScratchRing() { std::fill_n(data, kGeometry.capacity, std::uint8_t{0}); }

  /// The body of the next record (empty when none).
  std::vector<std::uint8_t> next() {
    auto r = consumer.tryRead();
    if (!r || !r->has_value()) return {};
    const RecordView& v = **r;
    std::vector<std::uint8_t> body(v.body, v.body + v.bodyBytes);
    consumer.releaseTo(v.end);
    return body;
  }

  /// The ring harness's input for this ring's present state.
  std::vector<std::uint8_t> image(std::uint8_t flags, std::uint16_t claim) const {
    std::vector<std::uint8_t> out;
    put(out, flags);
    // relaxed: one thread.
    put(out, control->head.load(std::memory_order_relaxed));
    put(out, control->tail.load(std::memory_order_relaxed));
    put(out, claim);
    out.insert(out.end(), data, data + kGeometry.capacity);
    while (!out.empty() && out.back() == 0) out.pop_back();  // the harness zero-fills the rest
    return out;
  }
};

/// A frame header of `kind` on a channel named `channel`.
FrameHeader header(FrameKind kind, const char* channel, std::uint64_t requestId) {
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(kind);
  h.channel = nameId(channel);
  h.requestId = requestId;
  h.target = kTargetByRole;
  h.role = nameId("renderer");
  return h;
}

/// Frames of every decoded kind; also leaves a ring image (wrapped around once) for the ring seeds.
void frameSeeds(const fs::path& corpus) {
  ScratchRing ring;
  auto invoke = [](capnp::MessageBuilder& b) {
    auto e = b.initRoot<schema::ErrorInfo>();
    e.setCode(5);
    e.setMessage("a request payload with text");
  };
  auto intern = [](capnp::MessageBuilder& b) {
    auto i = b.initRoot<schema::Intern>();
    i.setId(nameId("GetDashboardData"));
    i.setName("GetDashboardData");
  };
  (void)writeFrame(ring.producer, header(FrameKind::Invoke, "GetDashboardData", 7), invoke);
  save(corpus / "frame", "invoke", ring.next());
  (void)writeErrorFrame(ring.producer, header(FrameKind::Reply, "GetDashboardData", 7),
                        makeError(ErrorCode::HandlerError, "the handler threw"));
  save(corpus / "frame", "error", ring.next());
  (void)writeFrame(ring.producer, header(FrameKind::Intern, "GetDashboardData", 0), intern);
  save(corpus / "frame", "intern", ring.next());
  (void)writeFrame(ring.producer, header(FrameKind::Cancel, "GetDashboardData", 7), {});
  save(corpus / "frame", "cancel", ring.next());
  // Ring images: records committed and not yet read, latency and batch mode, then a wrapped ring.
  for (int i = 0; i < 3; ++i) (void)writeFrame(ring.producer, header(FrameKind::Send, "log", 0), invoke, 0, true);
  save(corpus / "ring", "unread", ring.image(0, 100));
  save(corpus / "ring", "published", ring.image(3, 900));
  while (!ring.next().empty()) {
  }
  for (int i = 0; i < 12; ++i) {
    (void)writeFrame(ring.producer, header(FrameKind::Send, "log", 0), invoke, 200, true);
    if (i % 2 == 1) (void)ring.next();
  }
  save(corpus / "ring", "wrapped", ring.image(1, 64));
}

/// Payloads as the payload harness reads them: [schema id][table + segments]; one of several segments.
void payloadSeeds(const fs::path& corpus, std::uint64_t fingerprint) {
  ScratchRing ring;
  auto payloadOf = [&](std::uint64_t schemaId) {
    std::vector<std::uint8_t> out;
    put(out, schemaId);
    const auto body = ring.next();
    if (body.size() < sizeof(FrameHeader)) return out;
    out.insert(out.end(), body.begin() + sizeof(FrameHeader), body.end());
    return out;
  };
  (void)writeErrorFrame(ring.producer, header(FrameKind::Reply, "x", 1), makeError(ErrorCode::Timeout, "late"));
  save(corpus / "payload", "error_info", payloadOf(fingerprint));
  // A message of several segments.
  capnp::MallocMessageBuilder split(4, capnp::AllocationStrategy::FIXED_SIZE);  // 4-word segments
  buildErrorInfo(split, makeError(ErrorCode::Timeout, "timed out"));
  (void)writeFrameSegments(ring.producer, header(FrameKind::Reply, "x", 2), split.getSegmentsForOutput());
  save(corpus / "payload", "segments", payloadOf(fingerprint ^ 0xff));
}

/// Control packets as they travel: Hello, Welcome (accepted, refused), Mapped.
void controlSeeds(const fs::path& corpus) {
  auto pair = seqpacketPair();
  if (!pair) return;
  Fd a = std::move(pair->first), b = std::move(pair->second);
  auto capture = [&](const char* name) {
    auto pkt = recvPacket(b.get());
    if (pkt) save(corpus / "control", name, pkt->bytes);
  };
  capnp::MallocMessageBuilder hello;
  auto h = hello.initRoot<schema::Hello>();
  h.setRole("renderer");
  h.setPid(4242);
  h.setInboxBytes(4096);
  h.setOutboxBytes(4096);
  (void)sendControl(a.get(), ControlType::Hello, 0, &hello);
  capture("hello");
  auto seg = createWindowSegment("fuzzseeds", 1, 4096, 4096, 1024);
  if (seg) {
    (void)sendWelcome(a.get(), "fuzzseeds", 1, "renderer", *seg, -1);
    capture("welcome");
  }
  sendWelcomeError(a.get(), makeError(ErrorCode::Denied, "role 'renderer' may not connect to bus 'fuzzseeds'"));
  capture("welcome_refused");
  (void)sendControl(a.get(), ControlType::Mapped, 0);
  capture("mapped");
}
/// The blob harness's seeds: a descriptor and the arena it names, the message built by the
/// sender's own code (BlobMessageBuilder), and the same descriptor with a stale generation. The
/// arena image is cut after its last non-zero byte (the harness zero-fills the rest).
void blobSeeds(const fs::path& corpus) {
  constexpr std::size_t kArena = 16384;  // the harness's
  fuzz::Bytes arena(nullptr, kArena);
  BlobProducer producer(arena.data(), kArena);
  auto c = producer.claim(sizeof(MessageTable));
  if (!c) return;
  BlobMessageBuilder mb(*c, producer.maxMessage());
  auto data = mb.initRoot<capnp::AnyPointer>().initAs<capnp::Data>(3000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i);
  const BlobDescriptor d = producer.commit(*c, mb.finish());
  std::size_t used = kArena;
  while (used > 0 && arena.data()[used - 1] == 0) --used;
  auto seed = [&](const BlobDescriptor& desc) {
    std::vector<std::uint8_t> out;
    put(out, desc);
    out.insert(out.end(), arena.data(), arena.data() + used);
    return out;
  };
  save(corpus / "blob", "message", seed(d));
  BlobDescriptor stale = d;
  ++stale.generation;
  save(corpus / "blob", "stale", seed(stale));
}
/// The trace harness's seeds: events as the router encodes them (a routed call, a port send with
/// its port tail, a window event with an error text at its bound).
void traceSeeds(const fs::path& corpus) {
  auto seed = [&](const std::string& name, const TraceEvent& e) {
    std::vector<std::uint8_t> out;
    encodeTraceEvent(e, out);
    save(corpus / "trace", name, out);
  };
  TraceEvent call;
  call.kind = TraceKind::Invoke;
  call.channel = "echo";
  call.channelId = 0x1234;
  call.sourceId = 3;
  call.sourceRole = "editor";
  call.targetId = 4;
  call.targetRole = "dashboard";
  call.startNs = 1000;
  call.endNs = 5000;
  call.requestId = 9;
  call.traceId = 2;
  call.requestBytes = 64;
  call.replyBytes = 32;
  seed("invoke", call);
  TraceEvent send = call;
  send.kind = TraceKind::Send;
  send.portId = 77;
  send.status = ErrorCode::Full;
  send.error = "ring full";
  seed("port-send", send);
  TraceEvent closed;
  closed.kind = TraceKind::WindowClose;
  closed.sourceId = 5;
  closed.sourceRole = "worker";
  closed.pid = 4242;
  closed.error = std::string(kTraceErrorMax, 'x');
  seed("window-close", closed);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds CORPUS_DIR\n");
    return 2;
  }
  const fs::path corpus = argv[1];
  frameSeeds(corpus);
  payloadSeeds(corpus, contractFingerprint(fuzz::kPayloadLayout));
  controlSeeds(corpus);
  blobSeeds(corpus);
  traceSeeds(corpus);
  std::printf("seeds written under %s\n", corpus.c_str());
  return 0;
}
