// Trace events in the trace ring: the binary form of shmbus::TraceEvent (shmbus/inspect.hpp) as
// one record body (docs/architecture.md §14).
//
// Layout, little endian: a fixed 72-byte part, then the four strings back to back (channel,
// source role, target role, error), each cut to its bound, then, only for an event with a port
// (TraceEvent::portId != 0), the port id (8 bytes). A body is exactly 72 + the strings, or that
// + 8: anything else is malformed. The record header's sequence number
// is the event's `seq`; it is not repeated in the body.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/inspect.hpp"

namespace shmbus::detail {

/// Appends a JSON string literal of `s` to `out` (RFC 8259 §7: quote, backslash and control
/// characters escaped; other bytes as they are). The library's JSON (toJson, ChromeTrace) is
/// flat objects of known fields written with fmt, so this is all the escaping it needs.
void jsonString(std::string& out, std::string_view s);

/// Stores `v` at `at` (any alignment, host order: little endian on every target of the library),
/// for the trace's record bodies (events, payload records).
template <typename T>
void putField(std::uint8_t* at, T v) {
  std::memcpy(at, &v, sizeof v);
}
/// Loads a T stored by putField at `at` (any alignment).
template <typename T>
T getField(const std::uint8_t* at) {
  T v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

/// How events name one end: "<role>#<id>" for a window, the role ("main") for id 0.
std::string endpointName(std::string_view role, std::uint32_t id);

/// Bounds of the strings of an encoded event, bytes (longer ones are cut).
inline constexpr std::size_t kTraceChannelMax = 256;
inline constexpr std::size_t kTraceRoleMax = 64;
inline constexpr std::size_t kTraceErrorMax = 1024;

/// Encodes `e` (without its seq) into `out` (cleared first). At most 72 + 256 + 2·64 + 1024 + 8
/// bytes.
void encodeTraceEvent(const TraceEvent& e, std::vector<std::uint8_t>& out);

/// Decodes a record body written by encodeTraceEvent; `seq` is the record's sequence number.
/// Errors: InvalidMessage (short body, a string longer than its bound, string lengths that do not
/// add up to it with or without the port tail, a port tail of 0, an unknown kind). What it accepts,
/// encodeTraceEvent writes back unchanged (the trace fuzz harness checks it).
Result<TraceEvent> decodeTraceEvent(std::span<const std::uint8_t> body, std::uint64_t seq);

}  // namespace shmbus::detail
