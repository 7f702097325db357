// libshmbus — the rules every name and timeout a caller gives is checked against (one function,
// one error code: docs/architecture.md §3). The library checks them itself wherever a name or a
// timeout enters (Supervisor::create, spawn, Window::connect, the role of a Target, the channel
// of a call); an application may check its own input the same way beforehand.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shmbus/error.hpp"

namespace shmbus {

/// What a name names; each kind has its own rule (validateName).
enum class NameKind : std::uint8_t {
  Bus,      ///< 1..64 characters of [A-Za-z0-9_-] (a bus name is part of socket and segment names)
  Role,     ///< 1..64 characters of [A-Za-z0-9_.-], not starting with '.'; "main" in another letter
            ///< case ("MAIN", "Main") is reserved (it would pass for the main process's role)
  Channel,  ///< 1..128 characters of [A-Za-z0-9_.:-], not starting with '.'
};

/// Longest name of each kind, in characters (bytes).
inline constexpr std::size_t kMaxBusNameChars = 64;
inline constexpr std::size_t kMaxRoleNameChars = 64;
inline constexpr std::size_t kMaxChannelNameChars = 128;

/// Checks `name` against the rule of `kind` (see NameKind). So '/', NUL, spaces, control and
/// non-ASCII characters, the empty name, an overlong one, "." and ".." never pass.
/// Errors: InvalidArgument whose message names the name (non-printable bytes as \xNN, a long one
/// shortened) and states the rule, e.g. "role 'a/b': role names are 1..64 characters of
/// [A-Za-z0-9_.-], not starting with '.'". Thread contract: pure; any thread.
Result<void> validateName(NameKind kind, std::string_view name);

/// Longest timeout a call or a wait may ask for: 30 days (it fits the wire's 32-bit millisecond
/// field). A longer one (up to milliseconds::max()) is clamped to it, never overflowed.
inline constexpr std::chrono::milliseconds kMaxTimeout{30LL * 24 * 3600 * 1000};

}  // namespace shmbus
