// The router's registry: the windows connected to one supervisor, their roles, and the names of
// channel and role ids (docs/architecture.md, "Router").
//
// Everything here is guarded by the router's mutex (Router::mu_); nothing is thread-safe alone.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "blob/blob.hpp"
#include "control/socket.hpp"
#include "protocol/frame_io.hpp"
#include "ring/ring.hpp"
#include "segment/segment.hpp"
#include "shmbus/channel.hpp"
#include "shmbus/supervisor.hpp"

namespace shmbus::detail {

class CallbackTable;
struct CancelBoard;

/// One connection: a window from its first control packet until it is removed.
struct Conn {
  std::uint32_t id = 0;
  std::string role;
  std::uint64_t roleId = 0;
  pid_t pid = 0;
  uid_t uid = 0;  // SO_PEERCRED (a spawned window: the supervisor's own)
  bool uidRefused = false;  // a uid not allowed: its first packet is answered Denied, then it goes
  bool spawned = false;
  Admission admission = Admission::Open;  // how it got its role (Spawned iff spawned)
  // Inspector: an inspector's connection (shmbus/inspect.hpp), no segment, never routed to.
  enum class State { AwaitHello, AwaitMapped, Live, Inspector } state = State::AwaitHello;
  bool payloadReader = false;  // an inspector given the payload ring (Router::payloadReaders_)
  Fd sock;
  std::shared_ptr<Segment> seg;
  RingProducer inbox;   // router → window (under the router mutex)
  RingConsumer outbox;  // window → router (the routing thread, under the router mutex)
  CancelBoard* cancels = nullptr;  // in the window's segment (wire/cancel_board.hpp)
  // The window's outgoing blob arena in its segment (docs/architecture.md §17): its sends,
  // invokes and replies larger than its outbox ring, read in place (openBlob); null when it has
  // none.
  std::uint8_t* blobIn = nullptr;
  std::size_t blobInBytes = 0;
  // The arena of the window's segment that the router writes: whatever reaches the window larger
  // than its inbox ring (main's messages, routed copies; router_main.cpp). No file: every
  // reclaimed record is zeroed (BlobProducer), so the supervisor keeps no descriptor of the segment.
  BlobProducer blobOut;  // under the router mutex, like the inbox
  std::unordered_set<std::uint64_t> handled;
  std::unordered_set<std::uint64_t> listens;
  std::unordered_set<std::uint64_t> portChannels;  // channels it accepts ports on (onPort)
  std::unordered_set<std::uint64_t> knownRoles;
  // Names this window gave ids that do not hash to them (typed channels: methodChannelId cannot
  // be checked against a name). Unverified, so they name channels only in this window's own
  // errors, never in other windows' messages or in stats.
  std::unordered_map<std::uint64_t, std::string> ownNames;
  // Bytes of schema announcements this window sent (docs/architecture.md §6): at most
  // kMaxSchemaBytesPerWindow are read over its connection, refused or kept alike.
  std::size_t schemaBytes = 0;
  std::string doomed;  // non-empty: disconnect after the current batch, with this reason
  bool bad = false;
  // Records of this outbox still in use (a main-process callback reads one in place, or a nested
  // dispatch round runs inside the processing of one): the outbox is released only below the
  // oldest of them, and the Conn is not freed while any is held.
  int pinDepth = 0;
  std::uint64_t pinPos = 0;  // ring position of the oldest record in use
  // Outcomes of this window's calls that found its inbox full, oldest first (Router::writeOutcome,
  // flushHeld), and their bytes (headers included): at most the inbox's capacity.
  std::deque<HeldFrame> held;
  std::size_t heldBytes = 0;

  bool live() const noexcept { return state == State::Live && doomed.empty(); }
  /// "role 'x' (window n)", for messages.
  std::string describe() const;
  /// What Supervisor::windows() shows of it.
  WindowInfo info() const { return WindowInfo{id, role, pid, spawned, admission, uid}; }
};

/// The table of connections and names. Guarded by the router mutex.
class Registry {
 public:
  explicit Registry(std::shared_ptr<CallbackTable> mainCallbacks);

  /// Adds a connection in state AwaitHello with the next window id.
  Conn& add(Fd sock, std::string role, pid_t pid, bool spawned);
  /// Removes and returns the connection `id` (null when absent).
  std::unique_ptr<Conn> remove(std::uint32_t id);
  Conn* find(std::uint32_t id);
  /// The live connection with `id`, or null.
  Conn* live(std::uint32_t id);
  /// Resolves a frame target: a window id, or kTargetByRole with `roleId` (the first registered
  /// live window of that role).
  Conn* resolve(std::uint32_t target, std::uint64_t roleId);
  Conn* resolve(const Target& t);
  /// Connections in registration order.
  std::map<std::uint32_t, std::unique_ptr<Conn>>& all() noexcept { return conns_; }
  const std::map<std::uint32_t, std::unique_ptr<Conn>>& all() const noexcept { return conns_; }
  /// The role of window `id` ("main" for 0, "" when unknown).
  std::string roleOf(std::uint32_t id) const;

  /// Records a verified name (it hashes to its id), bounded.
  void addName(std::uint64_t id, std::string name);
  /// Records the display label of a typed channel id (stats only; first claim wins).
  void addStatLabel(std::uint64_t id, std::string name);
  /// Name of channel `id`: a verified name, the main process's own, else the name window
  /// `callerId` gave it itself (for messages to that window), else its id in hex.
  std::string nameOf(std::uint64_t id, std::uint32_t callerId = 0) const;
  /// Name for stats and the main process's own log: nameOf, else a typed channel's label (the
  /// name a window's stub gave it; never used in messages to other windows).
  std::string statName(std::uint64_t id) const;
  /// "role 'x'" or "window n", for a frame target.
  std::string describeTarget(std::uint32_t target, std::uint64_t roleId) const;
  /// A verified role name for `roleId`, or null.
  const std::string* roleName(std::uint64_t roleId) const;

 private:
  std::map<std::uint32_t, std::unique_ptr<Conn>> conns_;  // by id: registration order
  std::uint32_t nextId_ = 1;
  std::unordered_map<std::uint64_t, std::string> names_;
  std::unordered_map<std::uint64_t, std::string> statLabels_;
  std::shared_ptr<CallbackTable> mainCallbacks_;
};

}  // namespace shmbus::detail
