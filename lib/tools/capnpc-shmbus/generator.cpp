// capnpc-shmbus's generator. For every interface, in any nested scope, the header declares (see
// shmbus/typed.hpp for the runtime):
//
//   <I>Channels          constexpr shmbus::Channel per method: id from (interface id, ordinal),
//                        name "I.method", params/results fingerprints
//   <I>Methods           one descriptor per method (Params, Results, channel, default timeout)
//   Basic<I>Client<E>    typed calls / sends; <I>Client = on a Window, <I>MainClient = on the
//                        Supervisor, <I>PortClient = on a Port (to its peer)
//   <I>Handlers          typed handle<Method> / on<Method> / once<Method> registration
//
// `<I>` is the interface's name, its enclosing scopes joined by '_' (Cap'n Proto names cannot
// contain '_', so the flat names of two interfaces never collide; the types generated from them can,
// `Foo`'s FooPortClient and `FooPort`'s, and such a file is refused naming both: checkTypeNames).
// The C++ namespace is the file's $Cxx.namespace.
// Annotations (schemas/shmbus.capnp): $timeoutMs (method default timeout), $oneway (no reply),
// $target (interface default role). Streaming methods (`-> stream`) are written through
// `Basic<I>Stream` (shmbus/stream.hpp, docs/architecture.md §18) and served by handle<Method>.
// Generic interfaces and generic methods are skipped with a warning.
#include "generator.hpp"

#include <capnp/dynamic.h>
#include <capnp/schema-loader.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/string.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "layout.hpp"
#include "message/capnp_texts.hpp"

namespace shmbus::codegen {
namespace {

// Annotation ids matched by the plugin.
constexpr std::uint64_t kCxxNamespace = 0xb9c6f99ebf805f2cull;  // /capnp/c++.capnp $namespace
constexpr std::uint64_t kTimeoutMs = 0xe9b1c0c9d3e2a001ull;     // shmbus.capnp $timeoutMs
constexpr std::uint64_t kOneway = 0xe9b1c0c9d3e2a002ull;        // shmbus.capnp $oneway
constexpr std::uint64_t kTarget = 0xe9b1c0c9d3e2a003ull;        // shmbus.capnp $target

std::string titleCase(kj::StringPtr name) {
  std::string s(name.cStr());
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

/// C++ keywords get a trailing '_', as capnpc-c++ does for member names.
std::string safeIdentifier(const std::string& name) {
  static const std::set<std::string> kKeywords = {
      "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break", "case", "catch",
      "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept", "const", "consteval", "constexpr",
      "constinit", "const_cast", "continue", "co_await", "co_return", "co_yield", "decltype", "default", "delete",
      "do", "double", "dynamic_cast", "else", "enum", "explicit", "export", "extern", "false", "float", "for",
      "friend", "goto", "if", "inline", "int", "long", "mutable", "namespace", "new", "noexcept", "not", "not_eq",
      "nullptr", "operator", "or", "or_eq", "private", "protected", "public", "register", "reinterpret_cast",
      "requires", "return", "short", "signed", "sizeof", "static", "static_assert", "static_cast", "struct",
      "switch", "template", "this", "thread_local", "throw", "true", "try", "typedef", "typeid", "typename",
      "union", "unsigned", "using", "virtual", "void", "volatile", "wchar_t", "while", "xor", "xor_eq"};
  return kKeywords.count(name) != 0 ? name + "_" : name;
}

/// Doc comment text as comment lines (`marker`: "///" or "//") at `indent`.
std::string docLines(kj::StringPtr text, const std::string& indent, const std::string& marker = "///") {
  std::string out;
  std::istringstream in(text.cStr());
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    out += indent + (line.empty() ? marker : marker + " " + line) + "\n";
  }
  return out;
}

template <class List>
std::optional<capnp::schema::Value::Reader> annotation(List annotations, std::uint64_t id) {
  for (auto a : annotations) {
    if (a.getId() == id) return a.getValue();
  }
  return std::nullopt;
}

struct Method {
  std::string name;       // capnp name, "getData"
  std::string member;     // C++ member name (keyword-safe)
  std::string title;      // "GetData": handler names and the descriptor
  std::uint16_t ordinal = 0;
  std::string params;     // fully qualified C++ type
  std::string results;
  Layout paramsLayout;    // the contract check (shmbus/contract.hpp)
  Layout resultsLayout;
  bool oneway = false;
  bool streaming = false;  // `-> stream`: written to the interface's Stream class
  std::uint32_t timeoutMs = 0;  // 0 = none
  std::string doc;
};

struct Interface {
  std::uint64_t id = 0;
  std::string capnpName;  // "Outer.Inner"
  std::string flatName;   // "Outer_Inner"
  std::string cppType;    // "::ns::Outer::Inner"
  std::optional<std::string> target;
  std::string doc;
  std::vector<Method> methods;
  /// True when a method is streaming: the interface then also gets `Basic<I>Stream`.
  bool streams() const {
    for (const auto& m : methods) {
      if (m.streaming) return true;
    }
    return false;
  }
};

class Generator {
 public:
  explicit Generator(capnp::schema::CodeGeneratorRequest::Reader request) : request_(request) {
    // SchemaLoader names the node and field it validates from the request's own texts, read only
    // when it reports a problem: a malformed text there makes Cap'n Proto 0.9's report fail
    // again while reporting, without end (a stack overflow; fuzz/corpus/plugin/crash-*). So
    // every text is read once first, where a malformed one is a plain exception.
    ::shmbus::detail::readAllTexts(capnp::DynamicStruct::Reader(request));
    for (auto node : request.getNodes()) loader_.load(node);
    for (auto info : request.getSourceInfo()) sourceInfo_.emplace(info.getId(), info);
  }

  /// The header of every requested file.
  std::vector<GeneratedFile> run() {
    std::vector<GeneratedFile> out;
    for (auto file : request_.getRequestedFiles()) {
      const std::string name = file.getFilename().cStr();
      const std::string base = name.size() > 6 && name.ends_with(".capnp") ? name.substr(0, name.size() - 6) : name;
      out.push_back({base + ".shmbus.h", generateFile(file.getId(), name)});
    }
    return out;
  }

 private:
  capnp::schema::CodeGeneratorRequest::Reader request_;
  capnp::SchemaLoader loader_;
  std::map<std::uint64_t, capnp::schema::Node::SourceInfo::Reader> sourceInfo_;

  std::string fileNamespace(capnp::Schema file) const {
    auto ns = annotation(file.getProto().getAnnotations(), kCxxNamespace);
    if (!ns || !ns->isText()) return "";
    std::string s = ns->getText().cStr();
    while (s.starts_with("::")) s.erase(0, 2);
    return s;
  }

  /// The name `node` has in its parent scope, and that scope's id.
  std::pair<std::string, std::uint64_t> nameInScope(capnp::Schema node) const {
    const std::uint64_t parent = node.getProto().getScopeId();
    for (auto nested : loader_.get(parent).getProto().getNestedNodes()) {
      if (nested.getId() == node.getProto().getId()) return {nested.getName().cStr(), parent};
    }
    KJ_FAIL_REQUIRE("node not found in its scope", node.getProto().getDisplayName());
  }

  /// Names of the scopes from the file down to `node` ("Outer", "Inner").
  std::vector<std::string> scopePath(capnp::Schema node) const {
    std::vector<std::string> path;
    while (!node.getProto().isFile()) {
      auto [name, parent] = nameInScope(node);
      path.insert(path.begin(), name);
      node = loader_.get(parent);
    }
    return path;
  }

  /// "Outer.Inner": the name of a named node in its file.
  std::string capnpName(capnp::Schema node) const {
    std::string s;
    for (const auto& part : scopePath(node)) s += (s.empty() ? "" : ".") + part;
    return s;
  }

  capnp::Schema fileOf(capnp::Schema node) const {
    while (!node.getProto().isFile()) node = loader_.get(node.getProto().getScopeId());
    return node;
  }

  /// Fully qualified C++ name of a named node, as capnpc-c++ declares it.
  std::string cppName(capnp::Schema node) const {
    const std::string ns = fileNamespace(fileOf(node));
    std::string s = ns.empty() ? "" : "::" + ns;
    for (const auto& part : scopePath(node)) s += "::" + part;
    return s;
  }

  /// C++ type of a method's params or results struct. Implicit structs (`method$Params`) have no
  /// scope; capnpc-c++ declares them in the interface as `MethodParams` / `MethodResults`.
  std::string structType(capnp::StructSchema s, const Interface& iface, const std::string& title,
                         const char* suffix) const {
    if (s.getProto().getScopeId() == 0) return iface.cppType + "::" + title + suffix;
    return cppName(s);
  }

  std::string docOf(std::uint64_t id) const {
    auto it = sourceInfo_.find(id);
    return it == sourceInfo_.end() ? "" : it->second.getDocComment().cStr();
  }

  std::string memberDocOf(std::uint64_t id, unsigned index) const {
    auto it = sourceInfo_.find(id);
    if (it == sourceInfo_.end() || index >= it->second.getMembers().size()) return "";
    return it->second.getMembers()[index].getDocComment().cStr();
  }

  static void warn(const std::string& file, const std::string& what) {
    std::fprintf(stderr, "capnpc-shmbus: %s: %s\n", file.c_str(), what.c_str());
  }

  /// Collects the interfaces declared in `scope` and its nested scopes, in declaration order.
  void collect(capnp::Schema scope, const std::string& file, std::vector<Interface>& out) const {
    for (auto nested : scope.getProto().getNestedNodes()) {
      capnp::Schema node = loader_.get(nested.getId());
      auto proto = node.getProto();
      if (proto.isInterface()) {
        if (proto.getIsGeneric()) {
          warn(file, "skipped generic interface " + std::string(proto.getDisplayName().cStr()));
        } else {
          out.push_back(describe(node.asInterface(), file));
        }
      }
      if (proto.isStruct() || proto.isInterface()) collect(node, file, out);
    }
  }

  Interface describe(capnp::InterfaceSchema schema, const std::string& file) const {
    Interface iface;
    auto proto = schema.getProto();
    iface.id = proto.getId();
    const auto path = scopePath(schema);
    for (std::size_t i = 0; i < path.size(); ++i) {
      iface.capnpName += (i ? "." : "") + path[i];
      iface.flatName += (i ? "_" : "") + path[i];
    }
    iface.cppType = cppName(schema);
    if (auto t = annotation(proto.getAnnotations(), kTarget); t && t->isText()) iface.target = t->getText().cStr();
    iface.doc = docOf(iface.id);
    for (auto m : schema.getMethods()) {
      auto mp = m.getProto();
      const std::string where = iface.capnpName + "." + mp.getName().cStr();
      if (mp.getImplicitParameters().size() != 0) {
        warn(file, "skipped generic method " + where);
        continue;
      }
      capnp::StructSchema params = m.getParamType(), results = m.getResultType();
      if (params.getProto().getIsGeneric() || results.getProto().getIsGeneric()) {
        warn(file, "skipped method " + where + ": generic params or results");
        continue;
      }
      Method out;
      out.name = mp.getName().cStr();
      out.member = safeIdentifier(out.name);
      out.title = titleCase(mp.getName());
      out.ordinal = m.getOrdinal();
      out.params = structType(params, iface, out.title, "Params");
      out.results = structType(results, iface, out.title, "Results");
      const std::string named = params.getProto().getScopeId() == 0 ? "" : " (" + capnpName(params) + ")";
      const std::string namedResults = results.getProto().getScopeId() == 0 ? "" : " (" + capnpName(results) + ")";
      out.paramsLayout = layoutOf(params, "params of " + where + named);
      out.resultsLayout = layoutOf(results, "results of " + where + namedResults);
      out.oneway = annotation(mp.getAnnotations(), kOneway).has_value();
      out.streaming = m.isStreaming();
      if (out.streaming && out.oneway) {
        warn(file, "skipped method " + where + ": a streaming method cannot be $oneway");
        continue;
      }
      if (auto t = annotation(mp.getAnnotations(), kTimeoutMs); t && t->isUint32()) out.timeoutMs = t->getUint32();
      out.doc = memberDocOf(iface.id, m.getIndex());
      iface.methods.push_back(std::move(out));
    }
    if (auto name = clash(iface)) {
      KJ_FAIL_REQUIRE("generated names clash; rename a method", iface.capnpName, *name);
    }
    return iface;
  }

  std::string generateFile(std::uint64_t fileId, const std::string& filename) const {
    capnp::Schema file = loader_.get(fileId);
    std::vector<Interface> interfaces;
    collect(file, filename, interfaces);
    checkTypeNames(file, interfaces);
    const std::string ns = fileNamespace(file);
    const std::string slash = filename.substr(filename.rfind('/') + 1);

    std::string o;
    o += "// Generated by capnpc-shmbus from " + filename + ". DO NOT EDIT.\n";
    o += "//\n";
    o += "// Typed shmbus contracts for the interfaces of " + slash + ": channels, method descriptors,\n";
    o += "// clients and handler registration (runtime: shmbus/typed.hpp; Cap'n Proto types: capnpc-c++).\n";
    o += "#pragma once\n\n";
    bool streams = false, replies = false;
    for (const auto& i : interfaces) {
      streams = streams || i.streams();
      for (const auto& m : i.methods) replies = replies || !m.oneway;
    }
    // The coroutine runtime: handle<Method>Co of every method with a reply (streaming ones
    // included) and a stream's <method>Async members.
    if (replies) o += "#include <shmbus/coro.hpp>\n";
    o += "#include <shmbus/typed.hpp>\n\n";
    if (streams) o += "#include <capnp/stream.capnp.h>  // capnp::StreamResult, the reply of a streaming method\n";
    o += "#include \"" + slash + ".h\"\n";
    if (interfaces.empty()) {
      o += "\n// " + slash + " declares no interface.\n";
      return o;
    }
    o += "\n";
    if (!ns.empty()) o += "namespace " + ns + " {\n";
    for (const auto& iface : interfaces) o += generateInterface(iface);
    if (!ns.empty()) o += "\n}  // namespace " + ns + "\n";
    return o;
  }

  /// The C++ types generated for interface `i`, all in the file's namespace.
  static std::vector<std::string> typeNames(const Interface& i) {
    const std::string& n = i.flatName;
    std::vector<std::string> names{n + "Channels",   n + "Contract",   n + "Methods",    "Basic" + n + "Client",
                                   n + "Client",     n + "MainClient", n + "PortClient", n + "Handlers"};
    if (i.streams()) {
      for (const char* s : {"Basic%Stream", "%Stream", "%MainStream", "%PortStream"}) {
        std::string name = s;
        name.replace(name.find('%'), 1, n);
        names.push_back(name);
      }
    }
    return names;
  }

  /// Fails (naming both) when two interfaces would generate the same type name (interfaces `Foo`
  /// and `FooPort` both give `FooPortClient`), or when a generated name is the name capnpc-c++
  /// gives a top-level declaration of the file: the header would not compile.
  static void checkTypeNames(capnp::Schema file, const std::vector<Interface>& interfaces) {
    std::map<std::string, std::string> owner;  // generated or declared name -> who makes it
    for (auto nested : file.getProto().getNestedNodes()) {
      owner.emplace(nested.getName().cStr(), "the declaration " + std::string(nested.getName().cStr()));
    }
    for (const auto& i : interfaces) {
      for (const auto& name : typeNames(i)) {
        auto [it, fresh] = owner.emplace(name, "interface " + i.capnpName);
        if (!fresh) {
          const std::string why = name + " would be generated for both " + it->second + " and interface " + i.capnpName;
          KJ_FAIL_REQUIRE("generated type names clash; rename an interface", why);
        }
      }
    }
  }

  static std::string generateInterface(const Interface& i) {
    std::string o;
    o += "\n// ---- interface " + i.capnpName + " (" + hexId(i.id) + ")" +
         (i.target ? ", default role \"" + *i.target + "\"" : std::string()) + "\n";
    if (!i.doc.empty()) o += docLines(i.doc, "", "//");
    o += generateChannels(i);
    o += generateContract(i);
    o += generateMethods(i);
    o += generateClient(i);
    if (i.streams()) o += generateStream(i);
    o += generateHandlers(i);
    return o;
  }

  static std::string generateChannels(const Interface& i) {
    std::string o;
    o += "\n/// Channels of " + i.capnpName + ": id from the interface id and the method ordinal; schemaId and\n";
    o += "/// replySchemaId fingerprint the params and results layouts (shmbus/contract.hpp), so a peer\n";
    o += "/// compiled from an incompatible version of the contract is refused with InvalidMessage.\n";
    o += "struct " + i.flatName + "Channels {\n";
    for (const auto& m : i.methods) {
      o += "  /// " + i.capnpName + "." + m.name + " @" + std::to_string(m.ordinal) + (m.oneway ? ", $oneway" : "") +
           (m.streaming ? ", streaming" : "") + "\n";
      o += "  static constexpr ::shmbus::Channel " + m.member + "() noexcept {\n";
      o += "    return {::shmbus::methodChannelId(" + hexLiteral(i.id) + ", " + std::to_string(m.ordinal) + "), \"" +
           i.capnpName + "." + m.name + "\",\n";
      o += "            " + hexLiteral(m.paramsLayout.fingerprint) + ", " + hexLiteral(m.resultsLayout.fingerprint) + "};\n";
      o += "  }\n";
    }
    o += "  /// Every channel of " + i.capnpName + ", in ordinal order (e.g. for Supervisor::nameChannels).\n";
    o += "  static constexpr std::array<::shmbus::Channel, " + std::to_string(i.methods.size()) + "> all() noexcept {\n";
    o += "    return {";
    for (std::size_t k = 0; k < i.methods.size(); ++k) o += (k == 0 ? "" : ", ") + i.methods[k].member + "()";
    o += "};\n  }\n";
    o += "};\n";
    return o;
  }

  /// `<I>Contract`: what the stubs announce to the supervisor (shmbus/schema.hpp): capnpc-c++'s
  /// compiled schema of the interface (its raw schema reaches every node a decoder needs), the
  /// name and the method → channel map.
  static std::string generateContract(const Interface& i) {
    std::string o;
    o += "\n/// The schema typed stubs of " + i.capnpName + " announce to the supervisor once per connection, so\n";
    o += "/// that inspectors decode its payloads without a schema file (shmbus/schema.hpp).\n";
    o += "struct " + i.flatName + "Contract {\n";
    o += "  /// The methods the stubs serve: ordinal and channel id.\n";
    o += "  static constexpr std::array<::shmbus::MethodChannel, " + std::to_string(i.methods.size()) + "> methods{{\n";
    for (const auto& m : i.methods) {
      o += "      {" + std::to_string(m.ordinal) + ", " + i.flatName + "Channels::" + m.member + "().id},\n";
    }
    o += "  }};\n";
    o += "  /// The compiled schema nodes (capnpc-c++'s), the name and the methods.\n";
    o += "  static ::shmbus::ContractSchema schema() noexcept {\n";
    o += "    return {::capnp::Schema::from<" + i.cppType + ">(), \"" + i.capnpName + "\", methods};\n";
    o += "  }\n";
    o += "};\n";
    return o;
  }

  static std::string generateMethods(const Interface& i) {
    std::string o;
    o += "\n/// Method descriptors of " + i.capnpName +
         " for the helpers of shmbus/typed.hpp (defaultTimeout 0: the\n";
    o += "/// channel's timeout, else the bus default).\n";
    o += "struct " + i.flatName + "Methods {\n";
    for (const auto& m : i.methods) {
      o += "  struct " + m.title + " {\n";
      o += "    using Contract = " + i.flatName + "Contract;  // the schema its stubs announce\n";
      o += "    using Params = " + m.params + ";\n";
      o += "    using Results = " + m.results + ";\n";
      o += "    static constexpr ::shmbus::Channel channel() noexcept { return " + i.flatName + "Channels::" + m.member +
           "(); }\n";
      o += "    static constexpr std::chrono::milliseconds defaultTimeout{" + std::to_string(m.timeoutMs) + "};" +
           (m.timeoutMs ? "  // $timeoutMs" : "") + "\n";
      o += "    static constexpr bool oneway = " + std::string(m.oneway ? "true" : "false") + ";\n";
      o += "    static constexpr bool streaming = " + std::string(m.streaming ? "true" : "false") + ";\n";
      o += generateLayout(m.paramsLayout, "params");
      o += generateLayout(m.resultsLayout, "results");
      const std::string ch = i.flatName + "Channels::" + m.member + "()";
      o += "    static_assert(::shmbus::contractFingerprint(paramsLayout) == " + ch + ".schemaId &&\n";
      o += "                  ::shmbus::contractFingerprint(resultsLayout) == " + ch + ".replySchemaId);\n";
      o += "  };\n";
    }
    o += "};\n";
    return o;
  }

  /// `<what>Fields` and `<what>Layout` of a method descriptor: the fields in ordinal order with
  /// their prefix hashes, each after a comment with the description it hashes.
  static std::string generateLayout(const Layout& l, const std::string& what) {
    std::string o;
    o += "    /// Layout of " + l.name + " (fields in ordinal order; shmbus/contract.hpp).\n";
    o += "    static constexpr std::array<::shmbus::ContractField, " + std::to_string(l.fields.size()) + "> " + what +
         "Fields{{\n";
    for (std::size_t i = 0; i < l.fields.size(); ++i) {
      o += "        // " + l.fields[i].text + "\n";
      o += "        {\"" + l.fields[i].path + "\", " + std::to_string(l.fields[i].ordinal) + ", " + hexLiteral(l.prefixes[i]) +
           "},\n";
    }
    o += "    }};\n";
    o += "    static constexpr ::shmbus::ContractLayout " + what + "Layout{\"" + l.name + "\", " + what + "Fields};\n";
    return o;
  }

  /// `<n><kind>`, `<n>Main<kind>` and `<n>Port<kind>`: Basic<n><kind> on a window, the
  /// supervisor and a port.
  static std::string endpointAliases(const std::string& n, const std::string& kind) {
    std::string o;
    for (const auto& [prefix, endpoint] : {std::pair{"", "Window"}, {"Main", "Supervisor"}, {"Port", "Port"}}) {
      o += "using " + n + prefix + kind + " = Basic" + n + kind + "<::shmbus::" + endpoint + ">;\n";
    }
    return o;
  }

  static std::string generateClient(const Interface& i) {
    const std::string& n = i.flatName;
    const std::string fallback = i.target ? "role \"" + *i.target + "\"" : "the main process";
    // The target-less overloads go to $target, else (not from the supervisor) to the main
    // process; on a port, to its peer. Only they exist on a port (docs/architecture.md §16).
    const std::string fallbackTarget = i.target ? "::shmbus::Target(\"" + *i.target + "\")" : "::shmbus::Target::main()";
    const std::string fallbackEndpoint = i.target ? "" : "!std::same_as<E, ::shmbus::Supervisor> && ";
    const std::string targetEndpoint = "::shmbus::RoutedEndpoint<E> && ";
    std::string o;
    o += "\n/// Typed client of " + i.capnpName + ". " + n + "Client{window} calls the main process\n";
    o += "/// (Target::main()) or windows (routed by the supervisor) and sends one-way messages;\n";
    o += "/// " + n + "MainClient{supervisor} calls windows, pushes and broadcasts; " + n + "PortClient{port}\n";
    o += "/// calls and sends to the peer of a port (the overloads without a target). A build callable\n";
    o += "/// gets `Params::Builder` and fills the params in place (omit it to send the defaults); a\n";
    o += "/// reply is read in place (zero copy). The overloads without a target go to " + fallback + "\n";
    o += "/// (on a port: to its peer).\n";
    o += "template <::shmbus::Endpoint E>\n";
    o += "class Basic" + n + "Client {\n";
    o += " public:\n";
    o += "  explicit Basic" + n + "Client(E& endpoint) noexcept : endpoint_(endpoint) {}\n";
    for (const auto& m : i.methods) {
      if (m.streaming) continue;  // written to Basic<I>Stream, with flow control
      const std::string desc = n + "Methods::" + m.title;
      // The requires-clause is parenthesised: a return type starting with `::` would otherwise
      // continue the concept-id as a nested-name-specifier.
      const std::string head = "  template <class Build = ::shmbus::NoParams>\n    requires(";
      const std::string builds = "::shmbus::ParamsBuilder<Build, " + desc + ">)\n";
      const std::string qualified = i.capnpName + "." + m.name;
      o += "\n";
      if (!m.doc.empty()) o += docLines(m.doc, "  ");
      if (!m.oneway) {
        const std::string ret = "  ::shmbus::TypedCall<" + desc + "::Results>\n";
        o += "  /// Calls " + qualified + " on `target`" +
             (m.timeoutMs ? " (default timeout " + std::to_string(m.timeoutMs) + " ms)" : std::string()) + ".\n";
        o += head + targetEndpoint + builds + ret;
        o += "  " + m.member +
             "(const ::shmbus::Target& target, Build&& build = {}, ::shmbus::CallOptions options = {}) {\n";
        o += "    return ::shmbus::detail::invoke<" + desc + ">(endpoint_, target, build, options);\n";
        o += "  }\n";
        o += "  /// Calls " + qualified + " on " + fallback + " (on a port: its peer).\n";
        o += head + fallbackEndpoint + builds + ret;
        o += "  " + m.member + "(Build&& build = {}, ::shmbus::CallOptions options = {}) {\n";
        o += "    return ::shmbus::detail::invokeDefault<" + desc + ">(endpoint_, " + fallbackTarget +
             ", build, options);\n";
        o += "  }\n";
      } else {
        o += "  /// Sends " + qualified + " to `target` (a push, from the supervisor).\n";
        o += head + targetEndpoint + builds;
        o += "  ::shmbus::Result<void>\n  " + m.member + "(const ::shmbus::Target& target, Build&& build = {}) {\n";
        o += "    return ::shmbus::detail::send<" + desc + ">(endpoint_, target, build);\n";
        o += "  }\n";
        o += "  /// Sends " + qualified + " to " + fallback + " (on a port: its peer).\n";
        o += head + fallbackEndpoint + builds;
        o += "  ::shmbus::Result<void>\n  " + m.member + "(Build&& build = {}) {\n";
        o += "    return ::shmbus::detail::sendDefault<" + desc + ">(endpoint_, " + fallbackTarget + ", build);\n";
        o += "  }\n";
        o += "  /// Broadcasts " + qualified + " to the windows `options` selects (supervisor only).\n";
        o += head + "std::same_as<E, ::shmbus::Supervisor> && " + builds;
        o += "  ::shmbus::Result<::shmbus::BroadcastReport>\n  broadcast" + m.title +
             "(Build&& build = {}, const ::shmbus::BroadcastOptions& options = {}) {\n";
        o += "    return ::shmbus::detail::broadcast<" + desc + ">(endpoint_, build, options);\n";
        o += "  }\n";
      }
    }
    o += "\n private:\n";
    o += "  E& endpoint_;\n";
    o += "};\n";
    o += endpointAliases(n, "Client");
    return o;
  }

  /// `Basic<I>Stream<E>` for an interface with streaming methods: a shmbus::Stream to one
  /// receiver; each streaming method writes (with flow control), each ordinary method with a
  /// reply ends the stream (flush, then the call). $oneway methods stay on the client.
  static std::string generateStream(const Interface& i) {
    const std::string& n = i.flatName;
    const std::string fallback = i.target ? "role \"" + *i.target + "\"" : "the main process";
    const std::string fallbackTarget = i.target ? "::shmbus::Target(\"" + *i.target + "\")" : "::shmbus::Target::main()";
    const std::string any = n + "Methods::" + i.methods.front().title;
    std::string o;
    o += "\n/// Typed stream to one receiver of " + i.capnpName + " (shmbus/stream.hpp): its streaming methods\n";
    o += "/// are written with credit-based flow control (a write waits while StreamOptions::windowBytes\n";
    o += "/// are unacknowledged); an ordinary method ends the stream: it is called once every write was\n";
    o += "/// acknowledged, and fails with the error that ended the stream, if any. " + n + "Stream{window}\n";
    o += "/// streams to " + fallback + " or to `target` (routed), " + n + "MainStream{supervisor, target} to a\n";
    o += "/// window, " + n + "PortStream{port} to the peer of a port. One thread at a time.\n";
    o += "template <::shmbus::Endpoint E>\n";
    o += "class Basic" + n + "Stream {\n";
    o += " public:\n";
    o += "  /// A stream to " + fallback + " (on a port: its peer).\n";
    o += "  explicit Basic" + n + "Stream(E& endpoint, ::shmbus::StreamOptions options = {})\n";
    o += "    requires(!std::same_as<E, ::shmbus::Supervisor>)\n";
    o += "      : target_(" + fallbackTarget + "), stream_(::shmbus::detail::streamTo<" + any +
         ">(endpoint, target_, options)) {}\n";
    o += "  /// A stream to `target` (routed by the supervisor from a window).\n";
    o += "  Basic" + n + "Stream(E& endpoint, const ::shmbus::Target& target, ::shmbus::StreamOptions options = {})\n";
    o += "    requires(::shmbus::RoutedEndpoint<E>)\n";
    o += "      : target_(target), stream_(::shmbus::detail::streamTo<" + any + ">(endpoint, target_, options)) {}\n";
    for (const auto& m : i.methods) {
      if (m.oneway) continue;
      const std::string desc = n + "Methods::" + m.title;
      const std::string qualified = i.capnpName + "." + m.name;
      const std::string builds = "    requires(::shmbus::ParamsBuilder<Build, " + desc + ">)\n";
      o += "\n";
      if (!m.doc.empty()) o += docLines(m.doc, "  ");
      if (m.streaming) {
        o += "  /// Writes " + qualified + " (waits while the window is full; Stream::write).\n";
        o += "  template <class Build = ::shmbus::NoParams>\n" + builds;
        o += "  ::shmbus::Result<void> " + m.member + "(Build&& build = {}) {\n";
        o += "    return ::shmbus::detail::streamWrite<" + desc + ">(stream_, build);\n";
        o += "  }\n";
        o += "  /// Writes " + qualified + " from a coroutine: `co_await` suspends, blocking no thread, while\n";
        o += "  /// the window is full (shmbus::writeAsync). `build` is kept until the write is made.\n";
        o += "  template <class Build = ::shmbus::NoParams>\n" + builds;
        o += "  ::shmbus::Task<::shmbus::Result<void>> " + m.member + "Async(Build build = {}) {\n";
        o += "    return ::shmbus::detail::streamWriteAsync<" + desc + ">(stream_, std::move(build));\n";
        o += "  }\n";
      } else {
        o += "  /// Ends the stream with " + qualified + " (Stream::finish).\n";
        o += "  template <class Build = ::shmbus::NoParams>\n" + builds;
        o += "  ::shmbus::TypedCall<" + desc + "::Results>\n";
        o += "  " + m.member + "(Build&& build = {}, ::shmbus::CallOptions options = {}) {\n";
        o += "    return ::shmbus::detail::streamFinish<" + desc + ">(stream_, target_, build, options);\n";
        o += "  }\n";
      }
    }
    o += "\n  /// Waits until every write was acknowledged (Stream::flush).\n";
    o += "  ::shmbus::Result<void> flush() { return stream_.flush(); }\n";
    o += "  /// Waits until every write was acknowledged, from a coroutine (shmbus::flushAsync).\n";
    o += "  ::shmbus::Task<::shmbus::Result<void>> flushAsync() { return ::shmbus::flushAsync(stream_); }\n";
    o += "  /// Cancels the writes in flight and ends the stream with Cancelled (Stream::cancel).\n";
    o += "  void cancel() { stream_.cancel(); }\n";
    o += "  /// The error that ended the stream, or ok (Stream::status).\n";
    o += "  ::shmbus::Result<void> status() const { return stream_.status(); }\n";
    o += "  /// Counts so far (Stream::stats).\n";
    o += "  ::shmbus::StreamStats stats() const noexcept { return stream_.stats(); }\n";
    o += "  /// The untyped stream.\n";
    o += "  ::shmbus::Stream& untyped() noexcept { return stream_; }\n";
    o += "\n private:\n";
    o += "  ::shmbus::Target target_;\n";
    o += "  ::shmbus::Stream stream_;\n";
    o += "};\n";
    o += endpointAliases(n, "Stream");
    return o;
  }

  static std::string generateHandlers(const Interface& i) {
    const std::string& n = i.flatName;
    std::string o;
    o += "\n/// Typed handlers and listeners of " + i.capnpName +
         " on a window, on one end of a port (for its peer's\n";
    o += "/// calls and sends), or on the supervisor for calls and sends to the main process. Each\n";
    o += "/// returns the Registration that undoes it.\n";
    o += "///   handle<Method>(endpoint, fn(Params::Reader, Results::Builder, const shmbus::CallContext&))\n";
    o += "///     the results builder is the reply's root; a throw fails the call with HandlerError.\n";
    o += "///   handle<Method>Co(endpoint, fn(shmbus::TypedRequest<M>) -> shmbus::Task<shmbus::TypedReply<M>>)\n";
    o += "///     a coroutine: its co_return value is the reply; it may co_await meanwhile.\n";
    if (i.streams()) {
      o += "///   handle<Method>(endpoint, fn(Params::Reader, const shmbus::CallContext&)) for a streaming method:\n";
      o += "///     returning acknowledges the write (the sender's credit, shmbus/stream.hpp).\n";
      o += "///   handle<Method>Co(endpoint, fn(shmbus::TypedRequest<M>) -> shmbus::Task<void>) for a streaming\n";
      o += "///     method: the coroutine's end acknowledges the write; it may co_await meanwhile.\n";
    }
    o += "///   on<Method> / once<Method>(endpoint, fn(Params::Reader, const shmbus::CallContext&))\n";
    o += "///     $oneway methods; once<Method> is removed before its first run.\n";
    o += "/// The CallContext parameter may be left out.\n";
    o += "struct " + n + "Handlers {\n";
    for (const auto& m : i.methods) {
      const std::string desc = n + "Methods::" + m.title;
      struct Form {
        std::string name, doc, body;
      };
      std::vector<Form> forms;
      const std::string qualified = i.capnpName + "." + m.name;
      if (m.streaming) {
        forms.push_back({"handle" + m.title, qualified + ", streaming",
                         "::shmbus::detail::handleStream<" + desc + ">(endpoint, std::forward<F>(fn))"});
        forms.push_back({"handle" + m.title + "Co", qualified + ", streaming, from a coroutine",
                         "::shmbus::detail::handleStreamCo<" + desc + ">(endpoint, std::forward<F>(fn))"});
      } else if (!m.oneway) {
        forms.push_back({"handle" + m.title, qualified, "::shmbus::detail::handle<" + desc + ">(endpoint, std::forward<F>(fn))"});
        forms.push_back({"handle" + m.title + "Co", qualified + ", from a coroutine",
                         "::shmbus::detail::handleMethodCo<" + desc + ">(endpoint, std::forward<F>(fn))"});
      } else {
        forms.push_back({"on" + m.title, qualified, "::shmbus::detail::listen<" + desc + ">(endpoint, std::forward<F>(fn), false)"});
        forms.push_back({"once" + m.title, qualified + ", once", "::shmbus::detail::listen<" + desc + ">(endpoint, std::forward<F>(fn), true)"});
      }
      for (const auto& [name, doc, body] : forms) {
        o += "  /// " + doc + "\n";
        o += "  template <::shmbus::Endpoint E, class F>\n";
        o += "  static ::shmbus::Registration " + name + "(E& endpoint, F&& fn) {\n";
        o += "    return " + body + ";\n";
        o += "  }\n";
      }
    }
    o += "};\n";
    return o;
  }

  /// Names the client and the handlers declare for `i` must be distinct (e.g. a $oneway `notify`
  /// and a method `broadcastNotify` would clash). Returns the first clash, if any.
  static std::optional<std::string> clash(const Interface& i) {
    std::set<std::string> client, handlers, titles;
    for (const auto& m : i.methods) {
      std::vector<std::string> c{m.member}, h;
      if (m.oneway) {
        c.push_back("broadcast" + m.title);
        h = {"on" + m.title, "once" + m.title};
      } else {
        h = {"handle" + m.title, "handle" + m.title + "Co"};
      }
      if (!titles.insert(m.title).second) return m.title;
      if (i.streams()) {
        for (const char* reserved : {"flush", "cancel", "stats", "status", "untyped"}) {
          if (m.member == reserved) return m.member + " (a member of the Stream class)";
        }
      }
      for (const auto& s : c) {
        if (!client.insert(s).second) return s;
      }
      for (const auto& s : h) {
        if (!handlers.insert(s).second) return s;
      }
    }
    return std::nullopt;
  }
};

}  // namespace

capnp::ReaderOptions requestReaderOptions(std::size_t words) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 64 * words + (64u << 10);
  return options;
}

std::vector<GeneratedFile> generate(capnp::schema::CodeGeneratorRequest::Reader request) {
  return Generator(request).run();
}

std::vector<GeneratedFile> generateFromFlatArray(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader reader(words, requestReaderOptions(words.size()));
  return generate(reader.getRoot<capnp::schema::CodeGeneratorRequest>());
}

}  // namespace shmbus::codegen
