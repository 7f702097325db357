// A schema file parsed at run time (capnp::SchemaParser), for `call` and for decoding captured
// payloads (`tail|record --payloads --schema FILE`), and what it declares by channel id.
#pragma once

#include <capnp/schema-parser.h>
#include <kj/filesystem.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "shmbus/schema.hpp"

namespace shmbus::inspect {

/// A parsed .capnp file and its import path: the `-I` dirs, then the installed
/// include/shmbus/schemas, /usr/local/include, /usr/include. Keeps the parser alive, so the
/// schemas it hands out stay valid as long as it does. Thread contract: one thread.
class SchemaFile {
 public:
  /// Parses `file` (relative to the current directory). Throws kj::Exception with Cap'n Proto's
  /// message (a missing file, a syntax or type error).
  SchemaFile(const std::string& file, const std::vector<std::string>& importDirs);
  SchemaFile(const SchemaFile&) = delete;
  SchemaFile& operator=(const SchemaFile&) = delete;

  /// The file's root node.
  const capnp::ParsedSchema& root() const noexcept { return file_; }

 private:
  kj::Own<kj::Filesystem> fs_;
  std::vector<kj::Own<const kj::ReadableDirectory>> dirs_;
  capnp::SchemaParser parser_;
  capnp::ParsedSchema file_;
};

/// One interface method as the bus sees it: a channel (methodChannelId of the interface id and
/// the method's ordinal, as capnpc-shmbus's stubs use), named as capnpc-shmbus names it
/// ("Outer.Inner.method"), with its params and results structs; the shape announced schemas
/// have too (shmbus/schema.hpp).
using MethodSchema = AnnouncedMethod;

/// Every interface method `file` declares, at any depth of nesting, by channel id.
std::map<std::uint64_t, MethodSchema> methodsByChannel(const capnp::ParsedSchema& file);

}  // namespace shmbus::inspect
