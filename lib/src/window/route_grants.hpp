// The grants of a window's direct routes (docs/architecture.md §19): what a grant covers (the
// caller's target as its frames name it, and the channel) and what it holds. Members of
// Window::Impl (window_impl.hpp, as Impl::RouteKey and Impl::RouteGrantEntry); route.cpp uses them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "shmbus/window.hpp"
#include "wire/handshake.hpp"

namespace shmbus::window_detail {

using namespace detail;  // internal headers of the window's sources, as window_impl.hpp

/// What a grant covers: the caller's target as its frames name it, and the channel.
struct RouteKey {
  std::uint32_t target = 0;
  std::uint64_t role = 0;
  std::uint64_t channel = 0;
  bool operator==(const RouteKey&) const = default;
};
struct RouteKeyHash {
  std::size_t operator()(const RouteKey& k) const noexcept {
    return std::hash<std::uint64_t>()(k.channel ^ (k.role * 0x9e3779b97f4a7c15ull) ^ k.target);
  }
};
/// One channel granted over a route end: its default timeout, its stats slot, and whether
/// this window's fence for it was written (the first direct call or send writes it).
struct RouteGrantEntry {
  std::shared_ptr<Window::Impl> end;
  std::chrono::milliseconds timeout{0};
  RouteStatsSlot* slot = nullptr;
  bool fenced = false;
};

}  // namespace shmbus::window_detail
