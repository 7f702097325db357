// Unit tests of streams (shmbus/stream.hpp, lib/src/stream): the flow window, the end of a stream
// on the first failed write, a write the ring refuses, finish and cancel, the same driven by
// coroutines (writeAsync, flushAsync: shmbus/coro.hpp), against a fake endpoint
// whose "receiver" acknowledges a write only when the stream waits for it (so every wait the
// stream makes is visible and nothing here depends on timing).
#include "shmbus/stream.hpp"

#include <doctest/doctest.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "call/call.hpp"
#include "shmbus/coro.hpp"
#include "test.capnp.h"

using namespace shmbus;
using namespace shmbus::detail;

namespace {

/// The endpoint a stream writes to: every invoke makes a pending call; the receiver answers one
/// when the stream blocks on it (waitFor), or when the test acks it. `failAt` fails that write
/// (by 0-based index) with HandlerError when it is answered; `fullFor` refuses the next so many
/// invokes at once with Full, as a ring without room does.
struct FakeReceiver : CallOwner {
  std::vector<std::shared_ptr<CallState>> calls;  // every invoke, in order
  std::vector<std::string> channels;
  std::vector<std::uint64_t> waitedFor;           // request ids the stream blocked on, in order
  int failAt = -1;
  int fullFor = 0;
  std::uint64_t maxUnanswered = 0;                // the most calls pending at once

  Call invoke(const Channel& ch, const BuildFn& build, CallOptions) {
    capnp::MallocMessageBuilder b;
    if (build) build(b);
    auto s = std::make_shared<CallState>();
    s->requestId = calls.size() + 1;
    s->owner = this;
    s->channelName = std::string(ch.name);
    if (fullFor > 0) {
      --fullFor;
      completeCall(s, makeError(ErrorCode::Full, "ring full"));
      return Call(s);
    }
    calls.push_back(s);
    channels.emplace_back(ch.name);
    std::uint64_t pending = 0;
    for (const auto& c : calls) pending += isDone(*c) ? 0 : 1;
    maxUnanswered = std::max(maxUnanswered, pending);
    return Call(s);
  }
  void answer(const std::shared_ptr<CallState>& s) {
    const auto index = static_cast<int>(s->requestId - 1);
    if (index == failAt) {
      completeCall(s, makeError(ErrorCode::HandlerError, "chunk refused"));
    } else {
      completeCall(s, Message());
    }
  }
  Result<Message> waitFor(const std::shared_ptr<CallState>& s) override {
    waitedFor.push_back(s->requestId);
    answer(s);
    return *s->result;
  }
  void cancel(const std::shared_ptr<CallState>& s) override {
    completeCall(s, makeError(ErrorCode::Cancelled, "cancelled"));
  }
  Stream stream(StreamOptions options) {
    return Stream([this](const Channel& ch, const BuildFn& b, CallOptions o) { return invoke(ch, b, o); }, options);
  }
};

const Channel kWrite("sink.write");
const Channel kDone("sink.done");

/// A chunk of `n` bytes of text: the message is the root pointer, the struct and the text.
BuildFn chunk(std::size_t n) {
  return [n](Builder& b) { b.initRoot<shmbus::test::TestMessage>().setText(std::string(n, 'x')); };
}

}  // namespace

TEST_CASE("a stream keeps at most its window plus one write unacknowledged, waiting for the oldest") {
  FakeReceiver r;
  Stream s = r.stream({.windowBytes = 1000});
  for (int i = 0; i < 50; ++i) REQUIRE(s.write(kWrite, chunk(200)).ok());
  const StreamStats st = s.stats();
  CHECK(st.writes == 50);
  const std::uint64_t each = st.bytes / 50;
  CHECK(each >= 200);
  CHECK(st.inFlightHighWater <= 1000 + each);
  CHECK(st.inFlightHighWater >= 1000);  // the window was used, not a smaller one
  CHECK(r.maxUnanswered <= 1000 / each + 1);
  // It waited for the oldest each time: request ids in order, no write skipped.
  REQUIRE(!r.waitedFor.empty());
  for (std::size_t i = 0; i < r.waitedFor.size(); ++i) CHECK(r.waitedFor[i] == i + 1);
  CHECK(st.waits == r.waitedFor.size());
  // flush answers the rest; finish then makes the final call.
  REQUIRE(s.flush().ok());
  CHECK(s.stats().acknowledged == 50);
  CHECK(s.stats().inFlightBytes == 0);
  Call done = s.finish(kDone);
  CHECK(r.channels.back() == "sink.done");
  CHECK(r.channels.size() == 51);
  CHECK(done.get().ok());
}

TEST_CASE("acknowledgements already there are taken without waiting") {
  FakeReceiver r;
  Stream s = r.stream({.windowBytes = 1000});
  for (int i = 0; i < 20; ++i) {
    REQUIRE(s.write(kWrite, chunk(200)).ok());
    r.answer(r.calls.back());  // a fast receiver: acknowledged before the next write
  }
  CHECK(s.stats().waits == 0);
  CHECK(r.waitedFor.empty());
  CHECK(r.maxUnanswered == 1);
}

TEST_CASE("the first failed write ends the stream: later writes, flush and finish return its error") {
  FakeReceiver r;
  r.failAt = 3;
  Stream s = r.stream({.windowBytes = 600});
  Result<void> last;
  int written = 0;
  for (; written < 40; ++written) {
    last = s.write(kWrite, chunk(200));
    if (!last) break;
  }
  REQUIRE_FALSE(last.ok());
  CHECK(last.error().code == ErrorCode::HandlerError);
  CHECK(written < 40);
  const std::size_t sent = r.calls.size();
  CHECK(s.write(kWrite, chunk(10)).error().code == ErrorCode::HandlerError);
  CHECK(r.calls.size() == sent);  // nothing more was sent
  CHECK(s.flush().error().code == ErrorCode::HandlerError);
  auto done = s.finish(kDone).get();
  CHECK(done.error().code == ErrorCode::HandlerError);
  CHECK(r.calls.size() == sent);  // the final call was not made either
  CHECK(s.status().error().code == ErrorCode::HandlerError);
}

TEST_CASE("a write the ring refuses waits for the oldest acknowledgement and is written again") {
  FakeReceiver r;
  Stream s = r.stream({.windowBytes = 1u << 20});
  REQUIRE(s.write(kWrite, chunk(100)).ok());
  REQUIRE(s.write(kWrite, chunk(100)).ok());
  r.fullFor = 1;
  REQUIRE(s.write(kWrite, chunk(100)).ok());
  CHECK(r.waitedFor == std::vector<std::uint64_t>{1});
  CHECK(r.calls.size() == 3);
  // With nothing in flight, Full is returned and the stream goes on.
  REQUIRE(s.flush().ok());
  r.fullFor = 1;
  auto refused = s.write(kWrite, chunk(100));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::Full);
  CHECK(s.status().ok());
  CHECK(s.write(kWrite, chunk(100)).ok());
}

TEST_CASE("cancel cancels the writes in flight and ends the stream with Cancelled") {
  FakeReceiver r;
  Stream s = r.stream({.windowBytes = 1u << 20});
  for (int i = 0; i < 5; ++i) REQUIRE(s.write(kWrite, chunk(100)).ok());
  s.cancel();
  for (const auto& c : r.calls) {
    REQUIRE(isDone(*c));
    CHECK(c->result->error().code == ErrorCode::Cancelled);
  }
  CHECK(s.write(kWrite, chunk(1)).error().code == ErrorCode::Cancelled);
  CHECK(s.stats().inFlightBytes == 0);
}

TEST_CASE("a negative write timeout is InvalidArgument; a zero window is the default") {
  FakeReceiver r;
  Stream bad = r.stream({.timeout = std::chrono::milliseconds(-1)});
  CHECK(bad.write(kWrite, chunk(1)).error().code == ErrorCode::InvalidArgument);
  CHECK(r.calls.empty());
  Stream s = r.stream({});
  for (int i = 0; i < 100; ++i) REQUIRE(s.write(kWrite, chunk(1000)).ok());
  CHECK(r.waitedFor.empty());  // 100 KiB is within the 256 KiB default
  CHECK(s.stats().inFlightBytes == s.stats().bytes);
}

TEST_CASE("co_await writeAsync suspends on the oldest acknowledgement while the window is full, blocking no thread") {
  FakeReceiver r;
  Stream s = r.stream({.windowBytes = 1000});
  int written = 0;
  bool flushed = false;
  Result<void> last = makeError(ErrorCode::InvalidArgument, "not flushed");
  auto body = [&]() -> Task<void> {
    for (int i = 0; i < 12; ++i) {
      auto w = co_await writeAsync(s, kWrite, chunk(200));
      CHECK(w.ok());
      ++written;
    }
    last = co_await flushAsync(s);
    flushed = true;
  };
  detach(body());
  // The window filled and the coroutine suspended on the oldest write's acknowledgement: nothing
  // blocked (the receiver was never waited for), the writes so far are in flight.
  const std::size_t first = r.calls.size();
  CHECK(written == static_cast<int>(first));
  CHECK(first >= 4);
  CHECK(first < 12);
  CHECK(r.waitedFor.empty());
  // Each acknowledgement of the oldest lets it go on; it never writes past the window (+ one).
  for (std::size_t acked = 0; acked < r.calls.size(); ++acked) {
    CHECK(r.calls.size() - acked <= first);
    r.answer(r.calls[acked]);
  }
  CHECK(written == 12);
  CHECK(flushed);
  CHECK(last.ok());
  CHECK(r.waitedFor.empty());
  const StreamStats st = s.stats();
  CHECK(st.writes == 12);
  CHECK(st.acknowledged == 12);
  CHECK(st.inFlightBytes == 0);
  CHECK(st.waits >= 12 - first);
}

TEST_CASE("co_await writeAsync: a refused write waits for the oldest; the first failure ends the stream") {
  FakeReceiver r;
  r.failAt = 1;
  Stream s = r.stream({.windowBytes = 1u << 20});
  std::vector<ErrorCode> codes;
  bool done = false;
  auto body = [&]() -> Task<void> {
    codes.push_back((co_await writeAsync(s, kWrite, chunk(100))).code());
    codes.push_back((co_await writeAsync(s, kWrite, chunk(100))).code());
    r.fullFor = 1;  // the third finds the ring full: it waits for the first's acknowledgement
    codes.push_back((co_await writeAsync(s, kWrite, chunk(100))).code());
    codes.push_back((co_await writeAsync(s, kWrite, chunk(100))).code());
    codes.push_back((co_await flushAsync(s)).code());
    codes.push_back((co_await writeAsync(s, kWrite, chunk(100))).code());  // after the failure
    done = true;
  };
  detach(body());
  CHECK(codes == std::vector<ErrorCode>{ErrorCode::Ok, ErrorCode::Ok});  // suspended on the first write
  CHECK(r.calls.size() == 2);
  r.answer(r.calls[0]);
  // The third was written again, the fourth went (the window is wide), the flush waits.
  CHECK(codes == std::vector<ErrorCode>{ErrorCode::Ok, ErrorCode::Ok, ErrorCode::Ok, ErrorCode::Ok});
  CHECK(r.calls.size() == 4);
  r.answer(r.calls[1]);  // fails (failAt 1); the flush still waits for the writes after it
  CHECK_FALSE(done);
  r.answer(r.calls[2]);
  r.answer(r.calls[3]);
  REQUIRE(done);
  CHECK(codes[4] == ErrorCode::HandlerError);
  CHECK(codes[5] == ErrorCode::HandlerError);
  CHECK(r.calls.size() == 4);  // nothing sent after the failure was seen
  CHECK(r.waitedFor.empty());
  CHECK(s.stats().waits == 1);  // the refused write's
}
