#!/bin/sh
# capnpc-shmbus run by hand: --help and --version answer; no request on stdin (empty, a closed
# pipe, garbage cut short) is a clear message with exit code 2, not Cap'n Proto's "Premature EOF";
# a malformed request (the crash inputs libFuzzer found, fuzz/corpus/plugin/crash-*) is a clear
# message with exit code 1, not a crash. A schema whose interfaces would generate the same C++
# type twice (clash.capnp) is refused with a message naming both.
# usage: plugin_cli_test.sh <capnpc-shmbus> <fuzz/corpus/plugin> <capnp> <shmbus schema dir> <clash.capnp>
set -u
plugin=$1
corpus=$2
capnp=$3
imports=$4
clash=$5
fail() { echo "plugin_cli_test: $*" >&2; exit 1; }
"$plugin" --help | grep -q '^usage: capnp compile' || fail "--help prints no usage"
"$plugin" --version | grep -Eq '^capnpc-shmbus [0-9]+\.[0-9]+\.[0-9]+' || fail "--version prints no version"
for input in /dev/null closed-pipe short; do
  case $input in
    /dev/null) err=$("$plugin" 2>&1 </dev/null); rc=$? ;;
    closed-pipe) err=$(true | "$plugin" 2>&1); rc=$? ;;
    short) err=$(printf 'abc' | "$plugin" 2>&1); rc=$? ;;
  esac
  [ "$rc" -eq 2 ] || fail "$input: exit code $rc, expected 2"
  echo "$err" | grep -q 'capnp compile' || fail "$input: the message does not say to run it through capnp compile: $err"
  echo "$err" | grep -q 'Premature EOF' && fail "$input: Cap'n Proto's message leaked: $err"
done
for input in "$corpus"/crash-*; do
  err=$("$plugin" 2>&1 <"$input"); rc=$?  # it fails before writing anything
  [ "$rc" -eq 1 ] || fail "$input: exit code $rc, expected 1: $err"
  echo "$err" | grep -q '^capnpc-shmbus: ' || fail "$input: no message of the plugin's own: $err"
done
"$plugin" --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "an unknown argument is not exit code 2"
out=$(mktemp -d) || fail "mktemp"
err=$("$capnp" compile -I "$imports" --src-prefix="$(dirname "$clash")" -o"$plugin:$out" "$clash" 2>&1); rc=$?
rm -rf "$out"
[ "$rc" -ne 0 ] || fail "clash.capnp was compiled: two interfaces generate FooPortClient"
echo "$err" | grep -q 'FooPortClient' || fail "the clash message does not name FooPortClient: $err"
echo "$err" | grep -q 'interface FooPort' || fail "the clash message does not name interface FooPort: $err"
echo "capnpc-shmbus: --help, --version, the no-request, malformed-request and name-clash messages are right"
