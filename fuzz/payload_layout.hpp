// The typed receiver the payload harness checks payloads against (payload_fuzzer.cpp), shared
// with make_seeds.cpp so seeds carry its fingerprint.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "shmbus/contract.hpp"

namespace shmbus::fuzz {

/// The prefix hash of the first `n` of the field descriptions `texts`.
template <std::size_t N>
constexpr std::uint64_t prefixOf(const std::array<std::string_view, N>& texts, std::size_t n) {
  std::uint64_t h = kContractSeed;
  for (std::size_t i = 0; i < n; ++i) h = contractNextPrefix(h, contractTextHash(texts[i]));
  return h;
}

/// Descriptions of a receiver's bus.capnp ErrorInfo (standing for what capnpc-shmbus writes;
/// only their hashes matter to the rule).
inline constexpr std::array<std::string_view, 3> kPayloadTexts{"@0 code :UInt16 data0", "@1 message :Text ptr0",
                                                               "@2 remoteType :Text ptr1"};
/// Its fields.
inline constexpr std::array<ContractField, 3> kPayloadFields{{{"code", 0, prefixOf(kPayloadTexts, 1)},
                                                              {"message", 1, prefixOf(kPayloadTexts, 2)},
                                                              {"remoteType", 2, prefixOf(kPayloadTexts, 3)}}};
/// The layout readChecked gets.
inline constexpr ContractLayout kPayloadLayout{"fuzzed ErrorInfo", kPayloadFields};

}  // namespace shmbus::fuzz
