#!/usr/bin/env bash
# Installs what is needed, builds everything, and runs the test suite (GPU tests skip without a GPU).
#
#   scripts/test.sh                 # the README's test command
#   BUILD_DIR=build-x scripts/test.sh -L gpu     # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
werror=OFF
[[ ${CI:-} == true ]] && werror=ON
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_WERROR=$werror
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 600 "$@"
