// Router internals shared by its source files (router.cpp, router_frames.cpp, router_main.cpp).
#pragma once

#include <fmt/format.h>

#include <string_view>

#include "router/router.hpp"

namespace shmbus::detail {

/// The main process's role; only spawn() may give it to a window.
inline constexpr std::string_view kMainRole = "main";

/// A frame header of `kind` on `channel`, every other field zero.
inline FrameHeader frameHeader(FrameKind kind, std::uint64_t channel) {
  FrameHeader h{};
  h.kind = static_cast<std::uint16_t>(kind);
  h.channel = channel;
  return h;
}

/// Runs `write` against `target`'s inbox; a corrupt inbox dooms the target (its own fault) and
/// the write fails with TargetGone; a full one with Full naming the target.
template <typename W>
Result<void> Router::writeToWindow(Conn& target, W&& write) {
  auto r = write();
  if (!r && r.code() == ErrorCode::Corrupt) {
    doom(target, "inbox corrupt: " + r.error().message, true);
    return makeError(ErrorCode::TargetGone, fmt::format("{} was disconnected: {}", target.describe(), r.error().message));
  }
  if (!r && r.code() == ErrorCode::Full) {
    return makeError(ErrorCode::Full, fmt::format("the inbox of {} is full", target.describe()));
  }
  return r;
}

}  // namespace shmbus::detail
