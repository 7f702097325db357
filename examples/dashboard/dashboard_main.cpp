// The dashboard demo's main process: the supervisor. It spawns the dashboard, editor and
// settings windows and then the main window (which runs the scenario), kills the settings window
// when it starts an export (to show TargetGone), prints what the bus saw, and exits 0 when every
// step of the scenario went as expected.
#include <signal.h>

#include <fmt/format.h>

#include <condition_variable>
#include <mutex>

#include "bus.capnp.h"
#include "dashboard.capnp.h"
#include "dashboard.shmbus.h"
#include "demo_common.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // one ordered transcript, also through a pipe
  const std::string bus = fmt::format("dashboard-demo-{}", ::getpid());
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
  fmt::print("  {:<34} {:>6} {:>6} {:>9} {:>9}  {}\n", "channel", "calls", "msgs", "p50 ms", "p99 ms", "errors");
  for (const auto& c : st.channels) {
    std::string errs;
    for (const auto& [code, n] : c.errors) errs += fmt::format("{}={} ", code, n);
    fmt::print("  {:<34} {:>6} {:>6} {:>9.3f} {:>9.3f}  {}\n", c.channel, c.calls, c.messages, c.p50Ms, c.p99Ms, errs);
  }
  fmt::print("  pending calls: {}, late replies: {}, spoofed replies: {}, undeliverable: {}, bad messages: {}\n",
             st.pending.size(), st.lateReplies, st.spoofedReplies, st.undeliverable, st.badMessages);
  sup.stop();
  fmt::print("[main process] scenario {}\n", ok ? "completed: every step as expected" : "FAILED");
  return ok ? 0 : 1;
}
