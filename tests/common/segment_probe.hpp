// What a process holds of a bus's segments, read from /proc: the tests' leak checks and the way a
// hostile test window finds its own mapping. Bus segments are sealed memfds named
// `shmbus.<bus>.<id>.<nonce>` (segment/segment.hpp), shown in /proc as `/memfd:<name> (deleted)`;
// a memfd's memory goes with its last mapping and descriptor, so a process holding none of a
// bus's has leaked none.
#pragma once

#include <dirent.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

namespace shmbus::test {

/// The /proc spelling of `bus`'s segment names, up to the window or port id (`""`: any bus).
inline std::string segmentTag(const std::string& bus) {
  return bus.empty() ? std::string("/memfd:shmbus.") : "/memfd:shmbus." + bus + ".";
}

/// One mapping of a bus segment: [from, to) in the process's address space, and the /proc path.
struct SegmentMapping {
  std::uintptr_t from = 0, to = 0;
  std::string path;
};

/// The mappings of `bus`'s segments (any bus's when empty) in process `pid` (/proc/<pid>/maps).
inline std::vector<SegmentMapping> segmentMappings(const std::string& bus = "", pid_t pid = ::getpid()) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  const std::string tag = segmentTag(bus);
  std::vector<SegmentMapping> out;
  for (std::string line; std::getline(maps, line);) {
    const auto at = line.find(tag);
    if (at == std::string::npos) continue;
    const auto dash = line.find('-'), space = line.find(' ');
    out.push_back({std::stoull(line.substr(0, dash), nullptr, 16),
                   std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16), line.substr(at)});
  }
  return out;
}

/// Where this process maps the segment of window or port `id` on `bus`; 0 when it does not.
inline std::uintptr_t segmentBase(const std::string& bus, std::uint64_t id) {
  const std::string tag = segmentTag(bus) + std::to_string(id) + ".";
  for (const auto& m : segmentMappings(bus)) {
    if (m.path.starts_with(tag)) return m.from;
  }
  return 0;
}

/// How much of `bus`'s segments process `pid` holds.
struct SegmentsHeld {
  std::size_t mappings = 0;     ///< lines of /proc/<pid>/maps
  std::size_t descriptors = 0;  ///< entries of /proc/<pid>/fd
  bool operator==(const SegmentsHeld&) const = default;
};

/// For doctest's messages: "{mappings M, descriptors D}".
inline std::ostream& operator<<(std::ostream& os, const SegmentsHeld& h) {
  return os << "{mappings " << h.mappings << ", descriptors " << h.descriptors << "}";
}

/// What process `pid` (this one by default) holds of `bus`'s segments: its mappings of them and
/// its descriptors of them (a descriptor's /proc/<pid>/fd link names the memfd). Reads /proc;
/// another process's needs the same uid (or root). Not atomic: a process mapping or closing
/// meanwhile may be counted before or after.
inline SegmentsHeld segmentsHeld(const std::string& bus, pid_t pid = ::getpid()) {
  SegmentsHeld h;
  h.mappings = segmentMappings(bus, pid).size();
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  const std::string tag = segmentTag(bus);
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[512];
      const ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
      if (n > 0 && std::string(target, static_cast<std::size_t>(n)).starts_with(tag)) ++h.descriptors;
    }
    ::closedir(d);
  }
  return h;
}

}  // namespace shmbus::test
