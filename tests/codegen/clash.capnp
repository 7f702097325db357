# Two interfaces whose generated type names clash: Foo's FooPortClient (its client on a Port) is
# also FooPort's FooPortClient. capnpc-shmbus must refuse it with a message naming both
# (tests/codegen/plugin_cli_test.sh), not write a header that does not compile.
@0xb5f847b9521e3800;

interface Foo {
  ping @0 () -> ();
}

interface FooPort {
  ping @0 () -> ();
}
