// A port's blob arenas (docs/architecture.md §17): messages larger than the port's ring, built in
// a sparse shared-memory arena by the sender and read there in place by the receiver, zero copy.
// The ring carries a BlobDescriptor in a frame flagged kFlagBlob (protocol/frame.hpp).
//
// Arena layout (one arena per direction, `arenaBytes` a multiple of 4 KiB):
//
//   +----------------------+  offset 0
//   | BlobControl (64 B)   |  the release word (futex) the sender waits on
//   +----------------------+  offset 64
//   | record               |  [BlobRecordHeader 64 B][MessageTable 32 B][segments]
//   | record ...           |  records 64-byte aligned, allocated oldest first like a ring
//   +----------------------+  arenaBytes
//
// The sender (BlobProducer, one thread at a time: the port's send lock) allocates records at a
// monotonic position, wrapping to offset 64 when a record does not fit before the end (the skipped
// tail counts as held until the records before it are reclaimed). The receiver releases a record
// by storing 1 into its header's `released` (release) and bumping BlobControl::releases (release,
// then a futex wake); the sender reclaims released records oldest first (acquire) and can then
// reuse the space. A record inside the arena's warm front (kBlobWarmBytes) keeps its pages: the
// next claim over them zeroes only the pages holding data (SEEK_DATA on the segment's file), so a
// blob sent again and again costs no system call that touches pages. Past the warm front the
// pages go back to the kernel (MADV_REMOVE). Nothing the receiver reads is trusted: a
// descriptor is checked against the arena's bounds and the record's generation
// (checkBlobDescriptor), then its message is parsed like a ring payload (InPlaceMessage::parse).
#pragma once

#include <capnp/message.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

#include "control/socket.hpp"
#include "message/message.hpp"
#include "shmbus/error.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

/// The head of an arena: the word the sender parks on while it waits for a release.
struct BlobControl {
  /// Bumped by the receiver after each release (release: SYNC POINT "blob release", pairs with
  /// the sender's acquire load in BlobProducer::waitForRelease).
  std::atomic<std::uint64_t> releases;
  WaitWord released;  ///< where the sender parks; the receiver notifies it after the bump
  std::uint8_t pad[40];
};
static_assert(sizeof(BlobControl) == 64);

/// The header of one record in an arena.
struct BlobRecordHeader {
  /// 0 while the receiver holds the message; the receiver stores 1 when done (release: SYNC
  /// POINT "blob release", pairs with BlobProducer::reclaim's acquire load: the receiver's reads
  /// of the record happen before the sender zeroes and reuses it).
  std::atomic<std::uint32_t> released;
  /// The record's generation (never 0), written by the sender before it publishes the descriptor
  /// (the ring's SYNC POINT "record" orders it); a descriptor must name the same one.
  std::uint32_t generation;
  std::uint64_t bytes;  ///< message bytes after this header (table + segments)
  std::uint8_t pad[48];
};
static_assert(sizeof(BlobRecordHeader) == 64);

/// What a kFlagBlob frame carries as its payload (exactly these 32 bytes).
struct BlobDescriptor {
  std::uint64_t offset;      ///< arena offset of the record's BlobRecordHeader (64-byte aligned)
  std::uint64_t bytes;       ///< message bytes after the header: MessageTable + segments
  std::uint32_t generation;  ///< must equal the record header's
  std::uint32_t reserved;    ///< 0
  std::uint64_t reserved2;   ///< 0
};
static_assert(sizeof(BlobDescriptor) == 32);

inline constexpr std::size_t kBlobAlign = 64;
inline constexpr std::size_t kBlobPage = 4096;
/// Default arena size per direction (PortOptions::blobBytes 0).
inline constexpr std::uint64_t kDefaultPortBlobBytes = 256ull << 20;
/// The front of an arena whose pages a sender with the segment's file keeps after a release (per
/// direction, bytes; half the default arena): records that end inside it keep their pages, which
/// the next claim over them zeroes where they hold data, instead of being punched out (MADV_REMOVE:
/// about 50 µs per record here, 2026-12-07) and faulted back in page by page when written again.
/// Records past it give their pages back to the kernel. So a port keeps at most this much memory
/// per direction for blobs no longer held, and only as much of it as its blobs touched. An
/// endpoint's arenas use half the arena, at most this (window/port_side.hpp blobLinkOf).
inline constexpr std::size_t kBlobWarmBytes = 128u << 20;
/// Largest arena size a port may ask for (PortOptions::blobBytes).
inline constexpr std::uint64_t kMaxPortBlobBytes = 64ull << 30;
/// Bytes of an arena no message can use: the control block and one record header.
inline constexpr std::size_t kBlobOverhead = sizeof(BlobControl) + sizeof(BlobRecordHeader);

/// A descriptor's message, found valid inside an arena: its record's header and message bytes.
struct BlobView {
  BlobRecordHeader* record = nullptr;
  const std::uint8_t* message = nullptr;  ///< MessageTable + segments (8-byte aligned)
  std::size_t bytes = 0;
};

/// Checks `d` (copied out of the ring) against the arena at `arena` of `arenaBytes`: both
/// reserved fields 0, the offset 64-byte aligned, at or after the control block, the header and
/// `bytes` (at least a MessageTable, a multiple of 8) inside the arena with no overflow, and the
/// record header's generation equal to the descriptor's and non-zero. The message itself is then
/// parsed by InPlaceMessage::parse, whose checks remain. Errors: InvalidMessage naming the field.
/// Thread contract: any thread; reads one word of shared memory (relaxed: the ring's SYNC POINT
/// "record" ordered the sender's writes before the descriptor was read).
Result<BlobView> checkBlobDescriptor(const BlobDescriptor& d, std::uint8_t* arena, std::size_t arenaBytes);

/// Receiver side: tells the sender it may reuse `record` (SYNC POINT "blob release"), then wakes a
/// sender parked on the arena's control word. `record` came from checkBlobDescriptor on this
/// arena. Thread contract: any thread, once per record.
void releaseBlob(BlobRecordHeader* record, BlobControl* control) noexcept;

/// A contiguous run of free arena space for one record, from BlobProducer::claim.
class BlobProducer;
struct BlobClaim {
  /// The arena the claim is in (BlobMessageBuilder zeroes segments through it).
  const BlobProducer* owner = nullptr;
  /// First byte after the record header (8-byte aligned). Not zeroed: a builder zeroes what it
  /// hands out (BlobProducer::zeroFree).
  std::uint8_t* body = nullptr;
  std::size_t capacity = 0;      ///< body bytes available
  std::uint64_t pos = 0;         ///< arena position of the record header
  std::uint64_t skip = 0;        ///< bytes skipped at the end of the arena to start at its front
};

/// The sending side of one arena. Single producer: callers serialise (the port's send lock).
/// Process contract: exactly one process writes records into a given arena.
class BlobProducer {
 public:
  BlobProducer() = default;
  /// `arena` points at `arenaBytes` (a multiple of 4 KiB, > kBlobOverhead) of mapped shared
  /// memory whose free space is zero (a fresh ftruncate'd file). With `file` (the segment's
  /// file, tmpfs; `fileOffset` the arena's offset in it, a multiple of 4 KiB), released records
  /// inside the first `warmBytes` keep their pages and claims zero only pages that hold data;
  /// without it every released record is zeroed (whole pages punched out) when reclaimed.
  BlobProducer(std::uint8_t* arena, std::size_t arenaBytes, Fd file = Fd(), std::uint64_t fileOffset = 0,
               std::size_t warmBytes = kBlobWarmBytes);

  bool valid() const noexcept { return arena_ != nullptr; }
  /// The largest message (table + segments) the arena can ever hold.
  std::size_t maxMessage() const noexcept { return bytes_ - kBlobOverhead; }

  /// Reclaims released records (oldest first), then reserves the largest contiguous free run
  /// (before the arena's end, or from its front when that is larger), at least `minBody` bytes.
  /// Errors: TooLarge (`minBody` > maxMessage()), Full (no run of `minBody` bytes now).
  Result<BlobClaim> claim(std::size_t minBody);
  /// Publishes the claim as a record of `usedBytes` body bytes (<= capacity) and returns the
  /// descriptor for the peer. The record is held until the receiver releases it.
  BlobDescriptor commit(const BlobClaim& c, std::size_t usedBytes);
  /// Gives up a claim whose first `touched` body bytes were handed out (retired as a reclaimed
  /// record's are).
  void abort(const BlobClaim& c, std::size_t touched) noexcept;
  /// Forgets the last committed record (its descriptor could not be sent): reclaimed as if
  /// released.
  void dropLast() noexcept;

  /// Reclaims the released records at the front (retiring what they used: kept for the next
  /// claim in the warm front, else zeroed with the pages given back). Returns how many.
  std::size_t reclaim() noexcept;
  /// Spins, then parks on the control word until the receiver releases something, `stop()` is
  /// true, or `deadlineNs` (CLOCK_MONOTONIC). Returns Ready when a release may have happened.
  template <typename Stop>
  WaitStatus waitForRelease(std::int64_t deadlineNs, const SpinPolicy& policy, Stop&& stop) {
    // acquire: SYNC POINT "blob release" (pairs with releaseBlob's release increment).
    const std::uint64_t seen = control()->releases.load(std::memory_order_acquire);
    if (reclaim() > 0) return WaitStatus::Ready;
    return spinThenPark(
        control()->released,
        // acquire: SYNC POINT "blob release".
        [&] { return stop() || control()->releases.load(std::memory_order_acquire) != seen; }, policy, deadlineNs);
  }

  /// Bytes and records held (sent, not reclaimed), and the bytes' high-water mark.
  std::uint64_t bytesHeld() const noexcept { return tail_ - head_; }
  std::uint64_t messagesHeld() const noexcept { return messages_; }
  std::uint64_t bytesHighWater() const noexcept { return highWater_; }
  std::size_t arenaBytes() const noexcept { return bytes_; }

 private:
  BlobControl* control() const noexcept { return reinterpret_cast<BlobControl*>(arena_); }
  std::uint8_t* at(std::uint64_t pos) const noexcept { return arena_ + sizeof(BlobControl) + (pos % span_); }

 public:
  /// Makes `n` free bytes at `p` (inside this arena) read as zero before a builder hands them
  /// out; `p` lies in the range of the last claim(). With the segment's file: memsets the range's
  /// first and last pages and, between them, only the pages that hold data, from the map of the
  /// arena's data runs that claim() brought up to date (lseek SEEK_DATA / SEEK_HOLE; tmpfs counts
  /// a swapped-out page as data), made again whenever the file's allocated block count (fstat)
  /// differs from the map's: a page written where there was none, by this end or the peer,
  /// changes the count, and this end's own punches drop the map. So pages never touched cost
  /// nothing, a kept page a memset, and a claim in a steady state one fstat. Without the file:
  /// zero(). The peer may have written anywhere in the free space before the claim: this is what
  /// keeps a builder's memory what Cap'n Proto expects. What a hostile peer writes into the
  /// claim's range during the build, or a punch and a write of it that keep the count, no look
  /// can stop: a port trusts its peer with its arena's contents (not with the file's size: the
  /// segment is a sealed memfd, docs/architecture.md §4, §17). Both ends'
  /// descriptors share one open file (SCM_RIGHTS, dup), so its file position is shared: only
  /// lseek's results are used, never the position it leaves.
  void zeroFree(std::uint8_t* p, std::size_t n) const noexcept;

 private:
  // Zeroes `n` bytes at `p` (inside the arena): the whole pages of a large range go back to the
  // kernel (madvise MADV_REMOVE punches them out of the shared file), the edges are memset.
  static void zero(std::uint8_t* p, std::size_t n) noexcept;
  // What a reclaimed or aborted range becomes: nothing (warm front, zeroFree runs at the next
  // claim), or zeroed with its whole pages given back.
  void retire(std::uint64_t pos, std::size_t n) noexcept;
  // Makes dataRuns_ current (see zeroFree); false when the file cannot tell (then all is data).
  bool refreshDataRuns() noexcept;

  struct Held {
    std::uint64_t pos = 0;     // arena position of the header (after any skip)
    std::uint64_t end = 0;     // position after the record
    std::uint64_t touched = 0; // header + body bytes to zero once released
    bool dropped = false;      // never sent: reclaim without the receiver
  };
  std::uint8_t* arena_ = nullptr;
  std::size_t bytes_ = 0;
  std::size_t span_ = 0;      // record space: bytes_ - sizeof(BlobControl)
  std::uint64_t head_ = 0;    // oldest held position (monotonic)
  std::uint64_t tail_ = 0;    // next free position (monotonic)
  std::uint32_t generation_ = 0;
  std::uint64_t messages_ = 0;
  std::uint64_t highWater_ = 0;
  std::deque<Held> held_;
  Fd file_;                   // the segment's file, or none (then every retire zeroes)
  // The arena's data runs [from, to) in arena bytes, as of the file's block count dataRunsBlocks_
  // (-1: none yet, or stale after a punch). Single producer: guarded as the producer is.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> dataRuns_;
  std::int64_t dataRunsBlocks_ = -1;
  bool dataRunsValid_ = false;  // claim() made dataRuns_ current (else zeroFree memsets all)
  std::uint64_t fileOffset_ = 0;
  std::size_t warmBytes_ = 0;
};

/// A capnp::MessageBuilder over one BlobClaim: a MessageTable at the start of the claim's body
/// and up to kMaxSegments contiguous segments after it, each of what Cap'n Proto asks or a chunk
/// growing from 256 KiB fourfold (the last slot takes the rest of the claim). Each segment is
/// zeroed as it is handed out (BlobProducer::zeroFree: only pages holding data are written), since
/// kept pages hold old records and the peer could have written into the free space. A message that
/// outgrows the claim throws ClaimExhausted: TooLarge when it exceeds `maxMessage` or the claim
/// already spans it, else Full.
/// Thread contract: single thread. Lifetime: must not outlive the claim.
class BlobMessageBuilder final : public capnp::MessageBuilder {
 public:
  BlobMessageBuilder(const BlobClaim& claim, std::size_t maxMessage);
  kj::ArrayPtr<capnp::word> allocateSegment(capnp::uint minimumSize) override;
  /// Writes the table; returns the body bytes used (table + segments, the last one trimmed).
  std::size_t finish();
  /// Body bytes handed out so far (what abort must zero).
  std::size_t touched() const noexcept { return cursor_; }

 private:
  [[noreturn]] void throwExhausted(std::size_t minimumSize);

  const BlobClaim& claim_;
  std::size_t maxMessage_;
  std::size_t cursor_;
  std::size_t nextChunkWords_;
  std::uint32_t count_ = 0;
  std::array<std::uint32_t, kMaxSegments> sizes_{};
};

/// Copies a message given as its segments into `claim` (table + segments); returns the bytes
/// used. Requires claim.capacity >= sizeof(MessageTable) + messageBytes and <= kMaxSegments
/// segments (the caller checked).
std::size_t copyBlobSegments(const BlobClaim& claim, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments);

/// One attempt to put `build`'s message into `arena`, without waiting: claims the largest free
/// run, builds the message there (BlobMessageBuilder) and commits it; returns the record's
/// descriptor for the peer. Errors: TooLarge (more than the arena can ever hold), Full (no room
/// now: the receiver still holds the rest). Anything else `build` throws gives the claim back and
/// propagates. Thread contract: the arena's one producer (the caller serialises).
Result<BlobDescriptor> tryBuildBlob(BlobProducer& arena, const std::function<void(capnp::MessageBuilder&)>& build);

/// The same for a message given as its `segments` (copied once). Errors: TooLarge (more than
/// kMaxSegments segments, or more than the arena can ever hold), Full.
Result<BlobDescriptor> tryCopyBlob(BlobProducer& arena, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments);

/// The same for a message given flat, as a ring payload is (`bytes` of MessageTable + segments,
/// checked by the caller: validatePayload), copied once. Errors: TooLarge, Full.
Result<BlobDescriptor> tryCopyBlob(BlobProducer& arena, const std::uint8_t* message, std::size_t bytes);

}  // namespace shmbus::detail
