// Router internals shared by its source files (router.cpp, router_frames.cpp, router_main.cpp).
#pragma once

#include <fmt/format.h>

#include <optional>
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

template <typename Copy>
Result<std::optional<BlobDescriptor>> Router::blobIfLarge(Conn& t, FrameHeader& h, std::size_t bytes, Copy&& copy) {
  // What one record of the ring would hold: the record's and the frame's headers, the message.
  if (kRecordHeaderBytes + sizeof(FrameHeader) + bytes <= t.inbox.geometry().maxRecord) {
    return std::optional<BlobDescriptor>();
  }
  if (!t.blobOut.valid()) {
    return windowBlobError(t, makeError(ErrorCode::TooLarge,
                                        fmt::format("message of {} bytes is larger than the largest record of the "
                                                    "inbox ring of {} ({} bytes)",
                                                    bytes, t.describe(), t.inbox.geometry().maxRecord)));
  }
  Result<BlobDescriptor> d = copy();
  if (!d) return windowBlobError(t, d.error());
  h.flags |= kFlagBlob;
  return std::optional<BlobDescriptor>(*d);
}

template <typename W, typename H>
Result<void> Router::writeOutcome(Conn& caller, W&& write, H&& held) {
  if (caller.held.empty()) {
    auto r = writeToWindow(caller, write);
    if (r || r.code() != ErrorCode::Full) return r;
  }
  HeldFrame f = held();
  const std::size_t bytes = sizeof(FrameHeader) + f.payload.size();
  if (caller.heldBytes + bytes > caller.inbox.geometry().capacity) {
    return makeError(ErrorCode::Full, fmt::format("the inbox of {} is full, and so is what the supervisor holds for it",
                                                  caller.describe()));
  }
  if (caller.held.empty()) ++holding_;
  caller.heldBytes += bytes;
  caller.held.push_back(std::move(f));
  return {};
}

template <typename What>
std::optional<Error> Router::denied(PolicyAction a, std::uint64_t channel, std::uint64_t roleId, std::string_view role,
                                    std::uint32_t callerId, What&& what) {
  const auto v = policy_.check(a, channel, roleId, [&] { return policyName(channel); });
  if (v.decision == Decision::Allow) return std::nullopt;
  ++counters_.policyDenials;
  std::string by = "the default";
  if (v.rule >= 0) {
    by = fmt::format("the rule for '{}'", policy_.policy().channels[static_cast<std::size_t>(v.rule)].pattern);
    if (v.line > 0) by += fmt::format(" at line {}", v.line);
  }
  Error e = makeError(ErrorCode::Denied, fmt::format("{}: denied by policy (role '{}' may not {} '{}': {})", what(),
                                                     role, policyActionName(a),
                                                     registry_.nameOf(channel, callerId), by));
  log_(LogLevel::Warn, "{}", e.message);
  return e;
}

}  // namespace shmbus::detail
