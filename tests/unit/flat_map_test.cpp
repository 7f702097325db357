// Unit tests of the router's open-addressing map (lib/src/common/flat_map.hpp): every operation
// checked against std::unordered_map over a long random sequence, with a well-spread hash and with
// hashes that collide on purpose (long probe runs, wrap-around, backward-shift deletion).
#include "common/flat_map.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <unordered_map>

using shmbus::detail::FlatMap;

namespace {

struct Identity {
  std::uint64_t operator()(std::uint64_t k) const noexcept { return k; }
};
/// Every key hashes to one of four homes: runs of hundreds of entries that wrap the array.
struct FourHomes {
  std::uint64_t operator()(std::uint64_t k) const noexcept { return k % 4; }
};

template <class Hash>
void againstReference(std::uint64_t keySpace, int ops) {
  FlatMap<std::uint64_t, std::uint64_t, Hash> m;
  std::unordered_map<std::uint64_t, std::uint64_t> ref;
  std::mt19937_64 rng(42);
  for (int i = 0; i < ops; ++i) {
    const std::uint64_t k = rng() % keySpace;
    switch (rng() % 3) {
      case 0:
        m[k] = static_cast<std::uint64_t>(i);
        ref[k] = static_cast<std::uint64_t>(i);
        break;
      case 1:
        REQUIRE(m.erase(k) == (ref.erase(k) == 1));
        break;
      default: {
        const std::uint64_t* v = m.find(k);
        auto it = ref.find(k);
        REQUIRE((v != nullptr) == (it != ref.end()));
        if (v != nullptr) REQUIRE(*v == it->second);
      }
    }
    REQUIRE(m.size() == ref.size());
  }
  for (auto& [k, v] : ref) {
    REQUIRE(m.find(k) != nullptr);
    CHECK(*m.find(k) == v);
  }
}

}  // namespace

TEST_CASE("insert, find and erase agree with std::unordered_map (spread hash, growing and shrinking)") {
  againstReference<Identity>(5000, 200000);
}

TEST_CASE("keys that collide on purpose: long runs, wrap-around and backward shift keep every key findable") {
  againstReference<FourHomes>(600, 100000);
}

TEST_CASE("operator[] inserts a value-initialised entry once; erase of an absent key changes nothing") {
  FlatMap<std::uint64_t, std::uint64_t, Identity> m;
  CHECK(m.find(7) == nullptr);
  CHECK(m[7] == 0);
  m[7] = 3;
  CHECK(m[7] == 3);
  CHECK(m.size() == 1);
  CHECK_FALSE(m.erase(8));
  CHECK(m.size() == 1);
  CHECK(m.erase(7));
  CHECK(m.find(7) == nullptr);
  CHECK(m.size() == 0);
}
