# Golden schema of capnpc-shmbus: every method kind and every shape the generator handles
# (tests/codegen/golden/golden.shmbus.h is its expected output; the runtime tests use it too).
@0xf8d19ce8bc10d621;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("shmbus::golden");

struct Point {
  x @0 :Int32;
  y @1 :Int32;
}

struct Shape {
  # A struct with a union, a group, lists and a nested struct.
  name @0 :Text;
  union {
    circle :group {
      center @1 :Point;
      radius @2 :Float64;
    }
    polygon @3 :List(Point);
    empty @4 :Void;
  }
  tags @5 :List(Text);
  style @6 :Style;

  struct Style {
    stroke @0 :UInt8;
    color @1 :Text;
  }
}

interface Studio $Bus.target("studio") {
  # The studio window: calls with and without payloads, one-way notes, a slow call.

  echo @0 (text :Text) -> (text :Text, length :UInt32);
  # Returns the text it got and its length.

  ping @1 () -> ();
  # Void params and void results.

  describe @2 (shape :Shape) -> (area :Float64, summary :Text, points :List(Point)) $Bus.timeoutMs(2500);
  # Nested structs, unions and lists both ways.

  store @3 Shape -> Point;
  # A named struct as params and as results.

  notify @4 (message :Text, seq :UInt64) $Bus.oneway;
  # A one-way note (send, sendTo, push, broadcast).

  tick @5 () $Bus.oneway;

  delete @6 (key :Text) -> (removed :Bool);
  # A method whose name is a C++ keyword.

  slow @7 (spinUntilCancelled :Bool) -> (done :Bool) $Bus.timeoutMs(150);
  # Runs until the caller gives up; the default timeout is 150 ms.
}

interface Hub {
  # Handled by the main process (no $target: calls and sends without a target go to main).
  report @0 (value :Int64, source :Text) -> (total :Int64);
  status @1 (text :Text, level :Level) $Bus.oneway;

  enum Level {
    info @0;
    warning @1;
  }
}

struct Scope {
  interface Inner $Bus.target("inner") {
    # An interface in a struct's scope.
    hello @0 (name :Text) -> (greeting :Text);

    interface Deeper {
      # An interface in an interface's scope.
      depth @0 () -> (level :UInt32);
    }
  }
}

interface Versioned @0xb3100f7c0ebbaa0e {
  # Version 1 of a contract; golden_v2.capnp is version 2 (same interface id, other layouts).
  check @0 (value :UInt32) -> (echo :UInt32);
  reply @1 (value :UInt32) -> (echo :UInt32);
  # The params agree between the versions, the results do not.
  report @2 (ok :Bool, detail :Text) $Bus.oneway;
  # Same layout in both versions: the v2 peer reports its findings with it.
  note @3 (text :Text) $Bus.oneway;
  # A one-way message to which v2 appends a field: compatible.
  add @4 (a :Int64, b :Int64) -> (sum :Int64);
  # v2 makes every field a Float64 (issue 12's silent `inf`): refused both ways.
  extend @5 (value :UInt32) -> (echo :UInt32);
  # v2 appends a field to the params and one to the results: works both ways.
  signal @6 (level :Int64) $Bus.oneway;
  # A one-way message whose field v2 retypes: refused.
}

interface Sink $Bus.target("sink") {
  # A stream of chunks ended by an ordinary call (shmbus/stream.hpp, docs/architecture.md §18).
  write @0 (seq :UInt32, chunk :Data) -> stream;
  # One chunk; the handler's return is the sender's credit.
  done @1 () -> (chunks :UInt32, bytes :UInt64, digest :UInt64, outOfOrder :UInt32);
  # Ends the stream with what the receiver counted (and starts counting again).
}
