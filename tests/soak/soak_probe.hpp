// The soak's view of its own process: descriptors, mappings, the bus's segments it holds, memory.
#pragma once

#include <cstddef>
#include <string>

namespace shmbus::soak {

/// What the supervisor process holds at one moment (read from /proc/self).
struct Snapshot {
  std::size_t fds = 0;        ///< open descriptors (/proc/self/fd, without the reading one)
  std::size_t maps = 0;       ///< mappings (lines of /proc/self/maps)
  std::size_t segMaps = 0;    ///< of which map the bus's segments (memfds: the windows', the routes')
  std::size_t segFds = 0;     ///< descriptors of the bus's segments (0 once each end has its own)
  std::size_t threads = 0;    ///< threads (/proc/self/task)
  std::size_t children = 0;   ///< child processes (/proc/self/task/*/children), zombies included
  std::size_t zombies = 0;    ///< of which have exited and are not reaped yet
  std::size_t rssKiB = 0;     ///< VmRSS
  std::size_t anonKiB = 0;    ///< RssAnon: the heap, stacks, the allocator's arenas
  std::size_t fileKiB = 0;    ///< RssFile: code and libraries
  std::size_t shmemKiB = 0;   ///< RssShmem: the touched pages of the windows' rings
};

/// Reads the snapshot of this process for bus `bus`.
Snapshot takeSnapshot(const std::string& bus);

}  // namespace shmbus::soak
