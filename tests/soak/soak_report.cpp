// The soak's checks and output.
#include "soak_report.hpp"

#include <fmt/core.h>

namespace shmbus::soak {

void Report::fail(std::string what) { failures.push_back(std::move(what)); }

void Report::count(Op op, unsigned code) { ++tally[static_cast<unsigned>(op)][code]; }

void Report::bump(Op op, const Result<BroadcastReport>& r) {
  if (!r) return count(op, static_cast<unsigned>(r.code()));
  tally[static_cast<unsigned>(op)][0] += r->delivered;
  for (const auto& [id, error] : r->failed) count(op, static_cast<unsigned>(error.code));
}

void Report::add(const Tally& windows) {
  for (unsigned op = 0; op < kOps; ++op) {
    for (unsigned c = 0; c < kCodes; ++c) tally[op][c] += windows[op][c];
  }
  for (unsigned op = 0; op < kOps; ++op) {
    for (unsigned c = 0; c < kCodes; ++c) {
      if (tally[op][c] != 0 && !expected(static_cast<Op>(op), c)) {
        fail(fmt::format("{}: {} × {} (not explained by churn)", opName(static_cast<Op>(op)), tally[op][c], codeName(c)));
      }
    }
  }
}

void Report::router(const RouterStats& s) {
  lateReplies = s.lateReplies;
  if (s.badMessages != 0) fail(fmt::format("router: {} windows disconnected for bad messages", s.badMessages));
  if (s.spoofedReplies != 0) fail(fmt::format("router: {} spoofed replies", s.spoofedReplies));
  if (s.unansweredCalls != 0) fail(fmt::format("router: {} unanswered calls", s.unansweredCalls));
}

namespace {
// What the supervisor touches of a direct route's port (docs/architecture.md §19): the segment's
// header page, the two ring control blocks' pages and the stats table's.
constexpr std::size_t kRouteTouchedKiB = 16;

// Bound of the touched ring pages: every window's two rings and its segment's first page, and
// what the supervisor touches of each direct route's port.
std::size_t shmemBoundKiB(const SoakOptions& o, std::size_t routes) {
  return o.windows * (2 * kRingBytes / 1024 + 4) + routes * kRouteTouchedKiB;
}
}  // namespace

void Report::compare(const Snapshot& s0, const Snapshot& s1, const SoakOptions& o, std::size_t openRoutes) {
  start = s0;
  end = s1;
  compared = true;
  routes = openRoutes;
  auto same = [&](const char* what, std::size_t a, std::size_t b) {
    if (a != b) fail(fmt::format("{}: {} at the start, {} at the end", what, a, b));
  };
  same("open descriptors", s0.fds, s1.fds);
  // A direct route's port lives as long as both its windows, which are live in both snapshots
  // (none at the start, before any call), and one that ended as long as its caller
  // (RouterStats::retiredRoutes, counted in `openRoutes`): one mapping each, whatever churn came
  // before.
  same("mappings", s0.maps + routes, s1.maps);
  same("segment mappings", s0.segMaps + routes, s1.segMaps);
  same("segment descriptors", s0.segFds, s1.segFds);
  same("threads", s0.threads, s1.threads);
  same("child processes", s0.children, s1.children);
  same("zombie children", s0.zombies, s1.zombies);
  const double grownMiB = (static_cast<double>(s1.anonKiB) - static_cast<double>(s0.anonKiB)) / 1024;
  if (grownMiB > o.rssBoundMiB) {
    fail(fmt::format("RssAnon grew by {:.1f} MiB (bound {:g} MiB)", grownMiB, o.rssBoundMiB));
  }
  if (s1.shmemKiB > shmemBoundKiB(o, routes)) {
    fail(fmt::format("RssShmem {} KiB is above the rings' {} KiB", s1.shmemKiB, shmemBoundKiB(o, routes)));
  }
}

int Report::print(const SoakOptions& o) const {
  std::uint64_t calls = 0, ok = 0, explained = 0, unexplained = 0;
  std::vector<unsigned> columns{0};
  for (unsigned c = 1; c < kCodes; ++c) {
    bool used = false;
    for (unsigned op = 0; op < kOps; ++op) used = used || tally[op][c] != 0;
    if (used) columns.push_back(c);
  }
  fmt::print("\n{:<30} {:>10}", "operation", "total");
  for (unsigned c : columns) fmt::print(" {:>12}", codeName(c));
  fmt::print("\n");
  for (unsigned op = 0; op < kOps; ++op) {
    std::uint64_t total = 0;
    for (unsigned c = 0; c < kCodes; ++c) total += tally[op][c];
    fmt::print("{:<30} {:>10}", opName(static_cast<Op>(op)), total);
    for (unsigned c : columns) fmt::print(" {:>12}", tally[op][c]);
    fmt::print("\n");
    calls += total;
    ok += tally[op][0];
    for (unsigned c = 1; c < kCodes; ++c) (expected(static_cast<Op>(op), c) ? explained : unexplained) += tally[op][c];
  }
  fmt::print("\nwindows: {} started ({} spawned, {} connected by path), {} kill -9 registered, {} kill -9 in the "
             "handshake, {} reconnects, {} exits; {} late replies\n",
             launches, spawned, connected, kills, handshakeKills, reconnects, exits, lateReplies);
  if (compared) {
    fmt::print("\n{:<28} {:>10} {:>10} {:>8}  rule\n", "supervisor process", "start", "end", "delta");
    auto row = [](const char* what, std::size_t a, std::size_t b, const std::string& rule) {
      fmt::print("{:<28} {:>10} {:>10} {:>+8}  {}\n", what, a, b, static_cast<long long>(b) - static_cast<long long>(a), rule);
    };
    row("open descriptors", start.fds, end.fds, "equal");
    row("mappings", start.maps, end.maps, fmt::format("+ {} direct routes' ports (open or retired)", routes));
    row("  of the bus's segments", start.segMaps, end.segMaps, fmt::format("+ {} direct routes' ports (open or retired)", routes));
    row("segment descriptors", start.segFds, end.segFds, "equal");
    row("threads", start.threads, end.threads, "equal");
    row("child processes", start.children, end.children, "equal");
    row("  of which zombies", start.zombies, end.zombies, "equal");
    row("VmRSS KiB", start.rssKiB, end.rssKiB, "RssAnon + RssFile + RssShmem");
    row("  RssAnon KiB", start.anonKiB, end.anonKiB, fmt::format("growth <= {:g} MiB", o.rssBoundMiB));
    row("  RssFile KiB", start.fileKiB, end.fileKiB, "code pages, not checked");
    row("  RssShmem KiB", start.shmemKiB, end.shmemKiB, fmt::format("<= {} KiB (the rings, the routes' control pages)", shmemBoundKiB(o, routes)));
  }
  for (const auto& f : failures) fmt::print(stderr, "soak FAIL: {}\n", f);
  const bool pass = failures.empty() && compared;
  fmt::print("\nsoak {}: {:.1f} s, {} windows, seed {}: {} calls ({} ok, {} explained by churn, {} not), {} kill -9; "
             "fds {}→{}, maps {}→{}, segment maps {}→{}, segment fds {}→{}, RssAnon {:.1f}→{:.1f} MiB\n",
             pass ? "PASS" : "FAIL", seconds, o.windows, o.seed, calls, ok, explained, unexplained,
             kills + handshakeKills, start.fds, end.fds, start.maps, end.maps, start.segMaps, end.segMaps,
             start.segFds, end.segFds, start.anonKiB / 1024.0, end.anonKiB / 1024.0);
  return pass ? 0 : 1;
}

}  // namespace shmbus::soak
