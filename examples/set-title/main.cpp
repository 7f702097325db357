// Example: one-way window → main (`Window::send` → `Supervisor::on`), Electron's
// ipcRenderer.send('set-title') / ipcMain.on('set-title').
// One program: run it and it becomes the main process, which spawns itself as an "editor" window.
#include <fmt/format.h>

#include <future>

#include "examples.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

int main(int, char** argv) {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    auto r = (*w)->send("set-title", [](Builder& b) { b.initRoot<examples::Title>().setText("Quarterly report — draft"); });
    return r ? 0 : 1;
  }
  auto sup = Supervisor::create({.bus = fmt::format("set-title-{}", ::getpid())});
  if (!sup) return fmt::print(stderr, "{}\n", sup.error().toString()), 2;
  std::promise<std::string> title;
  auto l = (*sup)->once("set-title", [&](const Message& m, const CallContext& ctx) {
    fmt::print("[main] window {} ({}) sets the title to \"{}\"\n", ctx.sourceWindowId, ctx.sourceRole,
               m.root<examples::Title>().getText().cStr());
    title.set_value(m.root<examples::Title>().getText());
  });
  (*sup)->startDispatchThread();
  if (!(*sup)->spawn("editor", {"/proc/self/exe"})) return 2;
  auto f = title.get_future();
  (void)argv;
  return f.wait_for(10s) == std::future_status::ready ? 0 : 1;
}
