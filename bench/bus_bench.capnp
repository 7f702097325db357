# Contract of the bus benchmarks (bench/bus_bench.cpp): an echo of N bytes, typed and untyped.
@0xeb084baba5bcae62;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("benchschema");

interface Echo $Bus.target("echo") {
  echo @0 (data :Data) -> (data :Data);
}

struct Record {
  # A structured message of about 1 KiB for the build + read benchmark.
  id @0 :UInt64;
  name @1 :Text;
  tags @2 :List(Text);
  values @3 :List(Float64);
  nested @4 :List(Item);
  struct Item { key @0 :Text; value @1 :Int64; }
}
