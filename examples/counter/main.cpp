// Example: main → window push (`Supervisor::send` → `Window::on`), Electron's
// webContents.send('update-counter'), with the window replying on a one-way channel
// ('counter-value'), as in Electron's IPC guide.
#include <fmt/format.h>

#include <future>

#include "examples.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

int main() {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    Window& win = **w;
    std::int64_t value = 0;
    auto l = win.on("update-counter", [&](const Message& m, const CallContext&) {
      value += m.root<examples::Counter>().getValue();
      (void)win.send("counter-value", [&](Builder& b) { b.initRoot<examples::Counter>().setValue(value); });
    });
    win.run();  // until main closes the bus
    return 0;
  }
  auto sup = Supervisor::create({.bus = fmt::format("counter-{}", ::getpid())});
  if (!sup) return 2;
  Supervisor& s = **sup;
  std::promise<void> done;
  int seen = 0;
  auto l = s.on("counter-value", [&](const Message& m, const CallContext& ctx) {
    fmt::print("[main] window {} reports counter = {}\n", ctx.sourceWindowId, m.root<examples::Counter>().getValue());
    if (++seen == 5) done.set_value();
  });
  s.startDispatchThread();
  if (!s.spawn("counter", {"/proc/self/exe"})) return 2;
  if (!s.waitForRole("counter", 5s)) return 2;
  for (int step : {1, 1, -1, 5, 10}) {
    auto r = s.send(Target("counter"), "update-counter", [&](Builder& b) { b.initRoot<examples::Counter>().setValue(step); });
    if (!r) return fmt::print("{}\n", r.error().toString()), 1;
  }
  auto f = done.get_future();
  return f.wait_for(10s) == std::future_status::ready ? 0 : 1;
}
