// A stream of self-checking records (record_pattern.hpp) through one ring: the producing loop and
// the verifying consuming loop that the multiproc and stress suites run in their processes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "record_pattern.hpp"
#include "ring/ring.hpp"
#include "shm_test.hpp"

namespace shmbus::test {

/// Publishes records [0, total) of recordSize(seq, maxBody) bytes, each claim waiting (spin then
/// park per `policy`) at most `limit` for space; calls `after()` after each record. A claim that
/// fails or waits until its deadline throws ChildFailure.
template <typename After>
void produceRecords(detail::RingProducer& p, std::uint64_t total, std::size_t maxBody, detail::SpinPolicy policy,
                    std::chrono::nanoseconds limit, After&& after) {
  for (std::uint64_t seq = 0; seq < total; ++seq) {
    const std::size_t n = recordSize(seq, maxBody);
    auto c = claimWithin(p, n, policy, limit);
    childCheck(c.ok(), "producer, record " + std::to_string(seq) + ": " + c.error().toString());
    writeRecord(c->body, n, seq);
    p.publish(*c, n);
    after();
  }
}

/// What a consuming loop saw.
struct Received {
  std::uint64_t records = 0;
  std::uint64_t bytes = 0;
  std::string problem;  ///< "" when every record arrived, in order and intact
};

/// Reads and verifies records [0, total) in order, waiting (per `policy`) at most `limit` for each
/// when the ring runs dry, and releasing everything read whenever it does. `after(consumer, view)`
/// runs after each verified record (to release early, or pause). Stops at the first problem.
template <typename After>
Received consumeRecords(detail::RingConsumer& c, std::uint64_t total, std::size_t maxBody, detail::SpinPolicy policy,
                        std::chrono::nanoseconds limit, After&& after) {
  Received got;
  while (got.records < total) {
    auto r = c.tryRead();
    if (!r) {
      got.problem = r.error().toString();
      return got;
    }
    if (!r->has_value()) {
      c.releaseAll();
      if (!waitForData(c, policy, limit)) {
        got.problem =
            "no record " + std::to_string(got.records) + " before the deadline (lost wake-up or dead producer)";
        return got;
      }
      continue;
    }
    const detail::RecordView& v = **r;
    got.problem = verifyRecord(v.body, v.bodyBytes, got.records, maxBody);
    if (!got.problem.empty()) return got;
    ++got.records;
    got.bytes += v.bodyBytes;
    after(c, v);
  }
  c.releaseAll();
  return got;
}

}  // namespace shmbus::test
