// Fuzzes payload validation on the receiving side (message/, shmbus/typed.hpp): a hostile payload
// (segment table + segments, as in a record after its frame header) is parsed in place, checked
// against a typed receiver's contract (readChecked: the fingerprint rule of shmbus/contract.hpp,
// then the root), read field by field, and traversed whole within the reader's traversal and
// nesting limits. Input: [schema id u64][payload bytes].
#include <kj/exception.h>

#include "fuzz_util.hpp"
#include "message/message.hpp"
#include "payload_layout.hpp"
#include "shmbus/typed.hpp"

#include "bus.capnp.h"

using namespace shmbus;
using namespace shmbus::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const auto schemaId = in.take<std::uint64_t>();
  const fuzz::Bytes payload(in.rest(), in.restBytes());
  InPlaceMessage view;
  if (!view.parse(payload.data(), payload.size())) return 0;
  const Message m(&view, schemaId);
  (void)contractMismatch(schemaId, fuzz::kPayloadLayout);
  auto root = readChecked<schema::ErrorInfo>(m, contractFingerprint(fuzz::kPayloadLayout), &fuzz::kPayloadLayout);
  if (root) {
    try {
      (void)root->getCode();
      (void)root->getMessage().size();
      (void)root->getRemoteStack().size();
    } catch (const kj::Exception&) {
    }
  }
  if (!m.empty()) (void)fuzz::traverse(m.reader());
  return 0;
}
