// shmbus_soak: churns windows on one bus for a while and fails on any leak of the supervisor
// process (docs/architecture.md §8, test suites). `shmbus_soak --duration 30 --windows 64`;
// `shmbus_soak window ...` is the window process it starts (soak_window.cpp).
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "soak.hpp"
#include "soak_run.hpp"

using namespace shmbus::soak;

int main(int argc, char** argv) {
  CLI::App app("libshmbus soak: windows connect, call each other and main, get killed with kill -9 and come "
               "back; the supervisor process must end with the descriptors, mappings and segments it "
               "started with, and its memory within a bound");
  SoakOptions opt;
  app.add_option("--duration", opt.seconds, "seconds of churn")->check(CLI::PositiveNumber);
  app.add_option("--windows", opt.windows, "windows kept alive")->check(CLI::Range(2u, 1000u));
  app.add_option("--seed", opt.seed, "random seed (the run prints it)");
  app.add_option("--kills", opt.killsPerSecond, "kill -9 per second")->check(CLI::NonNegativeNumber);
  app.add_option("--rss-bound-mib", opt.rssBoundMiB, "allowed growth of the heap's resident memory, MiB");
  app.add_option("--reply-spin-cap-us", opt.replySpinCapUs, "every window's learned reply spin cap, us (0: off)");

  WindowArgs win;
  auto* window = app.add_subcommand("window", "one window process (started by the soak itself)");
  window->add_option("--bus", win.bus, "bus to connect to (by path)");
  window->add_option("--role", win.role, "role to claim (by path)");
  window->add_option("--slot", win.slot, "slot number")->required();
  window->add_option("--roles", win.roles, "number of roles")->required();
  window->add_option("--seed", win.seed, "random seed");
  window->add_flag("--spawned", win.spawned, "started by Supervisor::spawn");
  window->add_option("--reply-spin-cap-us", win.replySpinCapUs, "learned reply spin cap, us (0: off)");
  CLI11_PARSE(app, argc, argv);

  if (*window) return runWindow(win);
  opt.exe = std::filesystem::read_symlink("/proc/self/exe").string();
  return runSoak(opt);
}
