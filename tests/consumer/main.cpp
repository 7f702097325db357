// The out-of-tree consumer: a supervisor and a forked window calling each other through the stubs
// capnpc-shmbus generated from greeter.capnp. Exits 0 when every exchange went as expected.
// Built against an installed prefix (meson and CMake) and as a subproject: it includes only what
// those give, the public headers and <shmbus/schemas/bus.capnp.h>.
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>

#include <shmbus/schemas/bus.capnp.h>  // the bus's own schemas: one include path in every mode

#include "greeter.shmbus.h"

using namespace std::chrono_literals;

namespace {

int fail(const char* what, const shmbus::Error& e) {
  std::fprintf(stderr, "consumer: %s: %s\n", what, e.toString().c_str());
  return 1;
}

/// The window: serves Greeter, calls the main process's Counter, runs until the bus closes.
int runWindow(const std::string& bus) {
  auto win = shmbus::Window::connect({.bus = bus, .role = "greeter"});
  if (!win) return fail("connect", win.error());
  shmbus::Window& w = **win;
  auto greet = consumer::GreeterHandlers::handleGreet(w, [&](auto params, auto results, const shmbus::CallContext& ctx) {
    // A handler may itself call: the window asks main to count the greeting.
    auto total = consumer::CounterClient(w).add([](auto p) { p.setAmount(1); }).get();
    results.setGreeting("hello, " + std::string(params.getName().cStr()) + " (from " + std::string(ctx.sourceRole) +
                        ", greeting #" + std::to_string(total ? total->reader().getTotal() : 0) + ")");
  });
  auto greeted = consumer::GreeterHandlers::onGreeted(w, [&](auto params) {
    (void)consumer::CounterClient(w).done([&](auto p) { p.setTotal(static_cast<std::uint32_t>(params.getName().size())); });
  });
  w.run();
  return 0;
}

}  // namespace

// libshmbus's internal headers are not on a user's include path.
#if __has_include("ring/ring.hpp") || __has_include("call/call.hpp")
#error "an internal include path of libshmbus leaked into a user's build"
#endif
static_assert(sizeof(shmbus::schema::WindowEvent::Reader) > 0);

int main() {
  const std::string bus = "consumer-" + std::to_string(::getpid());
  auto created = shmbus::Supervisor::create({.bus = bus});
  if (!created) return fail("supervisor", created.error());
  shmbus::Supervisor& sup = **created;

  std::uint32_t count = 0;
  auto add = consumer::CounterHandlers::handleAdd(sup, [&](auto params, auto results) {
    count += params.getAmount();
    results.setTotal(count);
  });
  std::mutex mu;
  std::condition_variable cv;
  std::uint32_t doneTotal = 0;
  auto done = consumer::CounterHandlers::onDone(sup, [&](auto params, const shmbus::CallContext&) {
    std::lock_guard lk(mu);
    doneTotal = params.getTotal();
    cv.notify_all();
  });

  const pid_t child = ::fork();
  if (child == 0) ::_exit(runWindow(bus));
  sup.startDispatchThread();
  if (auto r = sup.waitForHandler("greeter", consumer::GreeterChannels::greet(), 10s); !r) return fail("wait", r.error());

  consumer::GreeterMainClient greeter(sup);
  auto reply = greeter.greet([](auto p) { p.setName("consumer"); }).get();
  if (!reply) return fail("greet", reply.error());
  const std::string text = reply->reader().getGreeting().cStr();
  std::printf("consumer: %s\n", text.c_str());
  if (text != "hello, consumer (from main, greeting #1)") return 1;
  if (auto r = greeter.greeted([](auto p) { p.setName("consumer"); }); !r) return fail("push", r.error());
  {
    std::unique_lock lk(mu);
    if (!cv.wait_for(lk, 10s, [&] { return doneTotal != 0; })) return 1;
  }
  sup.stop();
  int status = 0;
  ::waitpid(child, &status, 0);
  const bool ok = doneTotal == 8 && count == 1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
