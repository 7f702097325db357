// Example: a 512 MiB buffer moved between two windows over a port, zero copy (docs/architecture.md
// §16 ports, §17 blobs). Main spawns a viewer that accepts ports on "frames" and a producer that
// opens one and sends a single Frame of 512 MiB: the message is larger than any ring, so it is
// built directly in the port's blob arena (shared memory the viewer maps) and the viewer reads it
// in place; only a 32-byte descriptor goes through the ring. The viewer answers with a digest of
// what it read; the producer checks it and that the blob was released (the arena holds nothing).
#include <sys/wait.h>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <thread>

#include "examples.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kFrameBytes = 512ull << 20;  // 512 MiB
constexpr std::uint64_t kChunkBytes = 64ull << 20;   // 8 chunks (a Data field holds < 512 MiB)
constexpr std::uint64_t kChunks = kFrameBytes / kChunkBytes;

/// The byte at `i` of the frame: a pattern both sides compute.
std::uint8_t patternAt(std::uint64_t i) { return static_cast<std::uint8_t>((i * 131) >> 7); }

/// A digest of a byte run that starts at frame offset `at`: the sum of every 8-byte word.
std::uint64_t digest(const std::uint8_t* p, std::size_t n) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    sum += w;
  }
  return sum;
}

double msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int viewer(Window& win) {
  std::shared_ptr<Port> kept;
  auto accept = win.onPort("frames", [&](std::shared_ptr<Port> port) {
    port->handle("frame", [](const Message& req, Builder& reply, const CallContext& ctx) {
      // Reads the 512 MiB in place, in the producer's arena; the blob is released when this
      // handler returns.
      const auto t0 = std::chrono::steady_clock::now();
      std::uint64_t bytes = 0, sum = 0;
      for (auto chunk : req.root<examples::Frame>().getChunks()) {
        sum += digest(chunk.begin(), chunk.size());
        bytes += chunk.size();
      }
      auto d = reply.initRoot<examples::FrameDigest>();
      d.setBytes(bytes);
      d.setSum(sum);
      fmt::print("[viewer] read {} MiB in place from window {} in {:.0f} ms\n", bytes >> 20, ctx.sourceWindowId,
                 msSince(t0));
      std::fflush(stdout);  // before the producer's lines, which wait for this reply
    }).release();  // for the port's lifetime
    port->start();
    kept = std::move(port);
  });
  if (!win.send("viewer-ready")) return 2;
  win.run();
  return 0;
}

int producer(Window& win) {
  // Both directions get an arena: 576 MiB each, the frame plus room (sparse: only what a blob in
  // flight touches is memory).
  auto port = win.openPort("viewer", "frames", {.blobBytes = 576ull << 20, .callTimeout = 30s});
  if (!port) return fmt::print("[producer] {}\n", port.error().toString()), 1;
  std::uint64_t expected = 0;
  const auto t0 = std::chrono::steady_clock::now();
  // The frame is written where the viewer will read it: no staging buffer, no copy. `build` may
  // run more than once (the ring is tried first), so it computes the digest afresh each time.
  auto r = (*port)->invoke("frame", [&](Builder& b) {
    expected = 0;
    auto chunks = b.initRoot<examples::Frame>().initChunks(kChunks);
    for (std::uint64_t c = 0; c < kChunks; ++c) {
      auto data = chunks.init(static_cast<unsigned>(c), kChunkBytes);
      for (std::uint64_t i = 0; i < kChunkBytes; ++i) data[i] = patternAt(c * kChunkBytes + i);
      expected += digest(data.begin(), data.size());
    }
  }).get();
  if (!r) return fmt::print("[producer] {}\n", r.error().toString()), 1;
  const double ms = msSince(t0);
  auto d = r->root<examples::FrameDigest>();
  const bool ok = d.getBytes() == kFrameBytes && d.getSum() == expected;
  fmt::print("[producer] sent {} MiB in one message; digest {}; round trip (building it included) {:.0f} ms\n",
             kFrameBytes >> 20, ok ? "matches" : "DIFFERS", ms);
  // The viewer releases the blob when its handler returns, just after its reply was written: the
  // reply can arrive first. The release is a store in shared memory with no event to wait on
  // outside a send, so look again (bounded) until it is seen.
  BlobStats held = (*port)->blobStats();
  for (const auto until = std::chrono::steady_clock::now() + 5s;
       held.bytesHeld != 0 && std::chrono::steady_clock::now() < until; held = (*port)->blobStats()) {
    std::this_thread::yield();
  }
  fmt::print("[producer] blob arena after the reply: {} bytes held, high water {} MiB of {} MiB\n", held.bytesHeld,
             held.bytesHighWater >> 20, held.arenaBytes >> 20);
  (*port)->close();
  return ok && held.bytesHeld == 0 ? 0 : 1;
}

}  // namespace

int main() {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    return (*w)->role() == "viewer" ? viewer(**w) : producer(**w);
  }
  // Two arenas of 576 MiB on one port: above the default per-window limit (1 GiB).
  auto sup = Supervisor::create({.bus = fmt::format("big-buffer-{}", ::getpid()), .blobBytesPerWindow = 2ull << 30});
  if (!sup) return fmt::print("{}\n", sup.error().toString()), 2;
  Supervisor& s = **sup;
  std::promise<void> ready;
  auto heard = s.once("viewer-ready", [&](const Message&, const CallContext&) { ready.set_value(); });
  s.startDispatchThread();
  if (!s.spawn("viewer", {"/proc/self/exe"})) return 2;
  if (ready.get_future().wait_for(5s) != std::future_status::ready) return 2;
  auto producer = s.spawn("producer", {"/proc/self/exe"});
  if (!producer) return 2;
  int status = 0;
  ::waitpid(producer->pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
