#include "spawn/spawn.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include "control/control_protocol.hpp"

extern char** environ;

namespace shmbus::detail {

Result<SpawnedProcess> spawnWindowProcess(const std::string& bus, const std::string& role,
                                          const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  auto pair = seqpacketPair();
  if (!pair) return pair.error();
  auto [mine, theirs] = std::move(*pair);
  // Everything the child needs is prepared before fork: only async-signal-safe calls after it.
  std::vector<std::string> envStrings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    if (kv.starts_with("SHMBUS_FD=") || kv.starts_with("SHMBUS_BUS=") || kv.starts_with("SHMBUS_ROLE=")) continue;
    envStrings.emplace_back(kv);
  }
  envStrings.push_back(fmt::format("{}={}", kEnvFd, theirs.get()));
  envStrings.push_back(fmt::format("{}={}", kEnvBus, bus));
  envStrings.push_back(fmt::format("{}={}", kEnvRole, role));
  for (const auto& e : env) envStrings.push_back(e);
  std::vector<char*> envp, args;
  for (auto& s : envStrings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argvCopy = argv;
  for (auto& s : argvCopy) args.push_back(s.data());
  args.push_back(nullptr);
  const int childFd = theirs.get();
  const pid_t pid = ::fork();
  if (pid < 0) return makeError(ErrorCode::SystemError, std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::fcntl(childFd, F_SETFD, 0);  // keep the pre-authenticated socket across exec
    ::execvpe(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  theirs.reset();
  ::fcntl(mine.get(), F_SETFL, O_NONBLOCK);
  return SpawnedProcess{pid, std::move(mine)};
}

void Reaper::reapExited() {
  children_.erase(std::remove_if(children_.begin(), children_.end(),
                                 [](pid_t p) { return ::waitpid(p, nullptr, WNOHANG) != 0; }),
                  children_.end());
}

int Reaper::closed(pid_t pid) {
  std::lock_guard lk(mu_);
  reapExited();
  if (::waitpid(pid, nullptr, WNOHANG) != 0) return -1;  // reaped (or not our child)
  // Still running (a window usually closes its connection before it exits): without a watch it
  // would stay a zombie until the next close or the supervisor's stop. A child that exits
  // between the waitpid above and pidfd_open still gets a readable pidfd.
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));  // close-on-exec by default
  if (!pidfd) {
    children_.push_back(pid);
    return -1;
  }
  const int fd = pidfd.get();
  watched_.push_back(Watched{pid, std::move(pidfd)});
  return fd;
}

void Reaper::exited(int pidfd) {
  std::lock_guard lk(mu_);
  auto it = std::find_if(watched_.begin(), watched_.end(), [&](const Watched& w) { return w.pidfd.get() == pidfd; });
  if (it == watched_.end()) return;
  const pid_t pid = it->pid;
  watched_.erase(it);  // closes the pidfd before the child goes: no zombie outlives its pidfd
  ::waitpid(pid, nullptr, WNOHANG);
}

std::vector<pid_t> Reaper::finish(int graceMs) {
  std::vector<Watched> left;
  {
    std::lock_guard lk(mu_);
    left.swap(watched_);
    for (pid_t pid : children_) left.push_back(Watched{pid, Fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)))});
    children_.clear();
  }
  std::vector<pid_t> killed;
  for (const Watched& p : left) {
    if (p.pidfd) {
      pollfd pfd{p.pidfd.get(), POLLIN, 0};
      if (::poll(&pfd, 1, graceMs) == 0) {
        ::kill(p.pid, SIGKILL);
        killed.push_back(p.pid);
      }
    }
    ::waitpid(p.pid, nullptr, 0);
  }
  return killed;
}

}  // namespace shmbus::detail
