# libshmbus annotations for user contracts (docs/architecture.md §6). Import with
#   using Bus = import "/shmbus.capnp";   (capnp compile -I <schemadir>: see README)
# and annotate interfaces and methods. capnpc-shmbus matches annotations by these ids.
@0xdd4d1337563caa03;

$import "/capnp/c++.capnp".namespace("shmbus::schema");

annotation timeoutMs @0xe9b1c0c9d3e2a001 (method) :UInt32;
# Default timeout of a call to this method, in ms (a per-call option overrides it).

annotation oneway @0xe9b1c0c9d3e2a002 (method) :Void;
# The method is a one-way message (send / push / broadcast): no reply, results type ignored.

annotation target @0xe9b1c0c9d3e2a003 (interface) :Text;
# The default role that handles this interface (e.g. "dashboard").
