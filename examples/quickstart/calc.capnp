# The quickstart's contract: a calculator window and a log kept by the main process.
@0xa7a626c1eecf8b82;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("quickstart");

interface Calc $Bus.target("calc") {
  # Served by the window with role "calc".
  add @0 (a :Int64, b :Int64) -> (sum :Int64) $Bus.timeoutMs(2000);
}

interface Log {
  # No $target: served by the main process.
  line @0 (text :Text) $Bus.oneway;
}
