// Self-checking record bodies for transfer tests: record `seq` has a size and content both sides
// derive from `seq` alone, and carries its sequence number and a checksum of its payload.
//
//   body: [seq: 8 bytes LE][checksum of payload: 8 bytes LE][payload ...]
//
// A body shorter than 16 bytes holds the first bytes of that header (the payload is then empty
// and its checksum is the FNV offset basis), so even a 1-byte record is checked.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace shmbus::test {

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A count from the environment variable `name` (for a quicker local run), else `fallback`.
inline std::uint64_t countFromEnv(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

/// Body size of record `seq`: 1 byte to `maxBody`, skewed small (85% <= 64 B, 13% <= 1 KiB,
/// 1.9% <= 8 KiB, 0.1% up to the maximum), with the extremes forced now and then.
inline std::size_t recordSize(std::uint64_t seq, std::size_t maxBody) {
  if (seq % 100'003 == 7) return maxBody;
  if (seq % 1'009 == 3) return 1;
  const std::uint64_t h = splitmix64(seq);
  const std::uint64_t r = h % 1000;
  const std::uint64_t x = h >> 10;
  std::size_t n = 0;
  if (r < 850) {
    n = 1 + x % 64;
  } else if (r < 980) {
    n = 65 + x % 960;
  } else if (r < 999) {
    n = 1025 + x % 7168;
  } else {
    n = 8193 + x % (maxBody - 8192);
  }
  return n < maxBody ? n : maxBody;
}

namespace detail_pattern {
constexpr std::uint64_t kFnvBasis = 0xcbf29ce484222325ull;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ull;

inline std::uint64_t payloadWord(std::uint64_t seq, std::size_t k) {
  return seq * 0x9e3779b97f4a7c15ull + k * 0xff51afd7ed558ccdull;
}

/// Word-wise FNV-1a over bytes (the tail as a zero-padded word).
inline std::uint64_t checksum(const std::uint8_t* p, std::size_t n) {
  std::uint64_t h = kFnvBasis;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * kFnvPrime;
  }
  if (i < n) {
    std::uint64_t w = 0;
    std::memcpy(&w, p + i, n - i);
    h = (h ^ w) * kFnvPrime;
  }
  return h;
}
}  // namespace detail_pattern

/// Writes record `seq` into `body` of `n` bytes.
inline void writeRecord(std::uint8_t* body, std::size_t n, std::uint64_t seq) {
  std::uint8_t header[16];
  std::uint64_t sum = detail_pattern::kFnvBasis;
  if (n > 16) {
    std::uint8_t* payload = body + 16;
    const std::size_t len = n - 16;
    std::size_t k = 0;
    for (; (k + 1) * 8 <= len; ++k) {
      const std::uint64_t w = detail_pattern::payloadWord(seq, k);
      std::memcpy(payload + k * 8, &w, 8);
    }
    const std::uint64_t w = detail_pattern::payloadWord(seq, k);
    std::memcpy(payload + k * 8, &w, len - k * 8);
    sum = detail_pattern::checksum(payload, len);
  }
  std::memcpy(header, &seq, 8);
  std::memcpy(header + 8, &sum, 8);
  std::memcpy(body, header, n < 16 ? n : 16);
}

/// Checks that `body` of `n` bytes is record `seq` of size recordSize(seq, maxBody). Returns ""
/// or what is wrong.
inline std::string verifyRecord(const std::uint8_t* body, std::size_t n, std::uint64_t seq, std::size_t maxBody) {
  const std::size_t want = recordSize(seq, maxBody);
  if (n != want) {
    return "record " + std::to_string(seq) + " has " + std::to_string(n) + " bytes, expected " + std::to_string(want);
  }
  std::uint64_t gotSeq = 0;
  std::memcpy(&gotSeq, body, n < 8 ? n : 8);
  const std::uint64_t wantSeq = n < 8 ? seq & ((std::uint64_t{1} << (8 * n)) - 1) : seq;
  if (gotSeq != wantSeq) return "record " + std::to_string(seq) + " carries sequence " + std::to_string(gotSeq);
  const std::uint64_t sum = n > 16 ? detail_pattern::checksum(body + 16, n - 16) : detail_pattern::kFnvBasis;
  if (n > 8) {
    std::uint64_t gotSum = 0;
    std::memcpy(&gotSum, body + 8, (n < 16 ? n : 16) - 8);
    const std::uint64_t wantSum = n < 16 ? sum & ((std::uint64_t{1} << (8 * (n - 8))) - 1) : sum;
    if (gotSum != wantSum) return "record " + std::to_string(seq) + " fails its checksum";
  }
  return "";
}

}  // namespace shmbus::test
