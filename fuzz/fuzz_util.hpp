// What the libFuzzer harnesses of fuzz/ share (docs/architecture.md §8, "Test suites"). Every
// harness defines LLVMFuzzerTestOneInput; clang's -fsanitize=fuzzer gives it libFuzzer's main,
// and replay_main.cpp gives it a main that runs the committed corpus in the plain (GCC) build.
#pragma once

#include <capnp/any.h>
#include <capnp/message.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

namespace shmbus::fuzz {

/// An exact-size copy of a fuzzer input, 64-byte aligned (Cap'n Proto words and ring control
/// blocks need alignment): AddressSanitizer reports any read past its last byte.
class Bytes {
 public:
  /// Copies `n` bytes from `data`; zeroes them when `data` is null.
  Bytes(const std::uint8_t* data, std::size_t n)
      : size_(n), data_(static_cast<std::uint8_t*>(::operator new(n == 0 ? 1 : n, std::align_val_t{64}))) {
    if (n != 0 && data != nullptr) std::memcpy(data_, data, n);
    if (n != 0 && data == nullptr) std::memset(data_, 0, n);
  }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  ~Bytes() { ::operator delete(data_, std::align_val_t{64}); }

  /// The first byte.
  std::uint8_t* data() const noexcept { return data_; }
  /// Bytes held.
  std::size_t size() const noexcept { return size_; }

 private:
  std::size_t size_;
  std::uint8_t* data_;
};

/// Takes fixed-size values off the front of an input; past its end every value is zero.
class Input {
 public:
  /// Reads `data` (`n` bytes, not copied: it must outlive the Input).
  Input(const std::uint8_t* data, std::size_t n) noexcept : data_(data), left_(n) {}

  /// The next sizeof(T) bytes as a T (zero-filled past the end).
  template <class T>
    requires std::is_trivially_copyable_v<T>
  T take() noexcept {
    T v{};
    const std::size_t n = left_ < sizeof v ? left_ : sizeof v;
    if (n != 0) std::memcpy(&v, data_, n);
    data_ += n;
    left_ -= n;
    return v;
  }
  /// What is left.
  const std::uint8_t* rest() const noexcept { return data_; }
  /// Bytes left.
  std::size_t restBytes() const noexcept { return left_; }

 private:
  const std::uint8_t* data_;
  std::size_t left_;
};

/// Reads every object reachable from the root of `m` within its reader limits, as a receiver
/// validating a payload does. False when Cap'n Proto finds it malformed or over a limit.
inline bool traverse(capnp::MessageReader& m) {
  try {
    (void)m.getRoot<capnp::AnyPointer>().targetSize();
    return true;
  } catch (const kj::Exception&) {
    return false;
  }
}

}  // namespace shmbus::fuzz
