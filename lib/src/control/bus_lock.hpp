// One supervisor per bus (docs/architecture.md §5). A supervisor owns its bus by holding a POSIX
// record lock (fcntl F_SETLK, whole file) on `<socket path>.lock` for its whole life:
// - the kernel drops the lock when its process dies, however it dies (SIGKILL included), so a
//   socket left behind is recognisably stale: whoever gets the lock may remove and re-bind it;
// - two supervisors started at the same moment cannot both get it (the kernel arbitrates);
// - F_GETLK names the holder's pid for the refusal message;
// - unlike flock(2) and OFD locks, a record lock belongs to the process, not the open file: a
//   child forked without exec (tests, helpers) inherits the descriptor but not the lock, so the
//   lock dies with the supervisor's process, not with its longest-lived child.
// A record lock is also dropped when its process closes *any* descriptor of the file, so a
// process opens the lock file of a bus at most once: a second Supervisor of the same bus in the
// same process is refused from a process-local table before the file is opened again.
//
// The lock file is removed by its holder on release (while still holding the lock). A starter
// that opened the file just before that then locks a removed inode, so after locking it checks
// that the path still names the inode it locked, and starts over when it does not.
#pragma once

#include <string>

#include "control/socket.hpp"
#include "shmbus/error.hpp"

namespace shmbus::detail {

/// Exclusive ownership of one bus socket path. Move-only; releases on destruction.
/// Thread contract: acquire() and release() may run on any thread; one BusLock is not shared.
class BusLock {
 public:
  BusLock() = default;                         ///< holds nothing
  BusLock(BusLock&& o) noexcept;               ///< takes over `o`'s lock; `o` holds nothing after
  BusLock& operator=(BusLock&& o) noexcept;    ///< releases this lock, then takes over `o`'s
  BusLock(const BusLock&) = delete;
  BusLock& operator=(const BusLock&) = delete;
  ~BusLock();                                  ///< release()

  /// Takes the lock of `socketPath` (the lock file is `socketPath` + ".lock", mode 0600).
  /// Errors: Denied when another live supervisor holds it; the message names `bus`, the holder's
  /// pid and the socket ("bus 'x' already has a supervisor: pid 123 listens on /run/.../x.sock").
  /// SystemError when the lock file cannot be opened or locked.
  static Result<BusLock> acquire(const std::string& bus, const std::string& socketPath);

  /// Removes the lock file and drops the lock (remove the socket first: a starter that gets the
  /// lock next re-binds it). Idempotent.
  void release() noexcept;

  /// True while the lock is held.
  explicit operator bool() const noexcept { return static_cast<bool>(fd_); }

  /// The lock file's path.
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  Fd fd_;
};

/// Removes a stale socket file at `path` left by a supervisor that died (call only while holding
/// the path's BusLock). A missing file is fine; something that is not a socket is left alone. A
/// socket that still answers is left alone too: its lock file was removed under a live
/// supervisor (a cleaner of /tmp, a person), which keeps its bus.
/// Errors: Denied when the socket answers (the message names `bus`, the listener's pid from
/// SO_PEERCRED and the socket, as BusLock::acquire's); SystemError (not a socket, or unlink failed).
Result<void> removeStaleSocket(const std::string& bus, const std::string& path);

}  // namespace shmbus::detail
