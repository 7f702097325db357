#!/bin/sh
# Installs this build into a scratch prefix and builds examples/quickstart with CMake against it:
# find_package(shmbus CONFIG), the imported target shmbus::shmbus and shmbus_generate_cpp().
# Then runs the quickstart (a supervisor and two windows, one typed call).
#
# usage: cmake_test.sh <shmbus build dir> <quickstart source dir>
set -eu
build=$1
src=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmbus-cmake.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "cmake_test: $*" >&2; exit 1; }

meson install -C "$build" --destdir "$tmp/stage" --no-rebuild --quiet
config=$(find "$tmp/stage" -name shmbusConfig.cmake -type f)
[ -f "$config" ] || fail "shmbusConfig.cmake is not installed"
root=$(dirname "$(find "$tmp/stage" -path '*/bin/capnpc-shmbus' -type f)")/..

cp -R "$src" "$tmp/quickstart"
cmake -S "$tmp/quickstart" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$root" -DCMAKE_BUILD_TYPE=Debug \
  >"$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log"; fail "cmake configure"; }
cmake --build "$tmp/build" -j2 >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "cmake build"; }
grep -q 'class BasicCalcClient' "$tmp/build/calc.shmbus.h" || fail "no generated client"
"$tmp/build/quickstart"
