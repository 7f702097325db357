#include "control/bus_lock.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "common/errno_error.hpp"

namespace shmbus::detail {

namespace {

/// Lock files this process holds, with the pid that took each: a record lock would not stop a
/// second acquire in the same process (see the header). An entry with another pid was inherited
/// by fork from a parent and says nothing about this process.
struct HeldLocks {
  std::mutex mu;
  std::map<std::string, pid_t> byPath;
};
HeldLocks& held() {
  static HeldLocks h;
  return h;
}

Error alreadyRunning(const std::string& bus, pid_t pid, const std::string& socketPath) {
  return makeError(ErrorCode::Denied,
                   fmt::format("bus '{}' already has a supervisor: {} listens on {}", bus,
                               pid > 0 ? fmt::format("pid {}", pid) : std::string("a process (backlog full)"),
                               socketPath));
}

struct flock wholeFile(short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;  // to the end, however long the file grows
  return fl;
}

}  // namespace

BusLock::BusLock(BusLock&& o) noexcept : path_(std::move(o.path_)), fd_(std::move(o.fd_)) {}

BusLock& BusLock::operator=(BusLock&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    fd_ = std::move(o.fd_);
  }
  return *this;
}

BusLock::~BusLock() { release(); }

Result<BusLock> BusLock::acquire(const std::string& bus, const std::string& socketPath) {
  const std::string path = socketPath + ".lock";
  std::unique_lock table(held().mu);
  if (auto it = held().byPath.find(path); it != held().byPath.end() && it->second == ::getpid()) {
    return alreadyRunning(bus, ::getpid(), socketPath);
  }
  // A few rounds at most: each retry means the holder released (and removed the file) between
  // our open and our lock, or between a refusal and F_GETLK.
  for (int round = 0; round < 16; ++round) {
    Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) return errnoError("open " + path);
    struct flock fl = wholeFile(F_WRLCK);
    if (::fcntl(fd.get(), F_SETLK, &fl) != 0) {
      if (errno != EACCES && errno != EAGAIN) return errnoError("lock " + path);
      struct flock who = wholeFile(F_WRLCK);
      if (::fcntl(fd.get(), F_GETLK, &who) != 0) return errnoError("F_GETLK " + path);
      if (who.l_type == F_UNLCK) continue;  // released meanwhile
      return alreadyRunning(bus, who.l_pid, socketPath);
    }
    struct stat mine {}, now {};
    if (::fstat(fd.get(), &mine) != 0) return errnoError("fstat " + path);
    if (::stat(path.c_str(), &now) != 0 || mine.st_ino != now.st_ino || mine.st_dev != now.st_dev) continue;
    // The pid in the file is for people (`cat`); the refusal message takes it from F_GETLK.
    const std::string pidText = fmt::format("{}\n", ::getpid());
    if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pidText.data(), pidText.size(), 0) < 0) {
      return errnoError("write " + path);
    }
    held().byPath[path] = ::getpid();
    BusLock lock;
    lock.path_ = path;
    lock.fd_ = std::move(fd);
    return lock;
  }
  return makeError(ErrorCode::SystemError, fmt::format("cannot lock {}: it keeps being replaced", path));
}

void BusLock::release() noexcept {
  if (!fd_) return;
  {
    std::lock_guard table(held().mu);
    held().byPath.erase(path_);
  }
  // Removed while still locked: a starter that opened it meanwhile sees the inode change.
  ::unlink(path_.c_str());
  fd_.reset();
}

Result<void> removeStaleSocket(const std::string& bus, const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return errnoError("stat " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return makeError(ErrorCode::SystemError, fmt::format("{} exists and is not a socket: not replacing it", path));
  }
  // Nobody holds the lock, but a live supervisor whose lock file was removed still listens here.
  // It sees a connection that hangs up before its Hello; its windows see nothing.
  auto listener = probeListener(path);
  if (!listener) return listener.error();
  if (*listener) return alreadyRunning(bus, (*listener)->pid, path);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return errnoError("unlink stale socket " + path);
  return {};
}

}  // namespace shmbus::detail
