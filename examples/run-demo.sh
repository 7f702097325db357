#!/usr/bin/env bash
# README Quick start, command 1: installs what is missing, builds, and runs the dashboard demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps
[ -d build ] || meson setup build >/dev/null
ninja -C build examples/dashboard/dashboard-main examples/dashboard/dashboard-window
exec build/examples/dashboard/dashboard-main
