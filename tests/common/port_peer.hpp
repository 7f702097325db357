// What the port tests' driven children share (tests/multiproc/bus/port_test.cpp, blobs_test.cpp):
// the port end a child holds, and its answer to the parent's "open" command.
#pragma once

#include <fmt/format.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bus_test.hpp"

namespace shmbus::test {

/// The port end a DrivenWindow child holds, with the registrations made on it and a lock and a
/// condition for what its callbacks report. Thread contract: the child's threads, under `mu`.
struct PortHolder {
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<Port> port;      ///< guarded by mu; null until one was opened or accepted
  std::vector<Registration> regs;  ///< guarded by mu

  /// The port (null before one was opened or accepted).
  std::shared_ptr<Port> get() {
    std::lock_guard lk(mu);
    return port;
  }
  /// Drops the registrations, then the port (closing it), outside the lock: a close listener,
  /// which a peer's close may be running on the dispatch thread that closing joins, takes it too.
  void drop() {
    std::shared_ptr<Port> p;
    std::vector<Registration> r;
    {
      std::lock_guard lk(mu);
      p = std::move(port);
      r.swap(regs);
    }
    r.clear();
    p.reset();
  }
};

/// In a child: where this process maps port `id` of `bus` (found by the segment's memfd name in
/// /proc/self/maps, segment_probe.hpp). Fails the child when it is not mapped.
inline std::uint8_t* portMapping(const std::string& bus, std::uint64_t id) {
  const std::uintptr_t base = segmentBase(bus, id);
  childCheck(base != 0, "the port's mapping was not found");
  return reinterpret_cast<std::uint8_t*>(base);
}

/// In a child: opens a port to `target` on `channel` with `options`, lets `setup` take it and
/// tells the parent "opened ID", or "error CODE MESSAGE".
inline void answerOpen(const Link& link, Window& w, const std::string& target, const std::string& channel,
                       PortOptions options, const std::function<void(const std::shared_ptr<Port>&)>& setup) {
  auto p = w.openPort(target, channel, options);
  if (!p) {
    link.tellParent("error " + std::string(errorCodeName(p.code())) + " " + p.error().message);
    return;
  }
  setup(*p);
  link.tellParent(fmt::format("opened {}", (*p)->id()));
}

}  // namespace shmbus::test
