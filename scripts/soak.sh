#!/usr/bin/env bash
# The soak for as long as asked: 64 windows connect, call each other and main, get killed with
# kill -9 and come back; fails on any leak of the supervisor process (tests/soak/soak_run.cpp,
# docs/architecture.md §8). CI runs 30 s of it (meson test --suite soak).
# Usage: bash scripts/soak.sh [--duration S] [--windows N] [--seed N] [--kills PER_S] [--rss-bound-mib M]
# Builds first (ninja, two jobs); the build directory is $SHMBUS_BUILD, default build/.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SHMBUS_BUILD:-build}
[ -d "$build" ] || meson setup "$build" --wrap-mode=nofallback >/dev/null
ninja -C "$build" -j2 tests/soak/shmbus_soak >/dev/null
# The windows' own complaints (one line per failed call) go to stderr; the report to stdout.
exec "$build/tests/soak/shmbus_soak" "$@"
