// The v2 side of the contract-version test (typed_multiproc_test.cpp): a window spawned by the
// test's supervisor, compiled from golden_v2.capnp (same interface id as golden.capnp's
// Versioned, other field layouts). It handles Versioned with v2 handlers, calls the v1 handlers
// of the main process (the incompatible methods must be refused, the appended ones must work),
// sends a compatible v2 note and an incompatible v2 signal to main's v1 listeners, and reports
// what it got with Versioned.report (same layout in both).
#include <string>

#include "golden_v2.shmbus.h"

using namespace shmbus;
using namespace shmbus::golden_v2;

namespace {

/// "" when `r` failed with InvalidMessage mentioning `needle`, else what it did instead.
template <class R>
std::string expectMismatch(const R& r, const std::string& needle) {
  if (r.ok()) return "succeeded";
  if (r.code() != ErrorCode::InvalidMessage) return r.error().toString();
  if (r.error().message.find(needle) == std::string::npos) return "no '" + needle + "' in: " + r.error().message;
  return "";
}

}  // namespace

int main() {
  auto win = Window::fromSpawn();
  if (!win) {
    std::fprintf(stderr, "v2 peer: %s\n", win.error().toString().c_str());
    return 2;
  }
  Window& w = **win;
  auto check = VersionedHandlers::handleCheck(w, [](auto p, auto r) { r.setEcho(static_cast<std::uint32_t>(p.getValue())); });
  auto reply = VersionedHandlers::handleReply(w, [](auto p, auto r) {
    r.setEcho(p.getValue());
    r.setNote("v2");
  });
  auto add = VersionedHandlers::handleAdd(w, [](auto p, auto r) { r.setSum(p.getA() + p.getB()); });
  auto extend = VersionedHandlers::handleExtend(w, [](auto p, auto r) {
    r.setEcho(p.getValue());
    r.setLabel(p.getLabel().size() == 0 ? "v2 got v1's params" : "v2 got a label");
  });

  VersionedClient main(w);  // no $target: the target-less calls go to the main process
  std::string failures;
  const std::string c = expectMismatch(main.check([](auto p) { p.setValue(7), p.setNote("v2"); }).get(), "Versioned.check");
  if (!c.empty()) failures += "check: " + c + "; ";
  const std::string r = expectMismatch(main.reply([](auto p) { p.setValue(7); }).get(), "reply of 'Versioned.reply'");
  if (!r.empty()) failures += "reply: " + r + "; ";
  const std::string a = expectMismatch(main.add([](auto p) { p.setA(1), p.setB(2); }).get(), "field 'a' (@0)");
  if (!a.empty()) failures += "add: " + a + "; ";
  // Appended fields: v1's handler reads the v2 params, v2 reads v1's results (label = default).
  auto e = main.extend([](auto p) { p.setValue(41), p.setLabel("v2"); }).get();
  if (!e) {
    failures += "extend: " + e.error().toString() + "; ";
  } else if (e->reader().getEcho() != 41 || e->reader().getLabel().size() != 0) {
    failures += "extend: wrong reply; ";
  }
  // One-way v2 messages: main's v1 listener must take the note (appended field) and refuse the
  // signal (retyped field); checked when main gets the report, which this outbox delivers after.
  if (auto sent = main.note([](auto p) { p.setText("v2 note"), p.setCount(2); }); !sent) failures += "note: " + sent.error().toString();
  if (auto sent = main.signal([](auto p) { p.setLevel(0.5); }); !sent) failures += "signal: " + sent.error().toString();
  (void)main.report([&](auto p) {
    p.setOk(failures.empty());
    p.setDetail(failures.empty() ? "the v1 handlers refused the incompatible v2 calls and served the appended one" : failures);
  });
  w.run();  // serves the test's v1 calls until the bus closes
  return 0;
}
