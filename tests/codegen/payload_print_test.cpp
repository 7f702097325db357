// shmbus-inspect's payload printer (lib/tools/shmbus-inspect/payload.cpp) on golden.capnp: a
// typed channel's captured request and reply as Cap'n Proto text and JSON; truncated, hostile and
// unknown payloads as a reason and a hex prefix, never an exception.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>

#include "../../lib/tools/shmbus-inspect/payload.hpp"
#include "golden.capnp.h"
#include "shmbus/channel.hpp"

using namespace shmbus;
using namespace shmbus::inspect;

namespace {
/// The captured form of `mb`'s message: Cap'n Proto's standard serialization, cut at `max`.
TracePayload capture(capnp::MessageBuilder& mb, std::size_t max = 4096) {
  const auto flat = capnp::messageToFlatArray(mb);
  const auto bytes = flat.asBytes();
  TracePayload p;
  p.fullBytes = static_cast<std::uint32_t>(bytes.size());
  p.bytes.assign(bytes.begin(), bytes.begin() + std::min(max, bytes.size()));
  return p;
}

PayloadPrinter goldenPrinter() {
  const char* schema = std::getenv("SHMBUS_GOLDEN_SCHEMA");
  const char* imports = std::getenv("SHMBUS_SCHEMA_DIR");
  REQUIRE(schema != nullptr);
  REQUIRE(imports != nullptr);
  return PayloadPrinter(std::make_unique<SchemaFile>(schema, std::vector<std::string>{imports}));
}

const std::uint64_t kEcho = methodChannelId(capnp::typeId<golden::Studio>(), 0);
}  // namespace

TEST_CASE("a typed channel's request and reply print as Cap'n Proto text and as JSON") {
  const PayloadPrinter printer = goldenPrinter();
  CHECK(printer.methodName(kEcho) == "Studio.echo");
  CHECK(printer.methodName(42).empty());
  capnp::MallocMessageBuilder req;
  req.initRoot<golden::Studio::EchoParams>().setText("hi");
  capnp::MallocMessageBuilder rep;
  auto r = rep.initRoot<golden::Studio::EchoResults>();
  r.setText("hi back");
  r.setLength(2);
  CHECK(printer.text(capture(req), kEcho, false) == "(text = \"hi\")");
  CHECK(printer.text(capture(rep), kEcho, true) == "(text = \"hi back\", length = 2)");
  const std::string json = printer.json(capture(rep), kEcho, true);
  CHECK(json.find("\"truncated\":false,\"value\":{\"text\":\"hi back\",\"length\":2}}") != std::string::npos);
  CHECK(printer.text(TracePayload{}, kEcho, false) == "()");  // an empty message: the defaults
}

TEST_CASE("truncated, hostile and unknown payloads print as a reason and a hex prefix") {
  const PayloadPrinter printer = goldenPrinter();
  capnp::MallocMessageBuilder req;
  req.initRoot<golden::Studio::EchoParams>().setText(std::string(200, 'z'));
  const TracePayload cut = capture(req, 64);
  CHECK(printer.text(cut, kEcho, false).starts_with("truncated: 64 of "));
  CHECK(printer.json(cut, kEcho, false).find("\"truncated\":true,\"hex\":\"") != std::string::npos);

  // A segment table that claims far more words than there are.
  TracePayload lying = capture(req);
  const std::uint32_t huge = 1u << 28;
  std::memcpy(lying.bytes.data() + 4, &huge, 4);
  const std::string t = printer.text(lying, kEcho, false);
  CHECK_MESSAGE(t.starts_with("undecodable ("), t);
  CHECK(printer.json(lying, kEcho, false).find("\"error\":\"") != std::string::npos);

  // A root pointer that points far outside the segment.
  TracePayload wild = capture(req);
  const std::uint64_t ptr = (std::uint64_t{1} << 32) | (std::uint64_t{0x100'0000} << 2);  // a struct 16 Mi words away
  std::memcpy(wild.bytes.data() + 8, &ptr, 8);
  CHECK_MESSAGE(printer.text(wild, kEcho, false).starts_with("undecodable ("), printer.text(wild, kEcho, false));

  // Odd sizes and garbage: still a reason, not an exception.
  TracePayload garbage;
  garbage.bytes = {1, 2, 3};
  garbage.fullBytes = 3;
  CHECK(printer.text(garbage, kEcho, false).starts_with("undecodable ("));

  // A channel the schema does not declare: size and hex only.
  CHECK(printer.text(capture(req), 42, false).find(" B: 00000000") != std::string::npos);
  const PayloadPrinter noSchema(nullptr);
  CHECK(noSchema.text(capture(req), kEcho, false).find(" B: 00000000") != std::string::npos);
}
