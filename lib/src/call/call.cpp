#include "call/call.hpp"

#include <cstring>
#include <future>

#include "shmbus/channel.hpp"
#include "wait/wait.hpp"

namespace shmbus {

// ---- Message

Message::Message(std::shared_ptr<detail::HeldMessage> held, std::uint64_t schemaId) noexcept
    : view_(&held->msg), held_(std::move(held)), schemaId_(schemaId) {}

bool Message::empty() const noexcept { return view_ == nullptr || view_->empty(); }

capnp::MessageReader& Message::reader() const {
  SHMBUS_REQUIRE(!empty(), "the message has no payload");
  return view_->reader();
}

std::size_t Message::words() const noexcept { return view_ == nullptr ? 0 : view_->words(); }

// ---- CallContext

bool CallContext::cancelled() const noexcept {
  // acquire: pairs with the release store of whoever cancels (the control thread or the timer).
  if (cancelFlag != nullptr && cancelFlag->load(std::memory_order_acquire)) return true;
  return deadlineNs != 0 && detail::monotonicNowNs() >= deadlineNs;
}

std::chrono::nanoseconds CallContext::remaining() const noexcept {
  if (deadlineNs == 0) return std::chrono::hours(24 * 365);
  const auto left = deadlineNs - detail::monotonicNowNs();
  return std::chrono::nanoseconds(left > 0 ? left : 0);
}

// ---- Call

Result<Message> Call::get() {
  SHMBUS_REQUIRE(state_ != nullptr, "get() on an empty Call");
  detail::CallOwner* owner = nullptr;
  {
    std::lock_guard lk(state_->mu);
    if (state_->result) return *state_->result;
    owner = state_->owner;
  }
  if (owner == nullptr) return makeError(ErrorCode::BusClosed, state_->what + ": the endpoint is closed");
  return owner->waitFor(state_);
}

bool Call::ready() const {
  if (state_ == nullptr) return false;
  std::lock_guard lk(state_->mu);
  return state_->result.has_value();
}

void Call::then(std::function<void(Result<Message>)> cb) {
  SHMBUS_REQUIRE(state_ != nullptr, "then() on an empty Call");
  std::unique_lock lk(state_->mu);
  if (state_->result) {
    auto r = *state_->result;
    lk.unlock();
    cb(std::move(r));
    return;
  }
  state_->then = std::move(cb);
}

void Call::cancel() {
  if (state_ == nullptr) return;
  detail::CallOwner* owner = nullptr;
  {
    std::lock_guard lk(state_->mu);
    if (state_->result) return;
    owner = state_->owner;
  }
  if (owner != nullptr) {
    owner->cancel(state_);
  } else {
    detail::completeCall(state_, makeError(ErrorCode::Cancelled, state_->what + ": cancelled"));
  }
}

std::uint64_t Call::requestId() const { return state_ ? state_->requestId : 0; }

std::string Target::describe() const {
  if (!role.empty()) return "role '" + role + "'";
  if (windowId != 0) return "window " + std::to_string(windowId);
  return "main";
}

namespace detail {

bool completeCall(const std::shared_ptr<CallState>& s, Result<Message> r) {
  std::function<void(Result<Message>)> cb;
  {
    std::lock_guard lk(s->mu);
    if (s->result) return false;
    s->result.emplace(std::move(r));
    cb = std::move(s->then);
    s->then = nullptr;
  }
  s->cv.notify_all();
  if (cb) cb(*s->result);  // result is immutable once set
  return true;
}

std::thread startDispatcher(std::recursive_mutex& gate, std::function<void()> run) {
  std::promise<void> started;
  auto isStarted = started.get_future();
  // The thread owns the promise: the caller may return (and drop the future) the moment it is set.
  std::thread t([&gate, started = std::move(started), run = std::move(run)]() mutable {
    std::lock_guard g(gate);
    started.set_value();
    run();
  });
  isStarted.wait();
  return t;
}

Result<std::shared_ptr<HeldMessage>> copyMessage(const std::uint8_t* bytes, std::size_t n) {
  auto held = std::make_shared<HeldMessage>();
  held->storage.resize((n + 7) / 8);
  std::memcpy(held->storage.data(), bytes, n);
  auto r = held->msg.parse(reinterpret_cast<const std::uint8_t*>(held->storage.data()), n);
  if (!r) return r.error();
  return held;
}

}  // namespace detail
}  // namespace shmbus
