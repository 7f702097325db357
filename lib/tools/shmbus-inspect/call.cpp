// shmbus-inspect BUS call TARGET Interface.method '(capnp text)' [--schema FILE]: invokes a typed
// method from the shell and prints the reply as Cap'n Proto text, like `busctl call`.
//
// The method comes from the schema parsed at run time (capnp::SchemaParser), or without --schema
// from the contracts the bus's typed stubs announced (Inspector::schemas); the channel id and
// the params/results fingerprints are computed as capnpc-shmbus computes them (methodChannelId,
// the plugin's own layout code: lib/tools/capnpc-shmbus/layout.cpp), so the handler's typed stub
// accepts the request. The params are read with capnp::TextCodec (Cap'n Proto's text format, as in
// `capnp eval`), and the reply is printed the same way.
#include "call.hpp"

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/serialize-text.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string_view>

#include "../capnpc-shmbus/layout.hpp"
#include "schema.hpp"
#include "shmbus/contract.hpp"
#include "shmbus/inspect.hpp"
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

/// The method `qualified` among the contracts the bus's typed stubs announced (Inspector::schemas,
/// docs/architecture.md §6): its channel id and structs, kept alive by `keep`. Returns 0, or the
/// exit status after printing why not: 1 when the bus cannot be asked, 2 when no contract (or more
/// than one, with different channel ids) announced the method.
int announcedMethod(const CallRequest& rq, AnnouncedSchemas& keep, std::uint64_t& channelId,
                    capnp::StructSchema& params, capnp::StructSchema& results) {
  auto inspector = Inspector::attach(rq.bus, rq.socketPath);
  if (!inspector) {
    fmt::print(stderr, "shmbus-inspect: {}\n", inspector.error().toString());
    return 1;
  }
  auto schemas = (*inspector)->schemas();
  if (!schemas) {
    fmt::print(stderr, "shmbus-inspect: {}\n", schemas.error().toString());
    return 1;
  }
  keep = std::move(*schemas);
  std::size_t matches = 0;
  for (const auto& [id, m] : keep.methods) {
    if (m.name != rq.channel) continue;
    ++matches;
    channelId = id;
    params = m.params;
    results = m.results;
  }
  if (matches == 1) return 0;
  if (matches == 0) {
    fmt::print(stderr, "shmbus-inspect: no window announced '{}' (announced contracts: {}); give --schema FILE\n",
               rq.channel, keep.contracts.empty() ? std::string("none") : fmt::format("{}", fmt::join(keep.contracts, ", ")));
  } else {
    fmt::print(stderr, "shmbus-inspect: '{}' was announced by {} contracts with different channel ids (versions); "
               "give --schema FILE\n", rq.channel, matches);
  }
  return 2;
}

}  // namespace

int call(const CallRequest& rq) {
  std::unique_ptr<SchemaFile> schema;
  AnnouncedSchemas announced;  // keeps the announced structs' loaders alive
  capnp::MallocMessageBuilder request;
  capnp::StructSchema params, resultsSchema;
  std::uint64_t channelId = 0;
  Channel channel("");
  const std::string source = rq.schemaFile.empty() ? std::string("announced schema") : rq.schemaFile;
  if (rq.schemaFile.empty()) {
    if (const int status = announcedMethod(rq, announced, channelId, params, resultsSchema); status != 0) return status;
  }
  try {
    if (!rq.schemaFile.empty()) {
      schema = std::make_unique<SchemaFile>(rq.schemaFile, rq.importDirs);
      std::string why;
      const auto found = findMethod(schema->root(), rq.channel, why);
      if (!found) {
        fmt::print(stderr, "shmbus-inspect: {}: {}\n", rq.schemaFile, why);
        return 2;
      }
      params = found->getParamType();
      resultsSchema = found->getResultType();
      channelId = methodChannelId(found->getContainingInterface().getProto().getId(), found->getOrdinal());
    }
    const auto paramsLayout = codegen::layoutOf(params, "params of " + rq.channel);
    const auto resultsLayout = codegen::layoutOf(resultsSchema, "results of " + rq.channel);
    channel = Channel(channelId, rq.channel, paramsLayout.fingerprint, resultsLayout.fingerprint);
    capnp::TextCodec().decode(kj::StringPtr(rq.params.c_str()), request.initRoot<capnp::DynamicStruct>(params));
  } catch (const kj::Exception& e) {
    fmt::print(stderr, "shmbus-inspect: {}: {}\n", source, e.getDescription().cStr());
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
