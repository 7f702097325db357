// The contract schemas a bus keeps for inspectors (docs/architecture.md §6): announcements of
// typed stubs, checked (trace/schema_announce) and bounded. The router owns one, under its mutex.
#pragma once

#include <capnp/common.h>
#include <kj/array.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "bus.capnp.h"
#include "shmbus/error.hpp"
#include "shmbus/schema.hpp"

namespace shmbus::detail {

/// Announced schemas by interface id, at most `limit` bytes in all. They describe a contract,
/// not a window: a kept one outlives its announcer. The first kept announcement of a contract
/// stays, except that the main process's replaces a window's (a window's could be a forgery; the
/// main process's is compiled into the supervisor's program). Nothing here names channels or
/// touches policy. Thread contract: one thread at a time (the router's mutex).
class SchemaStore {
 public:
  /// A store of at most `limit` bytes (kMaxSchemaBytesPerBus for a bus).
  explicit SchemaStore(std::size_t limit = kMaxSchemaBytesPerBus) : limit_(limit) {}

  /// Checks `words` (a serialized SchemaAnnouncement from window `from`, 0 = the main process;
  /// decodeAnnouncementWords) and keeps it unless its contract is kept already. Returns what
  /// happened, for the log. Errors: InvalidMessage (the check's reason), Full (past the limit;
  /// nothing kept is dropped to make room).
  Result<std::string> keep(std::uint32_t from, kj::Array<capnp::word> words);

  /// Every kept announcement into `out` (the answer to ControlType::Schemas).
  void encode(schema::SchemaSet::Builder out) const;

  /// Bytes kept.
  std::size_t bytes() const noexcept { return bytes_; }
  /// Contracts kept.
  std::size_t size() const noexcept { return kept_.size(); }

 private:
  struct Kept {
    kj::Array<capnp::word> words;  // a private copy of the announcement, as a serialized message
    std::uint32_t from = 0;        // the announcing window, 0 = main
  };
  std::map<std::uint64_t, Kept> kept_;  // by interface id
  std::size_t bytes_ = 0;
  std::size_t limit_;
};

}  // namespace shmbus::detail
