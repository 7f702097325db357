# v2: `b` becomes a Float64 (the silent `inf` of issue 12). Incompatible.
# Compiled by capnpc-shmbus for tests/codegen/evolution_test.cpp.
@0xd334b8fa1879f8fb;

$import "/capnp/c++.capnp".namespace("evolution::retype");

struct Point {
  x @0 :Int32;
  y @1 :Int32;
}

enum Op {
  add @0;
  sub @1;
}

struct Request {
  a @0 :Int64;
  b @1 :Float64;
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
