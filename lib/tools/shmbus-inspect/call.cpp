// shmbus-inspect BUS call TARGET Interface.method '(capnp text)' --schema FILE: invokes a typed
// method from the shell and prints the reply as Cap'n Proto text, like `busctl call`.
//
// The method comes from the schema parsed at run time (capnp::SchemaParser); the channel id and
// the params/results fingerprints are computed as capnpc-shmbus computes them (methodChannelId,
// the plugin's own layout code: lib/tools/capnpc-shmbus/layout.cpp), so the handler's typed stub
// accepts the request. The params are read with capnp::TextCodec (Cap'n Proto's text format, as in
// `capnp eval`), and the reply is printed the same way.
#include "call.hpp"

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/serialize-text.h>
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string_view>

#include "../capnpc-shmbus/layout.hpp"
#include "schema.hpp"
#include "shmbus/contract.hpp"
#include "shmbus/window.hpp"

namespace shmbus::inspect {

namespace {

/// The interface method `qualified` ("Iface.method", the interface path as capnpc-shmbus names
/// it: "Outer.Inner.method") of `file`, or what is missing.
std::optional<capnp::InterfaceSchema::Method> findMethod(const capnp::ParsedSchema& file, std::string_view qualified,
                                                         std::string& why) {
  const auto dot = qualified.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == qualified.size()) {
    why = fmt::format("'{}' is not Interface.method", qualified);
    return std::nullopt;
  }
  const std::string_view scope = qualified.substr(0, dot);
  capnp::ParsedSchema node = file;
  for (std::string_view path = scope; !path.empty();) {
    const auto end = path.find('.');
    KJ_IF_MAYBE(next, node.findNested(std::string(path.substr(0, end)))) {
      node = *next;
    } else {
      why = fmt::format("the schema declares no '{}'", scope);
      return std::nullopt;
    }
    path = end == std::string_view::npos ? std::string_view() : path.substr(end + 1);
  }
  if (!node.getProto().isInterface()) {
    why = fmt::format("'{}' is not an interface", scope);
    return std::nullopt;
  }
  KJ_IF_MAYBE(m, node.asInterface().findMethodByName(std::string(qualified.substr(dot + 1)))) { return *m; }
  why = fmt::format("interface '{}' has no such method '{}'", scope, qualified.substr(dot + 1));
  return std::nullopt;
}

}  // namespace

int call(const CallRequest& rq) {
  std::unique_ptr<SchemaFile> schema;
  capnp::MallocMessageBuilder request;
  capnp::StructSchema resultsSchema;
  Channel channel("");
  try {
    schema = std::make_unique<SchemaFile>(rq.schemaFile, rq.importDirs);
    const capnp::ParsedSchema& file = schema->root();
    std::string why;
    const auto found = findMethod(file, rq.channel, why);
    if (!found) {
      fmt::print(stderr, "shmbus-inspect: {}: {}\n", rq.schemaFile, why);
      return 2;
    }
    const auto& method = *found;
    const capnp::StructSchema params = method.getParamType();
    resultsSchema = method.getResultType();
    const std::uint64_t interfaceId = method.getContainingInterface().getProto().getId();
    const auto paramsLayout = codegen::layoutOf(params, "params of " + rq.channel);
    const auto resultsLayout = codegen::layoutOf(resultsSchema, "results of " + rq.channel);
    channel = Channel(methodChannelId(interfaceId, method.getOrdinal()), rq.channel, paramsLayout.fingerprint,
                      resultsLayout.fingerprint);
    capnp::TextCodec().decode(kj::StringPtr(rq.params.c_str()), request.initRoot<capnp::DynamicStruct>(params));
  } catch (const kj::Exception& e) {
    fmt::print(stderr, "shmbus-inspect: {}: {}\n", rq.schemaFile, e.getDescription().cStr());
    return 2;
  }

  WindowOptions wo;
  wo.bus = rq.bus;
  wo.socketPath = rq.socketPath;
  wo.role = rq.role;
  auto w = Window::connect(wo);
  if (!w) {
    fmt::print(stderr, "shmbus-inspect: {}\n", w.error().toString());
    return 1;
  }
  const auto paramsReader = request.getRoot<capnp::AnyStruct>().asReader();
  const BuildFn build = [&](Builder& b) { b.setRoot(paramsReader); };
  const CallOptions options{.timeout = rq.timeout};
  auto reply = rq.target == "main" ? (*w)->invoke(channel, build, options).get()
                                   : (*w)->invokeIn(Target(rq.target), channel, build, options).get();
  if (!reply) {
    fmt::print(stderr, "shmbus-inspect: {}\n", reply.error().toString());
    return 1;
  }
  try {
    const std::uint64_t got = reply->schemaId();
    if (got != 0 && got != channel.replySchemaId) {
      fmt::print(stderr, "shmbus-inspect: warning: the reply's contract fingerprint {:016x} is not this schema's {:016x}\n",
                 got, channel.replySchemaId);
    }
    const auto results = reply->empty() ? capnp::DynamicStruct::Reader()
                                        : reply->reader().getRoot<capnp::DynamicStruct>(resultsSchema);
    fmt::print("{}\n", reply->empty() ? std::string("()") : capnp::TextCodec().encode(results).cStr());
  } catch (const kj::Exception& e) {
    fmt::print(stderr, "shmbus-inspect: malformed reply: {}\n", e.getDescription().cStr());
    return 1;
  }
  return 0;
}

}  // namespace shmbus::inspect
