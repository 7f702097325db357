// The soak's supervisor side: starts the windows, churns them, and checks the supervisor process
// for leaks (soak_run.cpp).
#pragma once

#include <string>

namespace shmbus::soak {

/// What one soak run does (shmbus_soak's command line).
struct SoakOptions {
  double seconds = 30;          ///< how long the churn lasts, s
  unsigned windows = 64;        ///< windows kept alive (roles r0.. hold four each)
  unsigned seed = 1;            ///< random seed of the supervisor and, derived, of every window
  double killsPerSecond = 5;    ///< kill -9 of a random window, per second (a quarter in the handshake)
  double rssBoundMiB = 4;       ///< allowed growth of RssAnon between the two settled snapshots, MiB
  unsigned replySpinCapUs = 50;  ///< every window's WindowOptions::replySpinCap, µs (0: off; 50: the library's default)
  std::string exe;              ///< this program (the window processes run it with `window`)
};

/// Runs the soak: prints the tables and the summary line; 0 when nothing leaked and every error
/// was one churn explains, 1 otherwise (each failure named on stderr).
int runSoak(const SoakOptions& options);

}  // namespace shmbus::soak
