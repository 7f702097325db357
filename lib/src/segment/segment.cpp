#include "segment/segment.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/permissions.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "common/errno_error.hpp"

namespace bip = boost::interprocess;

namespace shmbus::detail {

namespace {
void writeHeader(std::uint8_t* base, std::size_t bytes) {
  auto* h = reinterpret_cast<SegmentHeader*>(base);
  h->magic = kSegmentMagic;
  h->version = kSegmentVersion;
  h->creatorPid = static_cast<std::int32_t>(::getpid());
  h->totalBytes = bytes;
}
}  // namespace

Result<Fd> sealedMemfd(const std::string& name, std::size_t bytes) {
  Fd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return errnoError(fmt::format("memfd_create '{}'", name));
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return errnoError(fmt::format("cannot size segment '{}' to {} bytes", name, bytes));
  }
  if (::fcntl(fd.get(), F_ADD_SEALS, kSegmentSeals) != 0) return errnoError(fmt::format("sealing segment '{}'", name));
  return fd;
}

Result<Segment> Segment::createSealed(const std::string& name, std::size_t bytes) {
  SHMBUS_REQUIRE(bytes >= sizeof(SegmentHeader), "segment smaller than its header");
  auto fd = sealedMemfd(name, bytes);
  if (!fd) return fd.error();
  auto s = map(fd->get(), name);
  if (!s) return s.error();
  s->fd_ = std::move(*fd);
  writeHeader(s->base(), bytes);
  return s;
}

Result<Segment> Segment::create(const std::string& name, std::size_t bytes) {
  SHMBUS_REQUIRE(bytes >= sizeof(SegmentHeader), "segment smaller than its header");
  bool created = false;
  try {
    bip::permissions perm(0600);
    bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write, perm);
    created = true;
    shm.truncate(static_cast<bip::offset_t>(bytes));
    Segment s;
    s.name_ = name;
    s.region_ = bip::mapped_region(shm, bip::read_write, 0, bytes);
    writeHeader(s.base(), bytes);
    return s;
  } catch (const bip::interprocess_exception& e) {
    // Only a name this call created: when it already existed (EEXIST) it is someone else's segment.
    if (created) unlink(name);
    return makeError(ErrorCode::SystemError, fmt::format("cannot create segment '{}' ({} bytes): {}", name, bytes, e.what()));
  }
}

Result<Segment> Segment::open(const std::string& name) {
  try {
    bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_write);
    bip::offset_t size = 0;
    if (!shm.get_size(size) || size < static_cast<bip::offset_t>(sizeof(SegmentHeader))) {
      return makeError(ErrorCode::SystemError, fmt::format("segment '{}' is too small ({} bytes)", name, size));
    }
    Segment s;
    s.name_ = name;
    s.region_ = bip::mapped_region(shm, bip::read_write, 0, static_cast<std::size_t>(size));
    return s;
  } catch (const bip::interprocess_exception& e) {
    return makeError(ErrorCode::SystemError, fmt::format("cannot open segment '{}': {}", name, e.what()));
  }
}

namespace {
/// A descriptor as Boost.Interprocess's MemoryMappable (what a mapped_region maps).
struct FdMapping {
  int fd;
  bip::mapping_handle_t get_mapping_handle() const noexcept { return bip::ipcdetail::mapping_handle_from_file_handle(fd); }
};
}  // namespace

Result<Segment> Segment::map(int fd, const std::string& name) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return errnoError(fmt::format("cannot stat segment '{}'", name));
  }
  if (st.st_size < static_cast<off_t>(sizeof(SegmentHeader))) {
    return makeError(ErrorCode::SystemError, fmt::format("segment '{}' is too small ({} bytes)", name, st.st_size));
  }
  try {
    Segment s;
    s.name_ = name;
    s.region_ = bip::mapped_region(FdMapping{fd}, bip::read_write, 0, static_cast<std::size_t>(st.st_size));
    return s;
  } catch (const bip::interprocess_exception& e) {
    return makeError(ErrorCode::SystemError, fmt::format("cannot map segment '{}': {}", name, e.what()));
  }
}

bool Segment::unlink(const std::string& name) noexcept {
  return bip::shared_memory_object::remove(name.c_str());
}

std::string Segment::makeName(std::string_view bus, std::uint64_t id) {
  // Reseeded in a forked child: it would otherwise inherit the generator and repeat the parent's
  // nonces (and a create of a repeated name fails with EEXIST).
  static thread_local std::mt19937_64 rng;
  static thread_local pid_t seededFor = 0;
  if (const pid_t pid = ::getpid(); pid != seededFor) {
    rng.seed(std::random_device{}() ^ (static_cast<std::uint64_t>(pid) << 32));
    seededFor = pid;
  }
  return fmt::format("shmbus.{}.{}.{:016x}", bus, id, rng());
}

namespace {
template <typename F>
void forEachName(std::string_view bus, F&& f) {
  const std::string prefix = fmt::format("shmbus.{}.", bus);
  DIR* d = ::opendir("/dev/shm");
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) f(std::string(e->d_name));
  }
  ::closedir(d);
}
}  // namespace

std::size_t Segment::removeStale(std::string_view bus) {
  std::size_t removed = 0;
  forEachName(bus, [&](const std::string& name) {
    bool stale = true;
    const int fd = ::shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) return;
    SegmentHeader h{};
    if (::pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) && h.magic == kSegmentMagic && h.creatorPid > 0) {
      stale = ::kill(h.creatorPid, 0) != 0 && errno == ESRCH;
    }
    ::close(fd);
    if (stale && unlink(name)) ++removed;
  });
  return removed;
}

std::size_t Segment::countNames(std::string_view bus) {
  std::size_t n = 0;
  forEachName(bus, [&](const std::string&) { ++n; });
  return n;
}

}  // namespace shmbus::detail
