// Shared by the dashboard demo's supervisor and windows: channel names and small helpers.
#pragma once

#include <unistd.h>

#include <chrono>
#include <climits>
#include <string>

#include "shmbus/shmbus.hpp"

namespace demo {

/// The directory of the running executable (the window program and the data set live beside it).
inline std::string exeDir() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string p(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  return p.substr(0, p.rfind('/'));
}

/// Wall-clock ms since the epoch (for timestamps in replies).
inline std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace demo
