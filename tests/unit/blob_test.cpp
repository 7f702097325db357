// Unit tests of a port's blob arena (lib/src/blob): allocation oldest first with wrap, release by
// the receiver and reclaim by the sender, pages returned, messages built in place and read back,
// and descriptors with hostile values. Both sides are driven by hand in one process over a shared
// anonymous mapping (shmem, as a port segment is, so MADV_REMOVE behaves as it does there).
#include "blob/blob.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "test.capnp.h"

using namespace shmbus;
using namespace shmbus::detail;
using shmbus::test::TestMessage;

namespace {

/// A shared anonymous mapping of `bytes`, unmapped on destruction; with `withFile`, a mapping of a
/// memfd (tmpfs, as a port segment's /dev/shm file is) whose descriptor file() hands out.
struct Arena {
  explicit Arena(std::size_t n, bool withFile = false) : bytes(n) {
    if (withFile) {
      fd = Fd(::memfd_create("blob_test", MFD_CLOEXEC));
      REQUIRE(fd);
      REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(n)) == 0);
    }
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | (withFile ? 0 : MAP_ANONYMOUS), fd.get(), 0);
    REQUIRE(p != MAP_FAILED);
    base = static_cast<std::uint8_t*>(p);
  }
  ~Arena() { ::munmap(base, bytes); }
  /// A descriptor of the arena's file, for a BlobProducer.
  Fd file() const { return Fd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0)); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  BlobControl* control() const { return reinterpret_cast<BlobControl*>(base); }
  /// Resident pages of [p, p + n) (mincore).
  std::size_t resident(const std::uint8_t* p, std::size_t n) const {
    const std::size_t pages = n / kBlobPage;
    std::vector<unsigned char> v(pages);
    REQUIRE(::mincore(const_cast<std::uint8_t*>(p), pages * kBlobPage, v.data()) == 0);
    std::size_t r = 0;
    for (unsigned char c : v) r += c & 1;
    return r;
  }
  Fd fd;
  std::uint8_t* base = nullptr;
  std::size_t bytes = 0;
};

/// Claims `body` bytes, writes a byte pattern over them and commits them.
BlobDescriptor put(BlobProducer& p, std::size_t body) {
  auto c = p.claim(body);
  REQUIRE(c.ok());
  std::memset(c->body, 0x5a, body);
  return p.commit(*c, body);
}

/// Whether every byte of `data` is zero.
bool allZero(capnp::Data::Builder data) {
  return std::all_of(data.begin(), data.end(), [](std::uint8_t b) { return b == 0; });
}

/// The receiver's release of the record `d` names.
void release(Arena& a, const BlobDescriptor& d) {
  auto v = checkBlobDescriptor(d, a.base, a.bytes);
  REQUIRE(v.ok());
  releaseBlob(v->record, a.control());
}

/// Builds a TestMessage with `blob` bytes of data in a fresh claim of `p`; the code of the
/// ClaimExhausted it threw (Ok when it fit). The claim is given back either way.
ErrorCode buildCode(BlobProducer& p, std::size_t blob) {
  auto c = p.claim(sizeof(MessageTable));
  REQUIRE(c.ok());
  BlobMessageBuilder mb(*c, p.maxMessage());
  ErrorCode code = ErrorCode::Ok;
  try {
    mb.initRoot<TestMessage>().initBlob(static_cast<unsigned>(blob));
  } catch (const ClaimExhausted& e) {
    code = e.code;
  }
  p.abort(*c, mb.touched());
  return code;
}

}  // namespace

TEST_CASE("records are held until released, and reclaimed oldest first") {
  Arena a(1u << 20);
  BlobProducer p(a.base, a.bytes);
  CHECK(p.maxMessage() == a.bytes - kBlobOverhead);
  const auto d1 = put(p, 1000);
  const auto d2 = put(p, 2000);
  CHECK(p.messagesHeld() == 2);
  CHECK(p.bytesHeld() == 1088 + 2112);  // each with its 64-byte header, 64-byte aligned
  CHECK(d1.offset == sizeof(BlobControl));
  CHECK(d2.offset == sizeof(BlobControl) + 1088);
  CHECK(d1.generation != d2.generation);
  release(a, d2);  // out of order: the first still holds the front
  CHECK(p.reclaim() == 0);
  CHECK(p.messagesHeld() == 2);
  release(a, d1);
  CHECK(p.reclaim() == 2);
  CHECK(p.messagesHeld() == 0);
  CHECK(p.bytesHeld() == 0);
  CHECK(p.bytesHighWater() == 1088 + 2112);
  // What the records used is zero again (the next claims rely on it).
  for (std::size_t i = 0; i < 4096; ++i) REQUIRE(a.base[sizeof(BlobControl) + i] == 0);
}

TEST_CASE("a claim takes the larger run: before the end, or from the front after a wrap") {
  Arena a(64u << 10);
  BlobProducer p(a.base, a.bytes);
  const std::size_t span = a.bytes - sizeof(BlobControl);
  const auto d1 = put(p, 25'000);
  const auto d2 = put(p, 25'000);
  // Left before the end: about 15 KiB; a larger message does not fit anywhere yet.
  CHECK(p.claim(30'000).code() == ErrorCode::Full);
  release(a, d1);
  // Now the front has about 25 KiB free and the end less: the claim wraps.
  auto c = p.claim(19'000);
  REQUIRE(c.ok());
  CHECK(c->skip != 0);
  CHECK(c->pos % span == 0);
  const auto d3 = p.commit(*c, 19'000);
  CHECK(d3.offset == sizeof(BlobControl));
  // The skipped tail counts as held until the records before it go.
  CHECK(p.bytesHeld() > 2 * 19'000);
  release(a, d2);
  release(a, d3);
  p.reclaim();
  CHECK(p.bytesHeld() == 0);
  // Empty again: one run spans the whole arena.
  auto whole = p.claim(p.maxMessage());
  REQUIRE(whole.ok());
  CHECK(whole->capacity == p.maxMessage());
}

TEST_CASE("a message larger than the arena is TooLarge; one larger than the free run is Full") {
  Arena a(64u << 10);
  BlobProducer p(a.base, a.bytes);
  CHECK(p.claim(p.maxMessage() + 1).code() == ErrorCode::TooLarge);
  const auto d = put(p, 40'000);
  CHECK(p.claim(40'000).code() == ErrorCode::Full);
  release(a, d);
  CHECK(p.claim(40'000).ok());
}

TEST_CASE("a dropped record (its descriptor never sent) is reclaimed without the receiver") {
  Arena a(64u << 10);
  BlobProducer p(a.base, a.bytes);
  (void)put(p, 5000);
  p.dropLast();
  CHECK(p.messagesHeld() == 0);
  CHECK(p.bytesHeld() == 0);
}

TEST_CASE("the pages of a large released record go back to the kernel") {
  Arena a(8u << 20);
  BlobProducer p(a.base, a.bytes);
  const auto d = put(p, 4u << 20);
  const std::uint8_t* body = a.base + d.offset + sizeof(BlobRecordHeader);
  CHECK(a.resident(a.base + kBlobPage, 4u << 20) >= 1000);
  release(a, d);
  p.reclaim();
  CHECK(a.resident(a.base + kBlobPage, 4u << 20) <= 2);
  CHECK(body[12345] == 0);
}

TEST_CASE("with the segment's file, a released record in the warm front keeps its pages; the next build reads zero") {
  Arena a(4u << 20, true);
  BlobProducer p(a.base, a.bytes, a.file());  // the default warm front spans this arena
  const auto d = put(p, 1u << 20);            // a 0x5a pattern over 1 MiB
  release(a, d);
  CHECK(p.reclaim() == 1);
  CHECK(a.resident(a.base + kBlobPage, 1u << 20) >= 250);  // kept, not punched out
  // The peer scribbles into free space further on (its own mapping is writable too).
  std::memset(a.base + (2u << 20), 0x77, 3 * kBlobPage);
  auto c = p.claim(sizeof(MessageTable));
  REQUIRE(c.ok());
  BlobMessageBuilder mb(*c, p.maxMessage());
  auto root = mb.initRoot<TestMessage>();
  auto blob = root.initBlob(3u << 20);  // over the kept pages and the scribbles
  CHECK(allZero(blob));
  CHECK(root.getSeq() == 0);
  CHECK(root.getText().size() == 0);
  CHECK(!root.hasChildren());
  // Twice more: the sender fills the blob, the peer scribbles into a kept page, and the next
  // build reads zero. The first round's fill wrote new pages (the claim maps the file's data
  // again); the second's did not (the claim keeps its map, which has the page).
  std::memset(blob.begin(), 0x5a, blob.size());
  BlobDescriptor held = p.commit(*c, mb.finish());
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    release(a, held);
    CHECK(p.reclaim() == 1);
    std::memset(a.base + (3u << 20), 0x77, 100);
    auto again = p.claim(sizeof(MessageTable));
    REQUIRE(again.ok());
    BlobMessageBuilder mb2(*again, p.maxMessage());
    auto blob2 = mb2.initRoot<TestMessage>().initBlob(3u << 20);
    CHECK(allZero(blob2));
    std::memset(blob2.begin(), 0x5a, blob2.size());
    held = p.commit(*again, mb2.finish());
  }
}

TEST_CASE("with the segment's file, a released record past the warm front gives its pages back") {
  Arena a(8u << 20, true);
  BlobProducer p(a.base, a.bytes, a.file(), 0, 1u << 20);  // a warm front of 1 MiB
  const auto small = put(p, 100'000);                      // inside the warm front
  const auto large = put(p, 4u << 20);                     // ends past it
  const std::uint8_t* body = a.base + large.offset + sizeof(BlobRecordHeader);
  CHECK(a.resident(a.base + (1u << 20), 3u << 20) >= 700);
  release(a, small);
  release(a, large);
  CHECK(p.reclaim() == 2);
  CHECK(a.resident(a.base + (1u << 20), 3u << 20) <= 2);
  CHECK(a.resident(a.base + kBlobPage, 64u << 10) >= 10);  // the small record's pages stay
  CHECK(body[12345] == 0);
}

TEST_CASE("a message built in the arena is read back in place through its descriptor") {
  Arena a(4u << 20);
  BlobProducer p(a.base, a.bytes);
  auto c = p.claim(sizeof(MessageTable));
  REQUIRE(c.ok());
  BlobMessageBuilder mb(*c, p.maxMessage());
  auto root = mb.initRoot<TestMessage>();
  root.setSeq(7);
  auto data = root.initBlob(1u << 20);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 31);
  root.setText("after the data");
  const std::size_t used = mb.finish();
  const auto d = p.commit(*c, used);
  auto v = checkBlobDescriptor(d, a.base, a.bytes);
  REQUIRE(v.ok());
  InPlaceMessage msg;
  REQUIRE(msg.parse(v->message, v->bytes).ok());
  auto r = msg.reader().getRoot<TestMessage>();
  CHECK(r.getSeq() == 7);
  CHECK(std::string(r.getText()) == "after the data");
  auto got = r.getBlob();
  REQUIRE(got.size() == 1u << 20);
  bool same = true;
  for (std::size_t i = 0; i < got.size(); ++i) same = same && got[i] == static_cast<std::uint8_t>(i * 31);
  CHECK(same);
  CHECK(msg.traverse().ok());
}

TEST_CASE("a message of many large fields packs them into the segment table's few segments") {
  // examples/big-buffer's frame: eight 64 MiB Data chunks in a 576 MiB arena. Growing segments by
  // a fixed factor put four chunks and their list in a 256 MiB segment with no room for the eighth,
  // and the last segment could not hold it: TooLarge for a message the arena fits. The arena is
  // sparse and the chunks are allocated, not written: this touches a few pages only.
  constexpr std::size_t kChunk = 64u << 20, kChunks = 8;
  Arena a((576u << 20) + kBlobPage);
  BlobProducer p(a.base, a.bytes);
  auto c = p.claim(sizeof(MessageTable));
  REQUIRE(c.ok());
  BlobMessageBuilder mb(*c, p.maxMessage());
  try {
    auto chunks = mb.initRoot<TestMessage>().initChildren(kChunks);
    for (unsigned i = 0; i < kChunks; ++i) chunks[i].initLabel(static_cast<unsigned>(kChunk - 1))[0] = 'a';
  } catch (const ClaimExhausted& e) {
    FAIL("the frame did not fit: " << std::string(e.what()));
  }
  CHECK(mb.getSegmentsForOutput().size() <= kMaxSegments);
  const auto d = p.commit(*c, mb.finish());
  auto v = checkBlobDescriptor(d, a.base, a.bytes);
  REQUIRE(v.ok());
  InPlaceMessage msg;
  REQUIRE(msg.parse(v->message, v->bytes).ok());
  auto read = msg.reader().getRoot<TestMessage>().getChildren();
  REQUIRE(read.size() == kChunks);
  for (unsigned i = 0; i < kChunks; ++i) {
    CHECK(read[i].getLabel().size() == kChunk - 1);
    CHECK(read[i].getLabel()[0] == 'a');
  }
}

TEST_CASE("a message that outgrows the arena throws TooLarge; one that outgrows the free run, Full") {
  Arena a(1u << 20);
  BlobProducer p(a.base, a.bytes);
  CHECK(buildCode(p, 2u << 20) == ErrorCode::TooLarge);
  const auto held = put(p, 600'000);
  CHECK(buildCode(p, 500'000) == ErrorCode::Full);
  release(a, held);
}

TEST_CASE("segments copied into the arena read back as the original message") {
  Arena a(1u << 20);
  BlobProducer p(a.base, a.bytes);
  capnp::MallocMessageBuilder src(16);  // small first segment: several segments
  auto root = src.initRoot<TestMessage>();
  root.initBlob(100'000);
  root.setText("copied");
  auto segs = src.getSegmentsForOutput();
  REQUIRE(segs.size() > 1);
  auto c = p.claim(sizeof(MessageTable) + 8 * 20'000);
  REQUIRE(c.ok());
  const std::size_t used = copyBlobSegments(*c, segs);
  const auto d = p.commit(*c, used);
  auto v = checkBlobDescriptor(d, a.base, a.bytes);
  REQUIRE(v.ok());
  InPlaceMessage msg;
  REQUIRE(msg.parse(v->message, v->bytes).ok());
  CHECK(std::string(msg.reader().getRoot<TestMessage>().getText()) == "copied");
}

TEST_CASE("tryBuildBlob and tryCopyBlob commit a record, or say TooLarge or Full and give the claim back") {
  Arena a(1u << 20);
  BlobProducer p(a.base, a.bytes);
  auto build = [](unsigned n) { return [n](capnp::MessageBuilder& b) { b.initRoot<TestMessage>().initBlob(n); }; };
  CHECK(tryBuildBlob(p, build(2u << 20)).code() == ErrorCode::TooLarge);
  CHECK(p.messagesHeld() == 0);
  auto held = tryBuildBlob(p, build(600'000));
  REQUIRE(held.ok());
  CHECK(tryBuildBlob(p, build(500'000)).code() == ErrorCode::Full);
  capnp::MallocMessageBuilder src;
  src.initRoot<TestMessage>().initBlob(500'000);
  CHECK(tryCopyBlob(p, src.getSegmentsForOutput()).code() == ErrorCode::Full);
  // A build that throws something else gives its claim back and lets the exception through.
  CHECK_THROWS_AS(tryBuildBlob(p, [](capnp::MessageBuilder&) { throw std::runtime_error("user"); }), std::runtime_error);
  CHECK(p.messagesHeld() == 1);
  release(a, *held);
  auto copied = tryCopyBlob(p, src.getSegmentsForOutput());  // room again after the release
  REQUIRE(copied.ok());
  auto v = checkBlobDescriptor(*copied, a.base, a.bytes);
  REQUIRE(v.ok());
  InPlaceMessage msg;
  REQUIRE(msg.parse(v->message, v->bytes).ok());
  CHECK(msg.reader().getRoot<TestMessage>().getBlob().size() == 500'000);
}

TEST_CASE("checkBlobDescriptor refuses hostile descriptors with InvalidMessage") {
  Arena a(64u << 10);
  BlobProducer p(a.base, a.bytes);
  const auto good = put(p, 1000);
  REQUIRE(checkBlobDescriptor(good, a.base, a.bytes).ok());
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  std::vector<BlobDescriptor> bad;
  auto with = [&](auto change) {
    BlobDescriptor d = good;
    change(d);
    bad.push_back(d);
  };
  with([](BlobDescriptor& d) { d.offset = 0; });                  // the control block
  with([](BlobDescriptor& d) { d.offset += 8; });                 // misaligned
  with([&](BlobDescriptor& d) { d.offset = a.bytes; });           // past the end
  with([&](BlobDescriptor& d) { d.offset = a.bytes - 64; d.bytes = 64; });  // body past the end
  with([](BlobDescriptor& d) { d.offset = kMax - 63; });          // overflowing offset
  with([](BlobDescriptor& d) { d.bytes = kMax; });                // overflowing length
  with([&](BlobDescriptor& d) { d.bytes = a.bytes; });            // longer than the arena
  with([](BlobDescriptor& d) { d.bytes = 16; });                  // shorter than a segment table
  with([](BlobDescriptor& d) { d.bytes = 1001; });                // not whole words
  with([](BlobDescriptor& d) { d.generation = 0; });
  with([](BlobDescriptor& d) { d.generation += 1; });             // a stale or forged record
  with([](BlobDescriptor& d) { d.reserved = 1; });
  with([](BlobDescriptor& d) { d.reserved2 = 1; });
  for (const auto& d : bad) {
    auto r = checkBlobDescriptor(d, a.base, a.bytes);
    CHECK_MESSAGE(r.code() == ErrorCode::InvalidMessage, "offset " << d.offset << " bytes " << d.bytes);
  }
  CHECK(checkBlobDescriptor(good, nullptr, 0).code() == ErrorCode::InvalidMessage);  // no arena
  CHECK(checkBlobDescriptor(good, a.base, 64).code() == ErrorCode::InvalidMessage);  // arena too small
}

TEST_CASE("a sender waiting for room wakes on the receiver's release") {
  Arena a(64u << 10);
  BlobProducer p(a.base, a.bytes);
  const auto d = put(p, 40'000);
  SpinPolicy spin;
  // Nothing released: the wait ends at its deadline.
  CHECK(p.waitForRelease(monotonicNowNs() + 1'000'000, spin, [] { return false; }) == WaitStatus::Timeout);
  release(a, d);
  CHECK(p.waitForRelease(monotonicNowNs() + 1'000'000'000, spin, [] { return false; }) == WaitStatus::Ready);
  CHECK(p.messagesHeld() == 0);
}
