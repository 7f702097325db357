// libshmbus — naming channels and call targets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shmbus {

/// 64-bit FNV-1a of a name: the wire id of an untyped channel or of a role (names never travel
/// per message; docs/architecture.md §1). Never 0.
constexpr std::uint64_t nameId(std::string_view name) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h == 0 ? 1 : h;
}

/// Channel id of method `ordinal` of the Cap'n Proto interface `interfaceId` (typed contracts;
/// splitmix64 finaliser over the pair, so ids of one interface do not collide). Never 0.
constexpr std::uint64_t methodChannelId(std::uint64_t interfaceId, std::uint16_t ordinal) noexcept {
  std::uint64_t x = interfaceId ^ (0x9e3779b97f4a7c15ull * (static_cast<std::uint64_t>(ordinal) + 1));
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  return x == 0 ? 1 : x;
}

/// A channel: its wire id, its name (for errors, stats, traces) and, for typed contracts, the
/// fingerprint of its payload schema (0 = untyped: no check). Implicit from a name.
/// A name must follow NameKind::Channel (shmbus/validate.hpp: 1..128 of [A-Za-z0-9_.:-], not
/// starting with '.'); sends and calls on a channel whose name breaks it fail with InvalidArgument.
/// The name must outlive the call it is passed to (string literals and generated constants do).
struct Channel {
  std::uint64_t id = 0;         ///< wire id: nameId(name), or methodChannelId() for typed contracts
  std::string_view name;        ///< for errors, stats and traces (not sent per message)
  std::uint64_t schemaId = 0;       ///< fingerprint of the request/message struct; 0 = unchecked
  std::uint64_t replySchemaId = 0;  ///< fingerprint of the reply struct; 0 = unchecked

  /// The untyped channel named `n` (implicit: `win.send("set-title", ...)`).
  constexpr Channel(std::string_view n) noexcept : id(nameId(n)), name(n) {}  // NOLINT: implicit by design
  /// The untyped channel named `n`.
  constexpr Channel(const char* n) noexcept : Channel(std::string_view(n)) {}  // NOLINT
  /// The untyped channel named `n` (the string must outlive the call).
  constexpr Channel(const std::string& n) noexcept : Channel(std::string_view(n)) {}  // NOLINT
  /// A channel with an explicit wire id and fingerprints (what capnpc-shmbus generates).
  constexpr Channel(std::uint64_t channelId, std::string_view n, std::uint64_t schema = 0,
                    std::uint64_t replySchema = 0) noexcept
      : id(channelId), name(n), schemaId(schema), replySchemaId(replySchema) {}
};

/// Who receives a push or a call: the main process, a role (the first registered live window with
/// that role answers), or a window id.
struct Target {
  std::uint32_t windowId = 0;  ///< 0 with an empty role = the main process
  std::string role;            ///< the role (NameKind::Role: calls naming a bad one fail with
                               ///< InvalidArgument); empty with windowId 0 = the main process

  Target() = default;  ///< the main process
  /// The first registered live window with role `r` (implicit: `sup.send("editor", ...)`).
  Target(std::string_view r) : role(r) {}  // NOLINT: implicit by design
  /// The first registered live window with role `r`.
  Target(const char* r) : role(r) {}        // NOLINT
  /// The first registered live window with role `r`.
  Target(const std::string& r) : role(r) {}  // NOLINT: a role held in a string (string → string_view → Target is two conversions)
  /// The window with id `id` (WindowInfo::id).
  Target(std::uint32_t id) : windowId(id) {}  // NOLINT
  /// The main process (the supervisor's handlers).
  static Target main() { return Target(); }
  /// True for the main process.
  bool isMain() const noexcept { return windowId == 0 && role.empty(); }
  /// "role 'dashboard'", "window 3" or "main", for messages.
  std::string describe() const;
};

}  // namespace shmbus
