// shmbus-inspect: watch a running bus (docs/architecture.md §14), like `busctl monitor`.
//   shmbus-inspect BUS tail [--channel C] [--role R] [--json] [--count N] [--duration S]
// prints one line per trace event the supervisor records (human form, or JSON Lines with
// --json) until Ctrl-C, --count events, --duration seconds, or the bus stops.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

#include "shmbus/inspect.hpp"

namespace {

struct TailOptions {
  std::string channel;
  std::string role;
  bool json = false;
  std::uint64_t count = 0;  // 0 = no limit
  double durationS = 0;     // 0 = no limit
};

bool selected(const shmbus::TraceEvent& e, const TailOptions& o) {
  if (!o.channel.empty() && e.channel != o.channel) return false;
  if (!o.role.empty() && e.sourceRole != o.role && e.targetRole != o.role) return false;
  return true;
}

int tail(const std::string& bus, const std::string& socket, const TailOptions& o) {
  auto insp = shmbus::Inspector::attach(bus, socket);
  if (!insp) {
    fmt::print(stderr, "shmbus-inspect: {}\n", insp.error().toString());
    return 1;
  }
  fmt::print(stderr, "shmbus-inspect: tailing bus '{}'\n", bus);
  const auto start = std::chrono::steady_clock::now();
  const auto end = o.durationS > 0 ? start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                 std::chrono::duration<double>(o.durationS))
                                   : std::chrono::steady_clock::time_point::max();
  std::uint64_t printed = 0, lostReported = 0;
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) break;
    const auto slice = std::min<std::chrono::steady_clock::duration>(end - now, std::chrono::seconds(1));
    auto e = (*insp)->next(std::chrono::duration_cast<std::chrono::milliseconds>(slice));
    if (!e) {
      if (e.code() == shmbus::ErrorCode::BusClosed) {
        fmt::print(stderr, "shmbus-inspect: {}\n", e.error().message);
        return 0;
      }
      fmt::print(stderr, "shmbus-inspect: {}\n", e.error().toString());
      return 1;
    }
    if (const std::uint64_t lost = (*insp)->lost(); lost != lostReported) {
      if (o.json) {
        fmt::print("{{\"kind\":\"lost\",\"count\":{}}}\n", lost - lostReported);
      } else {
        fmt::print("... {} events lost: this inspector fell behind the bus\n", lost - lostReported);
      }
      lostReported = lost;
    }
    if (!*e || !selected(**e, o)) continue;
    fmt::print("{}\n", o.json ? shmbus::toJson(**e) : shmbus::toText(**e));
    std::fflush(stdout);
    if (o.count != 0 && ++printed >= o.count) break;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus-inspect: watch a running libshmbus bus"};
  std::string bus, socket;
  app.add_option("bus", bus, "bus name")->required();
  app.add_option("-s,--socket", socket, "the bus's socket (default: $XDG_RUNTIME_DIR/shmbus-<bus>.sock)");
  app.require_subcommand(1);
  TailOptions tailOpts;
  auto* tailCmd = app.add_subcommand("tail", "print every message and call as it happens");
  tailCmd->add_option("-c,--channel", tailOpts.channel, "only events of this channel");
  tailCmd->add_option("-r,--role", tailOpts.role, "only events from or to this role");
  tailCmd->add_flag("-j,--json", tailOpts.json, "JSON Lines instead of text");
  tailCmd->add_option("-n,--count", tailOpts.count, "stop after this many events");
  tailCmd->add_option("-d,--duration", tailOpts.durationS, "stop after this many seconds");
  CLI11_PARSE(app, argc, argv);
  if (tailCmd->parsed()) return tail(bus, socket, tailOpts);
  return 2;
}
