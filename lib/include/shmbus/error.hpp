// libshmbus — error codes and Result<T>.
//
// Expected failures (a timeout, no target, a full ring, a denied call) are values, never
// exceptions: every fallible operation returns `Result<T>` carrying either a `T` or one `Error`.
// Bugs in the caller throw `shmbus::UsageError` (SHMBUS_REQUIRE); bugs inside the library throw
// `shmbus::InternalError` (SHMBUS_ASSERT). See docs/architecture.md §3.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace shmbus {

/// The closed set of failure kinds a bus operation can report (docs/architecture.md §3).
/// The numeric values travel on the wire (frame payloads); never renumber them.
enum class ErrorCode : std::uint16_t {
  Ok = 0,
  Timeout = 1,         ///< the deadline passed before a reply arrived
  NoTarget = 2,        ///< no live window with that role or id (fails fast)
  NoHandler = 3,       ///< the target has no handler for the channel (fails fast)
  TargetGone = 4,      ///< the target closed or died before replying
  HandlerError = 5,    ///< the remote handler threw; remote type, message and stack attached
  Denied = 6,          ///< refused by policy; Supervisor::create: the bus already has a live supervisor
  BusClosed = 7,       ///< the supervisor is gone, or this endpoint was closed
  Full = 8,            ///< backpressure: the ring has no room for the record now; or the bus is at its
                       ///< window cap (Window::connect, Supervisor::spawn: SupervisorOptions::maxWindows)
  InvalidMessage = 9,  ///< a payload failed validation (malformed, or a contract mismatch)
  TooLarge = 10,       ///< the record exceeds the ring's maximum record size
  Cancelled = 11,      ///< the caller cancelled the call
  Corrupt = 12,        ///< a shared ring's indices or record headers are inconsistent
  SystemError = 13,    ///< an operating-system call failed (errno text in the message)
  InvalidArgument = 14,  ///< an argument the caller gave is not valid: a bus, role or channel name
                         ///< (shmbus/validate.hpp: the message states the rule), a negative timeout,
                         ///< ring sizes, Window::fromSpawn in a process that Supervisor::spawn did not start
};

/// The highest ErrorCode value; a code read from a peer above it (or 0) is not valid.
inline constexpr ErrorCode kLastErrorCode = ErrorCode::InvalidArgument;

/// Stable upper-camel name of a code, e.g. "NoTarget". Never returns null.
const char* errorCodeName(ErrorCode code) noexcept;

/// One failure: a code, a human-readable message naming the channel and target, and for
/// `HandlerError` the remote exception's type, message and stack text.
/// Thread contract: a plain value type; copy freely between threads.
struct Error {
  ErrorCode code = ErrorCode::Ok;  ///< what failed; Ok for the error() of a successful Result
  std::string message;        ///< e.g. "invoke 'GetDashboardData' to role 'dashboard' timed out after 50 ms"
  std::string remoteType;     ///< HandlerError only: the remote exception's type name
  std::string remoteMessage;  ///< HandlerError only: the remote exception's what()
  std::string remoteStack;    ///< HandlerError only: the remote stack text, if the handler gave one

  /// "<CodeName>: <message>" (plus the remote type and message for HandlerError).
  std::string toString() const;
};

/// Either a value or an Error. `ok()` tells which; `value()` on an error throws `UsageError`
/// (reading a value that is not there is a bug in the caller).
/// Thread contract: a plain value type.
template <typename T>
class [[nodiscard]] Result {
 public:
  /// A successful result holding `value` (implicit: `return value;`).
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  /// A failed result (implicit: `return makeError(...);`).
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT
  /// Constructs the value in place from `args` (no temporary T to copy on a hot path).
  template <typename... Args>
    requires std::is_constructible_v<T, Args&&...>
  explicit Result(std::in_place_t, Args&&... args) : v_(std::in_place_index<0>, std::forward<Args>(args)...) {}
  /// Constructs an aggregate value from `args` by brace initialisation (then moves it in): clang
  /// before 16 has no parenthesised aggregate initialisation (P0960), which the overload above needs.
  template <typename... Args>
    requires(!std::is_constructible_v<T, Args&&...>)
  explicit Result(std::in_place_t, Args&&... args) : v_(std::in_place_index<0>, T{std::forward<Args>(args)...}) {}

  /// True when the result holds a value.
  bool ok() const noexcept { return v_.index() == 0; }
  /// ok(): `if (r) use(*r);`.
  explicit operator bool() const noexcept { return ok(); }

  /// The value. Throws UsageError when the result is an error.
  T& value() &;
  /// The value. Throws UsageError when the result is an error.
  const T& value() const&;
  /// The value, moved out. Throws UsageError when the result is an error.
  T&& value() &&;
  /// Member access to the value (value()'s precondition).
  T* operator->() { return &value(); }
  /// Member access to the value (value()'s precondition).
  const T* operator->() const { return &value(); }
  /// The value (value()'s precondition).
  T& operator*() & { return value(); }

  /// The error; for a successful result, an Error with code Ok.
  const Error& error() const noexcept;
  /// The error's code; Ok for a successful result.
  ErrorCode code() const noexcept { return ok() ? ErrorCode::Ok : std::get<1>(v_).code; }

 private:
  std::variant<T, Error> v_;
};

/// Result of an operation with no value.
template <>
class [[nodiscard]] Result<void> {
 public:
  /// A success.
  Result() = default;
  /// A failure (implicit: `return makeError(...);`).
  Result(Error error) : error_(std::move(error)) {}  // NOLINT
  /// True on success.
  bool ok() const noexcept { return !error_.has_value(); }
  /// ok().
  explicit operator bool() const noexcept { return ok(); }
  /// The error; for a success, an Error with code Ok.
  const Error& error() const noexcept;
  /// The error's code; Ok for a success.
  ErrorCode code() const noexcept { return error_ ? error_->code : ErrorCode::Ok; }

 private:
  std::optional<Error> error_;
};

/// Thrown by SHMBUS_REQUIRE: the caller broke an API precondition (a bug in the caller).
class UsageError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Thrown by SHMBUS_ASSERT: an internal invariant failed (a bug in libshmbus).
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Builds an Error from a code and a message.
inline Error makeError(ErrorCode code, std::string message) {
  Error e;
  e.code = code;
  e.message = std::move(message);
  return e;
}

namespace detail {
[[noreturn]] void throwUsage(const char* cond, const char* file, int line, std::string_view msg);
[[noreturn]] void throwInternal(const char* cond, const char* file, int line, std::string_view msg);
const Error& okError() noexcept;

/// `e` with "<what>: " in front of its message (built only on the error path).
inline Error inContext(Error e, const std::string& what) {
  e.message = what + ": " + e.message;
  return e;
}
}  // namespace detail

template <typename T>
T& Result<T>::value() & {
  if (!ok()) detail::throwUsage("ok()", __FILE__, __LINE__, std::get<1>(v_).toString());
  return std::get<0>(v_);
}
template <typename T>
const T& Result<T>::value() const& {
  if (!ok()) detail::throwUsage("ok()", __FILE__, __LINE__, std::get<1>(v_).toString());
  return std::get<0>(v_);
}
template <typename T>
T&& Result<T>::value() && {
  if (!ok()) detail::throwUsage("ok()", __FILE__, __LINE__, std::get<1>(v_).toString());
  return std::get<0>(std::move(v_));
}
template <typename T>
const Error& Result<T>::error() const noexcept {
  return ok() ? detail::okError() : std::get<1>(v_);
}
inline const Error& Result<void>::error() const noexcept {
  return error_ ? *error_ : detail::okError();
}

}  // namespace shmbus

/// Precondition on the caller's input; throws shmbus::UsageError naming the condition.
#define SHMBUS_REQUIRE(cond, msg) \
  do { if (!(cond)) ::shmbus::detail::throwUsage(#cond, __FILE__, __LINE__, (msg)); } while (0)
/// Internal invariant; throws shmbus::InternalError naming the condition.
#define SHMBUS_ASSERT(cond, msg) \
  do { if (!(cond)) ::shmbus::detail::throwInternal(#cond, __FILE__, __LINE__, (msg)); } while (0)
