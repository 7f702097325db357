# The port example's contract: served on the port by the window that accepts it (the worker),
# called through the port by the window that opened it (the renderer). No $target: on a port the
# calls go to its peer.
@0xea57cf35df3a706c;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("portdemo");

interface Jobs {
  sum @0 (numbers :List(Float64)) -> (sum :Float64, count :UInt32) $Bus.timeoutMs(2000);
  # Adds the numbers up.
  progress @1 (text :Text) $Bus.oneway;
  # A one-way note back to the caller.
}
