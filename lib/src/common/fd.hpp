// An owned file descriptor: the one RAII type every module uses for descriptors (sockets,
// eventfds, memfds, pidfds).
#pragma once

#include <unistd.h>

namespace shmbus::detail {

/// An owned file descriptor (closes on destruction). Move-only.
/// Thread contract: an object is not thread-safe; distinct objects are independent.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  /// Gives up ownership: returns the descriptor (-1 if none) and leaves this object empty.
  int release() noexcept {
    const int f = fd_;
    fd_ = -1;
    return f;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// Closes the descriptor held (if any) and takes `fd` (-1: none).
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace shmbus::detail
