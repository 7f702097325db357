// Helpers for tests that run a supervisor and windows in real processes.
#pragma once

#include <capnp/message.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <string>

#include "bus.capnp.h"
#include "shmbus/shmbus.hpp"
#include "test.capnp.h"

namespace shmbus::test {

/// A bus name unique to this process and call (tests run in parallel).
inline std::string uniqueBus(const char* what) {
  static std::atomic<int> n{0};
  return std::string("t") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

/// Forks a child that runs `fn` and exits with its return value (0 = success). The child never
/// returns into doctest. Returns the child's pid.
inline pid_t forkChild(const std::function<int()>& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 99;
    try {
      rc = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d threw: %s\n", ::getpid(), e.what());
      rc = 98;
    }
    std::fflush(stderr);
    ::_exit(rc);
  }
  return pid;
}

/// Waits for a child; returns its exit code, or 128 + signal.
inline int waitChild(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/// Connects a window to `bus` with `role`, retrying while the supervisor is not listening yet
/// (the socket appears when Supervisor::create returns; children may start first).
inline std::unique_ptr<Window> connectWindow(const std::string& bus, const std::string& role,
                                             WindowOptions base = {}) {
  base.bus = bus;
  base.role = role;
  for (int i = 0; i < 2000; ++i) {
    auto w = Window::connect(base);
    if (w) return std::move(*w);
    if (w.code() != ErrorCode::BusClosed) {
      std::fprintf(stderr, "connect %s as %s: %s\n", bus.c_str(), role.c_str(), w.error().toString().c_str());
      return nullptr;
    }
    ::usleep(1000);  // allowed: polling for the supervisor's socket to appear (no event to wait on)
  }
  return nullptr;
}

/// Builds a test.capnp Text payload.
inline BuildFn text(std::string s) {
  return [s = std::move(s)](Builder& b) { b.initRoot<shmbus::test::TestMessage>().setText(s); };
}

inline std::string textOf(const Message& m) {
  return m.root<shmbus::test::TestMessage>().getText();
}

}  // namespace shmbus::test
