#include "trace/trace_event.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string_view>

namespace shmbus {

const char* traceKindName(TraceKind kind) noexcept {
  switch (kind) {
    case TraceKind::Send: return "send";
    case TraceKind::Invoke: return "invoke";
    case TraceKind::Broadcast: return "broadcast";
    case TraceKind::Push: return "push";
    case TraceKind::Cancel: return "cancel";
    case TraceKind::WindowOpen: return "window-open";
    case TraceKind::WindowClose: return "window-close";
    case TraceKind::BadMessage: return "bad-message";
    case TraceKind::PortOpen: return "port-open";
    case TraceKind::PortClose: return "port-close";
  }
  return "unknown";
}

std::string detail::endpointName(std::string_view role, std::uint32_t id) {
  if (id == 0) return role.empty() ? std::string("main") : std::string(role);
  return fmt::format("{}#{}", role.empty() ? "window" : role, id);
}

void detail::jsonString(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", c);
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

using detail::jsonString;
namespace {
std::string endpoint(const std::string& role, std::uint32_t id) { return detail::endpointName(role, id); }
}  // namespace

std::string toText(const TraceEvent& e) {
  std::string s = fmt::format("#{} {}", e.seq, traceKindName(e.kind));
  switch (e.kind) {
    case TraceKind::WindowOpen:
    case TraceKind::WindowClose:
    case TraceKind::BadMessage:
      s += fmt::format(" {} pid {}", endpoint(e.sourceRole, e.sourceId), e.pid);
      if (!e.error.empty()) s += fmt::format(" ({})", e.error);
      return s;
    default: break;
  }
  if (e.kind == TraceKind::PortOpen || e.kind == TraceKind::PortClose) {
    s += fmt::format(" {}  {} ↔ {}  {}", e.channel, endpoint(e.sourceRole, e.sourceId),
                     endpoint(e.targetRole, e.targetId), e.status == ErrorCode::Ok ? "ok" : errorCodeName(e.status));
    if (e.portId != 0) s += fmt::format("  port {}", e.portId);
    if (!e.error.empty()) s += fmt::format("  {}", e.error);
    return s;
  }
  const std::string target = e.kind == TraceKind::Broadcast
                                 ? (e.targetRole.empty() ? std::string("all") : "role " + e.targetRole)
                                 : endpoint(e.targetRole, e.targetId);
  s += fmt::format(" {}  {} → {}", e.channel, endpoint(e.sourceRole, e.sourceId), target);
  if (e.kind == TraceKind::Invoke) s += fmt::format("  {:.3f} ms", e.durationMs());
  s += fmt::format("  {}", e.status == ErrorCode::Ok ? "ok" : errorCodeName(e.status));
  if (e.kind == TraceKind::Invoke && e.status == ErrorCode::Ok) {
    s += fmt::format("  ({} B → {} B)", e.requestBytes, e.replyBytes);
  } else {
    s += fmt::format("  ({} B)", e.requestBytes);
  }
  if (e.portId != 0) s += fmt::format("  port {}", e.portId);
  if (e.requestId != 0) s += fmt::format("  req {}", e.requestId);
  if (e.traceId != 0) s += fmt::format("  trace {}", e.traceId);
  if (!e.error.empty()) s += fmt::format("  {}", e.error);
  return s;
}

std::string toJson(const TraceEvent& e) {
  std::string s = fmt::format("{{\"seq\":{},\"kind\":\"{}\",\"channel\":", e.seq, traceKindName(e.kind));
  jsonString(s, e.channel);
  s += fmt::format(",\"channelId\":{},\"sourceId\":{},\"sourceRole\":", e.channelId, e.sourceId);
  jsonString(s, e.sourceRole);
  s += fmt::format(",\"targetId\":{},\"targetRole\":", e.targetId);
  jsonString(s, e.targetRole);
  s += fmt::format(",\"status\":\"{}\",\"error\":", e.status == ErrorCode::Ok ? "Ok" : errorCodeName(e.status));
  jsonString(s, e.error);
  s += fmt::format(
      ",\"requestId\":{},\"traceId\":{},\"startNs\":{},\"endNs\":{},\"durationMs\":{:.6f},\"requestBytes\":{},"
      "\"replyBytes\":{},\"pid\":{},\"portId\":{}}}",
      e.requestId, e.traceId, e.startNs, e.endNs, e.durationMs(), e.requestBytes, e.replyBytes, e.pid, e.portId);
  return s;
}

namespace detail {

namespace {
constexpr std::size_t kFixed = 72;
// The optional tail after the strings: the port id (8 bytes), written only when non-zero, so an
// event without a port has the layout readers before ports knew (and a reader before ports
// rejects one with a port: its string lengths do not add up to the body).
constexpr std::size_t kPortTail = 8;
}  // namespace

void encodeTraceEvent(const TraceEvent& e, std::vector<std::uint8_t>& out) {
  const std::string_view strs[4] = {
      std::string_view(e.channel).substr(0, kTraceChannelMax), std::string_view(e.sourceRole).substr(0, kTraceRoleMax),
      std::string_view(e.targetRole).substr(0, kTraceRoleMax), std::string_view(e.error).substr(0, kTraceErrorMax)};
  std::size_t total = kFixed;
  for (const auto& s : strs) total += s.size();
  out.resize(total + (e.portId != 0 ? kPortTail : 0));
  std::uint8_t* p = out.data();
  putField<std::uint16_t>(p + 0, static_cast<std::uint16_t>(e.kind));
  putField<std::uint16_t>(p + 2, static_cast<std::uint16_t>(e.status));
  for (int i = 0; i < 4; ++i) putField<std::uint16_t>(p + 4 + 2 * i, static_cast<std::uint16_t>(strs[i].size()));
  putField<std::uint32_t>(p + 12, e.sourceId);
  putField<std::uint32_t>(p + 16, e.targetId);
  putField<std::uint32_t>(p + 20, e.requestBytes);
  putField<std::uint32_t>(p + 24, e.replyBytes);
  putField<std::uint32_t>(p + 28, e.pid);
  putField<std::int64_t>(p + 32, e.startNs);
  putField<std::int64_t>(p + 40, e.endNs);
  putField<std::uint64_t>(p + 48, e.requestId);
  putField<std::uint64_t>(p + 56, e.traceId);
  putField<std::uint64_t>(p + 64, e.channelId);
  std::size_t off = kFixed;
  for (const auto& s : strs) {
    std::memcpy(p + off, s.data(), s.size());
    off += s.size();
  }
  if (e.portId != 0) putField<std::uint64_t>(p + off, e.portId);
}

Result<TraceEvent> decodeTraceEvent(std::span<const std::uint8_t> body, std::uint64_t seq) {
  if (body.size() < kFixed) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("trace event of {} bytes (at least {})", body.size(), kFixed));
  }
  const std::uint8_t* p = body.data();
  TraceEvent e;
  e.seq = seq;
  const auto kind = getField<std::uint16_t>(p);
  if (kind < static_cast<std::uint16_t>(TraceKind::Send) || kind > static_cast<std::uint16_t>(TraceKind::PortClose)) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("trace event of unknown kind {}", kind));
  }
  e.kind = static_cast<TraceKind>(kind);
  const auto status = getField<std::uint16_t>(p + 2);
  e.status = status > static_cast<std::uint16_t>(kLastErrorCode) ? ErrorCode::InvalidMessage : static_cast<ErrorCode>(status);
  std::size_t lens[4];
  std::size_t total = kFixed;
  constexpr std::size_t kBounds[4] = {kTraceChannelMax, kTraceRoleMax, kTraceRoleMax, kTraceErrorMax};
  constexpr const char* kNames[4] = {"channel", "source role", "target role", "error"};
  for (int i = 0; i < 4; ++i) {
    total += lens[i] = getField<std::uint16_t>(p + 4 + 2 * i);
    // The writer cuts every string to its bound: a longer one is not an event it wrote.
    if (lens[i] > kBounds[i]) {
      return makeError(ErrorCode::InvalidMessage,
                       fmt::format("trace event {} of {} bytes (at most {})", kNames[i], lens[i], kBounds[i]));
    }
  }
  const bool hasPort = total + kPortTail == body.size();
  if (total != body.size() && !hasPort) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("trace event strings of {} bytes in a body of {}",
                                                            total - kFixed, body.size()));
  }
  e.sourceId = getField<std::uint32_t>(p + 12);
  e.targetId = getField<std::uint32_t>(p + 16);
  e.requestBytes = getField<std::uint32_t>(p + 20);
  e.replyBytes = getField<std::uint32_t>(p + 24);
  e.pid = getField<std::uint32_t>(p + 28);
  e.startNs = getField<std::int64_t>(p + 32);
  e.endNs = getField<std::int64_t>(p + 40);
  e.requestId = getField<std::uint64_t>(p + 48);
  e.traceId = getField<std::uint64_t>(p + 56);
  e.channelId = getField<std::uint64_t>(p + 64);
  std::string* strs[4] = {&e.channel, &e.sourceRole, &e.targetRole, &e.error};
  std::size_t off = kFixed;
  for (int i = 0; i < 4; ++i) {
    strs[i]->assign(reinterpret_cast<const char*>(p + off), lens[i]);
    off += lens[i];
  }
  if (hasPort) {
    e.portId = getField<std::uint64_t>(p + off);
    if (e.portId == 0) return makeError(ErrorCode::InvalidMessage, "trace event with a port tail of port 0");
  }
  return e;
}

}  // namespace detail
}  // namespace shmbus
