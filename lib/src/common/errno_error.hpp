// The SystemError of a system call that just failed, one spelling for every module.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "shmbus/error.hpp"

namespace shmbus::detail {

/// A SystemError whose message is "`what`: <strerror(errno)>", e.g. "memfd_create 'x': Too many
/// open files". Reads errno: call it right after the failed call, before anything that may set
/// errno again. Thread-safe (errno is per thread; glibc's strerror returns a per-thread buffer
/// for unknown codes only).
inline Error errnoError(std::string_view what) {
  return makeError(ErrorCode::SystemError, fmt::format("{}: {}", what, std::strerror(errno)));
}

}  // namespace shmbus::detail
