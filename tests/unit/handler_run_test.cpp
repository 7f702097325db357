// Unit tests of running handlers and listeners (lib/src/endpoint/handler_run): where a handler's
// outcome goes, and the Responder of an asynchronous handler.
#include "endpoint/handler_run.hpp"

#include <capnp/serialize.h>
#include <doctest/doctest.h>
#include <kj/exception.h>

#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "call/call.hpp"
#include "test_message.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using shmbus::test::TestMessage;

namespace {

constexpr const char* kWhat = "invoke 'calc' on window 3 (role 'dash')";

/// A ReplySink that records what reaches it. Thread-safe (an async reply comes from any thread).
class FakeSink : public ReplySink {
 public:
  Result<void> reply(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) override {
    std::lock_guard lk(mu_);
    replies_.push_back(capnp::messageToFlatArray(segments));
    return {};
  }
  Result<void> fail(const Error& e) override {
    std::lock_guard lk(mu_);
    failures_.push_back(e);
    return {};
  }
  void unanswered() override { std::lock_guard lk(mu_); ++unanswered_; }
  bool cancelled() const noexcept override { return cancelled_.load(); }

  std::size_t replies() { std::lock_guard lk(mu_); return replies_.size(); }
  std::vector<Error> failures() { std::lock_guard lk(mu_); return failures_; }
  int unansweredCount() { std::lock_guard lk(mu_); return unanswered_; }
  /// The seq field of reply `i`, read as a TestMessage.
  std::uint64_t replySeq(std::size_t i) {
    std::lock_guard lk(mu_);
    capnp::FlatArrayMessageReader r(replies_.at(i));
    return r.getRoot<TestMessage>().getSeq();
  }
  std::atomic<bool> cancelled_{false};

 private:
  std::mutex mu_;
  std::vector<kj::Array<capnp::word>> replies_;
  std::vector<Error> failures_;
  int unanswered_ = 0;
};

/// A request: a TestMessage of `seq`, held on the heap as an async handler's copy would be.
Message request(std::uint64_t seq) {
  capnp::MallocMessageBuilder mb;
  test::fillTestMessage(mb.initRoot<TestMessage>(), seq, 16);
  auto held = copyBuilt(mb);
  REQUIRE(held.ok());
  return Message(std::move(held).value(), 0);
}

/// Runs one handler the way an endpoint does, recording what reached which sink.
struct Run {
  FakeSink syncSink;
  std::shared_ptr<FakeSink> asyncSink = std::make_shared<FakeSink>();
  int whatCalls = 0, asyncSinks = 0;
  CallContext ctx{.sourceWindowId = 3, .channel = "calc", .requestId = 11};

  void sync(Handler fn) { go(HandlerSlot(1, std::move(fn), nullptr, 0, 0)); }
  void async(AsyncHandler fn) { go(HandlerSlot(1, nullptr, std::move(fn), 0, 0)); }
  /// Runs an async handler that keeps its Responder, and returns that Responder.
  Responder keep() {
    Responder kept;
    async([&](const Message&, Responder r, const CallContext&) { kept = r; });
    return kept;
  }
  void go(const HandlerSlot& slot) {
    runHandler(
        slot, request(7), ctx, [this] { ++whatCalls; return std::string(kWhat); }, syncSink,
        [this] { ++asyncSinks; return std::static_pointer_cast<ReplySink>(asyncSink); });
  }
};

/// A reply builder setting seq.
BuildFn replyWith(std::uint64_t seq) {
  return [seq](Builder& b) { b.initRoot<TestMessage>().setSeq(seq); };
}

}  // namespace

TEST_CASE("a synchronous handler's reply reaches the sink before runHandler returns") {
  Run run;
  run.sync([](const Message& req, Builder& reply, const CallContext& ctx) {
    CHECK(ctx.requestId == 11);
    reply.initRoot<TestMessage>().setSeq(req.root<TestMessage>().getSeq() + 1);
  });
  REQUIRE(run.syncSink.replies() == 1);
  CHECK(run.syncSink.replySeq(0) == 8);
  CHECK(run.syncSink.failures().empty());
  CHECK(run.asyncSinks == 0);
  CHECK(run.whatCalls == 0);  // the description is built only for a failure
}

TEST_CASE("a throwing synchronous handler fails the call with HandlerError naming the call") {
  Run run;
  run.sync([](const Message&, Builder&, const CallContext&) { throw std::runtime_error("divide by zero"); });
  CHECK(run.syncSink.replies() == 0);
  auto f = run.syncSink.failures();
  REQUIRE(f.size() == 1);
  CHECK(f[0].code == ErrorCode::HandlerError);
  CHECK(f[0].message.find(kWhat) == 0);
  CHECK(f[0].message.find("divide by zero") != std::string::npos);
  CHECK(f[0].remoteType == "std::runtime_error");
  CHECK(f[0].remoteMessage == "divide by zero");
}

TEST_CASE("a CallFailure fails the call with its own code and message") {
  Run run;
  run.sync([](const Message&, Builder&, const CallContext&) {
    throw CallFailure(makeError(ErrorCode::Denied, "not for you"));
  });
  auto f = run.syncSink.failures();
  REQUIRE(f.size() == 1);
  CHECK(f[0].code == ErrorCode::Denied);
  CHECK(f[0].message == std::string(kWhat) + ": not for you");
}

TEST_CASE("an asynchronous handler replies later from another thread") {
  Run run;
  std::promise<void> go;
  std::thread later;
  run.async([&](const Message& req, Responder r, const CallContext&) {
    const std::uint64_t seq = req.root<TestMessage>().getSeq();
    later = std::thread([r, seq, ready = go.get_future()]() mutable {
      ready.wait();
      CHECK(r.reply(replyWith(seq * 10)).ok());
      CHECK(r.replied());
    });
  });
  CHECK(run.asyncSinks == 1);
  CHECK(run.asyncSink->replies() == 0);  // the handler returned; the reply has not been made
  go.set_value();
  later.join();
  REQUIRE(run.asyncSink->replies() == 1);
  CHECK(run.asyncSink->replySeq(0) == 70);
  CHECK(run.syncSink.replies() == 0);
  CHECK(run.asyncSink->unansweredCount() == 0);
}

TEST_CASE("a Responder replies once: a second reply or fail is refused and sends nothing") {
  Run run;
  Responder kept = run.keep();
  CHECK(kept.requestId() == 11);
  CHECK_FALSE(kept.replied());
  REQUIRE(kept.reply(replyWith(1)).ok());
  auto again = kept.reply(replyWith(2));
  CHECK(again.code() == ErrorCode::InvalidMessage);
  CHECK(again.error().message == std::string(kWhat) + ": already replied");
  CHECK(kept.fail(makeError(ErrorCode::Denied, "late")).code() == ErrorCode::InvalidMessage);
  capnp::MallocMessageBuilder built;
  CHECK(kept.reply(built).code() == ErrorCode::InvalidMessage);
  CHECK(run.asyncSink->replies() == 1);
  CHECK(run.asyncSink->failures().empty());
}

TEST_CASE("dropping every Responder copy without a reply calls unanswered exactly once") {
  Run run;
  std::vector<Responder> copies;
  run.async([&](const Message&, Responder r, const CallContext&) {
    copies.push_back(r);
    copies.push_back(r);
  });
  CHECK(run.asyncSink->unansweredCount() == 0);
  copies.pop_back();
  CHECK(run.asyncSink->unansweredCount() == 0);
  copies.clear();
  CHECK(run.asyncSink->unansweredCount() == 1);

  Run ignored;  // a handler that drops its Responder at once
  ignored.async([](const Message&, Responder, const CallContext&) {});
  CHECK(ignored.asyncSink->unansweredCount() == 1);
}

TEST_CASE("Responder::fail(exception_ptr) fails as a thrown exception would") {
  Run run;
  Responder kept = run.keep();
  REQUIRE(kept.fail(std::make_exception_ptr(std::logic_error("bad state"))).ok());
  Run chosen;
  Responder other = chosen.keep();
  REQUIRE(other.fail(std::make_exception_ptr(CallFailure(makeError(ErrorCode::Timeout, "gave up")))).ok());

  auto f = run.asyncSink->failures(), g = chosen.asyncSink->failures();
  REQUIRE(f.size() == 1);
  CHECK(f[0].code == ErrorCode::HandlerError);
  CHECK(f[0].remoteType == "std::logic_error");
  CHECK(f[0].message.find(kWhat) == 0);
  REQUIRE(g.size() == 1);
  CHECK(g[0].code == ErrorCode::Timeout);
  CHECK(g[0].message == std::string(kWhat) + ": gave up");
  CHECK(run.asyncSink->unansweredCount() + chosen.asyncSink->unansweredCount() == 0);
}

TEST_CASE("an asynchronous handler that throws fails the call unless it already replied") {
  Run before;
  before.async([](const Message&, Responder, const CallContext&) { throw std::runtime_error("early"); });
  auto f = before.asyncSink->failures();
  REQUIRE(f.size() == 1);
  CHECK(f[0].code == ErrorCode::HandlerError);
  CHECK(before.asyncSink->unansweredCount() == 0);  // failed, so answered

  Run after;
  after.async([](const Message&, Responder r, const CallContext&) {
    CHECK(r.reply(replyWith(5)).ok());
    throw std::runtime_error("after the reply");
  });
  CHECK(after.asyncSink->replies() == 1);
  CHECK(after.asyncSink->failures().empty());

  Run badBuild;  // a build callback that throws fails the call instead of replying
  Responder kept = badBuild.keep();
  CHECK(kept.reply([](Builder&) { throw std::runtime_error("cannot build"); }).ok());
  CHECK(badBuild.asyncSink->replies() == 0);
  REQUIRE(badBuild.asyncSink->failures().size() == 1);
  CHECK(badBuild.asyncSink->failures()[0].remoteMessage == "cannot build");
}

TEST_CASE("a Responder reports its sink's cancellation, and an empty one refuses everything") {
  Run run;
  Responder kept = run.keep();
  CHECK_FALSE(kept.cancelled());
  run.asyncSink->cancelled_ = true;
  CHECK(kept.cancelled());

  Responder empty;
  CHECK(empty.reply().code() == ErrorCode::InvalidMessage);
  CHECK(empty.fail(makeError(ErrorCode::Denied, "x")).code() == ErrorCode::InvalidMessage);
  CHECK_FALSE(empty.replied());
  CHECK_FALSE(empty.cancelled());
  CHECK(empty.requestId() == 0);
}

TEST_CASE("a listener that throws is logged and the next listener still runs") {
  std::vector<std::string> logged;
  setLogSink([&](const LogRecord& r) { logged.push_back(std::string(r.component) + ": " + std::string(r.text)); });
  std::vector<int> ran;
  auto slot = [](Listener fn) { return std::make_shared<ListenerSlot>(1, std::move(fn), false); };
  std::vector<std::shared_ptr<ListenerSlot>> listeners{
      slot([&](const Message&, const CallContext&) { ran.push_back(1); throw std::runtime_error("boom"); }),
      slot([&](const Message&, const CallContext&) { ran.push_back(2); KJ_FAIL_REQUIRE("kj boom"); }),
      slot([&](const Message& m, const CallContext&) { ran.push_back(static_cast<int>(m.root<TestMessage>().getSeq())); }),
  };
  runListeners(listeners, request(3), CallContext{.channel = "tick"}, Logger{"window", "b", LogLevel::Debug});
  setLogSink({});
  CHECK(ran == std::vector<int>{1, 2, 3});
  REQUIRE(logged.size() == 2);
  CHECK(logged[0] == "window: listener for 'tick' threw: boom");
  CHECK(logged[1].find("window: listener for 'tick' threw: ") == 0);
  CHECK(logged[1].find("kj boom") != std::string::npos);
}

// Unregistering is final (CallbackGate, lib/src/call/callbacks.hpp): after Registration::reset()
// returns, the callback is not running on another thread and does not start again.

TEST_CASE("reset waits for a listener still running on another thread") {
  auto table = std::make_shared<CallbackTable>();
  std::promise<void> started, release;
  auto releasedF = release.get_future().share();
  std::atomic<bool> finished{false};
  Registration reg = table->addListener(Channel("tick"), [&](const Message&, const CallContext&) {
    started.set_value();
    releasedF.wait();
    finished.store(true);
  }, false);
  std::thread runner([&] {
    runListeners(table->takeListeners(Channel("tick").id), request(1), CallContext{.channel = "tick"},
                 Logger{"window", "b", LogLevel::Debug});
  });
  started.get_future().wait();
  bool finishedWhenResetReturned = false;
  auto resetDone = std::async(std::launch::async, [&] {
    reg.reset();
    finishedWhenResetReturned = finished.load();
  });
  // Showing that something blocks needs a bounded wait: reset must still be waiting for the
  // listener, which has not been released yet.
  CHECK(resetDone.wait_for(std::chrono::milliseconds(200)) == std::future_status::timeout);
  release.set_value();
  resetDone.get();
  runner.join();
  CHECK(finishedWhenResetReturned);
}

TEST_CASE("a listener unregistered after the dispatcher's snapshot does not start") {
  auto table = std::make_shared<CallbackTable>();
  int ran = 0;
  Registration kept = table->addListener(Channel("tick"), [&](const Message&, const CallContext&) { ran += 10; }, false);
  Registration gone = table->addListener(Channel("tick"), [&](const Message&, const CallContext&) { ++ran; }, false);
  auto snapshot = table->takeListeners(Channel("tick").id);
  REQUIRE(snapshot.size() == 2);
  gone.reset();
  runListeners(snapshot, request(1), CallContext{.channel = "tick"}, Logger{"window", "b", LogLevel::Debug});
  CHECK(ran == 10);
}

TEST_CASE("a callback may reset its own registration, also from a run nested below it") {
  auto table = std::make_shared<CallbackTable>();
  Registration reg;
  int depth = 0, runs = 0;
  std::function<void()> dispatch = [&] {
    runListeners(table->takeListeners(Channel("tick").id), request(1), CallContext{.channel = "tick"},
                 Logger{"window", "b", LogLevel::Debug});
  };
  reg = table->addListener(Channel("tick"), [&](const Message&, const CallContext&) {
    ++runs;
    if (++depth == 1) dispatch();  // re-entrant dispatch runs the same listener one level down
    else reg.reset();             // the innermost run unregisters: must not wait for the outer one
    --depth;
  }, false);
  dispatch();
  CHECK(runs == 2);
  dispatch();
  CHECK(runs == 2);
}

TEST_CASE("a handler unregistered after the dispatcher looked it up fails the call with NoHandler") {
  auto table = std::make_shared<CallbackTable>();
  bool ran = false;
  Registration reg = table->setHandler(Channel("calc"), [&](const Message&, Builder&, const CallContext&) { ran = true; });
  auto slot = table->handler(Channel("calc").id);
  REQUIRE(slot);
  reg.reset();
  FakeSink sink;
  runHandler(*slot, request(1), CallContext{.channel = "calc"}, [] { return std::string(kWhat); }, sink, {});
  CHECK_FALSE(ran);
  REQUIRE(sink.failures().size() == 1);
  CHECK(sink.failures()[0].code == ErrorCode::NoHandler);
  CHECK(sink.failures()[0].message == std::string(kWhat) + ": no handler");
}

TEST_CASE("once reset returns, no run of a listener dispatched from several threads is in progress") {
  auto table = std::make_shared<CallbackTable>();
  std::atomic<int> inside{0}, afterReset{0};
  std::atomic<bool> resetDone{false};
  Registration reg = table->addListener(Channel("tick"), [&](const Message&, const CallContext&) {
    inside.fetch_add(1);
    if (resetDone.load()) afterReset.fetch_add(1);
    inside.fetch_sub(1);
  }, false);
  const Message m = request(1);
  std::atomic<int> runsSeen{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        runListeners(table->takeListeners(Channel("tick").id), m, CallContext{.channel = "tick"},
                     Logger{"window", "b", LogLevel::Debug});
        runsSeen.fetch_add(1);
      }
    });
  }
  while (runsSeen.load() < 1000) std::this_thread::yield();
  reg.reset();
  const int insideAtReset = inside.load();
  resetDone.store(true);
  for (auto& t : threads) t.join();
  CHECK(insideAtReset == 0);
  CHECK(afterReset.load() == 0);
}

TEST_CASE("the dispatch gate: try_lock_for gives up while another thread holds it and takes it when released") {
  DispatchGate gate;
  std::promise<void> held, release;
  std::thread holder([&] {
    std::lock_guard g(gate);
    gate.lock();  // recursive: the outer unlock below frees it, not this one
    gate.unlock();
    held.set_value();
    release.get_future().wait();
  });
  held.get_future().wait();
  CHECK_FALSE(gate.try_lock());
  CHECK_FALSE(gate.try_lock_for(std::chrono::milliseconds(20)));  // the holder keeps it: timed out
  // A waiter with a long timeout gets the gate as soon as the holder lets go (the unlock signals
  // it): the release happens while it waits, or before, and either way it returns true.
  std::future<bool> waiter = std::async(std::launch::async, [&] {
    const bool got = gate.try_lock_for(std::chrono::seconds(60));
    if (got) gate.unlock();
    return got;
  });
  release.set_value();
  CHECK(waiter.get());
  holder.join();
  CHECK(gate.try_lock());  // free again, and re-entrant
  CHECK(gate.try_lock_for(std::chrono::milliseconds(0)));
  gate.unlock();
  gate.unlock();
}
