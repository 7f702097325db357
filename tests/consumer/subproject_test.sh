#!/bin/sh
# Builds tests/consumer with libshmbus as a meson subproject in a folder not named `shmbus`,
# found through the wrap file README.md documents ([provide] shmbus, capnpc-shmbus), from a clean
# build directory (the generated headers must wait for the plugin built in the same build). Then
# checks that the subproject built the library, capnpc-shmbus and shmbusd, and no test, benchmark
# or example.
#
# usage: subproject_test.sh <shmbus source dir> <consumer source dir>
set -eu
src=$1
consumer=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmbus-subproject.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "subproject_test: $*" >&2; exit 1; }

cp -R "$consumer" "$tmp/app"
mkdir -p "$tmp/app/subprojects/libshmbus-src"
# The source tree, without build directories or downloaded subprojects.
(cd "$src" && tar --exclude='./build*' --exclude='./.git' --exclude='./subprojects/*/' -cf - .) |
  tar -C "$tmp/app/subprojects/libshmbus-src" -xf -
# The wrap of README.md "As a meson subproject" (the folder is there: nothing is downloaded).
cat >"$tmp/app/subprojects/libshmbus.wrap" <<'WRAP'
[wrap-git]
url = https://example.invalid/libshmbus.git
revision = head
directory = libshmbus-src

[provide]
dependency_names = shmbus
program_names = capnpc-shmbus
WRAP

# Unoptimised: this test checks the build's shape, and -O0 halves its time.
meson setup "$tmp/build" "$tmp/app" --wrap-mode=nodownload -Dbuildtype=debug >"$tmp/setup.log" 2>&1 ||
  { cat "$tmp/setup.log"; fail "meson setup"; }
targets=$(ninja -C "$tmp/build" -t targets all)
sub='subprojects/libshmbus-src'
echo "$targets" | grep -Eq "^$sub/(tests|bench|examples)/" &&
  fail "the subproject builds tests, benchmarks or examples: $(echo "$targets" | grep -E "^$sub/(tests|bench|examples)/" | head -3)"
for t in "$sub/lib/tools/capnpc-shmbus/capnpc-shmbus" "$sub/lib/tools/shmbusd/shmbusd"; do
  echo "$targets" | grep -q "^$t:" || fail "the subproject does not build $t"
done
ninja -C "$tmp/build" -j2 >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "build"; }
grep -q 'class BasicGreeterClient' "$tmp/build/greeter.shmbus.h" || fail "no generated client"
"$tmp/build/consumer"
