// Captured payloads as text (`shmbus-inspect BUS tail|record --payloads [--schema FILE]`,
// docs/architecture.md §14 "Payloads"): Cap'n Proto text or JSON through the schema's structs,
// else the size and a hex prefix.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include "schema.hpp"
#include "shmbus/inspect.hpp"

namespace shmbus::inspect {

/// Renders the payloads of trace events. With a schema (a file, or announced by typed stubs), a payload of a typed channel the schema
/// declares (MethodSchema: its channel id) is read as the method's params (a request or a
/// one-way message) or results (a reply); anything else is shown as its size and a hex prefix.
/// The bytes are untrusted (they come from the bus's windows, through shared memory): they are
/// read with bounded capnp::ReaderOptions, and a malformed or truncated message yields an
/// "undecodable" or "truncated" text, never an exception. Thread contract: one thread.
class PayloadPrinter {
 public:
  /// Without a schema (`schema` null) every payload is shown as size and hex.
  explicit PayloadPrinter(std::unique_ptr<SchemaFile> schema);

  /// Adds the schemas typed stubs announced to the bus (Inspector::schemas()) for the channels
  /// the schema file does not declare: the file wins where both do.
  void addAnnounced(AnnouncedSchemas announced);

  /// Whether the schema file or an announced schema declares the channel.
  bool knows(std::uint64_t channelId) const { return methods_.count(channelId) != 0; }

  /// The method name of a typed channel the schema declares ("Studio.echo"), else "".
  std::string methodName(std::uint64_t channelId) const;

  /// One payload as Cap'n Proto text ("(text = \"hi\", length = 2)"), or, without its struct,
  /// "48 B: 0000000001000000 ..." (at most 32 bytes in hex); "truncated: 64 of 300 B: <hex>"
  /// when the capture was cut; "undecodable (<Cap'n Proto's reason>): <hex>" when the bytes are
  /// not a valid message of the struct.
  std::string text(const TracePayload& p, std::uint64_t channelId, bool reply) const;

  /// The same as one JSON object: {"bytes":N,"captured":N,"truncated":false,"value":{...}}, with
  /// "value" the message as Cap'n Proto's JSON (capnp::JsonCodec) when decoded, else "hex" (and
  /// "error" when undecodable).
  std::string json(const TracePayload& p, std::uint64_t channelId, bool reply) const;

 private:
  struct Decoded;
  /// Decodes `p` as the method's params or results: the text (or JSON), or the reason it cannot.
  Decoded decode(const TracePayload& p, std::uint64_t channelId, bool reply, bool asJson) const;

  std::unique_ptr<SchemaFile> schema_;
  std::map<std::uint64_t, MethodSchema> methods_;
  std::set<std::uint64_t> fromFile_;  // channels the file declares (announced ones never replace them)
  std::vector<std::shared_ptr<capnp::SchemaLoader>> loaders_;  // keep announced schemas alive
};

}  // namespace shmbus::inspect
