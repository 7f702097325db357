#include "layout.hpp"

#include <capnp/schema.capnp.h>
#include <kj/debug.h>

#include <algorithm>
#include <bit>
#include <cstdio>

#include "shmbus/contract.hpp"  // header-only: the same fingerprint functions as the runtime

namespace shmbus::codegen {

std::string hexId(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string hexLiteral(std::uint64_t v) { return hexId(v) + "ull"; }

namespace {

/// The canonical description of everything a reader of a struct depends on (shmbus/contract.hpp):
/// per slot field, in ordinal order, its path, ordinal, type (recursively), section offset, union
/// membership along the group path and explicit primitive default. Ids appear only for
/// interfaces (capabilities) and generic parameters: renaming a struct type keeps its layout.
class LayoutDescriber {
 public:
  /// The slot fields of `s`, groups and unions flattened, in ordinal order.
  std::vector<LayoutField> fields(capnp::StructSchema s) {
    stack_.push_back(s.getProto().getId());
    std::vector<LayoutField> out;
    collect(s, "", "", out);
    std::stable_sort(out.begin(), out.end(), [](const LayoutField& a, const LayoutField& b) { return a.ordinal < b.ordinal; });
    stack_.pop_back();
    return out;
  }

 private:
  std::vector<std::uint64_t> stack_;  // struct types being described (recursive types refer back)

  void collect(capnp::StructSchema s, const std::string& prefix, const std::string& unions, std::vector<LayoutField>& out) {
    const auto discriminantOffset = s.getProto().getStruct().getDiscriminantOffset();
    for (auto field : s.getFields()) {
      auto p = field.getProto();
      std::string chain = unions;
      if (p.getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT) {
        chain += " when d" + std::to_string(discriminantOffset) + "=" + std::to_string(p.getDiscriminantValue());
      }
      const std::string path = prefix + p.getName().cStr();
      if (p.isGroup()) {
        collect(field.getType().asStruct(), path + ".", chain, out);
        continue;
      }
      auto slot = p.getSlot();
      LayoutField f;
      f.path = path;
      f.ordinal = p.getOrdinal().isExplicit() ? p.getOrdinal().getExplicit() : static_cast<std::uint16_t>(field.getIndex());
      const capnp::Type type = field.getType();
      f.text = "@" + std::to_string(f.ordinal) + " " + path + " :" + describe(type) + (isPointer(type) ? " ptr" : " data") +
               std::to_string(slot.getOffset());
      if (slot.getHadExplicitDefault()) f.text += " default " + primitiveDefault(slot.getDefaultValue());
      f.text += chain;
      out.push_back(std::move(f));
    }
  }

  static bool isPointer(capnp::Type t) {
    return t.isText() || t.isData() || t.isList() || t.isStruct() || t.isInterface() || t.isAnyPointer();
  }

  /// An explicit default of a primitive field, as the reader XORs it ("" for pointer defaults,
  /// which only matter when the pointer is null).
  static std::string primitiveDefault(capnp::schema::Value::Reader v) {
    using W = capnp::schema::Value::Which;
    switch (v.which()) {
      case W::BOOL: return v.getBool() ? "true" : "false";
      case W::INT8: return std::to_string(v.getInt8());
      case W::INT16: return std::to_string(v.getInt16());
      case W::INT32: return std::to_string(v.getInt32());
      case W::INT64: return std::to_string(v.getInt64());
      case W::UINT8: return std::to_string(v.getUint8());
      case W::UINT16: return std::to_string(v.getUint16());
      case W::UINT32: return std::to_string(v.getUint32());
      case W::UINT64: return std::to_string(v.getUint64());
      case W::FLOAT32: return hexId(std::bit_cast<std::uint32_t>(v.getFloat32()));
      case W::FLOAT64: return hexId(std::bit_cast<std::uint64_t>(v.getFloat64()));
      case W::ENUM: return std::to_string(v.getEnum());
      default: return "";
    }
  }

  std::string describe(capnp::Type t) {
    using W = capnp::schema::Type::Which;
    switch (t.which()) {
      case W::VOID: return "Void";
      case W::BOOL: return "Bool";
      case W::INT8: return "Int8";
      case W::INT16: return "Int16";
      case W::INT32: return "Int32";
      case W::INT64: return "Int64";
      case W::UINT8: return "UInt8";
      case W::UINT16: return "UInt16";
      case W::UINT32: return "UInt32";
      case W::UINT64: return "UInt64";
      case W::FLOAT32: return "Float32";
      case W::FLOAT64: return "Float64";
      case W::TEXT: return "Text";
      case W::DATA: return "Data";
      case W::LIST: return "List(" + describe(t.asList().getElementType()) + ")";
      case W::ENUM: {
        std::string s = "enum(";
        for (auto e : t.asEnum().getEnumerants()) {
          s += (e.getIndex() ? "," : "") + std::string(e.getProto().getName().cStr());
        }
        return s + ")";
      }
      case W::STRUCT: {
        auto s = t.asStruct();
        const std::uint64_t id = s.getProto().getId();
        for (std::size_t i = stack_.size(); i-- > 0;) {
          if (stack_[i] == id) return "outer(" + std::to_string(stack_.size() - i) + ")";  // a recursive type
        }
        stack_.push_back(id);
        std::vector<LayoutField> inner;
        collect(s, "", "", inner);
        stack_.pop_back();
        std::stable_sort(inner.begin(), inner.end(), [](const LayoutField& a, const LayoutField& b) { return a.ordinal < b.ordinal; });
        std::string out = "(";
        for (std::size_t i = 0; i < inner.size(); ++i) out += (i ? "; " : "") + inner[i].text;
        return out + ")";
      }
      case W::INTERFACE: return "interface " + hexId(t.asInterface().getProto().getId());
      case W::ANY_POINTER: {
        KJ_IF_MAYBE(param, t.getBrandParameter()) {
          return "param(" + hexId(param->scopeId) + "," + std::to_string(param->index) + ")";
        }
        KJ_IF_MAYBE(param, t.getImplicitParameter()) { return "implicit(" + std::to_string(param->index) + ")"; }
        using K = capnp::schema::Type::AnyPointer::Unconstrained::Which;
        switch (t.whichAnyPointerKind()) {
          case K::STRUCT: return "AnyStruct";
          case K::LIST: return "AnyList";
          case K::CAPABILITY: return "Capability";
          default: return "AnyPointer";
        }
      }
    }
    return "?";
  }
};

}  // namespace

Layout layoutOf(capnp::StructSchema s, std::string name) {
  Layout l;
  l.name = std::move(name);
  l.fields = LayoutDescriber().fields(s);
  std::uint64_t h = shmbus::kContractSeed;
  for (const auto& f : l.fields) {
    h = shmbus::contractNextPrefix(h, shmbus::contractTextHash(f.text));
    l.prefixes.push_back(h);
  }
  l.fingerprint = shmbus::detail::contractEncode(l.fields.size(),
                                                 [&](std::size_t k) { return k == 0 ? shmbus::kContractSeed : l.prefixes[k - 1]; });
  return l;
}

}  // namespace shmbus::codegen
