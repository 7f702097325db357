// Announced contract schemas (docs/architecture.md §6): typed stubs send their contract's schema
// once per connection (FrameKind::Schema); the router checks it, keeps it within bounded bytes and
// hands every kept one to inspectors that ask (ControlType::Schemas). They are descriptions for
// display only: nothing here touches routing, names or policy.
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "bus.capnp.h"

#include "control/control_protocol.hpp"
#include "router/router.hpp"
#include "router/router_internal.hpp"
#include "message/message.hpp"
#include "trace/schema_announce.hpp"

namespace shmbus::detail {

void Router::onSchema(Conn& w, const FrameView& f) {
  // Refused announcements still count: a window cannot make the router check more than this.
  if (f.payloadBytes > kMaxSchemaBytesPerWindow - std::min(w.schemaBytes, kMaxSchemaBytesPerWindow)) {
    log_(LogLevel::Warn, "schema announcement of {} B from {} refused: past its limit of {} B per window",
         f.payloadBytes, w.describe(), kMaxSchemaBytesPerWindow);
    w.schemaBytes = kMaxSchemaBytesPerWindow;
    return;
  }
  w.schemaBytes += f.payloadBytes;
  InPlaceMessage m;
  if (auto r = m.parse(f.payload, f.payloadBytes); !r || m.empty()) {
    log_(LogLevel::Warn, "schema announcement from {} refused: {}", w.describe(),
         r ? std::string("an empty message") : r.error().message);
    return;
  }
  // A private copy of the segments first: the window may rewrite its ring while it is checked.
  auto kept = schemas_.keep(w.id, capnp::messageToFlatArray(m.segments()));
  if (!kept) {
    log_(LogLevel::Warn, "schema announcement from {} refused: {}", w.describe(), kept.error().message);
    return;
  }
  log_(LogLevel::Debug, "schema announcement from {}: {}", w.describe(), *kept);
}

Result<void> Router::announceSchema(const ContractSchema& contract) {
  capnp::MallocMessageBuilder mb;
  encodeAnnouncement(contract, mb.initRoot<schema::SchemaAnnouncement>());
  auto flat = capnp::messageToFlatArray(mb);
  std::lock_guard lk(mu_);
  auto kept = schemas_.keep(0, kj::mv(flat));
  if (!kept) return kept.error();
  log_(LogLevel::Debug, "schema of the main process: {}", *kept);
  return {};
}

void Router::onSchemas(Conn& c) {
  if (c.state != Conn::State::Inspector) return doom(c, "a schemas request before attaching as an inspector", true);
  capnp::MallocMessageBuilder mb;
  schemas_.encode(mb.initRoot<schema::SchemaSet>());
  // A memfd, not the packet: the set may be larger than a control packet (up to the bus's limit).
  Fd fd(::memfd_create("shmbus-schemas", MFD_CLOEXEC));
  if (!fd) return doom(c, fmt::format("memfd_create (schemas): {}", std::strerror(errno)), false);
  const auto flat = capnp::messageToFlatArray(mb);
  const auto bytes = flat.asBytes();
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::pwrite(fd.get(), bytes.begin() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return doom(c, fmt::format("writing the schemas' memfd: {}", std::strerror(errno)), false);
    done += static_cast<std::size_t>(n);
  }
  if (auto r = sendControl(c.sock.get(), ControlType::Schemas, bytes.size(), nullptr, fd.get()); !r) {
    doom(c, r.error().message, false);
  }
}

}  // namespace shmbus::detail
