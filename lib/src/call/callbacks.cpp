#include "call/callbacks.hpp"

#include <algorithm>

#include "common/tls.hpp"

namespace shmbus::detail {

Registration CallbackTable::addListener(const Channel& ch, Listener fn, bool once) {
  SHMBUS_REQUIRE(fn != nullptr, "listener must not be empty");
  std::uint64_t token;
  bool first;
  std::shared_ptr<ListenerHook> hook;
  std::shared_ptr<ListenerSlot> slot;
  {
    std::lock_guard lk(mu_);
    hook = listenerHook_;
    auto& e = entries_[ch.id];
    if (e.name.empty()) e.name = std::string(ch.name);
    first = e.listeners.empty();
    token = nextToken_++;
    slot = std::make_shared<ListenerSlot>(token, std::move(fn), once);
    e.listeners.push_back(slot);
  }
  if (first && hook && *hook) (*hook)(ch.id);
  const std::uint64_t id = ch.id;
  return Registration([weak = weak_from_this(), id, token, weakSlot = std::weak_ptr<ListenerSlot>(slot)] {
    if (auto self = weak.lock()) {
      std::lock_guard lk(self->mu_);
      auto it = self->entries_.find(id);
      if (it != self->entries_.end()) {
        auto& v = it->second.listeners;
        v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& s) { return s->token == token; }), v.end());
      }
    }
    // After it left the table: a run from a snapshot taken before does not start, one in
    // progress on another thread is waited for.
    if (auto s = weakSlot.lock()) s->gate.retire();
  });
}

Registration CallbackTable::setHandler(const Channel& ch, Handler fn) {
  SHMBUS_REQUIRE(fn != nullptr, "handler must not be empty");
  return install(ch, std::make_shared<HandlerSlot>(0, std::move(fn), nullptr, ch.schemaId, ch.replySchemaId));
}

Registration CallbackTable::setAsyncHandler(const Channel& ch, AsyncHandler fn) {
  SHMBUS_REQUIRE(fn != nullptr, "handler must not be empty");
  return install(ch, std::make_shared<HandlerSlot>(0, nullptr, std::move(fn), ch.schemaId, ch.replySchemaId));
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
    e.handler = slot;  // the Registration keeps a weak reference to retire it
  }
  if (first && hook && *hook) (*hook)(ch.id, true);
  const std::uint64_t id = ch.id;
  return Registration([weak = weak_from_this(), id, token, weakSlot = std::weak_ptr<HandlerSlot>(slot)] {
    auto self = weak.lock();
    if (!self) {
      if (auto s = weakSlot.lock()) s->gate.retire();
      return;
    }
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
    if (auto s = weakSlot.lock()) s->gate.retire();  // as for a listener
  });
}

namespace {
/// The gates this thread is running callbacks of, innermost last (re-entrant dispatch nests
/// them). retire() does not wait for these: they are below it on its own stack.
SHMBUS_HOT_TLS thread_local std::vector<const CallbackGate*> tEntered;
}  // namespace

bool CallbackGate::enter() noexcept {
  // acquire on success pairs with retire()'s fetch_or: the two RMWs are ordered on state_, so
  // either this run is counted before retire() reads the count, or it sees kRetired and stays out.
  std::uint32_t s = state_.load(std::memory_order_relaxed);
  do {
    if (s & kRetired) return false;
  } while (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire, std::memory_order_relaxed));
  tEntered.push_back(this);
  return true;
}

void CallbackGate::leave() noexcept {
  tEntered.pop_back();
  // release pairs with retire()'s acquire loads: what the run did happens before retire returns.
  const std::uint32_t s = state_.fetch_sub(1, std::memory_order_release) - 1;
  if (s & kRetired) state_.notify_all();
}

void CallbackGate::retire() noexcept {
  const auto mine = static_cast<std::uint32_t>(std::count(tEntered.begin(), tEntered.end(), this));
  // acq_rel: see enter(); acquire also pairs with the release of runs that already left.
  std::uint32_t s = state_.fetch_or(kRetired, std::memory_order_acq_rel) | kRetired;
  while ((s & ~kRetired) > mine) {
    state_.wait(s, std::memory_order_acquire);  // woken by leave()'s notify_all
    s = state_.load(std::memory_order_acquire);  // pairs with leave()'s release
  }
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
