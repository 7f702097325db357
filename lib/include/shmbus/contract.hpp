// libshmbus — contract fingerprints: which versions of a typed message can read each other.
//
// capnpc-shmbus describes every params/results struct of a contract as a list of fields in
// ordinal order (`@0`, `@1`, ...; fields of groups and unions included, named by their path
// "circle.center"). Each field's description covers everything a reader depends on: its name,
// ordinal, type (recursively: nested structs with all their fields, list element types, enum
// enumerants, interface ids), its offset in the data or pointer section, its union membership
// (discriminant offset and value, along the group path) and its primitive default value. The
// descriptions are chained into prefix hashes:
//
//     H(0) = kContractSeed,   H(k+1) = contractMix(H(k) ^ hash(description of field @k))
//
// Compatibility rule (lib/tools/capnpc-shmbus/README.md): a message is readable when the fields
// the sender and the reader both declare (the shorter of the two ordinal prefixes) are described
// identically. Appending a field (a new ordinal beyond the old ones, Cap'n Proto's compatible
// evolution) therefore keeps working both ways: an older reader ignores the new field, a newer
// reader reads its default. Anything else (a renamed, retyped, renumbered or moved field, a
// changed nested struct, list element, enum or union) is refused.
//
// A message carries one 64-bit fingerprint (the frame header's schema id, 0 = untyped):
//
//      63        56 55                          24 23                      0
//     +------------+------------------------------+------------------------+
//     | n (fields) | low 32 bits of H(n)          | prefix slots           |
//     +------------+------------------------------+------------------------+
//
// n is the sender's field count (saturated at 255). The slots hold, for each field i < min(n, 24),
// the top w = 24 / min(n, 24) bits of H(i+1). A reader that declares m fields checks:
//   n <= m: the whole fingerprint against the one its own first n fields give (64 bits);
//   n >  m: the slots of its m fields (w bits each: a reader older than the sender checks
//           what one word can carry; a struct of 3 fields gets 8 bits per field).
// The first slot that differs names the first field that differs. This header has no
// dependency: capnpc-shmbus computes the fingerprints with the same functions.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace shmbus {

/// One field of a contract struct as capnpc-shmbus describes it (generated constants).
struct ContractField {
  std::string_view name;      ///< path in the struct: "value", "circle.center"
  std::uint16_t ordinal = 0;  ///< the field's `@n`
  std::uint64_t prefix = 0;   ///< H(k+1): hash of the descriptions of this field and all before it
};

/// The layout a receiver was compiled with: the struct's fields in ordinal order (generated as
/// `paramsLayout` / `resultsLayout` of each method descriptor). Static storage: the name and the
/// fields are generated constants.
struct ContractLayout {
  std::string_view name;                  ///< "params of Calc.add", for error messages
  std::span<const ContractField> fields;  ///< in ordinal order
};

/// H(0), the prefix hash of a struct with no field.
inline constexpr std::uint64_t kContractSeed = 0x5368a7e3c0b1e5d1ull;
/// Bits of the fingerprint given to the per-field prefix slots (its low bits).
inline constexpr unsigned kContractSlotBits = 24;
/// Field counts from here on are written as this value: such structs are checked for identity.
inline constexpr std::size_t kContractMaxCount = 255;

/// splitmix64's finaliser: the bijective 64-bit mix of the prefix chain (Steele, Lea, Flood:
/// "Fast splittable pseudorandom number generators", 2014).
constexpr std::uint64_t contractMix(std::uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

/// 64-bit FNV-1a of a field description (the text capnpc-shmbus writes; see contract.hpp's top).
constexpr std::uint64_t contractTextHash(std::string_view text) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : text) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// H(k+1) from H(k) and the hash of field @k's description.
constexpr std::uint64_t contractNextPrefix(std::uint64_t prefix, std::uint64_t fieldHash) noexcept {
  return contractMix(prefix ^ contractMix(fieldHash + 0x9e3779b97f4a7c15ull));
}

namespace detail {

/// Number of prefix slots in the fingerprint of a struct with `n` fields.
constexpr std::size_t contractSlots(std::size_t n) noexcept { return std::min<std::size_t>(n, kContractSlotBits); }

/// Width in bits of each slot for `n` fields (0 when n = 0).
constexpr unsigned contractSlotWidth(std::size_t n) noexcept {
  return n == 0 ? 0u : static_cast<unsigned>(kContractSlotBits / contractSlots(n));
}

/// The slot value of prefix hash `prefix` at width `w`: its top w bits.
constexpr std::uint64_t contractSlot(std::uint64_t prefix, unsigned w) noexcept { return w == 0 ? 0 : prefix >> (64 - w); }

/// Slot `i` of fingerprint `fp` for a sender of `n` fields.
constexpr std::uint64_t contractSlotAt(std::uint64_t fp, std::size_t n, std::size_t i) noexcept {
  const unsigned w = contractSlotWidth(n);
  return (fp >> (i * w)) & ((std::uint64_t{1} << w) - 1);
}

/// The fingerprint of the first `n` fields of a layout given by `prefixAt(k)` = H(k).
template <class PrefixAt>
constexpr std::uint64_t contractEncode(std::size_t n, PrefixAt prefixAt) noexcept {
  const std::uint64_t count = std::min<std::size_t>(n, kContractMaxCount);
  std::uint64_t fp = (count << 56) | ((prefixAt(n) & 0xffffffffull) << kContractSlotBits);
  const unsigned w = contractSlotWidth(n);
  for (std::size_t i = 0; i < contractSlots(n); ++i) fp |= contractSlot(prefixAt(i + 1), w) << (i * w);
  return fp == 0 ? std::uint64_t{1} << kContractSlotBits : fp;  // never 0: 0 means untyped
}

}  // namespace detail

/// H(k) of `layout`: the prefix hash of its first k fields (k <= fields.size()).
constexpr std::uint64_t contractPrefix(const ContractLayout& layout, std::size_t k) noexcept {
  return k == 0 ? kContractSeed : layout.fields[k - 1].prefix;
}

/// The fingerprint a sender compiled with `layout` stamps on its messages (its first `n` fields
/// when given, else all). Never 0.
constexpr std::uint64_t contractFingerprint(const ContractLayout& layout, std::size_t n) noexcept {
  return detail::contractEncode(n, [&](std::size_t k) { return contractPrefix(layout, k); });
}

/// The fingerprint of every field of `layout`.
constexpr std::uint64_t contractFingerprint(const ContractLayout& layout) noexcept {
  return contractFingerprint(layout, layout.fields.size());
}

/// The number of fields the sender of fingerprint `fp` declares (kContractMaxCount or more reads
/// as kContractMaxCount).
constexpr std::size_t contractFieldCount(std::uint64_t fp) noexcept { return static_cast<std::size_t>(fp >> 56); }

/// Why a message stamped with fingerprint `fp` cannot be read with `reader`, or nothing when it
/// can (same layout; an older sender whose fields are a prefix of the reader's; a newer sender
/// whose first fields match the reader's). `fp` 0 (an untyped sender) is always readable. The
/// text names the struct and, when the slots identify it, the first field that differs.
/// Allocates only on a mismatch.
inline std::optional<std::string> contractMismatch(std::uint64_t fp, const ContractLayout& reader) {
  if (fp == 0) return std::nullopt;
  const std::size_t m = reader.fields.size();
  const std::size_t n = contractFieldCount(fp);
  const std::string versions = "the sender declares " + std::string(n >= kContractMaxCount ? "255 or more" : std::to_string(n)) +
                               " fields, this side " + std::to_string(m);
  auto fieldText = [&](std::size_t i) {
    return "field '" + std::string(reader.fields[i].name) + "' (@" + std::to_string(reader.fields[i].ordinal) + ")";
  };
  auto firstDiffering = [&](std::size_t count) -> std::optional<std::size_t> {
    for (std::size_t i = 0; i < std::min(count, detail::contractSlots(n)); ++i) {
      if (detail::contractSlotAt(fp, n, i) != detail::contractSlot(contractPrefix(reader, i + 1), detail::contractSlotWidth(n))) {
        return i;
      }
    }
    return std::nullopt;
  };
  const std::string name(reader.name);
  if (n >= kContractMaxCount || m >= kContractMaxCount) {
    // Counts this large are not written exactly: only an identical layout is known to match.
    if (m >= kContractMaxCount && fp == contractFingerprint(reader)) return std::nullopt;
    return name + ": layouts differ (" + versions + "; structs this large must match exactly)";
  }
  if (n <= m) {
    if (fp == contractFingerprint(reader, n)) return std::nullopt;
    if (auto i = firstDiffering(n)) return name + ": " + fieldText(*i) + " differs from the sender's (" + versions + ")";
    return name + ": the layout of the sender's " + std::to_string(n) + " fields differs from this side's (" + versions + ")";
  }
  if (auto i = firstDiffering(m)) return name + ": " + fieldText(*i) + " differs from the sender's (" + versions + ")";
  return std::nullopt;  // a newer sender: its fields @m.. are unknown here and ignored
}

}  // namespace shmbus
