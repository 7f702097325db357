// capnpc-shmbus: the contract layout of a params/results struct (shmbus/contract.hpp), the
// description its fingerprint hashes.
#pragma once

#include <capnp/schema.h>

#include <cstdint>
#include <string>
#include <vector>

namespace shmbus::codegen {

/// "0x0123456789abcdef": an id as Cap'n Proto writes it.
std::string hexId(std::uint64_t v);

/// The same as a C++ literal.
std::string hexLiteral(std::uint64_t v);

/// One field of a params/results struct for the contract check: its path ("circle.center"),
/// ordinal and canonical description (shmbus/contract.hpp).
struct LayoutField {
  std::string path;        ///< "circle.center"
  std::uint16_t ordinal = 0;  ///< the field's `@n`
  std::string text;        ///< the canonical description its prefix hash is taken of
};

/// A params/results struct for the contract check: its fields and prefix hashes H(1..n)
/// (shmbus/contract.hpp), and the fingerprint its senders stamp.
struct Layout {
  std::string name;  ///< "params of Calc.add"
  std::vector<LayoutField> fields;  ///< in ordinal order
  std::vector<std::uint64_t> prefixes;  ///< H(1)..H(n)
  std::uint64_t fingerprint = 0;  ///< never 0
};

/// The layout of struct `s`, named `name` in error messages. Throws kj::Exception when the schema
/// is inconsistent (a hostile CodeGeneratorRequest).
Layout layoutOf(capnp::StructSchema s, std::string name);

}  // namespace shmbus::codegen
