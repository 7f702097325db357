# The contract of the out-of-tree consumer (tests/codegen/consumer_test.sh builds this project
# against an installed libshmbus, the way an application would).
@0xb24bce4a7aa25fa5;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("consumer");

interface Greeter $Bus.target("greeter") {
  # Served by the window.
  greet @0 (name :Text) -> (greeting :Text) $Bus.timeoutMs(5000);
  greeted @1 (name :Text) $Bus.oneway;
  # Pushed by the main process after each greeting.
}

interface Counter {
  # Served by the main process.
  add @0 (amount :UInt32) -> (total :UInt32);
  done @1 (total :UInt32) $Bus.oneway;
}
