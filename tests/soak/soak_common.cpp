// The soak's shared helpers: names of operations and codes, what churn explains, the snapshot.
#include <dirent.h>

#include <fstream>
#include <iterator>
#include <sstream>

#include "soak.hpp"
#include "soak_probe.hpp"
#include "../common/segment_probe.hpp"
#include "test.capnp.h"

namespace shmbus::soak {

BuildFn text(std::string s) {
  return [s = std::move(s)](Builder& b) { b.initRoot<test::TestMessage>().setText(s); };
}

std::string textOf(const Message& m) {
  return m.empty() ? std::string() : std::string(m.root<test::TestMessage>().getText());
}

std::string codeName(unsigned code) {
  return code == kWrongReply ? "WrongReply" : errorCodeName(static_cast<ErrorCode>(code));
}

const char* opName(Op op) {
  switch (op) {
    case Op::RoutedCall: return "window→window invokeIn";
    case Op::RoutedSend: return "window→window sendTo";
    case Op::MainCall: return "window→main invoke";
    case Op::SupCall: return "main→window invoke";
    case Op::Broadcast: return "main broadcast (per window)";
    case Op::Count: break;
  }
  return "?";
}

bool expected(Op op, unsigned code) {
  const auto c = static_cast<ErrorCode>(code);
  if (c == ErrorCode::Ok) return true;
  if (op == Op::RoutedCall || op == Op::SupCall) {
    return c == ErrorCode::TargetGone || c == ErrorCode::NoTarget || c == ErrorCode::NoHandler || c == ErrorCode::Timeout;
  }
  // A send the supervisor sent back: every window of the role was gone, or the target closed.
  if (op == Op::RoutedSend) return c == ErrorCode::NoTarget || c == ErrorCode::BusClosed;
  return false;
}

namespace {

// The state letter of process `pid` (/proc/PID/stat, after the command name), or '?'.
char processState(const std::string& pid) {
  std::ifstream f("/proc/" + pid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : '?';
}

std::size_t countEntries(const std::string& dir) {
  std::size_t n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") ++n;
    }
    ::closedir(d);
  }
  return n;
}

}  // namespace

Snapshot takeSnapshot(const std::string& bus) {
  Snapshot s;
  s.fds = countEntries("/proc/self/fd") - 1;  // the directory stream's own descriptor
  s.threads = countEntries("/proc/self/task");
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream children(std::string("/proc/self/task/") + e->d_name + "/children");
      for (std::string pid; children >> pid;) {
        ++s.children;
        s.zombies += processState(pid) == 'Z';
      }
    }
    ::closedir(d);
  }
  const test::SegmentsHeld held = test::segmentsHeld(bus);
  s.segMaps = held.mappings;
  s.segFds = held.descriptors;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) ++s.maps;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    std::istringstream in(line);
    std::string key;
    std::size_t kib = 0;
    in >> key >> kib;
    if (key == "VmRSS:") s.rssKiB = kib;
    if (key == "RssAnon:") s.anonKiB = kib;
    if (key == "RssFile:") s.fileKiB = kib;
    if (key == "RssShmem:") s.shmemKiB = kib;
  }
  return s;
}

}  // namespace shmbus::soak
