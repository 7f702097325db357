// Reading every text of an untrusted Cap'n Proto message before capnp::SchemaLoader sees it
// (docs/architecture.md §13: Cap'n Proto 0.9's SchemaLoader reports a problem with texts it reads
// only then, and a malformed one makes the report fail again while reporting, without end).
// Header-only: capnpc-shmbus (no library) and the library (announced schemas) share it.
#pragma once

#include <capnp/dynamic.h>

namespace shmbus::detail {

void readAllTexts(capnp::DynamicStruct::Reader s);

/// Reads `v` and every text below it (readAllTexts).
inline void readAllTexts(const capnp::DynamicValue::Reader& v) {
  switch (v.getType()) {
    case capnp::DynamicValue::TEXT: (void)v.as<capnp::Text>().size(); break;
    case capnp::DynamicValue::STRUCT: readAllTexts(v.as<capnp::DynamicStruct>()); break;
    case capnp::DynamicValue::LIST:
      for (auto e : v.as<capnp::DynamicList>()) readAllTexts(e);
      break;
    default: break;
  }
}

/// Reads every text field reachable from `s` (the active union member only), so that a
/// malformed one throws kj::Exception here. Bounded by the reader's traversal and nesting limits.
inline void readAllTexts(capnp::DynamicStruct::Reader s) {
  for (auto field : s.getSchema().getNonUnionFields()) readAllTexts(s.get(field));
  KJ_IF_MAYBE(field, s.which()) { readAllTexts(s.get(*field)); }
}

}  // namespace shmbus::detail
