// Starting window processes and reaping them (docs/architecture.md, "Spawn").
//
// spawn() forks and execs a program with one end of a pre-authenticated socket pair in
// $SHMBUS_FD (plus $SHMBUS_BUS and $SHMBUS_ROLE): the supervisor gave the role, so it cannot be
// forged. A child whose connection closed is reaped as soon as it exits (its pidfd waits in the
// router's epoll set), never by blocking; at shutdown each gets a grace period to exit after its
// socket hung up before it is killed.
#pragma once

#include <sys/types.h>

#include <mutex>
#include <string>
#include <vector>

#include "control/socket.hpp"
#include "shmbus/error.hpp"

namespace shmbus::detail {

/// A started child: its pid and the supervisor's end of its socket.
struct SpawnedProcess {
  pid_t pid = 0;
  Fd sock;
};

/// Forks and execs `argv` (argv[0] looked up in PATH) with the current environment minus any
/// SHMBUS_* variables, plus SHMBUS_FD/BUS/ROLE and `env` ("K=V"). Only async-signal-safe calls
/// run between fork and exec. Errors: SystemError (socketpair, fork). A program that cannot be
/// executed exits with status 127 (its socket then hangs up).
Result<SpawnedProcess> spawnWindowProcess(const std::string& bus, const std::string& role,
                                          const std::vector<std::string>& argv, const std::vector<std::string>& env);

/// The children of one supervisor that have closed and still need reaping.
/// Thread contract: every method is thread-safe.
class Reaper {
 public:
  /// `pid` closed its connection: reaps it if it has exited already. Otherwise returns a pidfd
  /// that becomes readable when it exits, for the caller's epoll set (the Reaper owns it; pass it
  /// to exited() then). -1 when there is nothing to watch: reaped, or no pidfd (then it is reaped
  /// at a later close or by finish()).
  int closed(pid_t pid);
  /// The pidfd `pidfd` returned by closed() became readable: closes it, then reaps its child. The
  /// caller removes it from its epoll set first. An unknown `pidfd` is ignored.
  void exited(int pidfd);
  /// Waits up to `graceMs` for each remaining child to exit, then kills it (SIGKILL) and reaps it.
  /// Returns the pids it had to kill.
  std::vector<pid_t> finish(int graceMs);

 private:
  struct Watched {
    pid_t pid = 0;
    Fd pidfd;
  };
  void reapExited();  // under mu_
  std::mutex mu_;
  std::vector<pid_t> children_;   // closed, not exited yet, no pidfd to watch
  std::vector<Watched> watched_;  // closed, not exited yet, their pidfds watched by the caller
};

}  // namespace shmbus::detail
