// Building and checking test.capnp messages in ring space (unit and multiproc suites).
#pragma once

#include <capnp/message.h>
#include <kj/exception.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "message/message.hpp"
#include "ring/ring.hpp"
#include "shmbus/error.hpp"
#include "test.capnp.h"

namespace shmbus::test {

/// Caller prefix before the message in a record, standing in for the frame header.
inline constexpr std::size_t kPrefixBytes = 64;

inline std::uint8_t blobByte(std::uint64_t seq, std::size_t i) {
  return static_cast<std::uint8_t>((seq * 131u) ^ (i * 7u) ^ (i >> 8));
}
inline std::string textFor(std::uint64_t seq) { return "message number " + std::to_string(seq); }

/// Fills every field of `m` from `seq`: Text, a Data blob of `blobBytes`, a list, a nested
/// struct and a list of structs.
inline void fillTestMessage(TestMessage::Builder m, std::uint64_t seq, std::size_t blobBytes) {
  m.setSeq(seq);
  m.setText(textFor(seq).c_str());
  auto blob = m.initBlob(static_cast<capnp::uint>(blobBytes));
  for (std::size_t i = 0; i < blobBytes; ++i) blob[i] = blobByte(seq, i);
  auto numbers = m.initNumbers(static_cast<capnp::uint>(seq % 17 + 1));
  for (capnp::uint i = 0; i < numbers.size(); ++i) numbers.set(i, static_cast<std::uint32_t>(seq + i));
  auto inner = m.initInner();
  inner.setId(seq * 3);
  inner.setLabel("inner");
  auto children = m.initChildren(3);
  for (capnp::uint i = 0; i < 3; ++i) {
    children[i].setId(seq + i);
    children[i].setLabel(std::to_string(i).c_str());
  }
}

/// Checks every field filled by fillTestMessage; returns "" or what differs.
inline std::string checkTestMessage(TestMessage::Reader m, std::uint64_t seq, std::size_t blobBytes) {
  if (m.getSeq() != seq) return "seq " + std::to_string(m.getSeq()) + " != " + std::to_string(seq);
  if (std::string(m.getText().cStr()) != textFor(seq)) return "text differs at seq " + std::to_string(seq);
  auto blob = m.getBlob();
  if (blob.size() != blobBytes) {
    return "blob of " + std::to_string(blob.size()) + " bytes at seq " + std::to_string(seq);
  }
  for (std::size_t i = 0; i < blobBytes; ++i) {
    if (blob[i] != blobByte(seq, i)) return "blob byte " + std::to_string(i) + " differs at seq " + std::to_string(seq);
  }
  auto numbers = m.getNumbers();
  if (numbers.size() != seq % 17 + 1) return "numbers size differs at seq " + std::to_string(seq);
  for (capnp::uint i = 0; i < numbers.size(); ++i) {
    if (numbers[i] != static_cast<std::uint32_t>(seq + i)) return "numbers differ at seq " + std::to_string(seq);
  }
  if (m.getInner().getId() != seq * 3 || std::string(m.getInner().getLabel().cStr()) != "inner") {
    return "inner differs at seq " + std::to_string(seq);
  }
  auto children = m.getChildren();
  if (children.size() != 3) return "children size differs at seq " + std::to_string(seq);
  for (capnp::uint i = 0; i < 3; ++i) {
    if (children[i].getId() != seq + i || std::string(children[i].getLabel().cStr()) != std::to_string(i)) {
      return "child differs at seq " + std::to_string(seq);
    }
  }
  return "";
}

/// Runs `read` (code reading an untrusted message) and turns the kj::Exception Cap'n Proto
/// throws on malformed data into an InvalidMessage error carrying capnp's description.
template <typename Read>
Result<void> readChecked(Read&& read) {
  try {
    read();
    return {};
  } catch (const kj::Exception& e) {
    return makeError(ErrorCode::InvalidMessage,
                     std::string("malformed Cap'n Proto payload: ") + e.getDescription().cStr());
  }
}

/// Reads every field of a message of unknown content (sizes, text, blob bytes, list elements,
/// nested structs), so that all of its pointers are followed. Returns a digest of what was read.
inline std::uint64_t readEverything(TestMessage::Reader m) {
  std::uint64_t digest = m.getSeq();
  digest += m.getText().size();
  for (auto b : m.getBlob()) digest += b;
  for (auto n : m.getNumbers()) digest += n;
  digest += m.getInner().getId() + m.getInner().getLabel().size();
  for (auto c : m.getChildren()) digest += c.getId() + c.getLabel().size();
  digest += m.totalSize().wordCount;
  return digest;
}

/// Builds message `seq` (fillTestMessage with a blob of `blobBytes`) in place in a claim of up to
/// `maxBody` bytes, after a kPrefixBytes prefix holding `seq`, and publishes it. Returns the body
/// bytes published; a message outgrowing the claim is aborted and its ClaimExhausted code
/// (TooLarge or Full) returned, as are the claim's own errors.
inline Result<std::size_t> publishTestMessage(detail::RingProducer& p, std::uint64_t seq, std::size_t blobBytes,
                                              std::size_t maxBody = SIZE_MAX) {
  auto c = p.tryClaimUpTo(kPrefixBytes + sizeof(detail::MessageTable) + 64, maxBody);
  if (!c) return c.error();
  std::uint8_t prefix[kPrefixBytes];
  for (std::size_t i = 0; i < kPrefixBytes; ++i) prefix[i] = static_cast<std::uint8_t>(seq + i);
  std::memcpy(c->body, prefix, kPrefixBytes);
  detail::RingMessageBuilder builder(p, *c, kPrefixBytes);
  try {
    fillTestMessage(builder.initRoot<TestMessage>(), seq, blobBytes);
  } catch (const detail::ClaimExhausted& e) {
    p.abort(*c, builder.touched());
    return makeError(e.code, e.what());
  }
  const std::size_t used = builder.finish();
  p.publish(*c, used);
  return used;
}

/// Checks a record published by publishTestMessage: the prefix, then the message read in place
/// (`msg` holds the parse). Returns "" or what is wrong.
inline std::string checkTestRecord(const detail::RecordView& v, std::uint64_t seq, std::size_t blobBytes,
                                   detail::InPlaceMessage& msg) {
  if (v.bodyBytes < kPrefixBytes) return "record too short for the prefix";
  for (std::size_t i = 0; i < kPrefixBytes; ++i) {
    if (v.body[i] != static_cast<std::uint8_t>(seq + i)) return "prefix differs at seq " + std::to_string(seq);
  }
  auto parsed = msg.parse(v.body + kPrefixBytes, v.bodyBytes - kPrefixBytes);
  if (!parsed) return parsed.error().toString();
  if (msg.empty()) return "empty message at seq " + std::to_string(seq);
  std::string problem;
  auto read = readChecked([&] { problem = checkTestMessage(msg.reader().getRoot<TestMessage>(), seq, blobBytes); });
  return read ? problem : read.error().toString();
}

}  // namespace shmbus::test
