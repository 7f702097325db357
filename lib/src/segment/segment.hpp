// Shared memory segments: a descriptor mapped with Boost.Interprocess `mapped_region`.
//
// The bus's segments (a window's, a port's, a direct route's) are sealed memfds
// (docs/architecture.md §4): the supervisor creates one, seals its size, and hands its descriptor
// over the control socket (SCM_RIGHTS) to the processes that map it. No name exists in /dev/shm,
// so no crash can leave one; the memory goes when the last mapping and descriptor go. The seals
// matter because every mapper gets a read/write descriptor: a window that shrank an unsealed file
// (ftruncate) would make every other mapper's access past the new end raise SIGBUS, the
// supervisor's included. The memfd's name (`shmbus.<bus>.<id>.<nonce>`) shows in /proc/<pid>/maps
// as `/memfd:<name> (deleted)`, for diagnostics and tests only.
//
// Named POSIX objects (`create`/`open` by name, Boost `shared_memory_object`) remain for rings
// shared by unrelated processes outside a bus (tests, ring_bench). Every segment starts with a
// SegmentHeader naming the creating process, so start-up can remove names left by dead creators
// (removeStale).
#pragma once

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <fcntl.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/fd.hpp"
#include "shmbus/error.hpp"

namespace shmbus::detail {

/// The first 64 bytes of every segment. Written once by the creator before the name is handed
/// out; readers treat it as untrusted.
struct SegmentHeader {
  std::uint64_t magic;       ///< kSegmentMagic
  std::uint32_t version;     ///< kSegmentVersion
  std::int32_t creatorPid;   ///< pid of the supervisor that created the segment
  std::uint64_t totalBytes;  ///< size of the whole segment
  /// A port's close word (docs/architecture.md §16), accessed only through closeWord(): 0 while
  /// the port is open, else the PortCloseReason of whoever closed it first (either end or the
  /// supervisor). Window segments leave it 0.
  std::uint32_t linkClosed;
  /// A window segment's trace word (docs/architecture.md §14 "Ports"), accessed only through
  /// traceWord(): non-zero while an inspector is attached to the bus, set by the supervisor; the
  /// window's port ends then record their calls and sends. Port segments leave it 0.
  std::uint32_t tracing;
  std::uint8_t reserved[32];
};
static_assert(sizeof(SegmentHeader) == 64);

static_assert(offsetof(SegmentHeader, linkClosed) % alignof(std::atomic<std::uint32_t>) == 0);
static_assert(offsetof(SegmentHeader, tracing) % alignof(std::atomic<std::uint32_t>) == 0);

/// The close word of the segment mapped at `base` (shared memory: every access atomic).
inline std::atomic_ref<std::uint32_t> closeWord(std::uint8_t* base) noexcept {
  return std::atomic_ref<std::uint32_t>(reinterpret_cast<SegmentHeader*>(base)->linkClosed);
}

/// The trace word of the window segment mapped at `base` (shared memory: every access atomic).
/// Only the supervisor writes it; the window reads it as a hint (a window that scribbles on it
/// only makes its own port ends send records the supervisor drops or reads).
inline std::atomic_ref<std::uint32_t> traceWord(std::uint8_t* base) noexcept {
  return std::atomic_ref<std::uint32_t>(reinterpret_cast<SegmentHeader*>(base)->tracing);
}

inline constexpr std::uint64_t kSegmentMagic = 0x314742'4d48'53ull;  // "SHMBG1" little endian
inline constexpr std::uint32_t kSegmentVersion = 1;

/// The seals every bus segment carries (fcntl F_ADD_SEALS): its size can change no more, nor its
/// seals. Writes and hole punching stay allowed (a blob arena punches released records, §17).
inline constexpr int kSegmentSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

/// A memfd named `name` (close-on-exec) of `bytes` bytes (zero filled by the kernel), its size
/// sealed with kSegmentSeals: what the bus hands to processes that must not be able to resize
/// memory the supervisor maps (segments, trace rings). Errors: SystemError (memfd_create,
/// ftruncate, F_ADD_SEALS: out of memory or descriptors).
Result<Fd> sealedMemfd(const std::string& name, std::size_t bytes);

/// A mapped shared memory segment. Move-only; unmaps on destruction (never unlinks: names are
/// unlinked explicitly, as early as possible).
/// Thread contract: the object is not thread-safe; the mapped memory is shared by design.
class Segment {
 public:
  Segment() = default;

  /// Creates a sealed memfd segment (sealedMemfd, named `name`) of `bytes` bytes, maps it, writes
  /// the SegmentHeader and keeps the descriptor (fd()) for the creator to hand out until it
  /// closes it (closeFd()). Errors: SystemError (out of memory or descriptors, mmap).
  static Result<Segment> createSealed(const std::string& name, std::size_t bytes);

  /// Creates `name` (exclusive, mode 0600) of `bytes` bytes (zero filled by the kernel), maps it
  /// and writes the SegmentHeader. Errors: SystemError (exists, permissions, no memory).
  static Result<Segment> create(const std::string& name, std::size_t bytes);

  /// Opens and maps an existing segment read/write. The size is taken from the object (fstat),
  /// never from its contents. Errors: SystemError (no such name, permissions).
  static Result<Segment> open(const std::string& name);

  /// Maps the segment open on `fd` (handed over by its creator, so its mode does not matter: a
  /// window of another uid maps it this way). `name` is kept for messages only. The size is taken
  /// from the object (fstat). The caller keeps `fd` (closing it leaves the mapping).
  /// Errors: SystemError (fstat, mmap, too small).
  static Result<Segment> map(int fd, const std::string& name);

  /// Removes a name; the memory stays mapped wherever it is. Returns true if a name was removed.
  static bool unlink(const std::string& name) noexcept;

  /// A fresh unique name `shmbus.<bus>.<id>.<16 hex nonce>`.
  static std::string makeName(std::string_view bus, std::uint64_t id);

  /// Removes names `shmbus.<bus>.*` in /dev/shm whose creator process is dead (or whose header is
  /// not ours). Returns how many were removed. Never touches a live creator's segments.
  static std::size_t removeStale(std::string_view bus);

  /// Counts the names `shmbus.<bus>.*` currently present (tests use it to prove no leak).
  static std::size_t countNames(std::string_view bus);

  /// The descriptor kept by createSealed (-1 when none: opened or mapped by another's, or closed).
  int fd() const noexcept { return fd_.get(); }
  /// Closes the kept descriptor (the mapping stays): once every mapper has its own.
  void closeFd() noexcept { fd_.reset(); }

  std::uint8_t* base() const noexcept { return static_cast<std::uint8_t*>(region_.get_address()); }
  std::size_t size() const noexcept { return region_.get_size(); }
  const std::string& name() const noexcept { return name_; }
  bool mapped() const noexcept { return region_.get_address() != nullptr; }

 private:
  std::string name_;
  boost::interprocess::mapped_region region_;
  Fd fd_;
};

}  // namespace shmbus::detail
