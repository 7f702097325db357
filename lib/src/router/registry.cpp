#include "router/registry.hpp"

#include <fmt/format.h>

#include "call/callbacks.hpp"
#include "protocol/frame.hpp"

namespace shmbus::detail {

namespace {
constexpr std::size_t kMaxNames = 1u << 16;
}  // namespace

std::string Conn::describe() const { return fmt::format("role '{}' (window {})", role, id); }

Registry::Registry(std::shared_ptr<CallbackTable> mainCallbacks) : mainCallbacks_(std::move(mainCallbacks)) {
  names_.emplace(nameId("main"), "main");
}

Conn& Registry::add(Fd sock, std::string role, pid_t pid, bool spawned) {
  auto c = std::make_unique<Conn>();
  c->id = nextId_++;
  c->role = std::move(role);
  c->pid = pid;
  c->spawned = spawned;
  c->sock = std::move(sock);
  Conn& ref = *c;
  conns_.emplace(ref.id, std::move(c));
  return ref;
}

std::unique_ptr<Conn> Registry::remove(std::uint32_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return nullptr;
  auto c = std::move(it->second);
  conns_.erase(it);
  return c;
}

Conn* Registry::find(std::uint32_t id) {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second.get();
}

Conn* Registry::live(std::uint32_t id) {
  Conn* c = find(id);
  return c != nullptr && c->live() ? c : nullptr;
}

Conn* Registry::resolve(std::uint32_t target, std::uint64_t roleId) {
  if (target != kTargetByRole) return live(target);
  for (auto& [id, c] : conns_) {
    if (c->roleId == roleId && c->live()) return c.get();
  }
  return nullptr;
}

Conn* Registry::resolve(const Target& t) {
  return t.role.empty() ? live(t.windowId) : resolve(kTargetByRole, nameId(t.role));
}

std::string Registry::roleOf(std::uint32_t id) const {
  if (id == 0) return "main";
  auto it = conns_.find(id);
  return it == conns_.end() ? std::string() : it->second->role;
}

void Registry::addName(std::uint64_t id, std::string name) {
  if (names_.size() < kMaxNames) names_.emplace(id, std::move(name));
}

void Registry::addStatLabel(std::uint64_t id, std::string name) {
  if (statLabels_.size() < kMaxNames) statLabels_.emplace(id, std::move(name));
}

std::string Registry::nameOf(std::uint64_t id, std::uint32_t callerId) const {
  if (auto it = names_.find(id); it != names_.end()) return it->second;
  if (auto n = mainCallbacks_->name(id); !n.empty()) return n;
  if (auto c = conns_.find(callerId); callerId != 0 && c != conns_.end()) {
    if (auto own = c->second->ownNames.find(id); own != c->second->ownNames.end()) return own->second;
  }
  return fmt::format("#{:016x}", id);
}

std::string Registry::statName(std::uint64_t id) const {
  std::string n = nameOf(id);
  if (auto l = statLabels_.find(id); n.starts_with("#") && l != statLabels_.end()) return l->second;
  return n;
}

std::string Registry::describeTarget(std::uint32_t target, std::uint64_t roleId) const {
  if (target == kTargetByRole) return fmt::format("role '{}'", nameOf(roleId));
  return fmt::format("window {}", target);
}

const std::string* Registry::roleName(std::uint64_t roleId) const {
  auto it = names_.find(roleId);
  return it == names_.end() ? nullptr : &it->second;
}

}  // namespace shmbus::detail
