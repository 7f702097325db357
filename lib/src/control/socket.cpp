#include "control/socket.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

#include "wait/wait.hpp"
#include "common/errno_error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace shmbus::detail {

namespace {

Result<sockaddr_un> makeAddr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) {
    return makeError(ErrorCode::SystemError, fmt::format("socket path '{}' is too long", path));
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}
}  // namespace

Result<std::string> runtimeDir() {
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0') {
    struct stat st {};
    if (::stat(x, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::getuid()) return std::string(x);
  }
  std::string dir = fmt::format("/tmp/shmbus-{}", ::getuid());
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return errnoError("mkdir " + dir);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return errnoError("stat " + dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::getuid() || (st.st_mode & 077) != 0) {
    return makeError(ErrorCode::SystemError,
                     fmt::format("{} must be a directory owned by uid {} with mode 0700", dir, ::getuid()));
  }
  return dir;
}

Result<std::string> socketPath(const std::string& bus) {
  auto dir = runtimeDir();
  if (!dir) return dir.error();
  return fmt::format("{}/shmbus-{}.sock", *dir, bus);
}

Result<Fd> listenSeqpacket(const std::string& path) {
  auto addr = makeAddr(path);
  if (!addr) return addr.error();
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return errnoError("socket");
  // No unlink here: a file at `path` may be a live supervisor's socket. Only the holder of the
  // path's BusLock removes a stale one (removeStaleSocket) before calling this.
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) return errnoError("bind " + path);
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 128) != 0) return errnoError("listen " + path);
  return fd;
}

Result<std::optional<PeerCred>> probeListener(const std::string& path) {
  auto addr = makeAddr(path);
  if (!addr) return addr.error();
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return errnoError("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) return std::optional<PeerCred>();
    if (errno == EAGAIN) return std::optional<PeerCred>(PeerCred{0, 0});  // listening, backlog full
    return errnoError("connect " + path);
  }
  // On the connecting side SO_PEERCRED names the process that called listen().
  auto cred = peerCred(fd.get());
  if (!cred) return cred.error();
  return std::optional<PeerCred>(*cred);
}

Result<Fd> connectSeqpacket(const std::string& path) {
  auto addr = makeAddr(path);
  if (!addr) return addr.error();
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return errnoError("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return makeError(ErrorCode::BusClosed, fmt::format("no supervisor listens on {}", path));
    }
    return errnoError("connect " + path);
  }
  return fd;
}

Result<std::pair<Fd, Fd>> seqpacketPair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return errnoError("socketpair");
  return std::pair<Fd, Fd>{Fd(sv[0]), Fd(sv[1])};
}

Result<PeerCred> peerCred(int fd) {
  ucred c{};
  socklen_t len = sizeof c;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0) return errnoError("SO_PEERCRED");
  return PeerCred{c.pid, c.uid};
}

Result<void> sendPacket(int fd, const void* data, std::size_t bytes, const std::vector<int>& fds) {
  iovec iov{const_cast<void*>(data), bytes};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 8)];
  if (!fds.empty()) {
    SHMBUS_REQUIRE(fds.size() <= 8, "at most 8 descriptors per packet");
    m.msg_control = ctrl;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    const ssize_t n = ::sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n >= 0) return {};
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) {
      return makeError(ErrorCode::BusClosed, "control socket peer has gone");
    }
    return errnoError("sendmsg");
  }
}

Result<Packet> recvPacket(int fd) {
  Packet p;
  p.bytes.resize(64 * 1024);
  iovec iov{p.bytes.data(), p.bytes.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 8)];
  m.msg_control = ctrl;
  m.msg_controllen = sizeof ctrl;
  ssize_t n;
  do {
    n = ::recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return makeError(ErrorCode::Full, "no packet");
    if (errno == ECONNRESET) {
      p.hangup = true;
      p.bytes.clear();
      return p;
    }
    return errnoError("recvmsg");
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
        p.fds.emplace_back(f);
      }
    }
  }
  if (n == 0) p.hangup = true;
  p.bytes.resize(static_cast<std::size_t>(n));
  return p;
}

Result<bool> waitReadable(int fd, std::int64_t deadlineNs) {
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    const std::int64_t leftMs = std::max<std::int64_t>(0, (deadlineNs - monotonicNowNs() + 999'999) / 1'000'000);
    const int pr = ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(leftMs, 1 << 30)));
    if (pr > 0) return true;
    if (pr == 0) return false;
    if (errno != EINTR) return errnoError("poll");
  }
}

}  // namespace shmbus::detail
