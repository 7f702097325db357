// A hostile window's tool for the multiproc tests (tests/multiproc/bus/hostile_test.cpp and
// test_window's "malformed" mode): raw records written into a window's own outbox.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <capnp/message.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "message/message.hpp"
#include "protocol/frame.hpp"
#include "ring/ring.hpp"
#include "segment_probe.hpp"
#include "shm_test.hpp"
#include "wire/handshake.hpp"

namespace shmbus::test {

/// Writes raw records into a window's outbox through this process's own mapping of its segment,
/// as a hostile window would: found as the `/memfd:shmbus.<bus>.<id>.*` entry of
/// /proc/self/maps (segment_probe.hpp). Layout: wire/handshake.hpp's segmentLayout. Use only while the Window itself writes nothing (no
/// dispatch thread, no sends): the raw producer starts at the outbox's published tail.
class RawOutbox {
 public:
  /// `inboxBytes`/`outboxBytes` as the window asked for them; `maxRecord` as the supervisor
  /// computed it (min(its maximum, the smaller ring / 2)).
  RawOutbox(const std::string& bus, std::uint32_t windowId, std::size_t inboxBytes, std::size_t outboxBytes,
            std::size_t maxRecord) {
    const std::uintptr_t base = segmentBase(bus, windowId);
    childCheck(base != 0, fmt::format("no mapping of window {}'s segment in /proc/self/maps", windowId));
    auto* seg = reinterpret_cast<std::uint8_t*>(base);
    const std::size_t outOff = detail::segmentLayout(static_cast<std::uint32_t>(inboxBytes),
                                                     static_cast<std::uint32_t>(outboxBytes)).outboxOffset;
    control_ = reinterpret_cast<detail::RingControl*>(seg + outOff);
    data_ = seg + outOff + sizeof(detail::RingControl);
    geometry_ = {outboxBytes, maxRecord};
    producer_ = detail::RingProducer(control_, data_, geometry_);
  }

  /// Commits one record whose body is `body` (any bytes: the ring framing stays valid).
  void record(const void* body, std::size_t bytes) {
    auto c = producer_.tryClaim(bytes);
    childCheck(c.ok(), "raw claim: " + (c.ok() ? std::string() : c.error().toString()));
    std::memcpy(c->body, body, bytes);
    producer_.commit(*c, bytes);
  }

  /// Commits one record like record(), waiting (up to 10 s) for the supervisor to release room
  /// when the ring is full: it releases what it read at the end of each batch, so a writer that
  /// outpaces it finds the ring full although every record was handled.
  void recordWhenRoom(const void* body, std::size_t bytes) {
    childCheck(awaitCondition([&] {
                 auto c = producer_.tryClaim(bytes);
                 if (!c) return false;
                 std::memcpy(c->body, body, bytes);
                 producer_.commit(*c, bytes);
                 return true;
               }),
               "no room for a raw record within 10 s");
  }

  /// Commits a frame: `header` followed by an empty message table.
  void frame(const detail::FrameHeader& header) {
    std::uint8_t body[sizeof header + sizeof(detail::MessageTable)] = {};
    std::memcpy(body, &header, sizeof header);
    record(body, sizeof body);
  }

  /// Commits a frame: `header` followed by the message `mb` (a well-formed payload a real window
  /// would not send: forged records, docs/architecture.md §14 "Ports").
  void frameWithMessage(const detail::FrameHeader& header, capnp::MessageBuilder& mb) {
    auto segs = mb.getSegmentsForOutput();
    childCheck(segs.size() <= detail::kMaxSegments, "too many segments for a frame");
    detail::MessageTable t{};
    t.segmentCount = static_cast<std::uint32_t>(segs.size());
    std::string body(reinterpret_cast<const char*>(&header), sizeof header);
    for (std::size_t i = 0; i < segs.size(); ++i) t.segmentWords[i] = static_cast<std::uint32_t>(segs[i].size());
    body.append(reinterpret_cast<const char*>(&t), sizeof t);
    for (auto seg : segs) body.append(reinterpret_cast<const char*>(seg.begin()), seg.size() * sizeof(capnp::word));
    record(body.data(), body.size());
  }

  /// Commits a frame: `header` followed by a message whose table is sound but whose root is a
  /// struct pointer far past the end of its one segment: what only Cap'n Proto's own traversal
  /// finds (the router's payload check, docs/architecture.md §5 "Blame").
  void frameWithBadPointer(const detail::FrameHeader& header) {
    struct {
      detail::FrameHeader h;
      detail::MessageTable t;
      std::uint64_t root;
    } body{};
    body.h = header;
    body.t.segmentCount = 1;
    body.t.segmentWords[0] = 1;
    body.root = (std::uint64_t{1000} << 2) | (std::uint64_t{1} << 32);  // struct, offset 1000 words, 1 data word
    record(&body, sizeof body);
  }

  /// Overwrites the next record position with `bytes` random bytes whose record header has an
  /// impossible type and a non-zero length: garbage the supervisor must reject as a corrupt ring.
  void garbage(std::size_t bytes, unsigned seed) {
    const std::size_t at = producer_.tail() & (geometry_.capacity - 1);
    bytes = std::min(bytes, geometry_.capacity - at);
    std::uint32_t x = seed * 2654435761u + 1;
    for (std::size_t i = 8; i < bytes; ++i) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      data_[at + i] = static_cast<std::uint8_t>(x);
    }
    auto* h = reinterpret_cast<detail::RecordHeader*>(data_ + at);
    h->type = 0xbad0000u | (x & 0xffu);
    // release: SYNC POINT "record" (ring_layout.hpp): the bytes above are visible with the length.
    h->length.store(static_cast<std::int32_t>((x % 60000u) + 1), std::memory_order_release);
  }

  /// Wakes the supervisor: writes to every eventfd of this process (the window's doorbell, and
  /// any inherited from a parent that runs the supervisor: both only wake it).
  static void ringDoorbell() {
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return;
    while (dirent* e = ::readdir(d)) {
      char target[64] = {};
      const std::string link = std::string("/proc/self/fd/") + e->d_name;
      if (::readlink(link.c_str(), target, sizeof target - 1) > 0 && std::strcmp(target, "anon_inode:[eventfd]") == 0) {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(std::atoi(e->d_name), &one, sizeof one);
      }
    }
    ::closedir(d);
  }

 private:
  detail::RingControl* control_ = nullptr;
  std::uint8_t* data_ = nullptr;
  detail::RingGeometry geometry_{};
  detail::RingProducer producer_;
};

}  // namespace shmbus::test
