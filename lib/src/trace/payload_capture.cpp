#include "trace/payload_capture.hpp"

#include <fnmatch.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "message/message.hpp"
#include "trace/trace_event.hpp"

namespace shmbus::detail {

namespace {
/// Appends up to `room` bytes of [data, data + n) to `out`; returns the bytes that did not fit.
std::size_t appendCut(std::vector<std::uint8_t>& out, const void* data, std::size_t n, std::size_t& room) {
  const std::size_t take = std::min(n, room);
  const auto* p = static_cast<const std::uint8_t*>(data);
  out.insert(out.end(), p, p + take);
  room -= take;
  return n - take;
}
}  // namespace

Result<void> encodePayloadRecord(PayloadPart part, std::uint32_t sourceId, std::uint64_t key, std::uint64_t channelId,
                                 const PayloadView& p, std::size_t maxBytes, std::vector<std::uint8_t>& out) {
  std::array<kj::ArrayPtr<const capnp::word>, kMaxSegments> segs{};
  std::size_t count = 0;
  if (p.windowForm != nullptr) {
    // The window's table, parsed (and so bounded by windowBytes) like any read of its ring.
    InPlaceMessage m;
    if (auto r = m.parse(p.windowForm, p.windowBytes); !r) return r.error();
    for (auto s : m.segments()) segs[count++] = s;
  } else {
    if (p.segments.size() > kMaxSegments) {
      return makeError(ErrorCode::InvalidMessage, fmt::format("a message of {} segments", p.segments.size()));
    }
    for (auto s : p.segments) segs[count++] = s;
  }
  // Cap'n Proto's standard framing: (count - 1), each segment's words, padded to a word.
  std::array<std::uint32_t, kMaxSegments + 2> table{};
  const std::size_t tableWords = count / 2 + 1;  // (1 + count) u32s rounded up to whole words
  table[0] = count == 0 ? 0 : static_cast<std::uint32_t>(count - 1);
  std::size_t full = count == 0 ? 0 : tableWords * sizeof(capnp::word);
  for (std::size_t i = 0; i < count; ++i) {
    table[i + 1] = static_cast<std::uint32_t>(segs[i].size());
    full += segs[i].size() * sizeof(capnp::word);
  }
  out.clear();
  out.resize(kPayloadRecordHeader);
  std::size_t room = maxBytes;
  if (count != 0) appendCut(out, table.data(), tableWords * sizeof(capnp::word), room);
  for (std::size_t i = 0; i < count && room > 0; ++i) {
    appendCut(out, segs[i].begin(), segs[i].size() * sizeof(capnp::word), room);
  }
  std::uint8_t* h = out.data();
  putField<std::uint8_t>(h + 0, static_cast<std::uint8_t>(part));
  putField<std::uint8_t>(h + 1, 0);
  putField<std::uint16_t>(h + 2, 0);
  putField<std::uint32_t>(h + 4, static_cast<std::uint32_t>(std::min<std::size_t>(full, UINT32_MAX)));
  putField<std::uint32_t>(h + 8, sourceId);
  putField<std::uint32_t>(h + 12, static_cast<std::uint32_t>(out.size() - kPayloadRecordHeader));
  putField<std::uint64_t>(h + 16, key);
  putField<std::uint64_t>(h + 24, channelId);
  return {};
}

Result<PayloadRecord> decodePayloadRecord(std::span<const std::uint8_t> body) {
  if (body.size() < kPayloadRecordHeader) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("payload record of {} bytes (at least {})", body.size(), kPayloadRecordHeader));
  }
  const std::uint8_t* h = body.data();
  PayloadRecord r;
  const auto part = getField<std::uint8_t>(h);
  if (part < static_cast<std::uint8_t>(PayloadPart::Request) || part > static_cast<std::uint8_t>(PayloadPart::Message)) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("payload record of unknown part {}", part));
  }
  r.part = static_cast<PayloadPart>(part);
  r.payload.fullBytes = getField<std::uint32_t>(h + 4);
  r.sourceId = getField<std::uint32_t>(h + 8);
  const auto captured = getField<std::uint32_t>(h + 12);
  r.key = getField<std::uint64_t>(h + 16);
  r.channelId = getField<std::uint64_t>(h + 24);
  if (captured != body.size() - kPayloadRecordHeader || captured > r.payload.fullBytes) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("payload record claims {} captured bytes of {} in a body of {}", captured,
                                 r.payload.fullBytes, body.size()));
  }
  r.payload.bytes.assign(body.begin() + kPayloadRecordHeader, body.end());
  return r;
}

void CaptureFilter::set(PayloadCapture c) {
  capture_ = std::move(c);
  cache_.clear();
}

bool CaptureFilter::decide(std::uint64_t id, const std::string& name) {
  const bool yes = std::any_of(capture_.channels.begin(), capture_.channels.end(),
                               [&](const std::string& g) { return ::fnmatch(g.c_str(), name.c_str(), 0) == 0; });
  constexpr std::size_t kMaxCached = 4096;  // ids a window invents cannot grow it without bound
  if (cache_.size() >= kMaxCached) cache_.clear();
  cache_.emplace(id, yes);
  return yes;
}

Result<void> checkPayloadCapture(const PayloadCapture& c) {
  if (c.maxBytes > kMaxPayloadCaptureBytes) {
    return makeError(ErrorCode::InvalidArgument, fmt::format("PayloadCapture::maxBytes {} is more than {}", c.maxBytes,
                                                             kMaxPayloadCaptureBytes));
  }
  for (const std::string& g : c.channels) {
    if (g.empty() || g.size() > 256) {
      return makeError(ErrorCode::InvalidArgument,
                       fmt::format("PayloadCapture::channels: a glob of {} characters (1 to 256)", g.size()));
    }
  }
  return {};
}

}  // namespace shmbus::detail
