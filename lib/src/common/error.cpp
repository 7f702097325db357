#include "shmbus/error.hpp"

#include <fmt/format.h>

namespace shmbus {

const char* errorCodeName(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::Ok: return "Ok";
    case ErrorCode::Timeout: return "Timeout";
    case ErrorCode::NoTarget: return "NoTarget";
    case ErrorCode::NoHandler: return "NoHandler";
    case ErrorCode::TargetGone: return "TargetGone";
    case ErrorCode::HandlerError: return "HandlerError";
    case ErrorCode::Denied: return "Denied";
    case ErrorCode::BusClosed: return "BusClosed";
    case ErrorCode::Full: return "Full";
    case ErrorCode::InvalidMessage: return "InvalidMessage";
    case ErrorCode::TooLarge: return "TooLarge";
    case ErrorCode::Cancelled: return "Cancelled";
    case ErrorCode::Corrupt: return "Corrupt";
    case ErrorCode::SystemError: return "SystemError";
    case ErrorCode::InvalidArgument: return "InvalidArgument";
  }
  return "Unknown";
}

std::string Error::toString() const {
  std::string s = fmt::format("{}: {}", errorCodeName(code), message);
  if (code == ErrorCode::HandlerError && !remoteType.empty() && message.find(remoteMessage) == std::string::npos) {
    s += fmt::format(" [{}: {}]", remoteType, remoteMessage);
  }
  return s;
}

namespace detail {
void throwUsage(const char* cond, const char* file, int line, std::string_view msg) {
  throw UsageError(fmt::format("shmbus: precondition failed: {} ({}:{}): {}", cond, file, line, msg));
}
void throwInternal(const char* cond, const char* file, int line, std::string_view msg) {
  throw InternalError(fmt::format("shmbus: internal invariant failed: {} ({}:{}): {}", cond, file, line, msg));
}
const Error& okError() noexcept {
  static const Error ok{};
  return ok;
}
}  // namespace detail
}  // namespace shmbus
