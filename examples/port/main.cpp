// Example: a direct port between two windows (Electron's MessageChannelMain; docs/architecture.md
// §16). Main spawns a worker that accepts ports on "jobs" and a renderer that opens one to it;
// their calls then go window to window through the port's own rings, with no supervisor between.
// The contract on the port is typed (jobs.capnp through capnpc-shmbus): the generated handlers
// register on a Port as on a Window, and JobsPortClient calls the port's peer.
#include <sys/wait.h>

#include <fmt/format.h>

#include <future>

#include "jobs.shmbus.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;
using portdemo::JobsHandlers;
using portdemo::JobsPortClient;

int worker(Window& win) {
  std::shared_ptr<Port> kept;
  auto accept = win.onPort("jobs", [&](std::shared_ptr<Port> port) {
    // Runs on the window's dispatch thread; the port is the opener's once this returns.
    JobsHandlers::handleSum(*port, [port = port.get()](auto params, auto results, const CallContext& ctx) {
      double sum = 0;
      for (double v : params.getNumbers()) sum += v;
      results.setSum(sum);
      results.setCount(params.getNumbers().size());
      (void)JobsPortClient(*port).progress([&](auto note) { note.setText("summed"); });  // to the peer
      fmt::print("[worker] summed for {} (window {}) over the port\n", ctx.sourceRole, ctx.sourceWindowId);
    }).release();  // for the port's lifetime
    port->onClose([](const Error& why) { fmt::print("[worker] port closed: {}\n", why.message); }).release();
    port->start();  // its own dispatch thread
    kept = std::move(port);
  });
  if (!win.send("worker-ready")) return 2;
  win.run();
  return 0;
}

int renderer(Window& win) {
  auto port = win.openPort("worker", "jobs", {.ringBytes = 1u << 16});
  if (!port) return fmt::print("[renderer] {}\n", port.error().toString()), 1;
  std::promise<std::string> note;
  auto progress = JobsHandlers::onceProgress(**port, [&](auto params) { note.set_value(params.getText().cStr()); });
  (*port)->start();
  auto r = JobsPortClient(**port).sum([](auto params) {
    auto n = params.initNumbers(3);
    for (unsigned i = 0; i < 3; ++i) n.set(i, i + 1.0);
  }).get();
  if (!r) return fmt::print("[renderer] {}\n", r.error().toString()), 1;
  fmt::print("[renderer] sum {:.1f} of {} from window {}\n", r->reader().getSum(), r->reader().getCount(),
             (*port)->peerId());
  auto heard = note.get_future();
  if (heard.wait_for(2s) != std::future_status::ready) return fmt::print("[renderer] no progress note\n"), 1;
  fmt::print("[renderer] the worker says: {}\n", heard.get());
  (*port)->close();  // the worker's close listener runs
  return 0;
}

int main() {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    return (*w)->role() == "worker" ? worker(**w) : renderer(**w);
  }
  auto sup = Supervisor::create({.bus = fmt::format("port-{}", ::getpid())});
  if (!sup) return 2;
  Supervisor& s = **sup;
  std::promise<void> ready;
  auto heard = s.once("worker-ready", [&](const Message&, const CallContext&) { ready.set_value(); });
  s.startDispatchThread();
  if (!s.spawn("worker", {"/proc/self/exe"})) return 2;
  if (ready.get_future().wait_for(5s) != std::future_status::ready) return 2;
  auto renderer = s.spawn("renderer", {"/proc/self/exe"});
  if (!renderer) return 2;
  int status = 0;
  ::waitpid(renderer->pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
