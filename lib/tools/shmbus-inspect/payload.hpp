// Captured payloads as text (`shmbus-inspect BUS tail|record --payloads [--schema FILE]`,
// docs/architecture.md §14 "Payloads"): Cap'n Proto text or JSON through the schema's structs,
// else the size and a hex prefix.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "schema.hpp"
#include "shmbus/inspect.hpp"

namespace shmbus::inspect {

/// Renders the payloads of trace events. With a schema, a payload of a typed channel the schema
/// declares (MethodSchema: its channel id) is read as the method's params (a request or a
/// one-way message) or results (a reply); anything else is shown as its size and a hex prefix.
/// The bytes are untrusted (they come from the bus's windows, through shared memory): they are
/// read with bounded capnp::ReaderOptions, and a malformed or truncated message yields an
/// "undecodable" or "truncated" text, never an exception. Thread contract: one thread.
class PayloadPrinter {
 public:
  /// Without a schema (`schema` null) every payload is shown as size and hex.
  explicit PayloadPrinter(std::unique_ptr<SchemaFile> schema);

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
};

}  // namespace shmbus::inspect
