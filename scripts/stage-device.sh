#!/usr/bin/env bash
# Builds the GPU binaries here (no GPU needed) and stages them with the libraries the device image
# lacks into device-bundle/ (../shared/tools/device-bundle.sh), for scripts/device-kernel-check.sh
# and scripts/device-service-check.sh on the lent GPU machine.
#
#   scripts/stage-device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-device}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_CUDA=ON >/dev/null
tests=(marlin_gemm_test marlin_server_cuda_backend_test marlin_e2e_test)
bins=(marlin-bench marlin-server marlin-cli marlin-loadgen)
cmake --build "$build" -j "${JOBS:-2}" --target "${tests[@]}" "${bins[@]}"
rm -rf device-bundle
../shared/tools/device-bundle.sh device-bundle "${tests[@]/#/$build/tests/}" "${bins[@]/#/$build/bin/}"
