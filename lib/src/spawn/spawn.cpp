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

void Reaper::closed(pid_t pid) {
  std::lock_guard lk(mu_);
  children_.push_back(pid);
  reapExited();
}

std::vector<pid_t> Reaper::finish(int graceMs) {
  std::vector<pid_t> pids;
  {
    std::lock_guard lk(mu_);
    pids.swap(children_);
  }
  std::vector<pid_t> killed;
  for (pid_t pid : pids) {
    Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (pidfd) {
      pollfd p{pidfd.get(), POLLIN, 0};
      if (::poll(&p, 1, graceMs) == 0) {
        ::kill(pid, SIGKILL);
        killed.push_back(pid);
      }
    }
    ::waitpid(pid, nullptr, 0);
  }
  return killed;
}

}  // namespace shmbus::detail
