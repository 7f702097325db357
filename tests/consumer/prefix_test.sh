#!/bin/sh
# Installs this build into a scratch prefix (meson install --destdir) and uses it the way an
# application does: the installed shmbusd and capnpc-shmbus run without LD_LIBRARY_PATH (rpath),
# and tests/consumer (shmbus.pc through pkg-config, capnpc-shmbus through PATH, shmbus.capnp from
# the installed headers) builds and runs.
#
# usage: prefix_test.sh <shmbus build dir> <consumer source dir>
set -eu
build=$1
src=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmbus-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "prefix_test: $*" >&2; exit 1; }

# The build is up to date (meson test built it); --no-rebuild keeps this from racing ninja.
meson install -C "$build" --destdir "$tmp/stage" --no-rebuild --quiet

plugin=$(find "$tmp/stage" -path '*/bin/capnpc-shmbus' -type f)
pc=$(find "$tmp/stage" -name shmbus.pc -type f)
root=$(dirname "$(dirname "$plugin")")
[ -x "$plugin" ] || fail "capnpc-shmbus is not installed"
[ -f "$pc" ] || fail "shmbus.pc is not installed"
[ -f "$root/include/shmbus/schemas/shmbus.capnp" ] || fail "shmbus.capnp is not installed"
[ -f "$root/include/shmbus/schemas/bus.capnp.h" ] || fail "shmbus/schemas/bus.capnp.h is not installed"
for h in shmbus.hpp typed.hpp contract.hpp channel.hpp message.hpp window.hpp supervisor.hpp error.hpp; do
  [ -f "$root/include/shmbus/$h" ] || fail "shmbus/$h is not installed"
done

# Installed executables find libshmbus by themselves (rpath relative to bin/).
unset LD_LIBRARY_PATH
"$root/bin/shmbusd" --help >/dev/null || fail "the installed shmbusd does not run"
"$root/bin/shmbus-inspect" --help >/dev/null || fail "the installed shmbus-inspect does not run"
"$plugin" --version >/dev/null || fail "the installed capnpc-shmbus does not run"

# The .pc file names the configured prefix; point it at the staged copy.
sed -i "s|^prefix=.*|prefix=$root|" "$pc"
export PKG_CONFIG_PATH="$(dirname "$pc")"
export PATH="$root/bin:$PATH"

cp -R "$src" "$tmp/consumer"
meson setup "$tmp/build" "$tmp/consumer" --wrap-mode=nodownload -Dbuildtype=debug >"$tmp/setup.log" 2>&1 ||
  { cat "$tmp/setup.log"; fail "meson setup"; }
ninja -C "$tmp/build" -j2 >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "build"; }
grep -q 'class BasicGreeterClient' "$tmp/build/greeter.shmbus.h" || fail "no generated client"
# The consumer finds the staged libshmbus through the rpath meson gives build-tree programs.
"$tmp/build/consumer"
