#include "call/callbacks.hpp"

#include <algorithm>

namespace shmbus::detail {

Registration CallbackTable::addListener(const Channel& ch, Listener fn, bool once) {
  SHMBUS_REQUIRE(fn != nullptr, "listener must not be empty");
  std::uint64_t token;
  bool first;
  std::shared_ptr<ListenerHook> hook;
  {
    std::lock_guard lk(mu_);
    hook = listenerHook_;
    auto& e = entries_[ch.id];
    if (e.name.empty()) e.name = std::string(ch.name);
    first = e.listeners.empty();
    token = nextToken_++;
    e.listeners.push_back(std::make_shared<ListenerSlot>(ListenerSlot{token, std::move(fn), once}));
  }
  if (first && hook && *hook) (*hook)(ch.id);
  const std::uint64_t id = ch.id;
  return Registration([weak = weak_from_this(), id, token] {
    auto self = weak.lock();
    if (!self) return;
    std::lock_guard lk(self->mu_);
    auto it = self->entries_.find(id);
    if (it == self->entries_.end()) return;
    auto& v = it->second.listeners;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& s) { return s->token == token; }), v.end());
  });
}

Registration CallbackTable::setHandler(const Channel& ch, Handler fn) {
  SHMBUS_REQUIRE(fn != nullptr, "handler must not be empty");
  return install(ch, std::make_shared<HandlerSlot>(HandlerSlot{0, std::move(fn), nullptr, ch.schemaId, ch.replySchemaId}));
}

Registration CallbackTable::setAsyncHandler(const Channel& ch, AsyncHandler fn) {
  SHMBUS_REQUIRE(fn != nullptr, "handler must not be empty");
  return install(ch, std::make_shared<HandlerSlot>(HandlerSlot{0, nullptr, std::move(fn), ch.schemaId, ch.replySchemaId}));
}

Registration CallbackTable::install(const Channel& ch, std::shared_ptr<HandlerSlot> slot) {
  std::uint64_t token;
  bool first;
  std::shared_ptr<HandlerHook> hook;
  {
    std::lock_guard lk(mu_);
    hook = handlerHook_;
    auto& e = entries_[ch.id];
    if (e.name.empty()) e.name = std::string(ch.name);
    first = e.handler == nullptr;
    token = nextToken_++;
    slot->token = token;
    e.handler = std::move(slot);
  }
  if (first && hook && *hook) (*hook)(ch.id, true);
  const std::uint64_t id = ch.id;
  return Registration([weak = weak_from_this(), id, token] {
    auto self = weak.lock();
    if (!self) return;
    bool removed = false;
    std::shared_ptr<HandlerHook> hook;
    {
      std::lock_guard lk(self->mu_);
      hook = self->handlerHook_;
      auto it = self->entries_.find(id);
      if (it != self->entries_.end() && it->second.handler && it->second.handler->token == token) {
        it->second.handler.reset();
        removed = true;
      }
    }
    if (removed && hook && *hook) (*hook)(id, false);
  });
}

std::vector<std::shared_ptr<ListenerSlot>> CallbackTable::takeListeners(std::uint64_t channel) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(channel);
  if (it == entries_.end() || it->second.listeners.empty()) return {};
  auto& v = it->second.listeners;
  std::vector<std::shared_ptr<ListenerSlot>> out = v;
  v.erase(std::remove_if(v.begin(), v.end(), [](const auto& s) { return s->once; }), v.end());
  return out;
}

std::size_t CallbackTable::listenerCount(std::uint64_t channel) const {
  std::lock_guard lk(mu_);
  auto it = entries_.find(channel);
  return it == entries_.end() ? 0 : it->second.listeners.size();
}

std::shared_ptr<HandlerSlot> CallbackTable::handler(std::uint64_t channel) const {
  std::lock_guard lk(mu_);
  auto it = entries_.find(channel);
  return it == entries_.end() ? nullptr : it->second.handler;
}

std::vector<std::uint64_t> CallbackTable::handledChannels() const {
  std::lock_guard lk(mu_);
  std::vector<std::uint64_t> out;
  for (const auto& [id, e] : entries_) {
    if (e.handler) out.push_back(id);
  }
  return out;
}

std::string CallbackTable::name(std::uint64_t channel) const {
  std::lock_guard lk(mu_);
  auto it = entries_.find(channel);
  return it == entries_.end() ? std::string() : it->second.name;
}

void CallbackTable::rememberName(std::uint64_t channel, std::string_view n) {
  std::lock_guard lk(mu_);
  auto& e = entries_[channel];
  if (e.name.empty()) e.name = std::string(n);
}

}  // namespace shmbus::detail
