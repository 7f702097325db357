// The soak (tests/soak): what its supervisor process and its window processes share. The program
// is one executable: `shmbus_soak` runs the supervisor and churn, `shmbus_soak window ...` (started
// by the supervisor, by Supervisor::spawn or as a plain child that connects by path) runs one
// window. docs/architecture.md §8 (test suites) says what the soak checks.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "shmbus/shmbus.hpp"

namespace shmbus::soak {

/// What a window or the supervisor did, one row of the report each.
enum class Op : unsigned {
  RoutedCall,  ///< window → window invokeIn (by role or by a window id it heard of)
  RoutedSend,  ///< window → window sendTo: Ok once in the outbox; the failures the supervisor sent back (onSendFailed) come on top
  MainCall,    ///< window → main invoke
  SupCall,     ///< main → window invoke
  Broadcast,   ///< main → every window, counted per window it was meant for
  Count
};
inline constexpr unsigned kOps = static_cast<unsigned>(Op::Count);
/// Error codes 0 (Ok) .. InvalidArgument, plus one column for a wrong reply text.
inline constexpr unsigned kCodes = static_cast<unsigned>(ErrorCode::InvalidArgument) + 2;
inline constexpr unsigned kWrongReply = kCodes - 1;

/// Counts of results by operation and code (the tally a window sends to main: TestMessage.numbers,
/// row-major, kOps × kCodes).
using Tally = std::array<std::array<std::uint64_t, kCodes>, kOps>;

/// Name of a code column ("Ok", "TargetGone", ..., "WrongReply").
std::string codeName(unsigned code);
/// Name of an operation row.
const char* opName(Op op);

/// Whether a result is what churn explains: the target was killed or closed (TargetGone), its
/// role was empty or the id it was called by is gone (NoTarget), it had connected but not yet
/// registered its handler (NoHandler), or it died so late that its call ran into the deadline
/// (Timeout); a send to a role whose windows were all gone (NoTarget) or to a window that closed
/// (BusClosed). Calls to main and broadcasts have no such excuse: only Ok is expected there.
bool expected(Op op, unsigned code);

/// A TestMessage (tests/common/test.capnp) with `s` as its text: every payload of the soak.
BuildFn text(std::string s);
/// The text of a TestMessage ("" for an empty message).
std::string textOf(const Message& m);

/// Channels of the soak (untyped; payloads are tests/common/test.capnp TestMessage).
inline constexpr const char* kEcho = "soak-echo";    ///< windows' handler: replies with the request text
inline constexpr const char* kPing = "soak-ping";    ///< main's handler: replies with the request text
inline constexpr const char* kHello = "soak-hello";  ///< window → main once its handlers are registered
inline constexpr const char* kTally = "soak-tally";  ///< window → main: counts since its last tally
inline constexpr const char* kNote = "soak-note";    ///< window → window one-way
inline constexpr const char* kBeat = "soak-beat";    ///< main's broadcast
inline constexpr const char* kGo = "soak-go";        ///< main's broadcast: start calling
inline constexpr const char* kQuiet = "soak-quiet";  ///< main's broadcast: stop, send the final tally

/// Phases main answers a hello with: wait for kGo, call now, or stop at once.
inline constexpr const char* kPhaseWait = "wait";
inline constexpr const char* kPhaseRun = "run";
inline constexpr const char* kPhaseQuiet = "quiet";

/// How one window process runs (the `window` subcommand's options).
struct WindowArgs {
  std::string bus;       ///< bus to connect to (connect mode; spawned windows get it from spawn)
  std::string role;      ///< role to claim (connect mode)
  unsigned slot = 0;     ///< the supervisor's slot this process fills
  unsigned roles = 1;    ///< how many roles the bus has (targets are role "r<k>", k < roles)
  unsigned seed = 1;     ///< this process's random seed
  bool spawned = false;  ///< started by Supervisor::spawn (else connects by path)
  unsigned replySpinCapUs = 50;  ///< WindowOptions::replySpinCap, µs (0: off; 50: the library's default)
};

/// Runs one window process until the supervisor stops; the process's exit status.
int runWindow(const WindowArgs& args);

}  // namespace shmbus::soak
