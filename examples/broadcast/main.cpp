// Example: broadcast to every window, or by role (`Supervisor::broadcast` with roles /
// excludeRoles). Three windows: two "viewer"s and an "editor".
#include <fmt/format.h>

#include <condition_variable>
#include <mutex>

#include "examples.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

int main() {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    Window& win = **w;
    auto l = win.on("notice", [&](const Message& m, const CallContext&) {
      auto n = m.root<examples::Notice>();
      // Tell main what we got, so it can print one ordered transcript.
      (void)win.send("ack", [&](Builder& b) {
        b.initRoot<examples::Notice>().setText(fmt::format("{} (window {}) got [{}] {}", win.role(), win.id(),
                                                           n.getLevel().cStr(), n.getText().cStr()));
      });
    });
    win.run();
    return 0;
  }
  auto sup = Supervisor::create({.bus = fmt::format("broadcast-{}", ::getpid())});
  if (!sup) return 2;
  Supervisor& s = **sup;
  std::mutex mu;
  std::condition_variable cv;
  int acks = 0;
  auto l = s.on("ack", [&](const Message& m, const CallContext&) {
    fmt::print("[main] {}\n", m.root<examples::Notice>().getText().cStr());
    std::lock_guard lk(mu);
    ++acks;
    cv.notify_all();
  });
  s.startDispatchThread();
  for (const char* role : {"viewer", "viewer", "editor"}) {
    if (!s.spawn(role, {"/proc/self/exe"})) return 2;
  }
  while (s.windows().size() < 3) (void)s.waitForRole("editor", 100ms);
  auto notice = [](const char* text, const char* level) {
    return [=](Builder& b) {
      auto n = b.initRoot<examples::Notice>();
      n.setText(text);
      n.setLevel(level);
    };
  };
  auto all = s.broadcast("notice", notice("saving every document", "info"));
  auto viewers = s.broadcast("notice", notice("read-only mode", "warn"), {.roles = {"viewer"}});
  auto others = s.broadcast("notice", notice("autosave done", "info"), {.excludeRoles = {"viewer"}});
  if (!all || !viewers || !others) return 1;
  fmt::print("[main] delivered: all={} viewers={} not-viewers={}\n", all->delivered, viewers->delivered, others->delivered);
  std::unique_lock lk(mu);
  return cv.wait_for(lk, 10s, [&] { return acks == 6; }) ? 0 : 1;
}
