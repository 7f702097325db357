// Fuzzes capnpc-shmbus's input: a hostile CodeGeneratorRequest, as `capnp compile` writes it to
// the plugin's standard input, handed to the plugin's generator with its reader limits
// (lib/tools/capnpc-shmbus/generator.hpp). A malformed request must end in a
// kj::Exception (the plugin prints it and exits 1), never in a crash. Input: the request as a
// flat array (segment table + segments), what `capnp compile -o-` prints.
#include <kj/exception.h>

#include "fuzz_util.hpp"
#include "generator.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const shmbus::fuzz::Bytes bytes(data, size);
  try {
    const auto words = kj::arrayPtr(reinterpret_cast<const capnp::word*>(bytes.data()), size / sizeof(capnp::word));
    for (const auto& file : shmbus::codegen::generateFromFlatArray(words)) (void)file.text.size();
  } catch (const kj::Exception&) {
  }
  return 0;
}
