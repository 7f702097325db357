// An open-addressing hash map for the router's per-call indexes (docs/architecture.md §10): one
// flat array, linear probing, Fibonacci hashing, and backward-shift deletion (no tombstones), so a
// lookup touches one or two adjacent cache lines and neither insert nor erase allocates once the
// array has grown to twice the most keys ever held at once.
//
// Algorithm: linear probing with backward-shift deletion, Knuth, TAOCP vol. 3, §6.4 Algorithm R;
// Fibonacci hashing (multiply by 2^64/φ, keep the high bits), ibid. §6.4 "multiplicative hashing".
//
// Not thread-safe: its owner's lock guards it (the router mutex for the route table's indexes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace shmbus::detail {

/// Map from K to V. `Hash(k)` returns a 64-bit value; any well-spread or even sequential value
/// serves (the table multiplies it by 2^64/φ and takes the high bits). K and V must be default
/// constructible and movable. Capacity stays a power of two, at most half full.
template <class K, class V, class Hash>
class FlatMap {
 public:
  FlatMap() { rehash(16); }

  /// The value of `k`, or nullptr. Valid until the next insert or erase.
  V* find(const K& k) noexcept {
    for (std::size_t i = home(k);; i = (i + 1) & mask_) {
      Entry& e = slots_[i];
      if (!e.used) return nullptr;
      if (e.key == k) return &e.value;
    }
  }
  const V* find(const K& k) const noexcept { return const_cast<FlatMap*>(this)->find(k); }

  /// The value of `k`, inserted value-initialised when absent. Valid until the next insert or
  /// erase. Allocates only when the table grows (more than half full).
  V& operator[](const K& k) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    std::size_t i = home(k);
    for (; slots_[i].used; i = (i + 1) & mask_) {
      if (slots_[i].key == k) return slots_[i].value;
    }
    slots_[i].used = true;
    slots_[i].key = k;
    slots_[i].value = V{};
    ++size_;
    return slots_[i].value;
  }

  /// Removes `k`; false when it was absent. Shifts the following run back into the hole (so no
  /// tombstone lengthens later probes).
  bool erase(const K& k) noexcept {
    std::size_t i = home(k);
    for (;; i = (i + 1) & mask_) {
      if (!slots_[i].used) return false;
      if (slots_[i].key == k) break;
    }
    for (std::size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      Entry& e = slots_[j];
      if (!e.used) break;
      // e may move into the hole at i unless its home lies cyclically in (i, j].
      const std::size_t h = home(e.key);
      const bool homeBetween = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (homeBetween) continue;
      slots_[i].key = std::move(e.key);
      slots_[i].value = std::move(e.value);
      i = j;
    }
    slots_[i].used = false;
    slots_[i].value = V{};
    --size_;
    return true;
  }

  /// Keys held.
  std::size_t size() const noexcept { return size_; }

 private:
  struct Entry {
    K key{};
    V value{};
    bool used = false;
  };

  std::size_t home(const K& k) const noexcept {
    return static_cast<std::size_t>((Hash{}(k) * 0x9e3779b97f4a7c15ull) >> shift_);
  }

  void rehash(std::size_t capacity) {
    std::vector<Entry> old = std::move(slots_);
    slots_.assign(capacity, Entry{});
    mask_ = capacity - 1;
    shift_ = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
    size_ = 0;
    for (Entry& e : old) {
      if (e.used) (*this)[e.key] = std::move(e.value);
    }
  }

  std::vector<Entry> slots_;
  std::size_t mask_ = 0;
  unsigned shift_ = 64;
  std::size_t size_ = 0;
};

}  // namespace shmbus::detail
