// Example: a file streamed from one window to another through a routed stream (docs/architecture.md
// §18). Main spawns a "sink" window that serves FileSink and a "source" window that reads a file
// (argv[1], default a 64 MiB file it makes) and writes it to role "sink" in 64 KiB chunks with the generated
// FileSinkStream: each write is a routed call whose reply is the sink's credit, so the source
// never has more than the flow window (256 KiB) unacknowledged, however slow the sink's disk. The
// final call, end(), returns the size and digest of what the sink stored; the source checks them.
// Main then prints the router's statistics of the stream's channel.
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

#include "files.shmbus.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kChunkBytes = 64u << 10;
// The flow window: at most this much (plus one chunk) is unacknowledged. On a routed stream it
// must leave room in the sink's inbox (1 MiB by default): the router refuses a call to a full
// inbox with Full, which would end the stream.
constexpr std::uint64_t kWindowBytes = 256u << 10;

/// FNV-1a over a byte run, continuing from `h`.
std::uint64_t fnv(std::uint64_t h, const capnp::byte* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
constexpr std::uint64_t kFnvBasis = 0xcbf29ce484222325ull;

int sink(Window& win) {
  // The received file goes to a temporary file, removed when the stream ends.
  char path[] = "/tmp/shmbus-file-stream-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return 2;
  std::FILE* out = ::fdopen(fd, "wb");
  std::uint64_t bytes = 0, digest = kFnvBasis;
  auto write = filestream::FileSinkHandlers::handleWrite(win, [&](auto params) {
    // Read in place from the inbox record: the one copy on this side is into the file.
    auto chunk = params.getChunk();
    if (std::fwrite(chunk.begin(), 1, chunk.size(), out) != chunk.size()) throw std::runtime_error("disk full");
    bytes += chunk.size();
    digest = fnv(digest, chunk.begin(), chunk.size());
  });
  auto end = filestream::FileSinkHandlers::handleEnd(win, [&](auto params, auto results, const CallContext& ctx) {
    std::fflush(out);
    fmt::print("[sink] stored '{}' from window {}: {} bytes\n", params.getName().cStr(), ctx.sourceWindowId, bytes);
    std::fflush(stdout);  // before the source's lines, which wait for this reply
    results.setBytes(bytes);
    results.setDigest(digest);
  });
  if (!win.send("sink-ready")) return 2;
  win.run();
  std::fclose(out);
  ::unlink(path);
  return 0;
}

int source(Window& win, const std::string& file) {
  std::FILE* in = std::fopen(file.c_str(), "rb");
  if (in == nullptr) return fmt::print("[source] cannot read {}\n", file), 1;
  filestream::FileSinkStream stream(win, {.windowBytes = kWindowBytes});  // to role "sink" ($target)
  std::vector<capnp::byte> buf(kChunkBytes);
  std::uint64_t bytes = 0, digest = kFnvBasis;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), in)) > 0;) {
    // Built in place in the outbox; waits while 256 KiB are unacknowledged.
    auto r = stream.write([&](auto p) { p.setChunk(capnp::Data::Reader(buf.data(), n)); });
    if (!r) return fmt::print("[source] the stream ended: {}\n", r.error().toString()), 1;
    bytes += n;
    digest = fnv(digest, buf.data(), n);
  }
  std::fclose(in);
  auto done = stream.end([&](auto p) { p.setName(file); }).get();
  if (!done) return fmt::print("[source] {}\n", done.error().toString()), 1;
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const bool ok = done->reader().getBytes() == bytes && done->reader().getDigest() == digest;
  const StreamStats st = stream.stats();
  fmt::print("[source] streamed {} bytes in {} writes in {:.0f} ms; digest {}\n", bytes, st.writes, ms,
             ok ? "matches" : "DIFFERS");
  fmt::print("[source] flow window {} KiB: at most {} KiB were unacknowledged; waited for credit {} times\n",
             kWindowBytes >> 10, st.inFlightHighWater >> 10, st.waits);
  return ok && st.inFlightHighWater <= kWindowBytes + 2 * kChunkBytes ? 0 : 1;
}

int run(const std::string& file);

}  // namespace

int main(int argc, char** argv) {
  if (Window::spawned()) {
    auto w = Window::fromSpawn();
    if (!w) return 2;
    return (*w)->role() == "sink" ? sink(**w) : source(**w, argc > 1 ? argv[1] : "");
  }
  // The file to stream: argv[1], else a 64 MiB file of a pattern made here (and removed after).
  std::string file = argc > 1 ? argv[1] : "";
  if (file.empty()) {
    char path[] = "/tmp/shmbus-file-stream-input-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) return 2;
    std::vector<char> block(1u << 20);
    for (int mb = 0; mb < 64; ++mb) {
      for (std::size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>((mb * 7 + i * 13) >> 3);
      if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) return 2;
    }
    ::close(fd);
    file = path;
  }
  const int rc = run(file);
  if (argc <= 1) ::unlink(file.c_str());
  return rc;
}

namespace {

/// Main: spawns the sink, then the source with `file`, and waits for the source.
int run(const std::string& file) {
  auto sup = Supervisor::create({.bus = fmt::format("file-stream-{}", ::getpid())});
  if (!sup) return fmt::print("{}\n", sup.error().toString()), 2;
  Supervisor& s = **sup;
  std::promise<void> ready;
  auto heard = s.once("sink-ready", [&](const Message&, const CallContext&) { ready.set_value(); });
  s.startDispatchThread();
  if (!s.spawn("sink", {"/proc/self/exe"})) return 2;
  if (ready.get_future().wait_for(5s) != std::future_status::ready) return 2;
  auto src = s.spawn("source", {"/proc/self/exe", file});
  if (!src) return 2;
  int status = 0;
  ::waitpid(src->pid, &status, 0);
  for (const auto& ch : s.stats().channels) {
    if (ch.channel == "FileSink.write") {
      fmt::print("[main] the router counted {} calls on {} (p50 {:.3f} ms)\n", ch.calls, ch.channel, ch.p50Ms);
    }
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

}  // namespace
