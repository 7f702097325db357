// The D-Bus peer of bus_bench (issue 9, item 8): a private dbus-daemon that the benchmark starts
// and stops itself, and sd-bus (libsystemd) clients of it. This is what an application on the
// desktop bus pays for the same calls and one-way messages: a method call client → daemon → server
// and back, and signals client → daemon → subscriber.
//
// Every process here uses its own sd_bus connection, opened after the fork (sd-bus refuses a
// connection inherited through fork). Names on the private bus:
//   service org.shmbus.Bench, object /org/shmbus/Bench, interface org.shmbus.Bench,
//   method Echo(ay) -> ay, signal Tick(ay) (the first 8 bytes hold a sequence number from 1).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench_support.hpp"
#include "shmbus/error.hpp"

namespace shmbus::bench::dbus {

inline constexpr const char* kService = "org.shmbus.Bench";
inline constexpr const char* kObject = "/org/shmbus/Bench";
inline constexpr const char* kInterface = "org.shmbus.Bench";
inline constexpr std::uint64_t kCallTimeoutUs = 5'000'000;  ///< as our default call timeout

/// A SystemError naming the sd-bus function that failed and the errno text of `r` (< 0).
inline Error sdError(const char* what, int r) {
  return makeError(ErrorCode::SystemError, fmt::format("{}: {}", what, std::strerror(-r)));
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A private `dbus-daemon --session` listening on a socket in a fresh directory under /tmp, run
/// as a child process of the benchmark. It is the router of every D-Bus benchmark, so it is left
/// unpinned (see bus_bench.cpp's pinning rule).
///
/// Lifetime: stopped by its pid in the destructor (SIGTERM, SIGKILL after 2 s, then reaped, and
/// its directory removed), so every return path of a benchmark stops it. If the benchmark process
/// dies instead (watchdog, crash), PR_SET_PDEATHSIG sends the daemon SIGTERM.
/// Process contract: create and destroy in the benchmark process (the thread that started it).
class Daemon {
 public:
  /// Forks and execs `dbus-daemon --session --nofork --address=unix:path=<dir>/bus
  /// --print-address=<pipe>` (stdin and stdout on /dev/null, stderr into <dir>/stderr: as root
  /// in a container it warns on every start that it cannot raise its fd limit) and waits until it
  /// prints its address, which it does once it listens. Errors: SystemError when the directory,
  /// pipe or fork fails, or when the daemon exits without printing an address (the message then
  /// holds its stderr; not installed: Debian package `dbus-daemon`).
  static Result<std::unique_ptr<Daemon>> start() {
    char dir[] = "/tmp/shmbus-bench-dbus-XXXXXX";
    if (::mkdtemp(dir) == nullptr) {
      return makeError(ErrorCode::SystemError, fmt::format("mkdtemp: {}", std::strerror(errno)));
    }
    std::unique_ptr<Daemon> d(new Daemon);
    d->dir_ = dir;
    d->socket_ = d->dir_ + "/bus";
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      return makeError(ErrorCode::SystemError, fmt::format("pipe2: {}", std::strerror(errno)));
    }
    // argv is built before the fork: the child only makes async-signal-safe calls.
    const std::string log = d->dir_ + "/stderr";
    std::string address = "--address=unix:path=" + d->socket_;
    std::string print = fmt::format("--print-address={}", fds[1]);
    std::vector<char*> argv = {const_cast<char*>("dbus-daemon"), const_cast<char*>("--session"),
                               const_cast<char*>("--nofork"),    const_cast<char*>("--nopidfile"),
                               const_cast<char*>("--nosyslog"),  address.data(),
                               print.data(),                     nullptr};
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      ::close(fds[0]);
      ::close(fds[1]);
      return makeError(ErrorCode::SystemError, fmt::format("fork: {}", std::strerror(errno)));
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // survives execve (dbus-daemon is not set-uid)
      if (::getppid() != parent) ::_exit(127);
      ::alarm(0);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      unpinFromCpus();
      const int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, 0);
        ::dup2(null, 1);  // our stdout may be Google Benchmark's JSON
      }
      const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (err >= 0) ::dup2(err, 2);
      ::fcntl(fds[1], F_SETFD, 0);  // the one descriptor the daemon keeps across exec
      ::execvp(argv[0], argv.data());
      const char msg[] = "bus_bench: cannot exec dbus-daemon\n";
      [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
    d->pid_ = pid;
    ::close(fds[1]);
    std::string line;
    char buf[256];
    for (;;) {
      const ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      line.append(buf, static_cast<std::size_t>(n));
      if (line.find('\n') != std::string::npos) break;
    }
    ::close(fds[0]);
    const auto eol = line.find('\n');
    if (eol == std::string::npos || eol == 0) {
      std::string why;
      if (FILE* f = std::fopen(log.c_str(), "r")) {
        char text[512];
        why.resize(std::fread(text, 1, sizeof text, f));
        std::memcpy(why.data(), text, why.size());
        std::fclose(f);
      }
      return makeError(ErrorCode::SystemError,
                       fmt::format("dbus-daemon exited before it printed its address (is the Debian package "
                                   "dbus-daemon installed?): {}", why.substr(0, why.find_last_not_of("\n") + 1)));
    }
    d->address_ = line.substr(0, eol);
    return Result<std::unique_ptr<Daemon>>(std::move(d));
  }

  ~Daemon() { stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// The address the daemon printed ("unix:path=...,guid=..."), for sd_bus_set_address.
  const std::string& address() const noexcept { return address_; }
  /// The daemon's process id (-1 once stopped).
  pid_t pid() const noexcept { return pid_; }

  /// Stops the daemon by its pid: SIGTERM, then SIGKILL if it has not exited within 2 s (waited
  /// for on a pidfd, not by sleeping), then reaps it and removes its socket directory.
  /// Idempotent; never fails (a daemon that is already gone is just reaped).
  void stop() noexcept {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
      bool exited = false;
      if (pidfd >= 0) {
        pollfd p{pidfd, POLLIN, 0};
        int r;
        while ((r = ::poll(&p, 1, 2000)) < 0 && errno == EINTR) {
        }
        exited = r > 0;
        ::close(pidfd);
      }
      if (!exited) ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
    if (!socket_.empty()) ::unlink(socket_.c_str());
    if (!dir_.empty()) {
      ::unlink((dir_ + "/stderr").c_str());
      ::rmdir(dir_.c_str());
    }
    socket_.clear();
    dir_.clear();
  }

 private:
  Daemon() = default;
  pid_t pid_ = -1;
  std::string dir_, socket_, address_;
};

// ---------------------------------------------------------------------------------------------
// Connections

/// Closes a connection after flushing what it still has queued.
struct BusClose {
  void operator()(sd_bus* b) const noexcept { sd_bus_flush_close_unref(b); }
};
using BusPtr = std::unique_ptr<sd_bus, BusClose>;

/// Owns one sd_bus_message reference.
struct MessageUnref {
  void operator()(sd_bus_message* m) const noexcept { sd_bus_message_unref(m); }
};
using MessagePtr = std::unique_ptr<sd_bus_message, MessageUnref>;

/// Opens a connection to the daemon at `address` as a bus client: sd_bus_new,
/// sd_bus_set_address, sd_bus_set_bus_client(1), sd_bus_start; returns once the daemon answered
/// Hello (the connection has its unique name), so no setup cost lands in a timed loop.
/// Errors: SystemError naming the sd-bus call that failed. Thread contract: the connection is
/// used by the calling thread of the calling process only (sd-bus rule).
inline Result<BusPtr> connect(const std::string& address) {
  sd_bus* raw = nullptr;
  int r = sd_bus_new(&raw);
  if (r < 0) return sdError("sd_bus_new", r);
  BusPtr bus(raw);
  if ((r = sd_bus_set_address(raw, address.c_str())) < 0) return sdError("sd_bus_set_address", r);
  if ((r = sd_bus_set_bus_client(raw, 1)) < 0) return sdError("sd_bus_set_bus_client", r);
  if ((r = sd_bus_start(raw)) < 0) return sdError("sd_bus_start", r);
  const char* unique = nullptr;
  if ((r = sd_bus_get_unique_name(raw, &unique)) < 0) return sdError("sd_bus_get_unique_name (Hello)", r);
  return Result<BusPtr>(std::move(bus));
}

/// Dispatches on `bus` until `done()` is true: sd_bus_process while it makes progress, else
/// sd_bus_wait (poll on the socket). Throws std::runtime_error when the connection fails (the
/// daemon went away); the Partner then exits with status 2.
template <typename Done>
void dispatchUntil(sd_bus* bus, Done&& done) {
  while (!done()) {
    int r = sd_bus_process(bus, nullptr);
    if (r < 0) throw std::runtime_error(sdError("sd_bus_process", r).message);
    if (r > 0) continue;
    r = sd_bus_wait(bus, UINT64_MAX);
    if (r < 0 && r != -EINTR) throw std::runtime_error(sdError("sd_bus_wait", r).message);
  }
}

// ---------------------------------------------------------------------------------------------
// Server side (partner processes)

/// The Echo method: replies with the request's byte array. Returns a negative errno when the
/// request is not an `ay` or the reply cannot be sent (sd-bus then replies with an error).
inline int onEcho(sd_bus_message* m, void*, sd_bus_error*) {
  const void* data = nullptr;
  std::size_t size = 0;
  int r = sd_bus_message_read_array(m, 'y', &data, &size);
  if (r < 0) return r;
  sd_bus_message* raw = nullptr;
  if ((r = sd_bus_message_new_method_return(m, &raw)) < 0) return r;
  MessagePtr reply(raw);
  if ((r = sd_bus_message_append_array(raw, 'y', data, size)) < 0) return r;
  if ((r = sd_bus_send(nullptr, raw, nullptr)) < 0) return r;
  return 1;
}

inline const sd_bus_vtable kEchoVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Echo", "ay", "ay", onEcho, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

/// Partner body of Invoke/dbus_method: connects to `address`, exports Echo on kObject, owns
/// kService, notifies `ev` (value 1: it answers from now on) and serves until it is killed or the
/// daemon goes away. Throws std::runtime_error on any sd-bus failure before or while serving.
[[noreturn]] inline void serveEcho(const std::string& address, const EventPipe& ev) {
  auto bus = connect(address);
  if (!bus) throw std::runtime_error(bus.error().message);
  int r = sd_bus_add_object_vtable(bus->get(), nullptr, kObject, kInterface, kEchoVtable, nullptr);
  if (r < 0) throw std::runtime_error(sdError("sd_bus_add_object_vtable", r).message);
  if ((r = sd_bus_request_name(bus->get(), kService, 0)) < 0) {
    throw std::runtime_error(sdError("sd_bus_request_name", r).message);
  }
  ev.notify(1);
  dispatchUntil(bus->get(), [] { return false; });
  ::_exit(0);  // not reached: dispatchUntil returns only by throwing
}

/// What the signal subscriber counts.
struct TickCount {
  std::uint64_t expected = 0;  ///< signals to receive (the benchmark's iteration count)
  std::size_t bytes = 0;       ///< payload size of each signal
  std::uint64_t received = 0;
  std::uint64_t errors = 0;    ///< signals of the wrong size or out of sequence (lost or reordered)
};

/// Match callback of the Tick signal (`userdata` is the TickCount): checks the payload size and
/// that its sequence number is the next one. Returns 0 (other matches may see the signal too).
inline int onTick(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto& c = *static_cast<TickCount*>(userdata);
  const void* data = nullptr;
  std::size_t size = 0;
  std::uint64_t seq = 0;
  if (sd_bus_message_read_array(m, 'y', &data, &size) < 0 || size != c.bytes || size < sizeof seq) {
    ++c.errors;
  } else {
    std::memcpy(&seq, data, sizeof seq);
    c.errors += seq != c.received + 1;
  }
  ++c.received;
  return 0;
}

/// Partner body of Stream/dbus_signal: connects to `address`, subscribes to Tick (the match is
/// installed when sd_bus_match_signal returns), notifies `ev` (value 1: ready), receives `n`
/// signals of `bytes` bytes, then notifies `ev` again with the number of bad ones (0 = none lost,
/// reordered or of the wrong size). Throws std::runtime_error on any sd-bus failure.
inline void countTicks(const std::string& address, std::uint64_t n, std::size_t bytes, const EventPipe& ev) {
  auto bus = connect(address);
  if (!bus) throw std::runtime_error(bus.error().message);
  TickCount count{n, bytes};
  sd_bus_slot* slot = nullptr;
  const int r = sd_bus_match_signal(bus->get(), &slot, nullptr, kObject, kInterface, "Tick", onTick, &count);
  if (r < 0) throw std::runtime_error(sdError("sd_bus_match_signal", r).message);
  ev.notify(1);
  dispatchUntil(bus->get(), [&] { return count.received >= count.expected; });
  ev.notify(count.errors);
  sd_bus_slot_unref(slot);
}

// ---------------------------------------------------------------------------------------------
// Client side (the benchmark process)

/// One Echo round trip of `bytes` bytes through the daemon (blocking sd_bus_call, 5 s timeout).
/// Returns the size of the array in the reply, or a negative errno (a D-Bus error reply becomes
/// -EIO). Thread contract: the thread that owns `bus`.
inline long callEcho(sd_bus* bus, const std::uint8_t* data, std::size_t bytes) {
  sd_bus_message* raw = nullptr;
  int r = sd_bus_message_new_method_call(bus, &raw, kService, kObject, kInterface, "Echo");
  if (r < 0) return r;
  MessagePtr call(raw);
  if ((r = sd_bus_message_append_array(raw, 'y', data, bytes)) < 0) return r;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* replyRaw = nullptr;
  r = sd_bus_call(bus, raw, kCallTimeoutUs, &error, &replyRaw);
  sd_bus_error_free(&error);
  if (r < 0) return r;
  MessagePtr reply(replyRaw);
  const void* out = nullptr;
  std::size_t size = 0;
  if ((r = sd_bus_message_read_array(replyRaw, 'y', &out, &size)) < 0) return r;
  return static_cast<long>(size);
}

/// Queues one Tick signal carrying `bytes` bytes on `bus` (sd_bus_send writes it at once when the
/// connection's queue is empty and the socket takes it). When it stays queued (the socket is full,
/// the daemon is behind) this flushes, blocking until the queue is written, and adds one to
/// `*flushes`: the sender waits as ours retries on Full. Returns 0 or a negative errno.
/// Thread contract: the thread that owns `bus`.
inline int emitTick(sd_bus* bus, const std::uint8_t* data, std::size_t bytes, std::uint64_t* flushes) {
  sd_bus_message* raw = nullptr;
  int r = sd_bus_message_new_signal(bus, &raw, kObject, kInterface, "Tick");
  if (r < 0) return r;
  MessagePtr signal(raw);
  if ((r = sd_bus_message_append_array(raw, 'y', data, bytes)) < 0) return r;
  if ((r = sd_bus_send(bus, raw, nullptr)) < 0) return r;
  r = sd_bus_get_events(bus);
  if (r < 0) return r;
  if (r & POLLOUT) {  // something is still queued in the process
    ++*flushes;
    if ((r = sd_bus_flush(bus)) < 0) return r;
  }
  return 0;
}

}  // namespace shmbus::bench::dbus
