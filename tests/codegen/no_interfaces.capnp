# A schema without interfaces: capnpc-shmbus still writes its header (only the include), so a
# build can list the three outputs of every schema alike.
@0xcb997ecb36d8c8b3;

struct Plain {
  value @0 :UInt32;
}
