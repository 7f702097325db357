#include "payload.hpp"

#include <capnp/compat/json.h>
#include <capnp/dynamic.h>
#include <capnp/serialize-text.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace shmbus::inspect {

namespace {
/// Bytes shown in hex when a payload is not decoded.
constexpr std::size_t kHexBytes = 32;

std::string hexPrefix(const std::vector<std::uint8_t>& b) {
  std::string s;
  const std::size_t n = std::min(b.size(), kHexBytes);
  for (std::size_t i = 0; i < n; ++i) s += fmt::format("{}{:02x}", i != 0 && i % 8 == 0 ? " " : "", b[i]);
  if (b.size() > n) s += " ...";
  return s;
}

/// Appends `s` as a JSON string literal, escaped by Cap'n Proto's JSON codec.
void jsonString(std::string& out, const std::string& s) {
  const capnp::DynamicValue::Reader text = capnp::Text::Reader(s.c_str());
  out += capnp::JsonCodec().encode(text, capnp::Type(capnp::schema::Type::TEXT)).cStr();
}
}  // namespace

struct PayloadPrinter::Decoded {
  bool ok = false;      ///< `value` holds the message
  std::string value;    ///< Cap'n Proto text or JSON
  std::string problem;  ///< why not: "" (no struct known), "truncated", or Cap'n Proto's reason
};

PayloadPrinter::PayloadPrinter(std::unique_ptr<SchemaFile> schema) : schema_(std::move(schema)) {
  if (schema_) methods_ = methodsByChannel(schema_->root());
  for (const auto& [channel, m] : methods_) fromFile_.insert(channel);
}

void PayloadPrinter::addAnnounced(AnnouncedSchemas announced) {
  for (auto& [channel, m] : announced.methods) {
    if (fromFile_.count(channel) == 0) methods_.insert_or_assign(channel, std::move(m));
  }
  for (auto& l : announced.loaders) loaders_.push_back(std::move(l));
}

std::string PayloadPrinter::methodName(std::uint64_t channelId) const {
  const auto it = methods_.find(channelId);
  return it != methods_.end() ? it->second.name : std::string();
}

PayloadPrinter::Decoded PayloadPrinter::decode(const TracePayload& p, std::uint64_t channelId, bool reply,
                                               bool asJson) const {
  Decoded d;
  const auto it = methods_.find(channelId);
  if (it == methods_.end()) return d;
  if (p.truncated()) {
    d.problem = "truncated";
    return d;
  }
  const capnp::StructSchema type = reply ? it->second.results : it->second.params;
  if (p.bytes.empty()) {  // an empty message: the struct's defaults
    d.ok = true;
    d.value = asJson ? "{}" : "()";
    return d;
  }
  try {
    // Word-aligned copy: FlatArrayMessageReader reads words in place.
    kj::Array<capnp::word> words = kj::heapArray<capnp::word>((p.bytes.size() + 7) / 8);
    std::memset(words.begin(), 0, words.size() * sizeof(capnp::word));
    std::memcpy(words.begin(), p.bytes.data(), p.bytes.size());
    capnp::ReaderOptions limits;
    limits.traversalLimitInWords = words.size() * 8 + 1024;  // re-reads count: generous, still bounded
    limits.nestingLimit = 64;
    capnp::FlatArrayMessageReader reader(words, limits);
    const auto root = reader.getRoot<capnp::DynamicStruct>(type);
    d.value = asJson ? capnp::JsonCodec().encode(root).cStr() : capnp::TextCodec().encode(root).cStr();
    d.ok = true;
  } catch (const kj::Exception& e) {
    d.problem = e.getDescription().cStr();
  }
  return d;
}

std::string PayloadPrinter::text(const TracePayload& p, std::uint64_t channelId, bool reply) const {
  const Decoded d = decode(p, channelId, reply, false);
  if (d.ok) return d.value;
  if (p.truncated()) return fmt::format("truncated: {} of {} B: {}", p.bytes.size(), p.fullBytes, hexPrefix(p.bytes));
  if (!d.problem.empty()) return fmt::format("undecodable ({}): {}", d.problem, hexPrefix(p.bytes));
  return fmt::format("{} B: {}", p.fullBytes, hexPrefix(p.bytes));
}

std::string PayloadPrinter::json(const TracePayload& p, std::uint64_t channelId, bool reply) const {
  const Decoded d = decode(p, channelId, reply, true);
  std::string s = fmt::format("{{\"bytes\":{},\"captured\":{},\"truncated\":{}", p.fullBytes, p.bytes.size(),
                              p.truncated() ? "true" : "false");
  if (d.ok) {
    s += ",\"value\":" + d.value;
  } else {
    s += ",\"hex\":";
    jsonString(s, hexPrefix(p.bytes));
    if (!d.problem.empty() && !p.truncated()) {
      s += ",\"error\":";
      jsonString(s, d.problem);
    }
  }
  return s + "}";
}

}  // namespace shmbus::inspect
