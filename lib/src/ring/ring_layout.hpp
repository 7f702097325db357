// Shared-memory layout of a single-producer single-consumer ring of variable-length records.
// Plain data only: these structs live in a segment; the code that operates on them is ring.hpp
// (the iceoryx split between `chunk_queue_data` and `chunk_queue_pusher`).
//
// Record layout (Aeron `RecordDescriptor` shape, little endian, every record 8-byte aligned):
//
//    0                   1                   2                   3
//    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//   +-+-------------------------------------------------------------+
//   |R|                 Length (header + body bytes)                |  0 = not yet committed
//   +-+-------------------------------------------------------------+
//   |                        Type (data / padding)                  |
//   +---------------------------------------------------------------+
//   |                       Body (Length - 8 bytes) ...            ...
//   +---------------------------------------------------------------+  padded to 8 bytes
//
// Protocol: free space is all zero bytes (the consumer zeroes what it consumed before it
// publishes `head`). The producer writes the body, then the type, then stores a positive Length
// with release: that store publishes the record. A record never wraps: when it does not fit before
// the end of the buffer the producer first commits a padding record that runs to the end.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "wait/wait.hpp"

namespace shmbus::detail {

inline constexpr std::size_t kCacheLine = 64;
/// Spacing of the control block's words: two cache lines, because x86 cores prefetch lines in
/// adjacent pairs (Intel's spatial prefetcher; AMD's L2 "adjacent line" prefetch), so two words
/// written by different cores 64 bytes apart still trade their lines (folly's
/// hardware_destructive_interference_size and crossbeam's CachePadded use 128 for this reason).
inline constexpr std::size_t kFalseSharingRange = 128;
inline constexpr std::size_t kRecordAlign = 8;

/// Record types (the `Type` word). Anything else is corruption.
enum RecordType : std::uint32_t {
  kRecordData = 1,
  kRecordPadding = 2,
};

/// The 8-byte header at the start of every record.
struct RecordHeader {
  std::atomic<std::int32_t> length;  ///< header + body bytes; 0 = free/uncommitted; > 0 committed
  std::uint32_t type;                ///< RecordType
};
static_assert(sizeof(RecordHeader) == 8);

/// The record header at buffer offset `index` (< capacity, 8-byte aligned) of a ring's data.
inline RecordHeader* headerAt(std::uint8_t* data, std::uint64_t index) noexcept {
  return reinterpret_cast<RecordHeader*>(data + index);
}
static_assert(std::atomic<std::int32_t>::is_always_lock_free);

/// Per-ring control block, in shared memory. Each index on its own pair of cache lines so the
/// producer's and consumer's writes never share a line or an adjacent-line prefetch pair (false
/// sharing); each wait word likewise.
struct RingControl {
  /// Consumer position in bytes (monotonic, never wraps in practice: 2^64 bytes). Written only
  /// by the consumer, after it zeroed everything before it; read by the producer.
  alignas(kCacheLine) std::atomic<std::uint64_t> head;
  std::uint8_t padHead[kFalseSharingRange - sizeof(std::atomic<std::uint64_t>)];
  /// Producer position in bytes, published (release) once per batch by notifyConsumer(). Batch
  /// consumers read below it (tryReadPublished); latency consumers do not need it (they find
  /// records by their committed length); it also tells the fill level.
  std::atomic<std::uint64_t> tail;
  std::uint8_t padTail[kFalseSharingRange - sizeof(std::atomic<std::uint64_t>)];
  /// The consumer parks here waiting for data; the producer notifies after committing.
  WaitWord dataReady;
  std::uint8_t padData[kFalseSharingRange - sizeof(WaitWord)];
  /// The producer parks here waiting for space; the consumer notifies after publishing head.
  WaitWord spaceReady;
  std::uint8_t padSpace[kFalseSharingRange - sizeof(WaitWord)];
};
// Alignment stays one cache line (a segment places control blocks at 64-byte offsets); the
// 128-byte spacing keeps the words on distinct adjacent-line pairs wherever the block starts.
static_assert(alignof(RingControl) == kCacheLine);
static_assert(sizeof(RingControl) == 4 * kFalseSharingRange);
static_assert(offsetof(RingControl, head) == 0);
static_assert(offsetof(RingControl, tail) == kFalseSharingRange);
static_assert(offsetof(RingControl, dataReady) == 2 * kFalseSharingRange);
static_assert(offsetof(RingControl, spaceReady) == 3 * kFalseSharingRange);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// Bytes a ring with `capacity` data bytes occupies: control block + data, cache-line aligned.
constexpr std::size_t ringFootprint(std::size_t capacity) { return sizeof(RingControl) + capacity; }

constexpr std::size_t alignUp(std::size_t n, std::size_t a) { return (n + a - 1) & ~(a - 1); }

}  // namespace shmbus::detail
