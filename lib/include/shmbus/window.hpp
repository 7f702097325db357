// libshmbus — a window: a client process on the bus (docs/architecture.md).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "shmbus/channel.hpp"
#include "shmbus/error.hpp"
#include "shmbus/log.hpp"
#include "shmbus/message.hpp"
#include "shmbus/port.hpp"
#include "shmbus/validate.hpp"

namespace shmbus {

struct ContractSchema;  // shmbus/schema.hpp

/// How a window connects.
struct WindowOptions {
  std::string bus;         ///< bus name (NameKind::Bus); empty = $SHMBUS_BUS (set for spawned windows)
  /// Role to claim when connecting by path (NameKind::Role, shmbus/validate.hpp; "main" is
  /// refused by the supervisor with Denied); ignored for spawned windows.
  std::string role;
  std::string socketPath;  ///< empty = the bus's default socket (runtime dir)
  /// One-time invitation token from Supervisor::invite (its hex text), for a role that is not
  /// open for registration by path. Empty = none given: connect() then takes $SHMBUS_TOKEN when
  /// that is set (so a launcher can pass the token through the environment) and removes it from
  /// the environment (a token is good once; a child must not inherit a used one). Checked as 1..128
  /// hex digits (InvalidArgument). Ignored by fromSpawn(). Never logged nor put in an error.
  std::string token;
  std::uint32_t inboxBytes = 0;   ///< requested inbox ring capacity in bytes (0 = supervisor default)
  std::uint32_t outboxBytes = 0;  ///< requested outbox ring capacity in bytes (0 = supervisor default)
  /// Spin budget before parking on a futex, in ns. 0 = park at once.
  std::chrono::nanoseconds spin{std::chrono::microseconds(4)};
  /// Longest learned spin for a reply, in ns (docs/architecture.md §4, "Learned reply spin"). A
  /// thread blocked in Call::get() spins for its reply instead of parking when the channel's recent
  /// replies (on this window and its ports) mostly came within this cap: for up to twice their
  /// average, never more than the cap; a channel not known yet, and one call in 64 on a channel
  /// that earned no spin, spins for the cap once (a probe). Costs at most this much CPU per call,
  /// only while the caller waits anyway; an idle window still parks at once. Spinning longer than
  /// a wake-up costs (tens of µs) saves nothing: 50 µs (the default) suits this project's 2-vCPU
  /// machine. 0 = off: only `spin` applies. (The soak's window → main Timeouts once blamed on the
  /// spin were replies lost to a full inbox, fixed by the router's held outcomes, docs §5; with
  /// 64 windows on 2 vCPUs, idle and under compile load, 50 µs and 0 both end with no call
  /// unexplained.) Negative: InvalidArgument. Off by itself on a machine with one CPU.
  std::chrono::nanoseconds replySpinCap{std::chrono::microseconds(50)};
  /// Give up waiting for the supervisor's welcome after this long. Must be positive
  /// (InvalidArgument); longer than kMaxTimeout is clamped.
  std::chrono::milliseconds connectTimeout{5000};
  /// Ceiling of this window's log records (the sink is shmbus/log.hpp's).
  LogLevel logLevel = LogLevel::Warn;
};

/// One window. Created by connect() or fromSpawn(); closed by close() or destruction (the
/// supervisor then reports `window-closed` with reason "closed", as for a process that died; a
/// window disconnected for corrupting its rings gets "bad message: <what>").
///
/// Thread contract: every method may be called from any thread. Callbacks (on/once/handle/then)
/// run on the dispatch thread: the thread inside run()/poll(), the background thread of
/// startDispatchThread(), or a thread blocked in Call::get() while nobody else dispatches.
/// Process contract: one Window per connection; a forked child must not use its parent's Window.
class Window {
 public:
  /// Connects by socket path and claims `options.role`. Everything in `options` is checked before
  /// the socket is touched. Errors: InvalidArgument (bad bus or role name, bad ring sizes,
  /// connectTimeout not positive, a malformed token: the message states the rule), BusClosed (no
  /// supervisor), Denied (role not allowed or not open without an invitation; a token that is
  /// unknown, expired, already used or for another role; a uid the supervisor does not allow), Full (the bus is at its window cap, SupervisorOptions::maxWindows),
  /// Timeout (no welcome in time), SystemError.
  static Result<std::unique_ptr<Window>> connect(WindowOptions options);

  /// Connects over the pre-authenticated socket a Supervisor::spawn handed down ($SHMBUS_FD); the
  /// role is the one the supervisor gave. Errors: as connect(); InvalidArgument when this process
  /// was not started by Supervisor::spawn (see spawned()).
  static Result<std::unique_ptr<Window>> fromSpawn(WindowOptions options = {});

  /// True when this process was started by Supervisor::spawn.
  static bool spawned() noexcept;

  ~Window();
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;

  std::uint32_t id() const noexcept;          ///< window id given by the supervisor (> 0)
  const std::string& role() const noexcept;   ///< the role the supervisor gave this window
  const std::string& bus() const noexcept;    ///< the bus name

  /// One-way message to the main process (`Supervisor::on`). Built in place in the outbox.
  /// Errors: Full (outbox full; nothing written), TooLarge, BusClosed, InvalidArgument (bad
  /// channel name). Returns once written.
  Result<void> send(const Channel& channel, const BuildFn& build = {});

  /// One-way message to another window, routed by the supervisor (`Window::on` there).
  /// Routing failures (no such window, denied, a full inbox) come back later (onSendFailed).
  /// Errors: as send(); InvalidArgument for a bad role in `target`.
  Result<void> sendTo(const Target& target, const Channel& channel, const BuildFn& build = {});

  /// Request to the main process (`Supervisor::handle`). Never throws for bus errors: they come
  /// back through the Call (NoHandler, Timeout, HandlerError, BusClosed, Full, TooLarge, ...;
  /// InvalidArgument, at once, for a bad channel name or a negative CallOptions::timeout).
  Call invoke(const Channel& channel, const BuildFn& build = {}, CallOptions options = {});

  /// Request to another window by role or id, routed and timed by the supervisor. Errors as
  /// invoke(); InvalidArgument for a bad role in `target`.
  Call invokeIn(const Target& target, const Channel& channel, const BuildFn& build = {}, CallOptions options = {});

  /// Adds a listener for pushes and routed sends on `channel` (listeners accumulate), and for
  /// the bus events "window-opened" / "window-closed" (payload bus.capnp WindowEvent).
  Registration on(const Channel& channel, Listener listener);

  /// Like on(), but the listener removes itself before it runs the first time.
  Registration once(const Channel& channel, Listener listener);

  /// Listens for other windows that registered (typed form of on("window-opened")).
  Registration onWindowOpened(WindowEventListener listener);
  /// Listens for other windows that closed, died or were disconnected (typed form of
  /// on("window-closed")).
  Registration onWindowClosed(WindowEventListener listener);

  /// Hears about one-way messages of this window that were not delivered (send to main denied
  /// by policy; sendTo denied, to a role or id with no live window, or to a window whose inbox
  /// stayed full). Without a listener the window logs each at Warn: no failed send is silent.
  /// A send to main that simply has no listener there is not a failure (as with ipcMain).
  Registration onSendFailed(SendFailureListener listener);

  /// Announces a typed contract's schema to the supervisor (a Schema frame), once per contract
  /// and connection: later calls with the same interface return at once. Typed stubs call it
  /// when a typed handler or listener is registered or a typed client is first used, so that
  /// inspectors decode the contract's captured payloads without a schema file
  /// (docs/architecture.md §6). The supervisor checks the announcement, keeps it within
  /// kMaxSchemaBytesPerWindow / kMaxSchemaBytesPerBus and never routes by it; a refusal is in
  /// its log only. Errors: TooLarge (the announcement does not fit a ring record), Full (the
  /// outbox stayed full for 1 s), BusClosed; a failed announcement is not tried again.
  /// Thread contract: any thread; it does not dispatch.
  Result<void> announceSchema(const ContractSchema& contract);

  /// Handles calls on `channel` (Supervisor::invoke and routed invokeIn). The last registered
  /// handler wins; the returned Registration removes this one (the previous one does not return).
  /// The reply is built in a process-local arena and copied once into the outbox when the handler
  /// returns, so a handler may itself send and invoke (re-entrant dispatch).
  Registration handle(const Channel& channel, Handler handler);

  /// Handles calls on `channel` asynchronously: the handler gets a Responder and may reply later
  /// from any thread, so the dispatch thread is free at once (shmbus/coro.hpp builds co_await
  /// handlers on it). The last registered handler wins, as for handle().
  Registration handleAsync(const Channel& channel, AsyncHandler handler);

  /// Opens a port (docs/architecture.md §16) on `channel` to another window (by role or id): the
  /// supervisor checks the policy as for an invoke of `channel` by this window that the target
  /// must be allowed to handle, creates the port's segment and hands it to both windows; the
  /// target's onPort listener for `channel` takes it. Blocks until then (on the dispatch thread it
  /// dispatches meanwhile, as Call::get()). Errors: Denied (policy), NoTarget (no live window with
  /// that role or id; the main process is not a window), NoHandler (the target has no onPort
  /// listener for `channel`), HandlerError (that listener threw), Timeout
  /// (PortOptions::timeout), Full (64 ports per window, or a full inbox), InvalidArgument
  /// (bad names or options, a port to itself), BusClosed, SystemError.
  Result<std::shared_ptr<Port>> openPort(const Target& target, const Channel& channel, PortOptions options = {});

  /// Accepts the ports other windows open to this one on `channel`: `listener` gets each one on
  /// the dispatch thread (the port is already accepted; the opener's messages wait in its ring
  /// until the port's start() or poll()). The last registered listener wins; resetting the
  /// Registration stops accepting (openers then get NoHandler).
  Registration onPort(const Channel& channel, PortListener listener);

  /// Dispatches until close() or the supervisor's death (then returns).
  void run();

  /// Dispatches what is ready, waiting up to `timeout` for the first message (0: do not wait;
  /// clamped to kMaxTimeout). While another thread dispatches (startDispatchThread(), run(),
  /// another poll()), it waits up to `timeout` for that thread to stop and returns without
  /// dispatching if it does not. Errors: BusClosed; InvalidArgument (negative timeout).
  Result<void> poll(std::chrono::milliseconds timeout);

  /// Starts a background thread that runs run(). Stops at close(). Returns once that thread
  /// dispatches: from then on callbacks run on it only. Not from inside a callback.
  void startDispatchThread();

  /// What this window's outgoing blob arena holds now: its sends, invokes and replies larger than
  /// its outbox ring travel there (SupervisorOptions::windowBlobBytes, docs/architecture.md §17)
  /// until the supervisor is done with them (main's listener or handler returned; a routed one
  /// was copied into the target's arena). Releases are reclaimed first. A direct route's blobs
  /// are in its port's arenas, not counted here. All zero when the supervisor gave the window no
  /// arenas. For tests and diagnostics. Thread contract: any thread (takes the send lock).
  BlobStats blobStats() const;

  /// Closes the connection: pending calls fail with BusClosed, run() returns. Idempotent.
  void close();

  /// True after close() or once the supervisor is gone.
  bool closed() const noexcept;

  /// Diagnostics: the spin, in ns, that a call on `channel` from this window would now get
  /// before it parks (WindowOptions::replySpinCap; 0 = it parks after the ordinary `spin`).
  /// Learned from the replies read so far; a port's calls learn on the port. Any thread.
  std::chrono::nanoseconds learnedReplySpin(const Channel& channel) const noexcept;

  struct Impl;

 private:
  explicit Window(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
