// The contract rule (shmbus/contract.hpp) on real capnpc-shmbus output: evolution/v1.capnp and a
// v2 of it per kind of change. Every incompatible change is refused in both directions with
// InvalidMessage naming the struct and the field; appending fields keeps working both ways, on
// real messages read in place.
#include <doctest/doctest.h>

#include <capnp/message.h>

#include <optional>
#include <string>
#include <vector>

#include "append.shmbus.h"
#include "appendretype.shmbus.h"
#include "defaultvalue.shmbus.h"
#include "enumerants.shmbus.h"
#include "list.shmbus.h"
#include "nested.shmbus.h"
#include "rename.shmbus.h"
#include "renumber.shmbus.h"
#include "retype.shmbus.h"
#include "typed_test_util.hpp"
#include "unionmember.shmbus.h"
#include "v1.shmbus.h"

using namespace shmbus;

namespace {

/// One version of Calc.add: what its senders stamp and the layouts its readers check with.
struct Version {
  const char* name;
  std::uint64_t params;   // fingerprint of a request it sends
  std::uint64_t results;  // fingerprint of a reply it sends
  const ContractLayout* paramsLayout;
  const ContractLayout* resultsLayout;
};

template <class Add>
Version version(const char* name) {
  return {name, Add::channel().schemaId, Add::channel().replySchemaId, &Add::paramsLayout, &Add::resultsLayout};
}

const Version kV1 = version<evolution::v1::CalcMethods::Add>("v1");

/// An incompatible v2 and the field each side names when it refuses the other's request.
struct Incompatible {
  Version v2;
  const char* v1Names;  // what the v1 reader names, reading v2's request
  const char* v2Names;  // what the v2 reader names, reading v1's request
};

const std::vector<Incompatible> kIncompatible = {
    {version<evolution::retype::CalcMethods::Add>("retype"), "field 'b' (@1)", "field 'b' (@1)"},
    {version<evolution::rename::CalcMethods::Add>("rename"), "field 'op' (@2)", "field 'operation' (@2)"},
    {version<evolution::renumber::CalcMethods::Add>("renumber"), "field 'a' (@0)", "field 'b' (@0)"},
    {version<evolution::nested::CalcMethods::Add>("nested"), "field 'origin' (@4)", "field 'origin' (@4)"},
    {version<evolution::list::CalcMethods::Add>("list"), "field 'tags' (@3)", "field 'tags' (@3)"},
    {version<evolution::enumerants::CalcMethods::Add>("enumerants"), "field 'op' (@2)", "field 'op' (@2)"},
    {version<evolution::unionmember::CalcMethods::Add>("unionmember"), "field 'exact' (@5)", "field 'exact' (@5)"},
    {version<evolution::defaultvalue::CalcMethods::Add>("defaultvalue"), "field 'b' (@1)", "field 'b' (@1)"},
    {version<evolution::appendretype::CalcMethods::Add>("appendretype"), "field 'b' (@1)", "field 'b' (@1)"},
};

/// The InvalidMessage text a reader with `layout` gives a message stamped `fp`, read through the
/// same path as a typed handler (detail::readChecked), or "" when it reads it.
template <class T>
std::string refusal(std::uint64_t fp, std::uint64_t own, const ContractLayout& layout) {
  capnp::MallocMessageBuilder mb;
  mb.initRoot<T>();
  const test::Body body = test::layOut(mb);
  detail::InPlaceMessage in;
  REQUIRE(in.parse(body.data(), body.bytes()).ok());
  auto r = detail::readChecked<T>(Message(&in, fp), own, &layout);
  if (r.ok()) return "";
  CHECK(r.code() == ErrorCode::InvalidMessage);
  return r.error().message;
}

}  // namespace

TEST_CASE("every incompatible v2 of a contract is refused both ways, naming the struct and the field") {
  using V1Request = evolution::v1::Request;
  for (const auto& c : kIncompatible) {
    CAPTURE(c.v2.name);
    REQUIRE(c.v2.params != kV1.params);
    const std::string v1Reads = refusal<V1Request>(c.v2.params, kV1.params, *kV1.paramsLayout);
    CHECK_MESSAGE(v1Reads.find("params of Calc.add (Request): ") == 0, v1Reads);
    CHECK_MESSAGE(v1Reads.find(c.v1Names) != std::string::npos, v1Reads);
    // The other direction: a v2 reader given v1's request (the struct types differ in C++, the
    // check does not read the payload before it passes).
    auto v2Reads = contractMismatch(kV1.params, *c.v2.paramsLayout);
    REQUIRE(v2Reads.has_value());
    CHECK_MESSAGE(v2Reads->find("params of Calc.add (Request): ") == 0, *v2Reads);
    CHECK_MESSAGE(v2Reads->find(c.v2Names) != std::string::npos, *v2Reads);
  }
}

TEST_CASE("Int64 to Float64 (the silent inf) is InvalidMessage with both fingerprints and both field counts") {
  const Version retype = version<evolution::retype::CalcMethods::Add>("retype");
  const std::string m = refusal<evolution::v1::Request>(retype.params, kV1.params, *kV1.paramsLayout);
  CHECK(m.find("field 'b' (@1) differs from the sender's") != std::string::npos);
  CHECK(m.find("the sender declares 7 fields, this side 7") != std::string::npos);
  CHECK(m.find(detail::hex64(retype.params)) != std::string::npos);
  CHECK(m.find(detail::hex64(kV1.params)) != std::string::npos);
  CHECK(m.find("incompatible contract versions") != std::string::npos);
}

TEST_CASE("appending fields keeps working both ways: old readers ignore them, new readers read defaults") {
  const Version append = version<evolution::append::CalcMethods::Add>("append");
  REQUIRE(append.params != kV1.params);  // the fingerprints differ...
  REQUIRE(append.results != kV1.results);
  // ...and every direction is accepted.
  CHECK_FALSE(contractMismatch(append.params, *kV1.paramsLayout));
  CHECK_FALSE(contractMismatch(kV1.params, *append.paramsLayout));
  CHECK_FALSE(contractMismatch(append.results, *kV1.resultsLayout));
  CHECK_FALSE(contractMismatch(kV1.results, *append.resultsLayout));

  // On real messages: a v2 request read by v1 in place, and a v1 request read by v2.
  capnp::MallocMessageBuilder newer;
  auto req = newer.initRoot<evolution::append::Request>();
  req.setA(1);
  req.setB(2);
  req.setScale(0.5);
  req.setRounded(3);
  const test::Body newBody = test::layOut(newer);
  detail::InPlaceMessage in;
  REQUIRE(in.parse(newBody.data(), newBody.bytes()).ok());
  auto old = detail::readChecked<evolution::v1::Request>(Message(&in, append.params), kV1.params, kV1.paramsLayout);
  REQUIRE_MESSAGE(old.ok(), old.error().toString());
  CHECK(old->getA() == 1);
  CHECK(old->getB() == 2);
  CHECK(old->getRounded() == 3);

  capnp::MallocMessageBuilder older;
  auto v1req = older.initRoot<evolution::v1::Request>();
  v1req.setB(-5);
  const test::Body oldBody = test::layOut(older);
  detail::InPlaceMessage in1;
  REQUIRE(in1.parse(oldBody.data(), oldBody.bytes()).ok());
  auto fresh = detail::readChecked<evolution::append::Request>(Message(&in1, kV1.params), append.params, append.paramsLayout);
  REQUIRE_MESSAGE(fresh.ok(), fresh.error().toString());
  CHECK(fresh->getB() == -5);
  CHECK(fresh->getScale() == 0.0);  // the field v1 does not know reads as its default
}

TEST_CASE("a fingerprint names its sender's field count and is never 0") {
  CHECK(contractFieldCount(kV1.params) == 7);
  CHECK(contractFieldCount(kV1.results) == 1);
  CHECK(contractFieldCount(version<evolution::append::CalcMethods::Add>("append").params) == 8);
  constexpr ContractLayout empty{"params of nothing", {}};
  CHECK(contractFingerprint(empty) != 0);
  CHECK_FALSE(contractMismatch(contractFingerprint(empty), empty));
  CHECK_FALSE(contractMismatch(0, *kV1.paramsLayout));  // untyped senders are not checked
  // A reader that declares no field reads anything a typed sender sends (it reads no field).
  CHECK_FALSE(contractMismatch(kV1.params, empty));
}
