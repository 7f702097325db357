// A window program for Supervisor::spawn tests: started with a pre-authenticated socket, it
// registers its handlers, announces "ready" (text: its role) to main and dispatches until the
// supervisor goes. Modes (argv[1]):
//   echo    handles "echo" (replies with the request's text) and "whoami" ("<role> <id>")
//   forge   like echo, but first tries to claim another role ($SHMBUS_ROLE and WindowOptions::role)
//   worker  a hidden worker: handles "sum" (the sum of the request's numbers)
//   leave   like echo, but closes its window when main sends "leave" and then lives on until it is
//           killed (a window that closes its connection well before its process ends)
//   malformed  a hostile window: after "ready" it writes a send to main whose payload only Cap'n
//           Proto's traversal finds malformed (raw_outbox.hpp), then waits to be killed
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "raw_outbox.hpp"
#include "shmbus/shmbus.hpp"
#include "test.capnp.h"

using namespace shmbus;

namespace {
std::string textOf(const Message& m) {
  return m.empty() ? std::string() : std::string(m.root<test::TestMessage>().getText());
}

void replyText(Builder& b, const std::string& s) { b.initRoot<test::TestMessage>().setText(s); }
}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "echo";
  if (!Window::spawned()) {
    std::fprintf(stderr, "test_window: not started by Supervisor::spawn\n");
    return 2;
  }
  WindowOptions options;
  if (mode == "forge") {
    ::setenv("SHMBUS_ROLE", "main", 1);
    options.role = "admin";
  }
  auto w = Window::fromSpawn(options);
  if (!w) {
    std::fprintf(stderr, "test_window: %s\n", w.error().toString().c_str());
    return 3;
  }
  Window& win = **w;
  std::vector<Registration> regs;
  if (mode == "worker") {
    regs.push_back(win.handle("sum", [](const Message& req, Builder& reply, const CallContext&) {
      std::uint64_t sum = 0;
      for (auto n : req.root<test::TestMessage>().getNumbers()) sum += n;
      reply.initRoot<test::TestMessage>().setSeq(sum);
    }));
  } else {
    regs.push_back(win.handle("echo", [](const Message& req, Builder& reply, const CallContext&) {
      replyText(reply, textOf(req));
    }));
    regs.push_back(win.handle("whoami", [&win](const Message&, Builder& reply, const CallContext&) {
      replyText(reply, win.role() + " " + std::to_string(win.id()));
    }));
  }
  if (mode == "leave") regs.push_back(win.on("leave", [&win](const Message&, const CallContext&) { win.close(); }));
  if (auto r = win.send("ready", [&](Builder& b) { replyText(b, win.role()); }); !r) {
    std::fprintf(stderr, "test_window: ready: %s\n", r.error().toString().c_str());
    return 4;
  }
  if (mode == "malformed") {
    // No run(): the raw producer must be the outbox's only writer. The supervisor's defaults
    // (SupervisorOptions) give the ring sizes.
    test::RawOutbox out(win.bus(), win.id(), 1u << 20, 1u << 20, 1u << 18);
    detail::FrameHeader f{};
    f.kind = static_cast<std::uint16_t>(detail::FrameKind::Send);
    f.channel = nameId("note");
    out.frameWithBadPointer(f);
    test::RawOutbox::ringDoorbell();
    for (;;) ::pause();  // the supervisor kills it (a spawned window's bad message)
  }
  win.run();  // until the supervisor stops (leave: or the window closed itself)
  if (mode == "leave") {
    for (;;) ::pause();  // until the test kills it
  }
  return 0;
}
