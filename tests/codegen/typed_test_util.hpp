// Messages laid out as the rings lay them out, for the one-process tests of shmbus/typed.hpp.
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "message/message.hpp"

namespace shmbus::test {

/// A message body laid out as RingMessageBuilder lays it out (table + segments), 8-byte aligned.
struct Body {
  std::vector<capnp::word> words;
  const std::uint8_t* data() const { return reinterpret_cast<const std::uint8_t*>(words.data()); }
  std::size_t bytes() const { return words.size() * sizeof(capnp::word); }
};

inline Body layOut(capnp::MessageBuilder& mb) {
  auto segs = mb.getSegmentsForOutput();
  detail::MessageTable table{};
  table.segmentCount = static_cast<std::uint32_t>(segs.size());
  std::size_t total = sizeof table / sizeof(capnp::word);
  for (std::size_t i = 0; i < segs.size(); ++i) {
    table.segmentWords[i] = static_cast<std::uint32_t>(segs[i].size());
    total += segs[i].size();
  }
  Body b;
  b.words.resize(total);
  std::memcpy(static_cast<void*>(b.words.data()), &table, sizeof table);
  std::size_t at = sizeof table / sizeof(capnp::word);
  for (auto s : segs) {
    std::memcpy(static_cast<void*>(b.words.data() + at), s.begin(), s.size() * sizeof(capnp::word));
    at += s.size();
  }
  return b;
}

}  // namespace shmbus::test
