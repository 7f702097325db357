# v2: a field is appended to the request and one to the reply. Compatible both ways.
# Compiled by capnpc-shmbus for tests/codegen/evolution_test.cpp.
@0xc7a4040ab913b577;

$import "/capnp/c++.capnp".namespace("evolution::append");

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
  b @1 :Int64;
  op @2 :Op;
  tags @3 :List(Int32);
  origin @4 :Point;
  union {
    exact @5 :Void;
    rounded @6 :UInt8;
  }
  scale @7 :Float64;
}

struct Reply {
  sum @0 :Int64;
  overflow @1 :Bool;
}

interface Calc {
  add @0 Request -> Reply;
}
