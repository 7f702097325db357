# v2: the nested struct Point changes `y` to a Float32. Incompatible (nested structs count whole).
# Compiled by capnpc-shmbus for tests/codegen/evolution_test.cpp.
@0xa4b513e287114cf3;

$import "/capnp/c++.capnp".namespace("evolution::nested");

struct Point {
  x @0 :Int32;
  y @1 :Float32;
}

enum Op {
  add @0;
  sub @1;
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
