// shmbus-inspect's `call` command (call.cpp): a typed method invoked from the shell.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace shmbus::inspect {

/// What `shmbus-inspect BUS call TARGET CHANNEL PARAMS [--schema FILE]` asks for.
struct CallRequest {
  std::string bus;                      ///< the bus name
  std::string socketPath;               ///< the bus's socket ("" = the default for `bus`)
  std::string target;                   ///< a role, or "main" for the main process's handler
  std::string channel;                  ///< "Interface.method" (nested: "Outer.Inner.method")
  std::string params;                   ///< the params struct in Cap'n Proto text: "(text = \"hi\")"
  std::string schemaFile;               ///< the .capnp file declaring the interface ("" = the bus's announced schemas)
  std::vector<std::string> importDirs;  ///< searched first for absolute imports ("/shmbus.capnp")
  std::string role = "shmbus-inspect";  ///< the role this tool's window registers with
  std::chrono::milliseconds timeout{0}; ///< 0 = the method's default ($timeoutMs, else 5 s)
};

/// Parses the schema (without one: asks the supervisor, as an inspector, for the contracts the
/// bus's typed stubs announced and takes the one method named `rq.channel`), connects a window
/// with `rq.role`, invokes the method and prints the reply as Cap'n Proto text on stdout. Returns
/// the exit status: 0; 1 when the call fails (the Error on stderr: NoTarget, NoHandler, Timeout,
/// Denied...) or the bus cannot be reached; 2 when the schema, the channel or the params text is
/// wrong (Cap'n Proto's message on stderr), or no announced contract (or several, with different
/// channel ids) has the method.
/// Thread contract: call from main() only (it creates and closes its window).
int call(const CallRequest& rq);

}  // namespace shmbus::inspect
