// Shared memory segments: Boost.Interprocess `shared_memory_object` + `mapped_region`.
//
// Naming: `shmbus.<bus>.<id>.<nonce>` (docs/architecture.md §4). The supervisor creates a segment with mode
// 0600, the one window it is for opens and maps it, and the name is unlinked as soon as it is
// mapped, so a crash leaves no name behind. Every segment starts with a SegmentHeader naming the
// creating process, so start-up can remove names left by dead creators (removeStale).
#pragma once

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

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

/// A mapped shared memory segment. Move-only; unmaps on destruction (never unlinks: names are
/// unlinked explicitly, as early as possible).
/// Thread contract: the object is not thread-safe; the mapped memory is shared by design.
class Segment {
 public:
  Segment() = default;

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

  std::uint8_t* base() const noexcept { return static_cast<std::uint8_t*>(region_.get_address()); }
  std::size_t size() const noexcept { return region_.get_size(); }
  const std::string& name() const noexcept { return name_; }
  bool mapped() const noexcept { return region_.get_address() != nullptr; }

 private:
  std::string name_;
  boost::interprocess::mapped_region region_;
};

}  // namespace shmbus::detail
