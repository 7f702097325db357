// shmbusd: a standalone supervisor (docs/architecture.md §1) for buses whose main process is not a C++
// program of ours. Runs until SIGINT or SIGTERM, then closes the bus (windows get BusClosed).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "shmbus/supervisor.hpp"

int main(int argc, char** argv) {
  CLI::App app{"shmbusd: standalone libshmbus supervisor"};
  shmbus::SupervisorOptions opts;
  std::string level = "warn";
  app.add_option("-b,--bus", opts.bus, "bus name (1-64 of [A-Za-z0-9_-])")->required();
  app.add_option("-r,--allow-role", opts.allowedRoles, "role a window may claim when connecting by path "
                                                       "(repeat; none = any role of the same uid)");
  app.add_option("--invited-role", opts.invitedRoles, "role only an invitation token gives, never open by path "
                                                      "(repeat)");
  app.add_flag("--invite-only", opts.inviteOnly, "no role is open by path: every window needs an invitation token");
  app.add_option("--allow-uid", opts.allowedUids, "user id allowed to connect besides shmbusd's own (repeat; the "
                                                  "socket is then mode 0666: give a --socket others can reach)");
  app.add_option("-s,--socket", opts.socketPath, "socket path (default: $XDG_RUNTIME_DIR/shmbus-<bus>.sock)");
  app.add_option("--inbox-bytes", opts.inboxBytes, "inbox ring capacity per window, a power of two");
  app.add_option("--outbox-bytes", opts.outboxBytes, "outbox ring capacity per window, a power of two");
  app.add_option("--max-record-bytes", opts.maxRecordBytes, "largest record (frame + message) in bytes");
  app.add_option("-l,--log-level", level, "silent, error, warn, info or debug")
      ->check(CLI::IsMember({"silent", "error", "warn", "info", "debug"}));
  CLI11_PARSE(app, argc, argv);
  const std::map<std::string, shmbus::LogLevel> levels{{"silent", shmbus::LogLevel::Silent},
                                                       {"error", shmbus::LogLevel::Error},
                                                       {"warn", shmbus::LogLevel::Warn},
                                                       {"info", shmbus::LogLevel::Info},
                                                       {"debug", shmbus::LogLevel::Debug}};
  opts.logLevel = levels.at(level);

  // Block the stop signals before any thread starts, so only sigwait() below receives them.
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);

  auto sup = shmbus::Supervisor::create(opts);
  if (!sup) {
    fmt::print(stderr, "shmbusd: {}\n", sup.error().toString());
    return 1;
  }
  fmt::print("shmbusd: bus '{}' listening on {}\n", opts.bus, (*sup)->socketPath());
  std::fflush(stdout);
  (*sup)->startDispatchThread();
  int sig = 0;
  sigwait(&stopSignals, &sig);
  (*sup)->stop();
  return 0;
}
