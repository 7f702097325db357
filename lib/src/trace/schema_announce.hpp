// Announced contract schemas (docs/architecture.md §6, §14 "Payloads"): the one encoder the typed
// stubs' announcement uses (Window and the main process alike) and the one decoder and check the
// router (before it keeps one) and the inspector (after it fetched them) use.
#pragma once

#include <capnp/message.h>
#include <kj/array.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "bus.capnp.h"
#include "shmbus/error.hpp"
#include "shmbus/schema.hpp"

namespace shmbus::detail {

/// Writes `contract` into `out`: its id, name, methods, and the schema nodes of the interface,
/// its superclasses, its methods' params and results structs and every struct, enum and
/// interface their fields reach (each node once). The nodes are the compiled-in ones
/// (capnp::Schema::getProto of capnpc-c++'s raw schemas): nothing is copied from a file.
void encodeAnnouncement(const ContractSchema& contract, schema::SchemaAnnouncement::Builder out);

/// An announcement read and checked (decodeAnnouncement).
struct LoadedContract {
  std::uint64_t interfaceId = 0;
  std::string name;
  std::map<std::uint64_t, AnnouncedMethod> methods;  ///< by channel id
  std::shared_ptr<capnp::SchemaLoader> loader;       ///< owns the methods' schemas
  std::size_t nodes = 0;                             ///< schema nodes it holds
};

/// Reads `a`, untrusted, into a SchemaLoader of its own and checks it: a name that follows
/// NameKind::Channel, at most kMaxSchemaNodes nodes, every text readable (docs/architecture.md §13),
/// every node accepted by SchemaLoader's validation, the interface node present with the
/// announced id, and for every method: an ordinal the interface declares, the channel id
/// methodChannelId(interface id, ordinal), and params and results structs among the nodes.
/// Bounded by `a`'s reader (its traversal and nesting limits); every kj::Exception is caught.
/// Errors: InvalidMessage naming what is wrong. Thread contract: any thread.
Result<LoadedContract> decodeAnnouncement(schema::SchemaAnnouncement::Reader a);

/// Reads `words`, a whole serialized message (segment table, then segments), as a
/// SchemaAnnouncement within readerOptionsFor(words) and decodes it (decodeAnnouncement).
/// Errors: InvalidMessage.
Result<LoadedContract> decodeAnnouncementWords(kj::ArrayPtr<const capnp::word> words);

/// `bytes` at `data` (any alignment; Cap'n Proto's standard serialization) copied into words,
/// then decodeAnnouncementWords; the fuzz harness's entry. Errors: InvalidMessage (also for a size that is not a multiple of 8).
Result<LoadedContract> decodeAnnouncementBytes(const std::uint8_t* data, std::size_t bytes);

}  // namespace shmbus::detail
