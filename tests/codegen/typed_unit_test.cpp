// shmbus/typed.hpp in one process: the reply checks (fingerprint, malformed, empty) on messages
// laid out as the rings lay them out, and compile-time checks of the generated overloads.
#include <doctest/doctest.h>

#include <capnp/message.h>

#include <cstring>

#include "golden.shmbus.h"
#include "typed_test_util.hpp"

using namespace shmbus;
using namespace shmbus::golden;
using shmbus::test::Body;
using shmbus::test::layOut;

namespace {

// ---- compile-time: which overloads exist, and what a build callable must take

template <class C, class... A>
concept CanEcho = requires(C c, A... a) { c.echo(a...); };
template <class C, class... A>
concept CanReport = requires(C c, A... a) { c.report(a...); };
template <class C>
concept CanBroadcastNotify = requires(C c) { c.broadcastNotify(); };

auto buildEcho = [](Studio::EchoParams::Builder p) { p.setText("x"); };
using BuildEcho = decltype(buildEcho);

static_assert(ParamsBuilder<NoParams, StudioMethods::Echo>);
static_assert(ParamsBuilder<BuildEcho, StudioMethods::Echo>);
static_assert(!ParamsBuilder<BuildEcho, StudioMethods::Describe>, "a builder of other params is refused");
static_assert(!ParamsBuilder<const char*, StudioMethods::Echo>);

// $target interface: a target-less form on both endpoints; a role string is a target, not a build.
static_assert(CanEcho<StudioClient, BuildEcho>);
static_assert(CanEcho<StudioClient, const char*, BuildEcho, CallOptions>);
static_assert(CanEcho<StudioClient, const char*>);
static_assert(CanEcho<StudioClient>);
static_assert(CanEcho<StudioMainClient, BuildEcho>);
static_assert(std::same_as<decltype(std::declval<StudioClient&>().echo()), TypedCall<Studio::EchoResults>>);
// No $target: the target-less form is a window's call to the main process; main has none.
static_assert(CanReport<HubClient>);
static_assert(!CanReport<HubMainClient>);
static_assert(CanReport<HubMainClient, Target>);
// Broadcast is the supervisor's.
static_assert(CanBroadcastNotify<StudioMainClient>);
static_assert(!CanBroadcastNotify<StudioClient>);
static_assert(std::same_as<decltype(std::declval<StudioClient&>().notify()), Result<void>>);
// On a port: only the target-less forms (to the peer), $target or not; no broadcast.
static_assert(CanEcho<StudioPortClient>);
static_assert(CanEcho<StudioPortClient, BuildEcho, CallOptions>);
static_assert(!CanEcho<StudioPortClient, const char*>, "a port has one peer: no target");
static_assert(!CanEcho<StudioPortClient, Target, BuildEcho>);
static_assert(CanReport<HubPortClient>);
static_assert(!CanReport<HubPortClient, Target>);
static_assert(!CanBroadcastNotify<StudioPortClient>);
static_assert(std::same_as<decltype(std::declval<StudioPortClient&>().echo()), TypedCall<Studio::EchoResults>>);
static_assert(std::same_as<decltype(std::declval<StudioPortClient&>().notify()), Result<void>>);
static_assert(Endpoint<Port> && !RoutedEndpoint<Port> && RoutedEndpoint<Window> && RoutedEndpoint<Supervisor>);

// Generated constants.
static_assert(StudioChannels::echo().id == methodChannelId(0xc7c3d7cdf020eb54ull, 0));
static_assert(StudioChannels::echo().name == "Studio.echo");
static_assert(StudioChannels::delete_().name == "Studio.delete");
static_assert(Scope_Inner_DeeperChannels::depth().name == "Scope.Inner.Deeper.depth");
static_assert(StudioMethods::Describe::defaultTimeout == std::chrono::milliseconds(2500));
static_assert(StudioMethods::Echo::defaultTimeout.count() == 0);
static_assert(StudioMethods::Notify::oneway && !StudioMethods::Echo::oneway);
static_assert(std::same_as<StudioMethods::Store::Params, Shape>);
static_assert(std::same_as<StudioMethods::Store::Results, Point>);

Body echoReply(const char* text) {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<Studio::EchoResults>();
  r.setText(text);
  r.setLength(static_cast<std::uint32_t>(std::strlen(text)));
  return layOut(mb);
}

constexpr Channel kEcho = StudioChannels::echo();

}  // namespace

TEST_CASE("a reply with the expected fingerprint is read in place") {
  const Body body = echoReply("hello");
  detail::InPlaceMessage in;
  REQUIRE(in.parse(body.data(), body.bytes()).ok());
  auto r = detail::typedReply<Studio::EchoResults>(Message(&in, kEcho.replySchemaId), kEcho, Target("studio"));
  REQUIRE(r.ok());
  CHECK(std::string(r->reader().getText().cStr()) == "hello");
  CHECK((*r)->getLength() == 5);
  const auto* p = reinterpret_cast<const std::uint8_t*>(r->reader().getText().begin());
  CHECK(p >= body.data());
  CHECK(p < body.data() + body.bytes());
}

TEST_CASE("a reply stamped with another fingerprint is InvalidMessage naming the channel, target and both ids") {
  const Body body = echoReply("hello");
  detail::InPlaceMessage in;
  REQUIRE(in.parse(body.data(), body.bytes()).ok());
  auto r = detail::typedReply<Studio::EchoResults>(Message(&in, 0x1234), kEcho, Target("studio"));
  REQUIRE(r.code() == ErrorCode::InvalidMessage);
  const std::string& m = r.error().message;
  CHECK(m.find("Studio.echo") != std::string::npos);
  CHECK(m.find("role 'studio'") != std::string::npos);
  CHECK(m.find("0000000000001234") != std::string::npos);
  CHECK(m.find(detail::hex64(kEcho.replySchemaId)) != std::string::npos);
  CHECK(m.find("different contract versions") != std::string::npos);
}

TEST_CASE("an untyped reply (fingerprint 0) or an untyped call is not checked") {
  const Body body = echoReply("x");
  detail::InPlaceMessage in;
  REQUIRE(in.parse(body.data(), body.bytes()).ok());
  CHECK(detail::typedReply<Studio::EchoResults>(Message(&in, 0), kEcho, Target("studio")).ok());
  const Channel untyped(kEcho.id, kEcho.name);
  CHECK(detail::typedReply<Studio::EchoResults>(Message(&in, 0x1234), untyped, Target("studio")).ok());
}

TEST_CASE("a malformed reply is InvalidMessage, not garbage") {
  Body body = echoReply("hello");
  // The root pointer (first word of segment 0) points far outside the segment.
  capnp::word& root = body.words[sizeof(detail::MessageTable) / sizeof(capnp::word)];
  const std::uint64_t bad = (std::uint64_t{0x7fffff} << 2) | (std::uint64_t{1} << 32);
  std::memcpy(static_cast<void*>(&root), &bad, sizeof bad);
  detail::InPlaceMessage in;
  REQUIRE(in.parse(body.data(), body.bytes()).ok());
  auto r = detail::typedReply<Studio::EchoResults>(Message(&in, kEcho.replySchemaId), kEcho, Target("studio"));
  REQUIRE(r.code() == ErrorCode::InvalidMessage);
  CHECK(r.error().message.find("Studio.echo") != std::string::npos);
}

TEST_CASE("an empty reply reads as the results' defaults; a failed call passes its error through") {
  auto empty = detail::typedReply<Studio::PingResults>(Message(), StudioChannels::ping(), Target("studio"));
  CHECK(empty.ok());
  auto failed = detail::typedReply<Studio::EchoResults>(makeError(ErrorCode::Timeout, "late"), kEcho, Target("studio"));
  CHECK(failed.code() == ErrorCode::Timeout);
  CHECK(failed.error().message == "late");
}

TEST_CASE("withTimeout fills in the method default only when the caller gave none") {
  CHECK(detail::withTimeout({}, std::chrono::milliseconds(150)).timeout == std::chrono::milliseconds(150));
  CallOptions o;
  o.timeout = std::chrono::milliseconds(7);
  CHECK(detail::withTimeout(o, std::chrono::milliseconds(150)).timeout == std::chrono::milliseconds(7));
}
