// capnpc-shmbus: generating the typed contract headers of a CodeGeneratorRequest
// (docs/architecture.md §6). main.cpp reads the request and writes the files; the fuzz harness
// (fuzz/plugin_fuzzer.cpp) feeds it hostile requests.
#pragma once

#include <capnp/common.h>
#include <capnp/message.h>
#include <capnp/schema.capnp.h>

#include <cstddef>
#include <string>
#include <vector>

namespace shmbus::codegen {

/// One header to write: its path (relative to the output directory) and its text.
struct GeneratedFile {
  std::string path;  ///< "<file without .capnp>.shmbus.h"
  std::string text;
};

/// The reader limits for a CodeGeneratorRequest of `words` words: the traversal is bounded by its
/// size (the generator reads each node a few times), so a hostile request cannot make the plugin
/// walk for long, nor nest deeper than Cap'n Proto's default.
capnp::ReaderOptions requestReaderOptions(std::size_t words);

/// The header of every requested file of `request`. Throws kj::Exception on a malformed request
/// (SchemaLoader's validation, or a node the request refers to but does not hold).
std::vector<GeneratedFile> generate(capnp::schema::CodeGeneratorRequest::Reader request);

/// The headers of the request held in `words`, a flat array (segment table + segments) as
/// `capnp compile` writes it to the plugin, read with requestReaderOptions. Throws kj::Exception
/// on a malformed request.
std::vector<GeneratedFile> generateFromFlatArray(kj::ArrayPtr<const capnp::word> words);

}  // namespace shmbus::codegen
