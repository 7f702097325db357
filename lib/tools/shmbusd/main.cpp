// shmbusd: a standalone supervisor (docs/architecture.md §1) for buses whose main process is not a C++
// program of ours. Runs until SIGINT or SIGTERM, then closes the bus (windows get BusClosed).
// With --policy FILE it enforces that policy file (docs/architecture.md §15), reloads it on SIGHUP
// (the change or the error on stderr; a bad file keeps the policy in force), and with --check only
// validates the file and prints its effective rules.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "shmbus/policy.hpp"
#include "shmbus/supervisor.hpp"

namespace {

/// The policy file at `path`, parsed and validated; the error printed (stderr) when it is not.
std::optional<shmbus::Policy> readPolicy(const std::string& path) {
  auto p = shmbus::loadPolicyFile(path);
  if (p) {
    if (auto v = shmbus::validatePolicy(*p); !v) p = v.error();
  }
  if (!p) {
    fmt::print(stderr, "shmbusd: {}\n", p.error().message);
    return std::nullopt;
  }
  return std::move(*p);
}

/// SIGHUP: reads the policy file again and puts it in force, or keeps the one in force.
void reload(shmbus::Supervisor& sup, const std::string& path) {
  if (path.empty()) {
    fmt::print(stderr, "shmbusd: SIGHUP without --policy: nothing to reload\n");
    return;
  }
  auto p = readPolicy(path);
  if (!p) {
    fmt::print(stderr, "shmbusd: policy not reloaded, the one in force stays\n");
    return;
  }
  const std::string change = shmbus::diffPolicy(sup.policy(), *p);
  if (auto r = sup.setPolicy(std::move(*p)); !r) {  // validated above: not expected
    fmt::print(stderr, "shmbusd: policy not reloaded: {}\n", r.error().message);
    return;
  }
  fmt::print(stderr, "shmbusd: policy reloaded from {}: {}\n{}", path, change.empty() ? "no change" : "changes:",
             change);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbusd: standalone libshmbus supervisor"};
  shmbus::SupervisorOptions opts;
  std::string level = "warn";
  std::string policyPath;
  bool check = false;
  app.add_option("-b,--bus", opts.bus, "bus name (1-64 of [A-Za-z0-9_-]); required unless --check");
  auto* policyOpt = app.add_option("-p,--policy", policyPath, "policy file (TOML: roles, channel rules; "
                                                               "docs/architecture.md §15); SIGHUP reloads it")
                        ->check(CLI::ExistingFile);
  app.add_flag("--check", check, "validate the --policy file, print its effective rules and exit (0: valid)")
      ->needs(policyOpt);
  auto* allowRole = app.add_option("-r,--allow-role", opts.allowedRoles,
                                   "role a window may claim when connecting by path (repeat; none = any role of the "
                                   "same uid)");
  auto* invitedRole = app.add_option("--invited-role", opts.invitedRoles,
                                     "role only an invitation token gives, never open by path (repeat)");
  auto* inviteOnly = app.add_flag("--invite-only", opts.inviteOnly,
                                  "no role is open by path: every window needs an invitation token");
  // One source of admission rules: the policy file has its own (roles.NAME.admission).
  policyOpt->excludes(allowRole)->excludes(invitedRole)->excludes(inviteOnly);
  app.add_option("--allow-uid", opts.allowedUids, "user id allowed to connect besides shmbusd's own (repeat; the "
                                                  "socket is then mode 0666: give a --socket others can reach)");
  app.add_option("-s,--socket", opts.socketPath, "socket path (default: $XDG_RUNTIME_DIR/shmbus-<bus>.sock)");
  app.add_option("--capture-payloads", opts.payloadCapture.maxBytes,
                 "bytes of each payload captured for inspectors (0 = off, at most 16384; readers need the policy's "
                 "inspect-payloads)");
  app.add_option("--capture-channel", opts.payloadCapture.channels,
                 "capture only channels matching this glob (repeat; default: every channel)");
  app.add_option("--inbox-bytes", opts.inboxBytes, "inbox ring capacity per window, a power of two");
  app.add_option("--outbox-bytes", opts.outboxBytes, "outbox ring capacity per window, a power of two");
  app.add_option("--max-record-bytes", opts.maxRecordBytes, "largest record (frame + message) in bytes");
  app.add_option("-l,--log-level", level, "silent, error, warn, info or debug")
      ->check(CLI::IsMember({"silent", "error", "warn", "info", "debug"}));
  CLI11_PARSE(app, argc, argv);
  if (opts.bus.empty() && !check) {
    fmt::print(stderr, "shmbusd: --bus is required\n");
    return 2;
  }
  const std::map<std::string, shmbus::LogLevel> levels{{"silent", shmbus::LogLevel::Silent},
                                                       {"error", shmbus::LogLevel::Error},
                                                       {"warn", shmbus::LogLevel::Warn},
                                                       {"info", shmbus::LogLevel::Info},
                                                       {"debug", shmbus::LogLevel::Debug}};
  opts.logLevel = levels.at(level);

  std::optional<shmbus::Policy> policy;
  if (!policyPath.empty()) {
    policy = readPolicy(policyPath);
    if (!policy) return 1;
    if (check) {
      fmt::print("{}", shmbus::renderPolicy(*policy));
      return 0;
    }
  }

  // Block the signals before any thread starts, so only sigwait() below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto sup = shmbus::Supervisor::create(opts);
  if (!sup) {
    fmt::print(stderr, "shmbusd: {}\n", sup.error().toString());
    return 1;
  }
  // In force before anything dispatches: no window is admitted under the options' policy.
  if (policy) {
    if (auto r = (*sup)->setPolicy(std::move(*policy)); !r) {  // validated by readPolicy: not expected
      fmt::print(stderr, "shmbusd: {}\n", r.error().message);
      return 1;
    }
  }
  fmt::print("shmbusd: bus '{}' listening on {}\n", opts.bus, (*sup)->socketPath());
  std::fflush(stdout);
  (*sup)->startDispatchThread();
  for (int sig = 0; sigwait(&signals, &sig) == 0 && sig == SIGHUP;) reload(**sup, policyPath);
  (*sup)->stop();
  return 0;
}
