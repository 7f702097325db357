# v2: the enum Op gets `mul` between `add` and `sub`. Incompatible (enums count whole).
# Compiled by capnpc-shmbus for tests/codegen/evolution_test.cpp.
@0xa408976a14611f61;

$import "/capnp/c++.capnp".namespace("evolution::enumerants");

struct Point {
  x @0 :Int32;
  y @1 :Int32;
}

enum Op {
  add @0;
  mul @1;
  sub @2;
}

struct Request {
  a @0 :Int64;
  b @1 :Int64;
  op @2 :Op;
  tags @3 :List(Int32);
  origin @4 :Point;
  union {
    exact @5 :Void;
    rounded @6 :UInt8;
  }
}

struct Reply {
  sum @0 :Int64;
}

interface Calc {
  add @0 Request -> Reply;
}
