// Fuzzes the trace ring's event records (trace/trace_event, docs/architecture.md §14): a record
// body as an inspector reads it from a supervisor's trace ring, through decodeTraceEvent, then
// the decoded event printed as text and JSON (every string, hostile bytes included), then encoded
// and decoded again, which must give the same event back (what decode accepts, encode writes
// unchanged). Input: the body's bytes.
#include <cstdlib>

#include "fuzz_util.hpp"
#include "trace/trace_event.hpp"

using namespace shmbus;
using namespace shmbus::detail;

namespace {
bool same(const TraceEvent& a, const TraceEvent& b) {
  return a.kind == b.kind && a.seq == b.seq && a.startNs == b.startNs && a.endNs == b.endNs &&
         a.requestId == b.requestId && a.traceId == b.traceId && a.channelId == b.channelId && a.channel == b.channel &&
         a.sourceId == b.sourceId && a.sourceRole == b.sourceRole && a.targetId == b.targetId &&
         a.targetRole == b.targetRole && a.status == b.status && a.error == b.error &&
         a.requestBytes == b.requestBytes && a.replyBytes == b.replyBytes && a.pid == b.pid && a.portId == b.portId;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fuzz::Bytes in(data, size);
  auto e = decodeTraceEvent({in.data(), in.size()}, 7);
  if (!e) return 0;
  (void)toText(*e).size();
  (void)toJson(*e).size();
  std::vector<std::uint8_t> again;
  encodeTraceEvent(*e, again);
  auto back = decodeTraceEvent(again, 7);
  if (!back || !same(*e, *back)) std::abort();  // decode accepted what encode does not write
  return 0;
}
