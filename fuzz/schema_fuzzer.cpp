// Fuzzes the check of announced contract schemas (trace/schema_announce, docs/architecture.md §6):
// a hostile SchemaAnnouncement, as a window sends it in a Schema frame, through
// decodeAnnouncementBytes (every text read, SchemaLoader on every node, the method checks), then
// every loaded method's params and results fields read. Input: the message in Cap'n Proto's
// standard serialization (a size that is not whole words is cut to them).
#include "fuzz_util.hpp"
#include "trace/schema_announce.hpp"

using namespace shmbus;
using namespace shmbus::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fuzz::Bytes in(data, size - size % 8);
  auto loaded = decodeAnnouncementBytes(in.data(), in.size());
  if (!loaded) return 0;
  for (const auto& [channel, method] : loaded->methods) {
    for (auto f : method.params.getFields()) (void)f.getProto().getName().size();
    for (auto f : method.results.getFields()) (void)f.getProto().getName().size();
  }
  return 0;
}
