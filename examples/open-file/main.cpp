// Example: request → response to main (`Window::invoke` → `Supervisor::handle`), Electron's
// ipcRenderer.invoke('open-file') / ipcMain.handle('open-file'), with the file dialog replaced
// by a directory listing, and a second handler 'system-info'. Also shows a remote exception.
//
// Written with C++20 coroutines (shmbus/coro.hpp): the window's flow `co_await`s each call
// (Electron's `await ipcRenderer.invoke(...)`), and 'system-info' is a coroutine handler whose
// co_return value is the reply. The other examples use the blocking style (`.get()`).
#include <sys/utsname.h>
#include <unistd.h>

#include <sys/wait.h>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "examples.capnp.h"
#include "shmbus/shmbus.hpp"

using namespace shmbus;

/// The renderer's flow: each co_await suspends until the reply is there; no thread blocks.
Task<int> rendererFlow(Window& w) {
  auto files = co_await w.invoke("open-file", [](Builder& b) { b.initRoot<examples::Path>().setPath("/etc"); });
  if (!files) {
    fmt::print("[window] open-file failed: {}\n", files.error().toString());
    co_return 1;
  }
  auto entries = files->root<examples::FileList>().getEntries();
  fmt::print("[window] open-file /etc: {} entries, first: {}\n", entries.size(),
             entries.size() > 0 ? entries[0].getName().cStr() : "-");
  auto info = co_await w.invoke("system-info");
  if (!info) co_return 1;
  auto si = info->root<examples::SystemInfo>();
  fmt::print("[window] system-info: host {} with {} CPUs, kernel {}, up {:.0f} s\n", si.getHostname().cStr(),
             si.getCpus(), si.getKernel().cStr(), si.getUptimeSeconds());
  auto bad = co_await w.invoke("open-file", [](Builder& b) { b.initRoot<examples::Path>().setPath("/no/such/dir"); });
  fmt::print("[window] open-file /no/such/dir: {}\n", bad ? "ok?" : bad.error().toString());
  co_return bad ? 1 : 0;
}

int windowMain() {
  auto w = Window::fromSpawn();
  if (!w) return 2;
  // syncWait dispatches the window on this thread until the flow finishes; with a dispatch thread
  // (startDispatchThread) the flow would resume there instead.
  return syncWait(**w, rendererFlow(**w));
}

int main() {
  if (Window::spawned()) return windowMain();
  auto sup = Supervisor::create({.bus = fmt::format("open-file-{}", ::getpid())});
  if (!sup) return 2;
  auto h1 = (*sup)->handle("open-file", [](const Message& req, Builder& reply, const CallContext&) {
    const std::string dir = req.root<examples::Path>().getPath();
    std::vector<std::filesystem::directory_entry> list(std::filesystem::directory_iterator(dir), {});  // throws if missing
    std::sort(list.begin(), list.end());
    auto out = reply.initRoot<examples::FileList>().initEntries(static_cast<unsigned>(list.size()));
    for (unsigned i = 0; i < list.size(); ++i) {
      out[i].setName(list[i].path().filename().string());
      out[i].setIsDir(list[i].is_directory());
      std::error_code ec;
      out[i].setBytes(list[i].is_regular_file() ? list[i].file_size(ec) : 0);
    }
  });
  // A coroutine handler: its co_return value is the reply (it could co_await other calls first).
  auto h2 = handleCo(**sup, "system-info", [](Request) -> Task<Reply> {
    utsname u{};
    ::uname(&u);
    double up = 0;
    std::ifstream("/proc/uptime") >> up;
    Reply reply;
    auto si = reply.initRoot<examples::SystemInfo>();
    si.setHostname(u.nodename);
    si.setKernel(u.release);
    si.setCpus(std::thread::hardware_concurrency());
    si.setUptimeSeconds(up);
    co_return reply;
  });
  (*sup)->startDispatchThread();
  auto w = (*sup)->spawn("renderer", {"/proc/self/exe"});
  if (!w) return 2;
  int status = 0;
  ::waitpid(w->pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
