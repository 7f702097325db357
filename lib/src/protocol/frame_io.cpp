#include "protocol/frame_io.hpp"

#include <cxxabi.h>
#include <execinfo.h>
#include <kj/debug.h>

#include <fmt/format.h>

#include <cstring>
#include <utility>
#include <typeinfo>

#include "bus.capnp.h"

namespace shmbus::detail {

namespace {
Error claimError(ErrorCode code, const std::string& m) { return makeError(code, m); }

Result<Claim> claimFor(RingProducer& p, std::size_t bodyBytes) {
  auto c = p.tryClaim(bodyBytes);
  if (!c) return c.error();
  return c;
}
}  // namespace

Result<void> writeFrame(RingProducer& p, const FrameHeader& header, const BuildFn& build, std::size_t sizeHint,
                        bool notify, std::atomic<std::size_t>* payloadBytes) {
  // Claim the free contiguous space (a message's final size is known only once it is built); a
  // hint bounds it so a small message does not need the room of the largest record.
  const std::size_t maxBody = sizeHint != 0 ? kMinFrameBody + sizeHint + 64 : SIZE_MAX;
  auto claim = p.tryClaimUpTo(kMinFrameBody + 64, maxBody);
  if (!claim) return claim.error();
  Claim& c = *claim;
  std::memcpy(c.body, &header, sizeof header);
  std::size_t used = kMinFrameBody;
  if (build) {
    RingMessageBuilder mb(p, c, sizeof(FrameHeader));
    try {
      build(mb);
    } catch (const ClaimExhausted& e) {
      p.abort(c, mb.touched());
      return claimError(e.code, e.what());
    } catch (...) {
      p.abort(c, mb.touched());
      throw;
    }
    used = mb.finish();
  } else {
    std::memset(c.body + sizeof(FrameHeader), 0, sizeof(MessageTable));
  }
  // relaxed: the commit's release store below publishes it with the frame (SYNC POINT "record").
  if (payloadBytes != nullptr) payloadBytes->store(used - sizeof(FrameHeader), std::memory_order_relaxed);
  p.commit(c, used);
  if (notify) p.notifyConsumer();
  return {};
}

namespace {

/// Writes the message table of `segments` at `out` and the segments after it (at
/// out + kMinFrameBody - sizeof(FrameHeader)): a frame's payload.
void encodeSegments(std::uint8_t* out, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  MessageTable table{};
  table.segmentCount = static_cast<std::uint32_t>(segments.size());
  std::uint8_t* at = out + (kMinFrameBody - sizeof(FrameHeader));
  for (std::size_t i = 0; i < segments.size(); ++i) {
    table.segmentWords[i] = static_cast<std::uint32_t>(segments[i].size());
    std::memcpy(at, segments[i].begin(), segments[i].size() * sizeof(capnp::word));
    at += segments[i].size() * sizeof(capnp::word);
  }
  std::memcpy(out, &table, sizeof table);
}

/// An Error frame's header, and its texts bounded for a ring whose largest record is `maxRecord`
/// (a hostile or huge remote text cannot exceed a record).
std::pair<FrameHeader, Error> errorFrameParts(FrameHeader header, const Error& error, std::size_t maxRecord) {
  header.kind = static_cast<std::uint16_t>(FrameKind::Error);
  header.status = static_cast<std::uint32_t>(error.code);
  header.schemaId = 0;
  Error bounded = error;
  const std::size_t cap = std::max<std::size_t>(256, maxRecord / 8);
  for (std::string* s : {&bounded.message, &bounded.remoteType, &bounded.remoteMessage, &bounded.remoteStack}) {
    if (s->size() > cap) s->resize(cap);
  }
  return {header, std::move(bounded)};
}

}  // namespace

HeldFrame heldFrame(const FrameHeader& header, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  HeldFrame f{header, std::vector<std::uint8_t>(kMinFrameBody - sizeof(FrameHeader) + messageBytes(segments))};
  encodeSegments(f.payload.data(), segments);
  return f;
}

HeldFrame heldErrorFrame(FrameHeader header, const Error& error, std::size_t maxRecord) {
  auto [h, bounded] = errorFrameParts(header, error, maxRecord);
  capnp::MallocMessageBuilder b;
  buildErrorInfo(b, bounded);
  return heldFrame(h, b.getSegmentsForOutput());
}

Result<void> writeFrameSegments(RingProducer& p, const FrameHeader& header,
                                kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, bool notify) {
  if (segments.size() > kMaxSegments) {
    return makeError(ErrorCode::TooLarge, fmt::format("message of {} segments (max {})", segments.size(), kMaxSegments));
  }
  const std::size_t body = kMinFrameBody + messageBytes(segments);
  auto claim = claimFor(p, body);
  if (!claim) return claim.error();
  Claim& c = *claim;
  std::memcpy(c.body, &header, sizeof header);
  encodeSegments(c.body + sizeof(FrameHeader), segments);
  p.commit(c, body);
  if (notify) p.notifyConsumer();
  return {};
}

Result<void> writeFrameCopy(RingProducer& p, const FrameHeader& header, const std::uint8_t* payload,
                            std::size_t payloadBytes, bool notify) {
  auto claim = claimFor(p, sizeof(FrameHeader) + payloadBytes);
  if (!claim) return claim.error();
  Claim& c = *claim;
  std::memcpy(c.body, &header, sizeof header);
  std::memcpy(c.body + sizeof(FrameHeader), payload, payloadBytes);
  p.commit(c, sizeof(FrameHeader) + payloadBytes);
  if (notify) p.notifyConsumer();
  return {};
}

void buildErrorInfo(capnp::MessageBuilder& b, const Error& e) {
  auto info = b.initRoot<schema::ErrorInfo>();
  info.setCode(static_cast<std::uint16_t>(e.code));
  info.setMessage(e.message);
  if (!e.remoteType.empty()) info.setRemoteType(e.remoteType);
  if (!e.remoteMessage.empty()) info.setRemoteMessage(e.remoteMessage);
  if (!e.remoteStack.empty()) info.setRemoteStack(e.remoteStack);
}

Result<void> writeErrorFrame(RingProducer& p, FrameHeader header, const Error& error, bool notify) {
  // Not a structured binding: a lambda cannot capture one before clang 16 (P1091).
  const std::pair<FrameHeader, Error> parts = errorFrameParts(header, error, p.geometry().maxRecord);
  const Error& bounded = parts.second;
  return writeFrame(p, parts.first, [&](capnp::MessageBuilder& b) { buildErrorInfo(b, bounded); }, 0, notify);
}

Error decodeError(const FrameHeader& header, InPlaceMessage& payload) {
  Error e;
  e.code = errorCodeFromWire(header.status);
  try {
    if (!payload.empty()) {
      auto info = payload.reader().getRoot<schema::ErrorInfo>();
      e.message = info.getMessage();
      e.remoteType = info.getRemoteType();
      e.remoteMessage = info.getRemoteMessage();
      e.remoteStack = info.getRemoteStack();
    }
  } catch (const kj::Exception& ex) {
    e.message = std::string("(malformed error payload: ") + ex.getDescription().cStr() + ")";
  }
  return e;
}

Result<FrameView> parseFrame(const RecordView& record) {
  if (record.bodyBytes < kMinFrameBody) {
    return makeError(ErrorCode::InvalidMessage,
                     fmt::format("frame of {} bytes is shorter than its header and table ({} bytes)",
                                 record.bodyBytes, kMinFrameBody));
  }
  FrameView f;
  std::memcpy(&f.header, record.body, sizeof f.header);  // copy before use: the writer may be hostile
  if (f.header.kind == 0 || f.header.kind > kMaxFrameKind) {
    return makeError(ErrorCode::InvalidMessage, fmt::format("frame kind {} is unknown", f.header.kind));
  }
  f.payload = record.body + sizeof(FrameHeader);
  f.payloadBytes = record.bodyBytes - sizeof(FrameHeader);
  f.end = record.end;
  return f;
}

namespace {
/// Stack text a reader in another process can use: one frame per line, "module(function+offset)"
/// (backtrace_symbols, C++ names demangled). Raw addresses alone mean nothing outside the process
/// that took them. Frames of the catching machinery itself are skipped (`skip`).
std::string stackText(void* const* frames, int count, int skip = 0) {
  if (count <= skip) return {};
  char** lines = ::backtrace_symbols(frames + skip, count - skip);
  if (lines == nullptr) return {};
  std::string out;
  for (int i = 0; i < count - skip; ++i) {
    std::string line = lines[i];
    // "module(_ZN...+0x1c) [0x...]": demangle the name between '(' and '+'.
    const auto open = line.find('('), plus = line.find('+', open);
    if (open != std::string::npos && plus != std::string::npos && plus > open + 1) {
      int status = 0;
      char* name = abi::__cxa_demangle(line.substr(open + 1, plus - open - 1).c_str(), nullptr, nullptr, &status);
      if (status == 0 && name != nullptr) line = line.substr(0, open + 1) + name + line.substr(plus);
      std::free(name);
    }
    out += line;
    out += '\n';
  }
  std::free(lines);
  return out;
}
}  // namespace

Error handlerError(const std::string& what, std::exception_ptr ex) {
  Error e;
  e.code = ErrorCode::HandlerError;
  try {
    std::rethrow_exception(ex);
  } catch (const CallFailure& f) {
    Error chosen = f.error();
    chosen.message = fmt::format("{}: {}", what, chosen.message);
    return chosen;
  } catch (const kj::Exception& k) {
    e.remoteType = "kj::Exception";
    e.remoteMessage = k.getDescription().cStr();
    // The exception's own trace: where it was thrown.
    const auto trace = k.getStackTrace();
    e.remoteStack = fmt::format("at {}:{}\n{}", k.getFile(), k.getLine(),
                                stackText(trace.begin(), static_cast<int>(trace.size())));
  } catch (const std::exception& s) {
    int status = 0;
    char* name = abi::__cxa_demangle(typeid(s).name(), nullptr, nullptr, &status);
    e.remoteType = status == 0 && name != nullptr ? name : typeid(s).name();
    std::free(name);
    e.remoteMessage = s.what();
    // A std::exception carries no trace: this is where the handler was called from (the
    // dispatch path of the window or supervisor that ran it), minus this function's own frame.
    void* frames[32];
    e.remoteStack = stackText(frames, ::backtrace(frames, 32), 1);
  } catch (...) {
    e.remoteType = "unknown exception";
  }
  e.message = fmt::format("{} failed in the handler: {}: {}", what, e.remoteType, e.remoteMessage);
  return e;
}

}  // namespace shmbus::detail
