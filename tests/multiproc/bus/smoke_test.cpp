#include <doctest/doctest.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

TEST_CASE("a window's send reaches the supervisor's listener and its invoke gets the handler's reply") {
  TestBus tb("smoke", {}, /*dispatch=*/false);
  Supervisor& s = *tb.sup;
  std::string got;
  auto l = s.on("set-title", [&](const Message& m, const CallContext& ctx) {
    got = textOf(m) + "@" + std::string(ctx.sourceRole);
  });
  auto h = s.handle("echo", [](const Message& req, Builder& reply, const CallContext&) {
    reply.initRoot<TestMessage>().setText("echo:" + textOf(req));
  });
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    expectOk(w->send("set-title", text("hello")), "send");
    childCheck(replyText(w->invoke("echo", text("ping")), "invoke") == "echo:ping", "echo reply");
    childCheck(w->invoke("nope").get().code() == ErrorCode::NoHandler, "NoHandler");
  });
  s.startDispatchThread();
  CHECK(child.join(20s) == 0);
  s.stop();
  CHECK(got == "hello@editor");
}
