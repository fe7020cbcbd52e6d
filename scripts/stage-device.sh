#!/usr/bin/env bash
# Builds the GPU binaries here (no GPU needed) and stages them with their libraries into
# device-bundle/ for the lent H100: ../shared/tools/device-bundle.sh copies what the device lacks.
#
#   scripts/stage-device.sh            # then run scripts/device-kernel-check.sh on the device
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-device}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_CUDA=ON >/dev/null
targets=(marlin_gemm_test marlin-bench)
for t in ${EXTRA_TARGETS:-}; do targets+=("$t"); done
cmake --build "$build" -j "${JOBS:-2}" --target "${targets[@]}"
rm -rf device-bundle
bins=("$build/tests/marlin_gemm_test" "$build/bin/marlin-bench")
for t in ${EXTRA_TARGETS:-}; do
  for f in "$build/bin/$t" "$build/tests/$t"; do [[ -x $f ]] && bins+=("$f"); done
done
../shared/tools/device-bundle.sh device-bundle "${bins[@]}"
