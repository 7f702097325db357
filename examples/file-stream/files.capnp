# The file-stream example's contract: a window with role "sink" receives a file as a stream of
# chunks (a Cap'n Proto streaming method) and answers the final call with what it stored.
@0xc3f1a0b7d6e25a41;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("filestream");

interface FileSink $Bus.target("sink") {
  write @0 (chunk :Data) -> stream;
  # One chunk of the file, in order; returning from the handler is the sender's credit.
  end @1 (name :Text) -> (bytes :UInt64, digest :UInt64);
  # The file is complete: the sink closes it and answers with its size and digest.
}
