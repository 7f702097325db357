// Fuzzes the ring over a hostile segment (ring/): the fuzzer writes a ring's shared memory (head
// and tail indices, record headers, bodies) as a corrupt or malicious peer could, then a consumer
// reads every record it finds (latency or batch mode), parses each as a frame and releases it,
// and a producer attaches and claims (what the router does with a window's outbox and the window
// with its inbox). The ring's data is the end of an exact-size allocation: a record view or a
// zeroing past the buffer is an AddressSanitizer report.
//
// Input: [flags u8][head u64][tail u64][claim size u16][data bytes, up to the capacity; the rest zero].
// flags bit 0: batch mode (tryReadPublished); bit 1: release after every record, else once at the end.
#include <algorithm>
#include <new>
#include <vector>

#include "fuzz_util.hpp"
#include "message/message.hpp"
#include "protocol/frame_io.hpp"
#include "ring/ring.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
constexpr RingGeometry kGeometry{4096, 1024};
constexpr int kMaxReads = 64;

/// Sums every byte of a record: a view pointing outside the ring faults here.
std::uint64_t touch(const RecordView& v) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < v.bodyBytes; ++i) sum += v.body[i];
  return sum;
}

/// Reads up to kMaxReads records as a window or the router does, until none is left or Corrupt.
void consume(RingControl* control, std::uint8_t* ring, bool batch, bool releaseEach) {
  RingConsumer consumer(control, ring, kGeometry);
  std::uint64_t sum = 0;
  for (int i = 0; i < kMaxReads; ++i) {
    auto r = batch ? consumer.tryReadPublished() : consumer.tryRead();
    if (!r || !r->has_value()) break;  // Corrupt leaves the ring unusable; nullopt: nothing more
    const RecordView& v = **r;
    sum += touch(v);
    if (auto f = parseFrame(v)) {
      InPlaceMessage m;
      if (m.parse(f->payload, f->payloadBytes) && !m.empty()) (void)fuzz::traverse(m.reader());
    }
    if (releaseEach) consumer.releaseTo(v.end);
  }
  consumer.releaseAll();
  (void)sum;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const auto flags = in.take<std::uint8_t>();
  const auto head = in.take<std::uint64_t>();
  const auto tail = in.take<std::uint64_t>();
  const auto claimBytes = in.take<std::uint16_t>();
  std::vector<std::uint8_t> image(sizeof(RingControl) + kGeometry.capacity);
  std::copy_n(in.rest(), std::min(in.restBytes(), kGeometry.capacity), image.begin() + sizeof(RingControl));
  const fuzz::Bytes segment(image.data(), image.size());
  auto* control = new (segment.data()) RingControl{};
  // relaxed: one thread; nothing pairs with these stores (they stand for a peer's scribbles).
  control->head.store(head, std::memory_order_relaxed);
  control->tail.store(tail, std::memory_order_relaxed);
  std::uint8_t* ring = segment.data() + sizeof(RingControl);
  consume(control, ring, (flags & 1) != 0, (flags & 2) != 0);
  RingProducer producer(control, ring, kGeometry, /*zeroOnClaim=*/true);
  if (auto c = producer.tryClaim(claimBytes)) {
    std::fill_n(c->body, c->bodyCapacity, std::uint8_t{0xa5});
    producer.commit(*c, c->bodyCapacity);
  }
  if (auto c = producer.tryClaimUpTo(64, claimBytes)) producer.abort(*c, c->bodyCapacity);
  return 0;
}
