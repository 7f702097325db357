// Fuzzes a port's blob arena (blob/): the fuzzer writes a kFlagBlob frame's descriptor and the
// sender's arena as a hostile peer could, then the receiver checks the descriptor
// (checkBlobDescriptor), reads the message it names in place (InPlaceMessage::parse, a full
// traversal, every byte touched) and releases it, as a port's end does; then a sender attaches to
// the same hostile arena and allocates, builds, commits and reclaims, as the other end does. The
// arena is an exact-size allocation: a read or a write past it is an AddressSanitizer report.
//
// Input: [BlobDescriptor 32 bytes][arena bytes, up to kArenaBytes; the rest zero].
#include <algorithm>

#include "blob/blob.hpp"
#include "fuzz_util.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
constexpr std::size_t kArenaBytes = 16384;

/// What a receiver does with a descriptor: check, parse, read everything, release.
void receive(const BlobDescriptor& d, std::uint8_t* arena) {
  auto v = checkBlobDescriptor(d, arena, kArenaBytes);
  if (!v) return;
  InPlaceMessage msg;
  if (msg.parse(v->message, v->bytes)) {
    std::uint64_t sum = 0;
    for (auto seg : msg.segments()) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(seg.begin());
      for (std::size_t i = 0; i < seg.size() * sizeof(capnp::word); ++i) sum += p[i];
    }
    if (!msg.empty()) (void)fuzz::traverse(msg.reader());
    asm volatile("" ::"r"(sum));
  }
  releaseBlob(v->record, reinterpret_cast<BlobControl*>(arena));
}

/// What a sender does over an arena the peer scribbled: claims, builds, commits, reclaims.
void send(std::uint8_t* arena) {
  BlobProducer p(arena, kArenaBytes);
  for (std::size_t n : {std::size_t{100}, std::size_t{5000}, std::size_t{9000}}) {
    auto c = p.claim(sizeof(MessageTable));
    if (!c) continue;
    BlobMessageBuilder mb(*c, p.maxMessage());
    try {
      mb.initRoot<capnp::AnyPointer>().initAs<capnp::Data>(static_cast<unsigned>(n));
    } catch (const ClaimExhausted&) {
      p.abort(*c, mb.touched());
      continue;
    }
    const auto d = p.commit(*c, mb.finish());
    receive(d, arena);  // its own message must check and parse
    p.reclaim();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const auto d = in.take<BlobDescriptor>();
  fuzz::Bytes arena(nullptr, kArenaBytes);
  std::copy_n(in.rest(), std::min(in.restBytes(), kArenaBytes), arena.data());
  receive(d, arena.data());
  send(arena.data());
  return 0;
}
