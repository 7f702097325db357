// The soak's counts, checks and output (the table and the one-line summary).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "soak.hpp"
#include "soak_probe.hpp"
#include "soak_run.hpp"

namespace shmbus::soak {

/// Ring capacity of every window of the soak, bytes (inbox and outbox each): small, so that the
/// touched ring pages (RssShmem) stay far below the heap bound.
inline constexpr std::uint32_t kRingBytes = 1u << 16;

/// Everything a run counted, and the failures found; printed at the end.
struct Report {
  double seconds = 0;                 ///< how long the churn lasted, s
  std::uint64_t launches = 0;         ///< window processes started
  std::uint64_t spawned = 0;          ///< of which by Supervisor::spawn
  std::uint64_t connected = 0;        ///< of which as children that connect by path
  std::uint64_t kills = 0;            ///< kill -9 of a registered window
  std::uint64_t handshakeKills = 0;   ///< kill -9 of a window before it registered (or reconnecting)
  std::uint64_t reconnects = 0;       ///< windows that closed and connected again in one process
  std::uint64_t exits = 0;            ///< spawned windows that exited by themselves
  std::uint64_t lateReplies = 0;      ///< RouterStats::lateReplies at the end
  Tally tally{};                      ///< results by operation and code (windows' and main's)
  Snapshot start, end;                ///< the supervisor process in the two steady states
  bool compared = false;              ///< both snapshots taken (the run got to its end)
  std::size_t routes = 0;             ///< direct routes' ports open at the end snapshot
  std::vector<std::string> failures;  ///< what failed, one line each

  /// Records a failure.
  void fail(std::string what);
  /// Counts one result of `op`.
  void count(Op op, unsigned code);
  /// Counts a broadcast: Ok per window reached, the failure's code per window that was not.
  void bump(Op op, const Result<BroadcastReport>& r);
  /// Adds the windows' tallies and fails on every code churn does not explain.
  void add(const Tally& windows);
  /// Takes the router's counters; fails on bad messages, spoofed replies, unanswered calls.
  void router(const RouterStats& stats);
  /// Compares the snapshots: descriptors, mappings and the bus's segments held equal, memory within bounds.
  /// `routes`: the direct routes' ports open at the end (Supervisor::ports, docs/architecture.md
  /// §19): each is one more segment mapping of the supervisor, a few pages of it touched.
  void compare(const Snapshot& s0, const Snapshot& s1, const SoakOptions& o, std::size_t routes);
  /// Prints the tables, the failures and the summary line; the exit status (0 = pass).
  int print(const SoakOptions& o) const;
};

}  // namespace shmbus::soak
