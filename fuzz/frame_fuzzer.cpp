// Fuzzes the frame decoder (protocol/frame_io): a hostile record body, as a window writes it into
// its outbox, goes through what the router and a window do with it: parseFrame, the payload's
// segment table (InPlaceMessage::parse), decodeError for Error frames, the Intern payload, and a
// full traversal of the payload within its reader limits. Input: the record body.
#include <kj/exception.h>

#include "fuzz_util.hpp"
#include "message/message.hpp"
#include "protocol/frame_io.hpp"

#include "bus.capnp.h"

using namespace shmbus;
using namespace shmbus::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fuzz::Bytes body(data, size);
  const RecordView record{body.data(), body.size(), 0, alignUp(sizeof(RecordHeader) + size, kRecordAlign)};
  auto frame = parseFrame(record);
  if (!frame) return 0;
  InPlaceMessage payload;
  if (!payload.parse(frame->payload, frame->payloadBytes)) return 0;
  switch (static_cast<FrameKind>(frame->header.kind)) {
    case FrameKind::Error: {
      const Error e = decodeError(frame->header, payload);
      (void)e.toString();
      break;
    }
    case FrameKind::Intern:
      if (!payload.empty()) {
        try {
          auto intern = payload.reader().getRoot<schema::Intern>();
          (void)intern.getName().size();
        } catch (const kj::Exception&) {
        }
      }
      break;
    default:
      break;
  }
  if (!payload.empty()) (void)fuzz::traverse(payload.reader());
  return 0;
}
