// The quickstart's main process: a supervisor that starts two windows, "calc" and "client", lets
// the client call the calc window, and ends when the client reports the result.
#include <shmbus/schemas/bus.capnp.h>  // shmbus::schema::WindowEvent, the window events' payload
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <string>

#include "calc.shmbus.h"

using namespace std::chrono_literals;

int main() {
  auto created = shmbus::Supervisor::create({.bus = "quickstart-" + std::to_string(::getpid())});
  if (!created) {
    std::fprintf(stderr, "main: %s\n", created.error().toString().c_str());
    return 1;
  }
  shmbus::Supervisor& sup = **created;

  std::promise<std::string> report;
  std::atomic<bool> reported = false;
  auto finish = [&](std::string text) {
    if (!reported.exchange(true)) report.set_value(std::move(text));
  };
  // The client's one-way Log.line; keep each Registration alive as long as the listener.
  auto onLine = quickstart::LogHandlers::onLine(sup, [&](auto params, const shmbus::CallContext& ctx) {
    std::printf("[%s] %s\n", std::string(ctx.sourceRole).c_str(), params.getText().cStr());
    finish(params.getText().cStr());
  });
  // Window lifecycle events: "window-opened" and "window-closed", payload WindowEvent.
  auto onClosed = sup.on("window-closed", [&](const shmbus::Message& m, const shmbus::CallContext&) {
    auto event = m.root<shmbus::schema::WindowEvent>();
    finish("window '" + std::string(event.getRole().cStr()) + "' closed: " + event.getReason().cStr());
  });

  sup.startDispatchThread();  // callbacks run on a background thread until stop()
  const auto dir = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  if (auto calc = sup.spawn("calc", {(dir / "quickstart-calc").string()}); !calc) {
    std::fprintf(stderr, "main: %s\n", calc.error().toString().c_str());
    return 1;
  }
  // A call to a window that has not registered its handler yet fails fast with NoHandler.
  if (auto ready = sup.waitForHandler("calc", quickstart::CalcChannels::add(), 5s); !ready) {
    std::fprintf(stderr, "main: %s\n", ready.error().toString().c_str());
    return 1;
  }
  if (auto client = sup.spawn("client", {(dir / "quickstart-client").string()}); !client) {
    std::fprintf(stderr, "main: %s\n", client.error().toString().c_str());
    return 1;
  }
  auto result = report.get_future();
  const bool ok = result.wait_for(10s) == std::future_status::ready && result.get() == "1 + 2 = 3";
  sup.stop();  // closes the bus: the windows' run() returns and they exit
  return ok ? 0 : 1;
}
