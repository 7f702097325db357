// Announced contract schemas (docs/architecture.md §6): what capnpc-shmbus embeds per interface,
// the announcement's encoder and its check (trace/schema_announce), and the router's bounded
// store (router/schema_store), on golden.capnp's contracts.
#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>
#include <type_traits>

#include "golden.shmbus.h"
#include "router/schema_store.hpp"
#include "trace/schema_announce.hpp"

using namespace shmbus;
using namespace shmbus::detail;
using namespace shmbus::golden;

namespace {

using Edit = std::function<void(schema::SchemaAnnouncement::Builder)>;

/// `contract`'s announcement as a serialized message, changed by `edit` first.
kj::Array<capnp::word> announcementOf(const ContractSchema& contract, const Edit& edit = {}) {
  capnp::MallocMessageBuilder mb;
  auto a = mb.initRoot<schema::SchemaAnnouncement>();
  encodeAnnouncement(contract, a);
  if (edit) edit(a);
  return capnp::messageToFlatArray(mb);
}

/// The error message of decoding `words` (the test fails when it decodes).
std::string refusal(const kj::Array<capnp::word>& words) {
  auto r = decodeAnnouncementWords(words);
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == ErrorCode::InvalidMessage);
  return r.error().message;
}

/// Index of node `id` in `a`'s nodes.
unsigned nodeIndex(schema::SchemaAnnouncement::Builder a, std::uint64_t id) {
  for (unsigned i = 0; i < a.getNodes().size(); ++i) {
    if (a.getNodes()[i].getId() == id) return i;
  }
  FAIL("no node " << id);
  return 0;
}

/// The names of the contracts `store` hands to inspectors.
std::vector<std::string> keptNames(const SchemaStore& store) {
  capnp::MallocMessageBuilder mb;
  auto set = mb.initRoot<schema::SchemaSet>();
  store.encode(set);
  std::vector<std::string> out;
  for (auto c : set.asReader().getContracts()) out.emplace_back(c.getName().cStr());
  return out;
}

}  // namespace

TEST_CASE("capnpc-shmbus embeds each interface's compiled schema, name and method channels") {
  static_assert(std::is_same_v<StudioMethods::Echo::Contract, StudioContract>);
  static_assert(std::is_same_v<Scope_InnerMethods::Hello::Contract, Scope_InnerContract>);
  const ContractSchema c = StudioContract::schema();
  CHECK(c.name == "Studio");
  CHECK(c.interface.getProto().getId() == capnp::typeId<Studio>());
  REQUIRE(c.methods.size() == 8);
  CHECK(c.methods[0].ordinal == 0);
  CHECK(c.methods[0].channel == StudioChannels::echo().id);
  CHECK(c.methods[7].channel == StudioChannels::slow().id);
  CHECK(Scope_InnerContract::schema().name == "Scope.Inner");
}

TEST_CASE("an announcement carries every node a decoder needs and decodes to each method's structs") {
  const auto words = announcementOf(StudioContract::schema());
  auto loaded = decodeAnnouncementWords(words);
  REQUIRE_MESSAGE(loaded.ok(), loaded.error().toString());
  CHECK(loaded->interfaceId == capnp::typeId<Studio>());
  CHECK(loaded->name == "Studio");
  CHECK(loaded->methods.size() == 8);
  // Every struct the methods reach is among the nodes, nested and group ones included.
  {
    capnp::FlatArrayMessageReader r(words);
    std::set<std::uint64_t> ids;
    for (auto n : r.getRoot<schema::SchemaAnnouncement>().getNodes()) ids.insert(n.getId());
    CHECK(ids.size() == loaded->nodes);
    for (std::uint64_t id : {capnp::typeId<Studio>(), capnp::typeId<Shape>(), capnp::typeId<Point>(),
                             capnp::typeId<Shape::Style>(), capnp::typeId<Shape::Circle>(),
                             capnp::typeId<Studio::DescribeParams>(), capnp::typeId<Studio::DescribeResults>()}) {
      CHECK(ids.count(id) == 1);
    }
  }
  const AnnouncedMethod& echo = loaded->methods.at(StudioChannels::echo().id);
  CHECK(echo.name == "Studio.echo");
  CHECK(echo.results.getProto().getId() == capnp::typeId<Studio::EchoResults>());

  // A message built with the compiled types reads the same through the announced schema, nested
  // structs included.
  capnp::MallocMessageBuilder m;
  auto shape = m.initRoot<Shape>();
  shape.setName("c");
  shape.initCircle().initCenter().setX(7);
  shape.initStyle().setColor("red");
  const AnnouncedMethod& store = loaded->methods.at(StudioChannels::store().id);
  CHECK(store.name == "Studio.store");
  const auto flat = capnp::messageToFlatArray(m);
  capnp::FlatArrayMessageReader r(flat);
  auto root = r.getRoot<capnp::DynamicStruct>(store.params);
  CHECK(root.get("name").as<capnp::Text>() == "c");
  CHECK(root.get("circle").as<capnp::DynamicStruct>().get("center").as<capnp::DynamicStruct>().get("x").as<int>() == 7);
  CHECK(root.get("style").as<capnp::DynamicStruct>().get("color").as<capnp::Text>() == "red");

  auto hub = decodeAnnouncementWords(announcementOf(HubContract::schema()));
  REQUIRE_MESSAGE(hub.ok(), hub.error().toString());
  const AnnouncedMethod& status = hub->methods.at(HubChannels::status().id);
  CHECK(status.params.getFieldByName("level").getType().isEnum());  // the enum's node came along
}

TEST_CASE("the fuzz seeds of the announcement check are these encodings (written when SHMBUS_SCHEMA_SEED_DIR is set)") {
  const std::vector<std::pair<std::string, kj::Array<capnp::word>>> seeds = [] {
    std::vector<std::pair<std::string, kj::Array<capnp::word>>> v;
    v.emplace_back("studio", announcementOf(StudioContract::schema()));
    v.emplace_back("hub", announcementOf(HubContract::schema()));
    return v;
  }();
  for (const auto& [name, words] : seeds) CHECK(decodeAnnouncementWords(words).ok());
  const char* dir = std::getenv("SHMBUS_SCHEMA_SEED_DIR");
  if (dir == nullptr) return;
  for (const auto& [name, words] : seeds) {
    std::ofstream(std::string(dir) + "/" + name, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(words.begin()), static_cast<std::streamsize>(words.asBytes().size()));
  }
}

TEST_CASE("a malformed or inconsistent announcement is refused with its reason") {
  const ContractSchema studio = StudioContract::schema();
  CHECK(refusal(announcementOf(studio, [](auto a) { a.getMethods()[0].setChannel(12345); }))
            .find("is not the method's id") != std::string::npos);
  CHECK(refusal(announcementOf(studio, [](auto a) { a.getMethods()[0].setOrdinal(99); }))
            .find("declares no method @99") != std::string::npos);
  CHECK(refusal(announcementOf(studio, [](auto a) { a.setInterfaceId(0x1234); })).find("no node for its interface") !=
        std::string::npos);
  CHECK(refusal(announcementOf(studio, [](auto a) { a.setName("not a name"); })).find("contract name") !=
        std::string::npos);
  // The echo params' node replaced by a copy of the interface's: its struct is not among the nodes.
  CHECK(refusal(announcementOf(studio, [](auto a) {
          const unsigned i = nodeIndex(a, capnp::typeId<Studio::EchoParams>());
          a.getNodes().setWithCaveats(i, a.getNodes()[0].asReader());
        })).find("not among the nodes") != std::string::npos);
  // A struct whose field lies outside its pointer section: SchemaLoader's own validation.
  const std::string loader = refusal(announcementOf(studio, [](auto a) {
    a.getNodes()[nodeIndex(a, capnp::typeId<Studio::EchoParams>())].getStruct().setPointerCount(0);
  }));
  CHECK_MESSAGE(!loader.empty(), loader);
  // Too many nodes.
  CHECK(refusal(announcementOf(studio, [](auto a) {
          auto nodes = a.initNodes(static_cast<unsigned>(kMaxSchemaNodes + 1));
          for (unsigned i = 0; i < nodes.size(); ++i) nodes[i].setId(i + 1);
        })).find("more than") != std::string::npos);
  // Bytes that are no message at all.
  std::vector<std::uint8_t> junk(256);
  for (std::size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<std::uint8_t>(i * 37 + 11);
  CHECK_FALSE(decodeAnnouncementBytes(junk.data(), junk.size()).ok());
  CHECK_FALSE(decodeAnnouncementBytes(junk.data(), 13).ok());
}

TEST_CASE("the store keeps a contract once, prefers the main process's, and refuses past its limit") {
  const ContractSchema studio = StudioContract::schema();
  const Edit renamed = [](auto a) { a.setName("StudioV2"); };
  SchemaStore store;
  auto first = store.keep(5, announcementOf(studio));
  REQUIRE_MESSAGE(first.ok(), first.error().toString());
  const std::size_t one = store.bytes();
  CHECK(one > 0);
  auto again = store.keep(6, announcementOf(studio));
  REQUIRE(again.ok());
  CHECK(again->find("kept already") != std::string::npos);
  auto other = store.keep(7, announcementOf(studio, renamed));  // another window's version: the first stays
  REQUIRE(other.ok());
  CHECK(other->find("not replaced") != std::string::npos);
  CHECK(keptNames(store) == std::vector<std::string>{"Studio"});
  REQUIRE(store.keep(0, announcementOf(studio, renamed)).ok());  // main's replaces a window's
  CHECK(keptNames(store) == std::vector<std::string>{"StudioV2"});
  REQUIRE(store.keep(8, announcementOf(studio)).ok());  // and no window replaces main's
  CHECK(keptNames(store) == std::vector<std::string>{"StudioV2"});
  CHECK(store.keep(9, announcementOf(studio, [](auto a) { a.setName("bad name"); })).code() ==
        ErrorCode::InvalidMessage);
  CHECK(store.size() == 1);

  SchemaStore small(one + 8);  // room for Studio, not for Hub besides it
  REQUIRE(small.keep(1, announcementOf(studio)).ok());
  auto full = small.keep(1, announcementOf(HubContract::schema()));
  CHECK(full.code() == ErrorCode::Full);
  CHECK(small.size() == 1);
  CHECK(small.bytes() == one);
}
