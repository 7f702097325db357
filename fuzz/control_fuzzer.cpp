// Fuzzes the control-socket decoders of both sides of the handshake (wire/handshake,
// control/control_protocol): a hostile packet goes through parseControlHeader, the supervisor's
// parseHello (and the role and ring-size checks it applies), and the window's parseWelcome and
// checkWelcomeLayout. A layout the check accepts is then mapped for real: rings and cancel board
// are built over an exact-size buffer standing for the segment, so a part the check let through
// outside the segment is an AddressSanitizer report. Input: the packet (ControlHeader + flat
// array); the segment is as large as the layout of two 4 KiB rings (the seeds' layout).
#include <vector>

#include "common/validate.hpp"
#include "fuzz_util.hpp"
#include "wire/handshake.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
/// Maps the rings of an accepted Welcome over `segment` and reads and claims once: every access
/// lies inside the segment if the layout check is right.
void mapWelcome(const WelcomeInfo& w, const fuzz::Bytes& segment) {
  std::uint8_t* base = segment.data();
  (void)reinterpret_cast<const CancelBoard*>(base + w.boardOffset)->contains(1);
  RingConsumer inbox(reinterpret_cast<RingControl*>(base + w.inboxOffset), base + w.inboxOffset + sizeof(RingControl),
                     w.inbox);
  (void)inbox.tryRead();
  RingProducer outbox(reinterpret_cast<RingControl*>(base + w.outboxOffset),
                      base + w.outboxOffset + sizeof(RingControl), w.outbox, true);
  if (auto c = outbox.tryClaim(64)) outbox.commit(*c, 64);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Packet pkt;
  pkt.bytes.assign(data, data + size);
  (void)parseControlHeader(pkt);
  if (auto hello = parseHello(pkt)) {
    (void)validateName(NameKind::Role, hello->role);
    (void)checkRingSizes(hello->inboxBytes, hello->outboxBytes);
  }
  auto welcome = parseWelcome(pkt, "fuzz");
  if (!welcome) return 0;
  const std::size_t segmentBytes = segmentLayout(4096, 4096).totalBytes;
  if (!checkWelcomeLayout(*welcome, segmentBytes)) return 0;
  std::vector<std::uint8_t> zeros(segmentBytes);
  const fuzz::Bytes mapped(zeros.data(), zeros.size());
  mapWelcome(*welcome, mapped);
  return 0;
}
