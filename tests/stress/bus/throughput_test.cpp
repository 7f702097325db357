// One million calls routed between two windows through the supervisor, pipelined in batches,
// with every reply matched to its request. Runs alone (meson is_parallel: false): it reports a rate.
#include <doctest/doctest.h>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {
constexpr std::uint64_t kCalls = 1'000'000;
constexpr std::uint64_t kBatch = 250;  // divides kCalls
}  // namespace

TEST_CASE("one million routed calls between two windows, every reply matched to its request") {
  TestBus tb("million", {}, /*dispatch=*/false);
  ServedWindow dashboard(ServedWindow::deferred, tb, "dashboard", [](Window& w, auto& regs) {
    regs.push_back(w.handle("next", [](const Message& req, Builder& reply, const CallContext&) {
      reply.initRoot<TestMessage>().setSeq(req.root<TestMessage>().getSeq() + 1);
    }));
  });
  Link toA;
  GatedChild a([&] {
    auto w = connectWindow(tb.bus, "editor");
    std::vector<Call> calls(kBatch);
    const std::int64_t t0 = nowNs();
    std::uint64_t matched = 0;
    for (std::uint64_t base = 0; base < kCalls; base += kBatch) {
      for (std::uint64_t k = 0; k < kBatch; ++k) {
        const std::uint64_t seq = base + k;
        calls[k] = w->invokeIn("dashboard", "next", [seq](Builder& bld) { bld.initRoot<TestMessage>().setSeq(seq); },
                               {.timeout = 10000ms, .sizeHint = 64});
      }
      // get() on this thread dispatches: replies of the whole batch complete in arrival order.
      for (std::uint64_t k = 0; k < kBatch; ++k) {
        auto r = calls[k].get();
        expectOk(r, "call " + std::to_string(base + k));
        childCheck(r->root<TestMessage>().getSeq() == base + k + 1, "reply " + std::to_string(base + k) +
                                                                       " answers another request");
        ++matched;
      }
    }
    const double seconds = msSince(t0) / 1000;
    toA.tellParent(std::to_string(matched) + " " + std::to_string(seconds));
  });
  tb->startDispatchThread();
  dashboard.start();
  a.go();
  const auto r = words(toA.hearChild(170s));
  REQUIRE(r.size() == 2);
  const double seconds = std::stod(r[1]);
  MESSAGE(r[0] << " routed calls in " << seconds << " s: " << static_cast<double>(kCalls) / seconds
               << " calls/s (batches of " << kBatch << ")");
  CHECK(std::stoull(r[0]) == kCalls);
  CHECK(seconds < 60);
  CHECK(a.join(10s) == 0);
  const RouterStats s = tb->stats();
  CHECK(s.lateReplies == 0);
  CHECK(s.pending.empty());
  CHECK(dashboard.finish() == 0);
}
