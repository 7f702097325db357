#include "router/schema_store.hpp"

#include <capnp/serialize.h>
#include <fmt/format.h>

#include <cstring>

#include "message/message.hpp"
#include "trace/schema_announce.hpp"

namespace shmbus::detail {

namespace {
std::string announcer(std::uint32_t from) { return from == 0 ? std::string("main") : fmt::format("window {}", from); }
}  // namespace

Result<std::string> SchemaStore::keep(std::uint32_t from, kj::Array<capnp::word> words) {
  auto loaded = decodeAnnouncementWords(words);
  if (!loaded) return loaded.error();
  const std::size_t bytes = words.size() * sizeof(capnp::word);
  const auto it = kept_.find(loaded->interfaceId);
  if (it != kept_.end()) {
    const bool same = it->second.words.size() == words.size() &&
                      std::memcmp(it->second.words.begin(), words.begin(), bytes) == 0;
    if (same || from != 0 || it->second.from == 0) {
      return fmt::format("{} is kept already{}", loaded->name,
                         same ? "" : fmt::format(" (another version, from {}: not replaced)", announcer(it->second.from)));
    }
  }
  const std::size_t replaced = it != kept_.end() ? it->second.words.size() * sizeof(capnp::word) : 0;
  if (bytes_ - replaced + bytes > limit_) {
    return makeError(ErrorCode::Full, fmt::format("the bus keeps {} B of schemas; {} B more for {} would pass its "
                                                  "limit of {} B",
                                                  bytes_, bytes, loaded->name, limit_));
  }
  bytes_ = bytes_ - replaced + bytes;
  kept_[loaded->interfaceId] = Kept{std::move(words), from};
  return fmt::format("kept {} from {} ({} methods, {} nodes, {} B)", loaded->name, announcer(from),
                     loaded->methods.size(), loaded->nodes, bytes);
}

void SchemaStore::encode(schema::SchemaSet::Builder out) const {
  auto list = out.initContracts(static_cast<unsigned>(kept_.size()));
  unsigned i = 0;
  for (const auto& [id, kept] : kept_) {
    capnp::FlatArrayMessageReader r(kept.words, readerOptionsFor(kept.words.size()));
    list.setWithCaveats(i++, r.getRoot<schema::SchemaAnnouncement>());  // checked when kept
  }
}

}  // namespace shmbus::detail
