# Version 2 of golden.capnp's Versioned contract: the same interface id, with changed field
# layouts. Where a change is incompatible (shmbus/contract.hpp), a v1 peer calling a v2 handler
# (or the reverse) must get InvalidMessage, not garbage; where v2 only appends fields, both work.
@0xe2a604f3e9b7c338;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("shmbus::golden_v2");

interface Versioned @0xb3100f7c0ebbaa0e {
  check @0 (value :UInt64, note :Text) -> (echo :UInt32);
  # Retyped and appended params: incompatible.
  reply @1 (value :UInt32) -> (echo :UInt64, note :Text);
  # Retyped and appended results: incompatible.
  report @2 (ok :Bool, detail :Text) $Bus.oneway;
  note @3 (text :Text, count :UInt32) $Bus.oneway;
  # An appended field: compatible.
  add @4 (a :Float64, b :Float64) -> (sum :Float64);
  # Int64 -> Float64: incompatible.
  extend @5 (value :UInt32, label :Text) -> (echo :UInt32, label :Text);
  # Appended fields on both sides: compatible.
  signal @6 (level :Float64) $Bus.oneway;
  # Int64 -> Float64 on a one-way message: incompatible.
}
