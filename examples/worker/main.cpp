// Example: a hidden worker window that main spawns and calls (`Supervisor::invoke` →
// `Window::handle`), like electron-prokit's worker window; and a renderer that calls the worker
// through the supervisor (`Window::invokeIn("worker", ...)`).
#include <sys/wait.h>

#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "examples.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

int main() {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    Window& win = **w;
    if (win.role() == "renderer") {
      auto r = win.invokeIn("worker", "stats", [](Builder& b) {
        auto n = b.initRoot<examples::Job>().initNumbers(4);
        for (unsigned i = 0; i < 4; ++i) n.set(i, 10.0 * (i + 1));
      }).get();
      if (!r) return 1;
      fmt::print("[renderer] worker says mean {:.1f}\n", r->root<examples::JobResult>().getMean());
      return 0;
    }
    auto h = win.handle("stats", [](const Message& req, Builder& reply, const CallContext& ctx) {
      auto n = req.root<examples::Job>().getNumbers();
      double sum = 0, sq = 0;
      for (double v : n) sum += v;
      const double mean = n.size() ? sum / n.size() : 0;
      for (double v : n) sq += (v - mean) * (v - mean);
      auto r = reply.initRoot<examples::JobResult>();
      r.setSum(sum);
      r.setMean(mean);
      r.setStddev(n.size() ? std::sqrt(sq / n.size()) : 0);
      fmt::print("[worker] computed stats of {} numbers for {} (window {})\n", n.size(), ctx.sourceRole, ctx.sourceWindowId);
    });
    win.run();
    return 0;
  }
  auto sup = Supervisor::create({.bus = fmt::format("worker-{}", ::getpid())});
  if (!sup) return 2;
  Supervisor& s = **sup;
  s.startDispatchThread();
  if (!s.spawn("worker", {"/proc/self/exe"}) || !s.waitForHandler("worker", "stats", 5s)) return 2;
  auto r = s.invoke(Target("worker"), "stats", [](Builder& b) {
    auto n = b.initRoot<examples::Job>().initNumbers(5);
    for (unsigned i = 0; i < 5; ++i) n.set(i, i + 1.0);
  }).get();
  if (!r) return fmt::print("{}\n", r.error().toString()), 1;
  auto jr = r->root<examples::JobResult>();
  fmt::print("[main] worker: sum {:.1f} mean {:.1f} stddev {:.3f}\n", jr.getSum(), jr.getMean(), jr.getStddev());
  auto renderer = s.spawn("renderer", {"/proc/self/exe"});
  if (!renderer) return 2;
  int status = 0;
  ::waitpid(renderer->pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
