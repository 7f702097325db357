# Payloads of the small examples (one folder each under examples/).
@0xbb75c24333cbe0bf;

$import "/capnp/c++.capnp".namespace("examples");

struct Title { text @0 :Text; }

struct Path { path @0 :Text; }
struct FileList {
  entries @0 :List(Entry);
  struct Entry { name @0 :Text; bytes @1 :UInt64; isDir @2 :Bool; }
}

struct SystemInfo { hostname @0 :Text; cpus @1 :UInt32; kernel @2 :Text; uptimeSeconds @3 :Float64; }

struct Counter { value @0 :Int64; }

struct Notice { text @0 :Text; level @1 :Text; }

struct Job { numbers @0 :List(Float64); }
struct JobResult { sum @0 :Float64; mean @1 :Float64; stddev @2 :Float64; }

# examples/big-buffer: a frame too large for any ring, sent as a blob over a port. A Cap'n Proto
# Data field holds at most 2^29 - 1 bytes, so a 512 MiB frame is a list of chunks.
struct Frame { chunks @0 :List(Data); }
struct FrameDigest { bytes @0 :UInt64; sum @1 :UInt64; }
