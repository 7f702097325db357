# The bus's own frame payloads (docs/architecture.md §3, §5, §7).
@0x8d4b661f13117418;

$import "/capnp/c++.capnp".namespace("shmbus::schema");

struct ErrorInfo {
  # Payload of an Error frame: the failure of a call, delivered to the caller.
  code @0 :UInt16;          # shmbus::ErrorCode
  message @1 :Text;         # names the channel and the target
  remoteType @2 :Text;      # HandlerError: the remote exception's type
  remoteMessage @3 :Text;   # HandlerError: the remote exception's message
  remoteStack @4 :Text;     # HandlerError: stack text given by the handler, if any
}

struct Intern {
  # Payload of an Intern frame: the name behind a 64-bit channel or role id, sent once per id
  # so the supervisor can name channels in errors and stats (names never travel per message).
  id @0 :UInt64;
  name @1 :Text;
  isRole @2 :Bool;
}

struct WindowEvent {
  # Payload of the "window-opened" / "window-closed" events pushed to subscribed windows.
  windowId @0 :UInt32;
  role @1 :Text;
  pid @2 :Int32;
  reason @3 :Text;          # why it closed: "exit", "disconnected", "bad message: ..."
}

struct Hello {
  # Control socket: first message of a window that connects by path.
  role @0 :Text;
  pid @1 :Int32;
  inboxBytes @2 :UInt32;    # requested ring capacities (0 = supervisor default)
  outboxBytes @3 :UInt32;
  spawnToken @4 :UInt64;    # non-zero for windows started by Supervisor::spawn
  inviteToken @5 :Text;     # Supervisor::invite's one-time token (hex), empty = none
  blobBytes @6 :UInt64;     # a PortOpen's blob arena per direction (PortOptions::blobBytes; 0 = default)
}

struct Welcome {
  # Control socket: the supervisor's answer to Hello.
  ok @0 :Bool;
  error @1 :ErrorInfo;
  windowId @2 :UInt32;
  role @3 :Text;
  segmentName @4 :Text;     # the memfd's name, for messages only (the segment travels as a descriptor)
  segmentBytes @5 :UInt64;
  inboxOffset @6 :UInt64;
  inboxCapacity @7 :UInt32;
  outboxOffset @8 :UInt64;
  outboxCapacity @9 :UInt32;
  maxRecord @10 :UInt32;
  busName @11 :Text;
  cancelBoardOffset @12 :UInt64;  # the window's CancelBoard (wire/cancel_board.hpp)
  portId @13 :UInt64;
  blobOutOffset @14 :UInt64;  # a port's blob arenas (docs/architecture.md §17): this side's, written
  blobInOffset @15 :UInt64;   # by it, and the peer's, read in place; blobBytes 0 = no arenas
  blobBytes @16 :UInt64;
  routeStatsOffset @17 :UInt64;  # a route port's RouteStatsTable (docs/architecture.md §19); 0 = none
  # A port (FrameKind::PortOffer / the PortOpen reply) is described by a Welcome too: windowId and
  # role are the peer's, the offsets are this side's inbox and outbox; 0 for a window's Welcome.
}

struct Cancel {
  # Payload of a Cancel frame (caller → supervisor → target): the call's request id is in the
  # frame header; the reason is informational.
  reason @0 :Text;
}

struct BusSnapshot {
  # The supervisor's answer to an inspector's snapshot request (ControlType::Snapshot): the
  # registry and the router's counters (shmbus/inspect.hpp, docs/architecture.md §14). Lists are
  # bounded (see `truncated`) so the answer fits one control packet.
  windows @0 :List(WindowRow);
  channels @1 :List(ChannelRow);
  pending @2 :List(PendingRow);
  lateReplies @3 :UInt64;
  spoofedReplies @4 :UInt64;
  undeliverable @5 :UInt64;
  badMessages @6 :UInt64;
  unansweredCalls @7 :UInt64;
  inspectors @8 :UInt32;
  truncated @9 :Bool;       # a list was cut to its bound
  ports @10 :List(PortRow); # the bus's ports, open or offered (Supervisor::ports)

  struct PortRow {
    id @0 :UInt64;
    opener @1 :UInt32;      # window ids
    acceptor @2 :UInt32;
    channel @3 :Text;
    accepted @4 :Bool;
    route @5 :Bool;         # a direct route's port (docs/architecture.md §19), opened by the supervisor
  }

  struct WindowRow {
    id @0 :UInt32;
    role @1 :Text;
    pid @2 :Int32;
    spawned @3 :Bool;
    inboxUsed @4 :UInt64;   # bytes written into the window's inbox and not yet released by it
    inboxBytes @5 :UInt64;
    pendingCalls @6 :UInt32;  # calls this window made that are in flight
    admission @7 :UInt8;    # shmbus::Admission: 0 open, 1 invited, 2 spawned
    uid @8 :UInt32;         # the window's user id (SO_PEERCRED)
  }
  struct ErrorCount {
    code @0 :Text;
    count @1 :UInt64;
  }
  struct ChannelRow {
    name @0 :Text;
    calls @1 :UInt64;
    messages @2 :UInt64;
    late @3 :UInt64;
    errors @4 :List(ErrorCount);
    p50Ms @5 :Float64;
    p99Ms @6 :Float64;
  }
  struct PendingRow {
    channel @0 :Text;
    sourceId @1 :UInt32;
    sourceRole @2 :Text;
    targetId @3 :UInt32;
    targetRole @4 :Text;
    waitingMs @5 :Float64;
  }
}

struct PortTrace {
  # A window → supervisor PortTrace frame (docs/architecture.md §14 "Ports"): calls and sends the
  # window's port ends made while an inspector was attached, batched. Untrusted: the supervisor
  # keeps only records of ports this window holds, and fills in the peer itself.
  records @0 :List(Record);

  struct Record {
    portId @0 :UInt64;
    kind @1 :UInt16;        # shmbus::TraceKind: 2 invoke (this end's call ended), 1 send
    channelId @2 :UInt64;
    channel @3 :Text;       # the channel's name as this end knows it ("" = none)
    requestId @4 :UInt64;   # this end's request id (invoke)
    traceId @5 :UInt64;
    startNs @6 :Int64;      # CLOCK_MONOTONIC ns: the call made or the message written
    endNs @7 :Int64;        # the call ended (= startNs for a send)
    status @8 :UInt16;      # shmbus::ErrorCode (0 = Ok)
    error @9 :Text;
    requestBytes @10 :UInt32;  # payload bytes (message table + segments), as the router counts
    replyBytes @11 :UInt32;
  }
}

# A typed contract's schema, announced by its stubs once per contract and connection
# (FrameKind::Schema, window → supervisor; docs/architecture.md §6). Untrusted: the router
# validates it with capnp::SchemaLoader and never routes or judges policy by it.
struct SchemaAnnouncement {
  interfaceId @0 :UInt64;
  name @1 :Text;                       # "Outer.Inner", as capnpc-shmbus names it
  methods @2 :List(MethodChannel);     # the methods the stubs serve
  nodes @3 :List(import "/capnp/schema.capnp".Node);  # the interface, its methods' params and
                                       # results structs and every type they reach
  struct MethodChannel {
    ordinal @0 :UInt16;
    channel @1 :UInt64;                # methodChannelId(interfaceId, ordinal)
  }
}

# The answer to ControlType::Schemas: every contract schema the bus keeps.
struct SchemaSet {
  contracts @0 :List(SchemaAnnouncement);
}
