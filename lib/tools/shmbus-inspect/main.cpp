// shmbus-inspect: watch a running bus (docs/architecture.md §14), like `busctl monitor|status`.
//   shmbus-inspect BUS tail [--channel C] [--role R] [--json] [--count N] [--duration S]
//                           [--payloads] [--schema FILE [-I DIR]...]
//     one line per trace event the supervisor records (human form, or JSON Lines with --json)
//     until Ctrl-C, --count events, --duration seconds, or the bus stops; with --payloads the
//     captured request, reply or message under it (payload.hpp: Cap'n Proto text, or JSON with
//     --json, for typed channels FILE declares or typed stubs announced to the bus (FILE wins);
//     else size and hex);
//   shmbus-inspect BUS record -o FILE [--channel C] [--role R] [--count N] [--duration S]
//     the same events as a Chrome trace-event JSON file (ChromeTrace: ui.perfetto.dev,
//     chrome://tracing), written when recording ends; prints the events per kind;
//   shmbus-inspect BUS call TARGET Interface.method '(capnp text)' [--schema FILE [-I DIR]...]
//     invokes a typed method of role TARGET ("main": the main process) and prints the reply as
//     Cap'n Proto text (call.hpp; exit 1 when the call fails, 2 for a bad schema or params);
//   shmbus-inspect BUS windows          the registry: id, role, pid, uid, how it got its role (open,
//                                       invited, spawned), inbox fill, calls;
//   shmbus-inspect BUS stats [--watch S]  per channel calls, messages, errors, p50/p99, late
//     replies, and the calls in flight (every S seconds with --watch).
// Exit status: 0, or 1 when the bus cannot be inspected (the error on stderr).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <functional>
#include <set>
#include <thread>

#include "call.hpp"
#include "payload.hpp"
#include "shmbus/inspect.hpp"

namespace {

struct TailOptions {
  std::string channel;
  std::string role;
  bool json = false;
  std::uint64_t count = 0;  // 0 = no limit
  double durationS = 0;     // 0 = no limit
  bool payloads = false;    // ask for captured payloads
  std::string schemaFile;   // decode payloads and name typed channels with this schema
  std::vector<std::string> importDirs;
};

volatile std::sig_atomic_t interrupted = 0;  // SIGINT/SIGTERM: finish (record writes its file)
extern "C" void onInterrupt(int) { interrupted = 1; }

bool selected(const shmbus::TraceEvent& e, const TailOptions& o) {
  if (!o.channel.empty() && e.channel != o.channel) return false;
  if (!o.role.empty() && e.sourceRole != o.role && e.targetRole != o.role) return false;
  return true;
}

std::unique_ptr<shmbus::Inspector> attachOrSay(const std::string& bus, const std::string& socket,
                                               bool payloads = false);

/// What the first payload of `e` is: a call's request, or a one-way message.
const char* requestName(const shmbus::TraceEvent& e) {
  return e.kind == shmbus::TraceKind::Invoke || e.kind == shmbus::TraceKind::Cancel ? "request" : "message";
}

/// The printer of `o`'s schema (none: sizes and hex), or null after saying why the schema
/// cannot be read.
std::unique_ptr<shmbus::inspect::PayloadPrinter> printerFor(const TailOptions& o) {
  std::unique_ptr<shmbus::inspect::SchemaFile> schema;
  if (!o.schemaFile.empty()) {
    try {
      schema = std::make_unique<shmbus::inspect::SchemaFile>(o.schemaFile, o.importDirs);
    } catch (const kj::Exception& e) {
      fmt::print(stderr, "shmbus-inspect: {}: {}\n", o.schemaFile, e.getDescription().cStr());
      return nullptr;
    }
  }
  return std::make_unique<shmbus::inspect::PayloadPrinter>(std::move(schema));
}

/// Attaches as `o` says and makes its printer; null (said why) when either fails. Tells on
/// stderr when payloads were asked for and refused.
std::unique_ptr<shmbus::Inspector> attachFor(const std::string& bus, const std::string& socket, const TailOptions& o,
                                             std::unique_ptr<shmbus::inspect::PayloadPrinter>& printer) {
  printer = printerFor(o);
  if (!printer) return nullptr;
  auto insp = attachOrSay(bus, socket, o.payloads);
  if (insp && o.payloads && !insp->payloadsGranted()) {
    fmt::print(stderr, "shmbus-inspect: no payloads: the supervisor gives them only to its own user, and only while "
                       "its policy sets inspect-payloads\n");
  }
  return insp;
}

/// Reads `insp`'s events until Ctrl-C, o.count selected events, o.durationS seconds or the bus
/// stops: `onLost(n)` when n more were lost, `onEvent(e)` for each event `o` selects. Returns the
/// exit status (1: an error other than the bus closing, printed).
int follow(shmbus::Inspector& insp, const TailOptions& o, shmbus::inspect::PayloadPrinter& printer,
           const std::function<void(std::uint64_t)>& onLost,
           const std::function<void(const shmbus::TraceEvent&)>& onEvent) {
  std::signal(SIGINT, onInterrupt);
  std::signal(SIGTERM, onInterrupt);
  const auto start = std::chrono::steady_clock::now();
  const auto end = o.durationS > 0 ? start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                 std::chrono::duration<double>(o.durationS))
                                   : std::chrono::steady_clock::time_point::max();
  std::uint64_t taken = 0, lostReported = 0;
  std::set<std::uint64_t> asked;  // channels the bus was asked about (announced schemas)
  constexpr std::size_t kMaxAsked = 4096;
  while (interrupted == 0) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) break;
    // Short slices, so that Ctrl-C is seen soon.
    const auto slice = std::min<std::chrono::steady_clock::duration>(end - now, std::chrono::milliseconds(200));
    auto e = insp.next(std::chrono::duration_cast<std::chrono::milliseconds>(slice));
    if (!e) {
      if (e.code() == shmbus::ErrorCode::BusClosed) {
        fmt::print(stderr, "shmbus-inspect: {}\n", e.error().message);
        return 0;
      }
      fmt::print(stderr, "shmbus-inspect: {}\n", e.error().toString());
      return 1;
    }
    if (const std::uint64_t lost = insp.lost(); lost != lostReported) {
      onLost(lost - lostReported);
      lostReported = lost;
    }
    if (!*e) continue;
    // A channel with payloads (or no name) the printer cannot decode yet: typed stubs announce
    // their contract before their first message on it, so the bus may know it now. Asked once
    // per channel (an untyped channel stays unknown).
    if (o.payloads && ((*e)->request || (*e)->reply || (*e)->channel.starts_with('#')) &&
        !printer.knows((*e)->channelId) && asked.size() < kMaxAsked && asked.insert((*e)->channelId).second) {
      if (auto s = insp.schemas(); s) {
        printer.addAnnounced(std::move(*s));
      } else if (s.code() != shmbus::ErrorCode::BusClosed) {
        fmt::print(stderr, "shmbus-inspect: no announced schemas: {}\n", s.error().toString());
      }
    }
    // A typed channel only windows named shows as "#<hex id>": the schema knows its method.
    if (const std::string m = printer.methodName((*e)->channelId); !m.empty() && (*e)->channel.starts_with('#')) {
      (*e)->channel = m;
    }
    if (!selected(**e, o)) continue;
    onEvent(**e);
    if (o.count != 0 && ++taken >= o.count) break;
  }
  return 0;
}

int tail(const std::string& bus, const std::string& socket, const TailOptions& o) {
  std::unique_ptr<shmbus::inspect::PayloadPrinter> printer;
  auto insp = attachFor(bus, socket, o, printer);
  if (!insp) return printer ? 1 : 2;
  fmt::print(stderr, "shmbus-inspect: tailing bus '{}'\n", bus);
  auto lost = [&](std::uint64_t n) {
    if (o.json) {
      fmt::print("{{\"kind\":\"lost\",\"count\":{}}}\n", n);
    } else {
      fmt::print("... {} events lost: this inspector fell behind the bus\n", n);
    }
  };
  return follow(*insp, o, *printer, lost, [&](const shmbus::TraceEvent& e) {
    if (o.json) {
      std::string line = shmbus::toJson(e);
      line.pop_back();  // the closing brace: the payloads go inside
      if (e.request) line += fmt::format(",\"{}\":{}", requestName(e), printer->json(*e.request, e.channelId, false));
      if (e.reply) line += ",\"reply\":" + printer->json(*e.reply, e.channelId, true);
      fmt::print("{}}}\n", line);
    } else {
      fmt::print("{}\n", shmbus::toText(e));
      if (e.request) fmt::print("    {:<8}{}\n", requestName(e), printer->text(*e.request, e.channelId, false));
      if (e.reply) fmt::print("    {:<8}{}\n", "reply", printer->text(*e.reply, e.channelId, true));
    }
    std::fflush(stdout);
  });
}

int record(const std::string& bus, const std::string& socket, const TailOptions& o, const std::string& path) {
  std::unique_ptr<shmbus::inspect::PayloadPrinter> printer;
  auto insp = attachFor(bus, socket, o, printer);
  if (!insp) return printer ? 1 : 2;
  fmt::print(stderr, "shmbus-inspect: recording bus '{}' into {} (Ctrl-C to stop)\n", bus, path);
  shmbus::ChromeTrace trace;
  const int status = follow(*insp, o, *printer, [](std::uint64_t) {}, [&](const shmbus::TraceEvent& e) {
    trace.add(e);
    if (e.request) trace.addText(e.seq, requestName(e), printer->text(*e.request, e.channelId, false));
    if (e.reply) trace.addText(e.seq, "reply", printer->text(*e.reply, e.channelId, true));
  });
  trace.setLost(insp->lost());
  if (auto w = trace.write(path); !w) {
    fmt::print(stderr, "shmbus-inspect: {}\n", w.error().toString());
    return 1;
  }
  std::string counts;
  for (const auto& [kind, n] : trace.countsByKind()) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", kind, n);
  fmt::print("wrote {} events to {} ({}); {} lost\n", trace.size(), path, counts.empty() ? "none" : counts,
             insp->lost());
  fmt::print("open it in https://ui.perfetto.dev or chrome://tracing\n");
  return status;
}

std::unique_ptr<shmbus::Inspector> attachOrSay(const std::string& bus, const std::string& socket, bool payloads) {
  auto insp = shmbus::Inspector::attach(bus, shmbus::InspectOptions{.socketPath = socket, .payloads = payloads});
  if (!insp) {
    fmt::print(stderr, "shmbus-inspect: {}\n", insp.error().toString());
    return nullptr;
  }
  return std::move(*insp);
}

int windows(const std::string& bus, const std::string& socket) {
  auto insp = attachOrSay(bus, socket);
  if (!insp) return 1;
  auto s = insp->snapshot();
  if (!s) {
    fmt::print(stderr, "shmbus-inspect: {}\n", s.error().toString());
    return 1;
  }
  fmt::print("{:>4}  {:<16} {:>8} {:>6}  {:<8}  {:>15}  {:>7}\n", "ID", "ROLE", "PID", "UID", "HOW", "INBOX USED",
             "CALLS");
  for (const auto& w : s->windows) {
    fmt::print("{:>4}  {:<16} {:>8} {:>6}  {:<8}  {:>6} / {:>6}  {:>7}\n", w.id, w.role, w.pid, w.uid,
               shmbus::toString(w.admission), w.inboxUsedBytes, w.inboxBytes, w.pendingCalls);
    // Its ports, from either end: "port 3 on 'chan' → editor#4" (opened by it) or "← ..." (to it).
    // A direct route's port is the router's own path for routed calls (§19): counted below.
    for (const auto& p : s->ports) {
      if (p.route || (p.opener != w.id && p.acceptor != w.id)) continue;
      const bool opener = p.opener == w.id;
      const std::uint32_t peer = opener ? p.acceptor : p.opener;
      std::string peerName = fmt::format("window {}", peer);
      for (const auto& o : s->windows) {
        if (o.id == peer) peerName = fmt::format("{}#{}", o.role, o.id);
      }
      fmt::print("        port {} on '{}' {} {}{}\n", p.id, p.channel, opener ? "→" : "←", peerName,
                 p.accepted ? "" : " (offered)");
    }
  }
  const auto routes = std::count_if(s->ports.begin(), s->ports.end(), [](const auto& p) { return p.route; });
  fmt::print("{} windows, {} port(s), {} direct route(s), {} inspector(s){}\n", s->windows.size(),
             s->ports.size() - static_cast<std::size_t>(routes), routes, s->inspectors, s->truncated ? " (list cut)" : "");
  return 0;
}

void printStats(const shmbus::BusSnapshot& s) {
  fmt::print("{:<32} {:>9} {:>9} {:>9} {:>9} {:>6}  {}\n", "CHANNEL", "CALLS", "MESSAGES", "P50 MS", "P99 MS", "LATE",
             "ERRORS");
  for (const auto& c : s.stats.channels) {
    std::string errs;
    for (const auto& [code, n] : c.errors) errs += fmt::format("{}{} {}", errs.empty() ? "" : ", ", code, n);
    fmt::print("{:<32} {:>9} {:>9} {:>9.3f} {:>9.3f} {:>6}  {}\n", c.channel, c.calls, c.messages, c.p50Ms, c.p99Ms,
               c.lateReplies, errs.empty() ? "-" : errs);
  }
  for (const auto& p : s.stats.pending) {
    fmt::print("pending: {} {}#{} -> {}#{} waiting {:.1f} ms\n", p.channel, p.sourceRole, p.sourceId, p.targetRole,
               p.targetId, p.waitingMs);
  }
  fmt::print("late replies {}, spoofed replies {}, undeliverable {}, bad messages {}, unanswered {}\n",
             s.stats.lateReplies, s.stats.spoofedReplies, s.stats.undeliverable, s.stats.badMessages,
             s.stats.unansweredCalls);
}

int stats(const std::string& bus, const std::string& socket, double watchS) {
  auto insp = attachOrSay(bus, socket);
  if (!insp) return 1;
  for (;;) {
    auto s = insp->snapshot();
    if (!s) {
      fmt::print(stderr, "shmbus-inspect: {}\n", s.error().toString());
      return s.code() == shmbus::ErrorCode::BusClosed && watchS > 0 ? 0 : 1;
    }
    printStats(*s);
    std::fflush(stdout);
    if (watchS <= 0) return 0;
    std::this_thread::sleep_for(std::chrono::duration<double>(watchS));  // the user's refresh period
    fmt::print("\n");
  }
}

/// The options tail and record share: which events, and when to stop.
void addFollowOptions(CLI::App& cmd, TailOptions& o) {
  cmd.add_option("-c,--channel", o.channel, "only events of this channel");
  cmd.add_option("-r,--role", o.role, "only events from or to this role");
  cmd.add_option("-n,--count", o.count, "stop after this many events");
  cmd.add_option("-d,--duration", o.durationS, "stop after this many seconds");
  cmd.add_flag("-p,--payloads", o.payloads,
               "ask for captured payloads (the supervisor's SupervisorOptions::payloadCapture; policy inspect-payloads)");
  cmd.add_option("--schema", o.schemaFile, "decode payloads of the typed channels this .capnp file declares");
  cmd.add_option("-I,--import-path", o.importDirs, "a directory searched for the schema's absolute imports");
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
  addFollowOptions(*tailCmd, tailOpts);
  tailCmd->add_flag("-j,--json", tailOpts.json, "JSON Lines instead of text");
  TailOptions recordOpts;
  std::string recordPath;
  auto* recordCmd = app.add_subcommand("record", "write a Perfetto / chrome://tracing timeline of the bus");
  recordCmd->add_option("-o,--output", recordPath, "the trace file to write (Chrome trace-event JSON)")->required();
  addFollowOptions(*recordCmd, recordOpts);
  shmbus::inspect::CallRequest callRq;
  long timeoutMs = 0;
  auto* callCmd = app.add_subcommand("call", "invoke a typed method and print its reply (Cap'n Proto text)");
  callCmd->add_option("target", callRq.target, "the role that handles it, or main")->required();
  callCmd->add_option("channel", callRq.channel, "Interface.method, as in the schema")->required();
  callCmd->add_option("params", callRq.params, "the params in Cap'n Proto text, e.g. '(a = 1, b = 2)'")
      ->default_val("()");
  callCmd->add_option("--schema", callRq.schemaFile,
                      "the .capnp file that declares the interface (default: the contracts the bus's typed stubs announced)");
  callCmd->add_option("-I,--import-path", callRq.importDirs, "a directory searched for absolute imports");
  callCmd->add_option("--as", callRq.role, "the role this tool's window registers with (default shmbus-inspect)");
  callCmd->add_option("-t,--timeout", timeoutMs, "ms (default: the method's $timeoutMs, else 5000)")
      ->check(CLI::NonNegativeNumber);
  app.add_subcommand("windows", "list the windows registered with the bus");
  double watchS = 0;
  auto* statsCmd = app.add_subcommand("stats", "per channel counters and latencies, calls in flight");
  statsCmd->add_option("-w,--watch", watchS, "print again every this many seconds");
  CLI11_PARSE(app, argc, argv);
  if (tailCmd->parsed()) return tail(bus, socket, tailOpts);
  if (recordCmd->parsed()) return record(bus, socket, recordOpts, recordPath);
  if (callCmd->parsed()) {
    callRq.bus = bus;
    callRq.socketPath = socket;
    callRq.timeout = std::chrono::milliseconds(timeoutMs);
    return shmbus::inspect::call(callRq);
  }
  if (statsCmd->parsed()) return stats(bus, socket, watchS);
  if (app.got_subcommand("windows")) return windows(bus, socket);
  return 2;
}
