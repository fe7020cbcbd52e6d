#!/usr/bin/env bash
# Builds the GPU binaries here (no GPU needed) and stages them with the libraries the device image
# lacks into device-bundle/ (../shared/tools/device-bundle.sh), for scripts/device-kernel-check.sh
# and scripts/device-service-check.sh on the lent GPU machine.
#
#   scripts/stage-device.sh
#   COMPARE_REF=wip/x scripts/stage-device.sh   # also stage REF's kernel test and benchmark
#
# With COMPARE_REF, the kernel test and marlin-bench of that git ref (built in a worktree under
# build-compare/) go to device-bundle/compare/; scripts/device-kernel-check.sh then runs REF's
# kernel tests too and alternates both benchmarks twice in the same call (A/B on one card).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-device}
jobs=${JOBS:-2}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_CUDA=ON >/dev/null
tests=(marlin_gemm_test device_layout_test dequantize_weight_test marlin_server_cuda_backend_test
  marlin_e2e_test graph_timing_test power_monitor_test)
bins=(marlin-bench marlin-server marlin-cli marlin-loadgen)
cmake --build "$build" -j "$jobs" --target "${tests[@]}" "${bins[@]}"
rm -rf device-bundle
../shared/tools/device-bundle.sh device-bundle "${tests[@]/#/$build/tests/}" "${bins[@]/#/$build/bin/}"

if [[ -n ${COMPARE_REF:-} ]]; then
  src="build-compare/src"
  git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
  git worktree prune
  git worktree add --detach "$src" "$COMPARE_REF" >/dev/null
  cmake -S "$src" -B build-compare/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_CUDA=ON \
    >/dev/null
  cmake --build build-compare/build -j "$jobs" --target marlin_gemm_test marlin-bench
  mkdir -p device-bundle/compare
  cp build-compare/build/tests/marlin_gemm_test build-compare/build/bin/marlin-bench \
    device-bundle/compare/
  git -C "$src" log --oneline -1 >device-bundle/compare/REF
  git worktree remove --force "$src"
  echo "compare: $(cat device-bundle/compare/REF) in device-bundle/compare/"
fi
du -sh device-bundle
