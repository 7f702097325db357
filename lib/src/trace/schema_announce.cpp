#include "trace/schema_announce.hpp"

#include <capnp/dynamic.h>
#include <capnp/serialize.h>
#include <fmt/format.h>

#include <cstring>
#include <set>
#include <vector>

#include "common/validate.hpp"
#include "message/capnp_texts.hpp"
#include "message/message.hpp"
#include "shmbus/channel.hpp"

namespace shmbus::detail {

namespace {
Error bad(const std::string& why) { return makeError(ErrorCode::InvalidMessage, "schema announcement: " + why); }
}  // namespace

void encodeAnnouncement(const ContractSchema& contract, schema::SchemaAnnouncement::Builder out) {
  std::vector<capnp::Schema> nodes;  // breadth first from the interface, each node once
  std::set<std::uint64_t> seen;
  auto add = [&](capnp::Schema s) {
    if (seen.insert(s.getProto().getId()).second) nodes.push_back(s);
  };
  auto addType = [&](capnp::Type t) {
    while (t.isList()) t = t.asList().getElementType();
    if (t.isStruct()) add(t.asStruct());
    if (t.isEnum()) add(t.asEnum());
    if (t.isInterface()) add(t.asInterface());
  };
  add(contract.interface);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const capnp::Schema s = nodes[i];
    const auto proto = s.getProto();
    if (proto.isInterface()) {
      const auto iface = s.asInterface();
      for (auto m : iface.getMethods()) {
        add(m.getParamType());
        add(m.getResultType());
      }
      for (auto super : iface.getSuperclasses()) add(super);
    } else if (proto.isStruct()) {
      for (auto f : s.asStruct().getFields()) addType(f.getType());
    }
  }
  out.setInterfaceId(contract.interface.getProto().getId());
  out.setName(capnp::Text::Reader(contract.name.data(), contract.name.size()));
  auto methods = out.initMethods(static_cast<unsigned>(contract.methods.size()));
  for (unsigned i = 0; i < methods.size(); ++i) {
    methods[i].setOrdinal(contract.methods[i].ordinal);
    methods[i].setChannel(contract.methods[i].channel);
  }
  auto list = out.initNodes(static_cast<unsigned>(nodes.size()));
  for (unsigned i = 0; i < list.size(); ++i) list.setWithCaveats(i, nodes[i].getProto());
}

Result<LoadedContract> decodeAnnouncement(schema::SchemaAnnouncement::Reader a) {
  try {
    // Before SchemaLoader sees a text (docs/architecture.md §13).
    readAllTexts(capnp::toDynamic(a));
    LoadedContract out;
    out.interfaceId = a.getInterfaceId();
    out.name = a.getName();
    if (auto v = validateName(NameKind::Channel, out.name); !v) return bad("contract name: " + v.error().message);
    const auto nodes = a.getNodes();
    if (nodes.size() > kMaxSchemaNodes) {
      return bad(fmt::format("{} holds {} schema nodes, more than {}", out.name, nodes.size(), kMaxSchemaNodes));
    }
    out.loader = std::make_shared<capnp::SchemaLoader>();
    std::set<std::uint64_t> ids;
    for (auto n : nodes) {
      out.loader->load(n);  // SchemaLoader's validation: throws on a malformed or inconsistent node
      ids.insert(n.getId());
    }
    out.nodes = nodes.size();
    if (ids.count(out.interfaceId) == 0) {
      return bad(fmt::format("{} has no node for its interface {:016x}", out.name, out.interfaceId));
    }
    const capnp::Schema root = out.loader->get(out.interfaceId);
    if (!root.getProto().isInterface()) return bad(fmt::format("{:016x} is not an interface", out.interfaceId));
    const auto declared = root.asInterface().getMethods();  // in ordinal order (schema.capnp)
    for (auto m : a.getMethods()) {
      if (m.getOrdinal() >= declared.size()) {
        return bad(fmt::format("{} declares no method @{}", out.name, m.getOrdinal()));
      }
      if (m.getChannel() != methodChannelId(out.interfaceId, m.getOrdinal())) {
        return bad(fmt::format("channel {:016x} of {} @{} is not the method's id", m.getChannel(), out.name,
                               m.getOrdinal()));
      }
      const auto mp = declared[m.getOrdinal()].getProto();
      const std::string name = out.name + "." + mp.getName().cStr();
      if (ids.count(mp.getParamStructType()) == 0 || ids.count(mp.getResultStructType()) == 0) {
        return bad(fmt::format("the params or results struct of {} is not among the nodes", name));
      }
      out.methods[m.getChannel()] = {name, out.loader->get(mp.getParamStructType()).asStruct(),
                                     out.loader->get(mp.getResultStructType()).asStruct()};
    }
    return out;
  } catch (const kj::Exception& e) {
    return bad(e.getDescription().cStr());
  }
}

Result<LoadedContract> decodeAnnouncementWords(kj::ArrayPtr<const capnp::word> words) {
  try {
    capnp::FlatArrayMessageReader reader(words, readerOptionsFor(words.size()));
    return decodeAnnouncement(reader.getRoot<schema::SchemaAnnouncement>());
  } catch (const kj::Exception& e) {
    return bad(e.getDescription().cStr());
  }
}

Result<LoadedContract> decodeAnnouncementBytes(const std::uint8_t* data, std::size_t bytes) {
  if (bytes % sizeof(capnp::word) != 0) return bad(fmt::format("{} bytes are not whole words", bytes));
  auto words = kj::heapArray<capnp::word>(bytes / sizeof(capnp::word));
  if (bytes != 0) std::memcpy(words.begin(), data, bytes);
  return decodeAnnouncementWords(words);
}

}  // namespace shmbus::detail
