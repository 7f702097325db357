// The trace ring: a bounded shared-memory broadcast buffer of trace records, written by one
// producer (the router, under its mutex) and read by any number of inspectors that never slow
// the producer down (docs/architecture.md §14).
//
// Algorithm: Aeron's broadcast buffer (aeron-client, concurrent/broadcast: BroadcastTransmitter
// and BroadcastReceiver). The producer never waits: before it writes a record it announces the
// new end in `tailIntent`, then writes the record, then publishes `latest` (where the record
// starts) and `tail` (where it ends). A reader copies a record out and then re-reads
// `tailIntent`: if the producer may have lapped the record meanwhile (tailIntent > cursor +
// capacity), the copy is discarded and the reader jumps ahead, counting the records it lost from
// the sequence numbers the records carry. Where to: Aeron jumps to `latest` (the newest record);
// an inspector wants to lose as little as it can, so the producer also marks the first record
// that starts in each sixteenth of the ring (`marks`), and a lapped reader goes on from the
// oldest mark the producer has not reached again: it loses at most a sixteenth of the ring more
// than it must.
//
//   producer                                   reader
//   --------                                   ------
//   tailIntent.store(end)          [I]         t = tail.load(acquire)            [T]
//   fence(release)                             copy record at cursor (relaxed words)
//   record words (relaxed stores)              fence(acquire)
//   latest.store(start, release)               tailIntent.load(relaxed)          [I]
//   tail.store(end, release)       [T]         valid iff tailIntent <= cursor + capacity
//
// [T]: a reader that sees `tail` past a record sees the record's words (release/acquire).
// [I]: the seqlock half (Boehm, "Can Seqlocks Get Along With Programming Language Memory
// Models?", 2012, §5 fences): if the reader's copy read any word written after the intent
// store, the fences make the intent visible to its re-read, and the copy is thrown away.
// Record words are accessed as relaxed atomics (std::atomic_ref), so a torn copy is a discarded
// value, never a data race.
//
// The layout lives in a memfd the supervisor hands to inspectors over the control socket
// (ControlType::TraceRing): no name in /dev/shm, nothing to leak, and only a process the
// supervisor accepted on its socket (same uid) can map it. Readers may write the memory (they
// park on its futex word); the producer never reads anything a reader can write except that
// futex word's waiter count (a hint), so a hostile reader can only spoil its own view.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "control/socket.hpp"
#include "shmbus/error.hpp"
#include "wait/wait.hpp"

namespace shmbus::detail {

inline constexpr std::uint64_t kTraceMagic = 0x3147'5254'4253'4853ull;  // "SHBSTRG1" little endian
inline constexpr std::uint32_t kTraceVersion = 1;

/// Start of the trace memory. Plain data: a zeroed memfd is a valid empty ring once the
/// producer wrote magic, version and capacity.
struct TraceRingHeader {
  std::uint64_t magic;     ///< kTraceMagic
  std::uint32_t version;   ///< kTraceVersion
  std::uint32_t capacity;  ///< bytes of record space after the header (power of two)
  std::uint8_t pad0[48];
  alignas(64) std::atomic<std::uint64_t> tailIntent;  ///< end of the record being written
  std::atomic<std::uint64_t> tail;                    ///< end of the last complete record
  std::atomic<std::uint64_t> latest;                  ///< start of the last complete record
  std::uint8_t pad1[40];
  /// marks[k]: start of the first record that starts in sixteenth k of the ring, on its latest lap.
  alignas(64) std::atomic<std::uint64_t> marks[16];
  alignas(64) WaitWord dataReady;  ///< readers park here; the producer notifies per record
  std::uint8_t pad2[48];
};
static_assert(sizeof(TraceRingHeader) == 320);

/// Header of one record in the ring: `length` counts the header and the body (not the padding
/// to 8 bytes); `type` 1 = data, 2 = padding to the end of the ring; `seq` numbers the data
/// records from 1 (lost records show as gaps).
struct TraceRecordHeader {
  std::uint32_t length;
  std::uint32_t type;
  std::uint64_t seq;
};
static_assert(sizeof(TraceRecordHeader) == 16);

inline constexpr std::uint32_t kTraceRecordData = 1;
inline constexpr std::uint32_t kTraceRecordPadding = 2;
/// Largest record body, bytes: a trace event with its strings is far below it; a payload record
/// (payload_capture.hpp) is at most 32 + kMaxPayloadCaptureBytes (16 KiB).
inline constexpr std::size_t kTraceMaxBody = 16 * 1024 + 64;
/// Smallest and default record space of a trace ring, bytes.
inline constexpr std::size_t kTraceMinCapacity = 64 * 1024;
inline constexpr std::size_t kTraceDefaultCapacity = 4 * 1024 * 1024;

/// A shared mapping of a whole trace ring (header + record space). Move-only; unmaps on
/// destruction.
class TraceMapping {
 public:
  TraceMapping() = default;
  /// Maps `bytes` of `fd` read-write (MAP_SHARED). Errors: SystemError.
  static Result<TraceMapping> map(int fd, std::size_t bytes);
  TraceMapping(TraceMapping&& o) noexcept;
  TraceMapping& operator=(TraceMapping&& o) noexcept;
  TraceMapping(const TraceMapping&) = delete;
  TraceMapping& operator=(const TraceMapping&) = delete;
  ~TraceMapping();

  /// The ring's header (null when nothing is mapped).
  TraceRingHeader* header() const noexcept { return header_; }
  /// The record space (right after the header).
  std::uint8_t* data() const noexcept { return reinterpret_cast<std::uint8_t*>(header_ + 1); }
  /// Bytes mapped: the header and the record space.
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  TraceRingHeader* header_ = nullptr;
  std::size_t bytes_ = 0;
};

/// The producer's side of a trace ring it created (a memfd). One producer: the caller
/// serialises write() (the router calls it under its mutex). Move-only; unmaps and closes on
/// destruction (readers keep their own mappings).
class TraceProducer {
 public:

  /// Creates a memfd named `shmbus-trace` of sizeof(TraceRingHeader) + `capacity` bytes (rounded
  /// up to a power of two, at least kTraceMinCapacity), its size sealed (segment/segment.hpp's
  /// sealedMemfd: an inspector cannot shrink it under the producer), and maps it.
  /// Errors: InvalidArgument (over 1 GiB), SystemError.
  static Result<TraceProducer> create(std::size_t capacity);

  /// Appends one record of `body` (at most kTraceMaxBody bytes; longer bodies are cut) and wakes
  /// parked readers. Never blocks, never fails: the oldest records are overwritten.
  void write(std::span<const std::uint8_t> body) noexcept;

  /// The memfd (for SCM_RIGHTS to an inspector); stays owned by this object.
  int fd() const noexcept { return fd_.get(); }
  /// Bytes of the mapping (header + record space).
  std::size_t mappedBytes() const noexcept { return map_.bytes(); }
  /// Data records written so far.
  std::uint64_t written() const noexcept { return seq_; }

 private:
  Fd fd_;
  TraceMapping map_;
  std::uint64_t capacity_ = 0;
  std::uint64_t tail_ = 0;       // process-local copy of what was published (never read back from shm)
  std::uint64_t lastStart_ = 0;  // where the last record started (for marks)
  std::uint64_t seq_ = 0;
};

/// A reader of a trace ring mapped from the producer's memfd. Any number per ring, in any
/// process; each instance is used by one thread at a time. Move-only.
class TraceReader {
 public:

  /// Maps `fd` (the mapping outlives the descriptor) and checks the header; the reader starts
  /// after the newest complete record (it sees records written from now on, and counts any it
  /// misses from then on in lost()). Errors: InvalidMessage (not a trace
  /// ring, wrong version or size), SystemError (mmap).
  static Result<TraceReader> attach(int fd);

  /// Copies the next record's body into `out` and returns true, or returns false when none is
  /// complete yet. Records the producer overwrote before this reader got to them are skipped and
  /// counted in lost().
  bool next(std::vector<std::uint8_t>& out);

  /// Parks until a record is complete past the reader's cursor or `deadlineNs` (absolute
  /// CLOCK_MONOTONIC ns, kNoDeadline = forever) passes. No CPU while parked.
  WaitStatus wait(std::int64_t deadlineNs);

  /// Records skipped because the producer lapped this reader (a slow inspector), so far.
  std::uint64_t lost() const noexcept { return lost_; }
  /// Sequence number of the last record returned by next() (before the first: the newest record
  /// when the reader attached, 0 for a ring never written).
  std::uint64_t lastSeq() const noexcept { return lastSeq_; }

 private:
  bool ready() const noexcept;
  /// Moves the cursor past records the producer overwrote (see `marks`).
  void skipLapped() noexcept;
  TraceMapping map_;
  std::uint64_t capacity_ = 0;
  std::uint64_t cursor_ = 0;
  std::uint64_t lastSeq_ = 0;
  std::uint64_t lost_ = 0;
};

}  // namespace shmbus::detail
