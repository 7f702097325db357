// Control-plane sockets: Unix domain SOCK_SEQPACKET (docs/architecture.md §5). Datagrams keep message
// boundaries, so a control message is one Cap'n Proto flat array per datagram; file descriptors
// travel as SCM_RIGHTS. Hang-up of the socket is the death signal of either side.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "shmbus/error.hpp"

namespace shmbus::detail {

/// Directory of bus sockets: $XDG_RUNTIME_DIR, else /tmp/shmbus-<uid>/ (created mode 0700; an
/// existing one must be ours and not accessible by others). Errors: SystemError.
Result<std::string> runtimeDir();

/// Socket path of `bus` (runtimeDir()/shmbus-<bus>.sock).
Result<std::string> socketPath(const std::string& bus);

/// Listening SOCK_SEQPACKET socket at `path`, non-blocking, close-on-exec, mode 0600. Never
/// replaces an existing file: the caller holds the path's BusLock and removed a stale socket first
/// (control/bus_lock.hpp). Errors: SystemError (EADDRINUSE when a file is there).
Result<Fd> listenSeqpacket(const std::string& path);

/// Connects to `path`. Errors: BusClosed (nobody listens), SystemError.
Result<Fd> connectSeqpacket(const std::string& path);

/// A connected SOCK_SEQPACKET pair (close-on-exec on both).
Result<std::pair<Fd, Fd>> seqpacketPair();

/// Peer credentials (SO_PEERCRED).
struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
};
Result<PeerCred> peerCred(int fd);

/// Whether a process listens on the socket at `path`, by a non-blocking connect closed at once
/// (the listener sees a connection that hangs up unheard). The listener's credentials when it
/// answers (pid 0 when its backlog is full: it listens, but the connection was not queued);
/// nullopt when nobody listens (no file, or a socket file nobody is bound to any more).
/// Errors: SystemError.
Result<std::optional<PeerCred>> probeListener(const std::string& path);

/// Sends one datagram with optional descriptors. Errors: BusClosed (peer gone), SystemError.
Result<void> sendPacket(int fd, const void* data, std::size_t bytes, const std::vector<int>& fds = {});

/// Receives one datagram (up to 64 KiB) and any descriptors (owned by the caller). Returns an
/// empty vector on orderly hang-up (the caller treats it as the peer's death).
/// Errors: Full (EAGAIN on a non-blocking socket), SystemError.
struct Packet {
  std::vector<std::uint8_t> bytes;
  std::vector<Fd> fds;
  bool hangup = false;
};
Result<Packet> recvPacket(int fd);

/// Waits until `fd` is readable (a packet or a hang-up) or `deadlineNs` (absolute CLOCK_MONOTONIC
/// ns) passes; EINTR is retried. Returns true when readable, false at the deadline.
/// Errors: SystemError (poll).
Result<bool> waitReadable(int fd, std::int64_t deadlineNs);

}  // namespace shmbus::detail
