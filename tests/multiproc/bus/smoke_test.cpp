#include <doctest/doctest.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

TEST_CASE("a window's send reaches the supervisor's listener and its invoke gets the handler's reply") {
  const std::string bus = uniqueBus("smoke");
  auto sup = Supervisor::create({.bus = bus});
  REQUIRE(sup.ok());
  auto& s = **sup;
  std::string got;
  auto l = s.on("set-title", [&](const Message& m, const CallContext& ctx) {
    got = textOf(m) + "@" + std::string(ctx.sourceRole);
  });
  auto h = s.handle("echo", [](const Message& req, Builder& reply, const CallContext&) {
    reply.initRoot<TestMessage>().setText("echo:" + textOf(req));
  });
  const pid_t child = forkChild([&] {
    auto w = connectWindow(bus, "editor");
    if (!w) return 1;
    if (!w->send("set-title", text("hello"))) return 2;
    auto r = w->invoke("echo", text("ping")).get();
    if (!r) { std::fprintf(stderr, "%s\n", r.error().toString().c_str()); return 3; }
    if (textOf(*r) != "echo:ping") return 4;
    auto nh = w->invoke("nope").get();
    if (nh.code() != ErrorCode::NoHandler) return 5;
    return 0;
  });
  s.startDispatchThread();
  CHECK(waitChild(child) == 0);
  s.stop();
  CHECK(got == "hello@editor");
}
