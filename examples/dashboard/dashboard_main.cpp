// The dashboard demo's main process: the supervisor. It spawns the dashboard, editor and
// settings windows and then the main window (which runs the scenario), kills the settings window
// when it starts an export (to show TargetGone), prints what the bus saw, and exits 0 when every
// step of the scenario went as expected.
//
//   dashboard-main [--trace FILE]
// With --trace, an inspector attached before the first window records every event of the bus
// and the demo writes them as a Perfetto / chrome://tracing timeline (shmbus::ChromeTrace) when
// the scenario ends; the demo fails if the timeline misses a call of any status the scenario
// shows (Ok, Timeout, NoTarget, HandlerError, TargetGone).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "bus.capnp.h"
#include "dashboard.capnp.h"
#include "dashboard.shmbus.h"
#include "demo_common.hpp"
#include "shmbus/inspect.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

/// Records the bus's trace events on a thread of its own until the supervisor stops.
class Recorder {
 public:
  /// Attaches to `bus`. Errors: as Inspector::attach.
  static shmbus::Result<std::unique_ptr<Recorder>> start(const std::string& bus) {
    auto insp = Inspector::attach(bus);
    if (!insp) return insp.error();
    return std::unique_ptr<Recorder>(new Recorder(std::move(*insp)));
  }
  ~Recorder() {
    if (thread_.joinable()) thread_.join();
  }

  /// After Supervisor::stop(): waits for the last event, writes `path`, prints the counts.
  /// False when the file could not be written or misses a call status the scenario shows.
  bool finish(const std::string& path) {
    thread_.join();
    trace_.setLost(inspector_->lost());
    if (auto w = trace_.write(path); !w) {
      fmt::print("[main process] trace: {}\n", w.error().toString());
      return false;
    }
    std::string counts;
    for (const auto& [kind, n] : trace_.countsByKind()) counts += fmt::format(" {} {},", kind, n);
    fmt::print("[main process] trace: {} events ({} lost):{} written to {}\n", trace_.size(), inspector_->lost(),
               counts, path);
    fmt::print("[main process] open it in https://ui.perfetto.dev (Open trace file) or chrome://tracing (Load)\n");
    bool complete = true;
    for (const ErrorCode c : {ErrorCode::Ok, ErrorCode::Timeout, ErrorCode::NoTarget, ErrorCode::HandlerError,
                              ErrorCode::TargetGone}) {
      if (statuses_.count(c) == 0) {
        fmt::print("[main process] trace: no call ended {}\n", c == ErrorCode::Ok ? "Ok" : errorCodeName(c));
        complete = false;
      }
    }
    return complete;
  }

 private:
  explicit Recorder(std::unique_ptr<Inspector> insp) : inspector_(std::move(insp)) {
    thread_ = std::thread([this] {
      for (;;) {
        auto e = inspector_->next(std::chrono::milliseconds(1000));
        if (!e) return;  // BusClosed once every event the supervisor wrote has been read
        if (!*e) continue;
        if ((*e)->kind == TraceKind::Invoke) statuses_.insert((*e)->status);
        trace_.add(**e);
      }
    });
  }
  std::unique_ptr<Inspector> inspector_;
  ChromeTrace trace_;
  std::set<ErrorCode> statuses_;
  std::thread thread_;  // last: started once the rest exists
};

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // one ordered transcript, also through a pipe
  CLI::App app{"libshmbus dashboard demo: a supervisor and four windows run a scripted scenario"};
  std::string tracePath;
  app.add_option("--trace", tracePath, "write a Perfetto / chrome://tracing timeline of the whole scenario to FILE");
  CLI11_PARSE(app, argc, argv);
  const std::string bus = fmt::format("dashboard-demo-{}", ::getpid());
  // Direct routes (on by default, docs/architecture.md §19): the main window's repeated dashboard
  // queries go window to window once the first one was routed; the router's stats below show it.
  auto created = Supervisor::create({.bus = bus, .logLevel = LogLevel::Warn});
  if (!created) {
    fmt::print(stderr, "supervisor: {}\n", created.error().toString());
    return 2;
  }
  Supervisor& sup = **created;
  fmt::print("[main process] supervisor of bus '{}' listening on {}\n", bus, sup.socketPath());

  std::mutex mu;
  std::condition_variable cv;
  bool done = false, ok = false;
  auto started = demo::EventsHandlers::onExportStarted(sup, [&](auto, const CallContext& ctx) {
    if (auto w = sup.window(ctx.sourceWindowId)) {
      fmt::print("[main process] settings window {} (pid {}) started an export: killing it (SIGKILL)\n", w->id, w->pid);
      ::kill(w->pid, SIGKILL);
    }
  });
  auto finished = demo::EventsHandlers::onScenarioDone(sup, [&](auto p, const CallContext&) {
    std::lock_guard lk(mu);
    done = true;
    ok = p.getOk();
    cv.notify_all();
  });
  auto closedEvents = sup.on("window-closed", [](const Message& m, const CallContext&) {
    auto e = m.root<schema::WindowEvent>();
    fmt::print("[main process] window {} ({}) closed: {}\n", e.getWindowId(), e.getRole().cStr(), e.getReason().cStr());
  });
  sup.startDispatchThread();
  std::unique_ptr<Recorder> recorder;
  if (!tracePath.empty()) {
    auto r = Recorder::start(bus);
    if (!r) {
      fmt::print(stderr, "trace: {}\n", r.error().toString());
      return 2;
    }
    recorder = std::move(*r);
  }

  const std::string exe = demo::exeDir() + "/dashboard-window";
  // Each window is ready once its first handler registration reached the supervisor (a call
  // before that would fail fast with NoHandler).
  const std::pair<const char*, Channel> windows[] = {{"dashboard", demo::DashboardChannels::getDashboardData()},
                                                     {"editor", demo::EditorChannels::updateChart()},
                                                     {"settings", demo::SettingsChannels::getWindowState()}};
  for (const auto& [role, channel] : windows) {
    auto w = sup.spawn(role, {exe});
    if (!w) {
      fmt::print(stderr, "spawn {}: {}\n", role, w.error().toString());
      return 2;
    }
    auto live = sup.waitForHandler(role, channel, 5s);
    if (!live) {
      fmt::print(stderr, "{}\n", live.error().toString());
      return 2;
    }
    fmt::print("[main process] window {} is '{}' (pid {})\n", live->id, role, live->pid);
  }
  auto mainWin = sup.spawn("main", {exe});
  if (!mainWin) {
    fmt::print(stderr, "spawn main: {}\n", mainWin.error().toString());
    return 2;
  }
  {
    std::unique_lock lk(mu);
    if (!cv.wait_for(lk, 60s, [&] { return done; })) fmt::print("[main process] the scenario did not finish in 60 s\n");
  }

  const RouterStats st = sup.stats();
  fmt::print("\n[main process] router stats\n");
  fmt::print("  {:<34} {:>6} {:>6} {:>6} {:>9} {:>9}  {}\n", "channel", "calls", "direct", "msgs", "p50 ms", "p99 ms",
             "errors");
  std::uint64_t directQueries = 0;
  for (const auto& c : st.channels) {
    std::string errs;
    for (const auto& [code, n] : c.errors) errs += fmt::format("{}={} ", code, n);
    fmt::print("  {:<34} {:>6} {:>6} {:>6} {:>9.3f} {:>9.3f}  {}\n", c.channel, c.calls, c.directCalls, c.messages,
               c.p50Ms, c.p99Ms, errs);
    if (c.channel == demo::DashboardChannels::getDashboardData().name) directQueries = c.directCalls;
  }
  fmt::print("  (direct: calls that went window to window over a direct route; p50/p99 are of routed calls)\n");
  if (directQueries == 0) {
    fmt::print("[main process] the repeated dashboard queries did not take a direct route\n");
    ok = false;
  }
  fmt::print("  pending calls: {}, late replies: {}, spoofed replies: {}, undeliverable: {}, bad messages: {}\n",
             st.pending.size(), st.lateReplies, st.spoofedReplies, st.undeliverable, st.badMessages);
  sup.stop();
  if (recorder && !recorder->finish(tracePath)) ok = false;
  fmt::print("[main process] scenario {}\n", ok ? "completed: every step as expected" : "FAILED");
  return ok ? 0 : 1;
}
