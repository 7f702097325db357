# Version 2 of golden.capnp's Versioned contract: the same interface id, with changed field
# layouts. A v1 peer calling a v2 handler (or the reverse) must get InvalidMessage, not garbage.
@0xe2a604f3e9b7c338;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("shmbus::golden_v2");

interface Versioned @0xb3100f7c0ebbaa0e {
  check @0 (value :UInt64, note :Text) -> (echo :UInt32);
  reply @1 (value :UInt32) -> (echo :UInt64, note :Text);
  report @2 (ok :Bool, detail :Text) $Bus.oneway;
  note @3 (text :Text, count :UInt32) $Bus.oneway;
}
