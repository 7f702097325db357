#include "schema.hpp"

#include "shmbus/channel.hpp"

namespace shmbus::inspect {

SchemaFile::SchemaFile(const std::string& file, const std::vector<std::string>& importDirs)
    : fs_(kj::newDiskFilesystem()) {
  const kj::ReadableDirectory& root = fs_->getRoot();
  std::vector<const kj::ReadableDirectory*> importPath;
  std::vector<std::string> searched = importDirs;
  for (const char* d : {SHMBUS_SCHEMA_INSTALL_DIR, "/usr/local/include", "/usr/include"}) searched.emplace_back(d);
  for (const std::string& d : searched) {
    KJ_IF_MAYBE(dir, root.tryOpenSubdir(fs_->getCurrentPath().evalNative(d))) {
      importPath.push_back(dir->get());
      dirs_.push_back(kj::mv(*dir));
    }
  }
  file_ = parser_.parseFromDirectory(root, fs_->getCurrentPath().evalNative(file),
                                     kj::arrayPtr(importPath.data(), importPath.size()));
}

namespace {
void collect(const capnp::ParsedSchema& node, const std::string& scope, std::map<std::uint64_t, MethodSchema>& out) {
  for (const capnp::ParsedSchema& nested : node.getAllNested()) {
    const auto proto = nested.getProto();
    const std::string name = nested.getUnqualifiedName().cStr();
    const std::string path = scope.empty() ? name : scope + "." + name;
    if (proto.isInterface()) {
      for (const auto m : nested.asInterface().getMethods()) {
        out[methodChannelId(proto.getId(), m.getOrdinal())] =
            MethodSchema{path + "." + m.getProto().getName().cStr(), m.getParamType(), m.getResultType()};
      }
    }
    collect(nested, path, out);
  }
}
}  // namespace

std::map<std::uint64_t, MethodSchema> methodsByChannel(const capnp::ParsedSchema& file) {
  std::map<std::uint64_t, MethodSchema> out;
  collect(file, "", out);
  return out;
}

}  // namespace shmbus::inspect
