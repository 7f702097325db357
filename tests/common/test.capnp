# Schema of the messages the test suites build in ring space and read in place.
@0xddd47a61914a8063;

$import "/capnp/c++.capnp".namespace("shmbus::test");

struct Inner {
  id @0 :UInt64;
  label @1 :Text;
}

struct TestMessage {
  seq @0 :UInt64;
  text @1 :Text;
  blob @2 :Data;
  numbers @3 :List(UInt32);
  inner @4 :Inner;
  children @5 :List(Inner);
}
