// libshmbus — contract schemas that typed stubs announce to the supervisor, so that inspectors
// decode captured payloads without a schema file (docs/architecture.md §6, §14 "Payloads").
#pragma once

#include <capnp/schema-loader.h>
#include <capnp/schema.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus {

/// One method of a contract as its stubs use it: the method's ordinal and its channel id
/// (methodChannelId(interface id, ordinal)).
struct MethodChannel {
  std::uint16_t ordinal = 0;  ///< the method's ordinal (`@N`)
  std::uint64_t channel = 0;  ///< its wire channel id
};

/// What capnpc-shmbus embeds per interface (`<I>Contract::schema()`): the interface's compiled
/// schema (capnp::Schema::from, capnpc-c++'s raw schema nodes, which reach the methods' params
/// and results structs and every type they use), its name and the methods the stubs serve.
/// Plain view of static data: copyable, valid for the program's life.
struct ContractSchema {
  capnp::InterfaceSchema interface;     ///< the compiled-in schema of the interface
  std::string_view name;                ///< "Outer.Inner", as capnpc-shmbus names it
  std::span<const MethodChannel> methods;  ///< the methods the generated stubs serve
};

/// Limits of announced schemas, enforced by the router (docs/architecture.md §6). An
/// announcement past one is refused with a log line; nothing else changes.
/// Bytes one window may announce over its connection, all announcements counted.
inline constexpr std::size_t kMaxSchemaBytesPerWindow = 256u << 10;
/// Bytes of schemas the bus keeps at once (every stored announcement).
inline constexpr std::size_t kMaxSchemaBytesPerBus = 4u << 20;
/// Schema nodes in one announcement.
inline constexpr std::size_t kMaxSchemaNodes = 4096;

/// One method of an announced contract, as a decoder needs it.
struct AnnouncedMethod {
  std::string name;             ///< "Interface.method" (the announcer's text: untrusted)
  capnp::StructSchema params;   ///< the params struct
  capnp::StructSchema results;  ///< the results struct
};

/// The contract schemas a bus holds (Inspector::schemas()), loaded and checked: every method by
/// channel id. The schemas live in loaders this object owns (shared by its copies).
/// Thread contract: read-only after it is returned; readable from any thread.
struct AnnouncedSchemas {
  std::map<std::uint64_t, AnnouncedMethod> methods;  ///< by channel id
  std::vector<std::string> contracts;                ///< the contracts' names, "Outer.Inner"
  /// Keeps the methods' schemas alive (one loader per contract: contracts announced by
  /// different versions of a program may share struct ids).
  std::vector<std::shared_ptr<capnp::SchemaLoader>> loaders;
};

}  // namespace shmbus
