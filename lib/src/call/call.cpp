#include "call/call.hpp"

#include <cstring>
#include <future>

#include <capnp/any.h>
#include <capnp/message.h>
#include <fmt/format.h>

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

Message Message::copy() const {
  if (empty()) return Message();
  capnp::MallocMessageBuilder mb(static_cast<capnp::uint>(view_->words() + 8));
  mb.setRoot(view_->reader().getRoot<capnp::AnyPointer>());
  auto held = detail::copyBuilt(mb);
  SHMBUS_ASSERT(held.ok(), "copying a readable message failed: " + held.error().message);
  return Message(std::move(*held), schemaId_);
}

// ---- CallContext

bool CallContext::cancelled() const noexcept {
  if (cancelProbe != nullptr && cancelProbe->cancelled()) return true;
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
  if (detail::isDone(*state_)) return *state_->result;  // immutable once done
  detail::CallOwner* owner = nullptr;
  {
    std::lock_guard lk(state_->mu);
    if (state_->result) return *state_->result;
    owner = state_->owner;
  }
  if (owner == nullptr) return makeError(ErrorCode::BusClosed, state_->what() + ": the endpoint is closed");
  return owner->waitFor(state_);
}

bool Call::ready() const { return state_ != nullptr && detail::isDone(*state_); }

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

bool Call::thenIfPending(std::function<void(Result<Message>)> cb) {
  SHMBUS_REQUIRE(state_ != nullptr, "thenIfPending() on an empty Call");
  std::lock_guard lk(state_->mu);
  if (state_->result) return false;
  state_->then = std::move(cb);
  return true;
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
    detail::completeCall(state_, makeError(ErrorCode::Cancelled, state_->what() + ": cancelled"));
  }
}

Call Call::failed(Error error) {
  auto s = std::make_shared<detail::CallState>();
  detail::completeCall(s, std::move(error));
  return Call(std::move(s));
}

std::uint64_t Call::requestId() const { return state_ ? state_->requestId : 0; }

std::string Target::describe() const {
  if (!role.empty()) return "role '" + role + "'";
  if (windowId != 0) return "window " + std::to_string(windowId);
  return "main";
}

namespace detail {

std::string CallState::what() const { return fmt::format("invoke '{}' to {}", channelName, target.describe()); }

bool completeCall(const std::shared_ptr<CallState>& s, Result<Message> r) {
  std::function<void(Result<Message>)> cb;
  {
    std::unique_lock lk(s->mu);
    if (s->result || s->ending) return false;
    if (s->onEnd) {
      // Traced: the record is made before the outcome is visible (a caller that then closes
      // its port flushes it); `ending` keeps a second completer out meanwhile.
      auto onEnd = std::move(s->onEnd);
      s->onEnd = nullptr;
      s->ending = true;
      lk.unlock();
      onEnd(*s, r);
      lk.lock();
    }
    if (!r && s->routeErrors != nullptr) {
      // relaxed: a counter the supervisor reads when asked (RouteStatsTable).
      s->routeErrors[static_cast<std::size_t>(r.code()) & 15].fetch_add(1, std::memory_order_relaxed);
    }
    s->result.emplace(std::move(r));
    s->done.store(true, std::memory_order_release);  // pairs with isDone()'s acquire load
    cb = std::move(s->then);
    s->then = nullptr;
  }
  s->cv.notify_all();
  if (!cb) return true;
  if (s->post) {
    s->post([cb = std::move(cb), r = *s->result]() mutable { cb(std::move(r)); });
  } else {
    cb(*s->result);  // result is immutable once set
  }
  return true;
}

std::thread startDispatcher(DispatchGate& gate, std::function<void()> run) {
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

Result<std::shared_ptr<HeldMessage>> copyBuilt(capnp::MessageBuilder& mb) {
  auto segs = mb.getSegmentsForOutput();
  if (segs.size() > kMaxSegments) return makeError(ErrorCode::TooLarge, "a message of more than 7 segments");
  MessageTable t{};
  std::size_t words = sizeof(MessageTable) / sizeof(capnp::word);
  for (auto seg : segs) words += seg.size();
  auto held = std::make_shared<HeldMessage>();
  held->storage.resize(words);
  auto* out = reinterpret_cast<std::uint8_t*>(held->storage.data());
  t.segmentCount = static_cast<std::uint32_t>(segs.size());
  std::size_t at = sizeof(MessageTable);
  for (std::uint32_t i = 0; i < t.segmentCount; ++i) {
    t.segmentWords[i] = static_cast<std::uint32_t>(segs[i].size());
    std::memcpy(out + at, segs[i].begin(), segs[i].size() * sizeof(capnp::word));
    at += segs[i].size() * sizeof(capnp::word);
  }
  std::memcpy(out, &t, sizeof t);
  auto r = held->msg.parse(out, at);
  if (!r) return r.error();
  return held;
}

}  // namespace detail
}  // namespace shmbus
