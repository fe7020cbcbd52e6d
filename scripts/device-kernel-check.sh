#!/usr/bin/env bash
# Runs on the GPU machine from the repo root: GPU tests, compute-sanitizer, SASS summary, then the
# kernel benchmark; everything is logged under $OUT (or ./device-out).
#
#   scripts/device-kernel-check.sh [marlin-bench arguments...]
set -uo pipefail
out=${OUT:-device-out}
mkdir -p "$out"
source device-bundle/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cuobjdump -sass device-bundle/bin/marlin-bench |
  grep -oE '\b(HMMA|HGMMA|LDSM|LDGSTS|LDL|STL)[.A-Z0-9_]*' | sort | uniq -c >"$out/sass.txt"
cat "$out/sass.txt"
marlin_gemm_test 2>&1 | tee "$out/gpu-tests.log" | grep -E '^\[ *(OK|FAILED|PASSED|SKIPPED) |Failure|error' | head -40
echo "gpu tests exit: ${PIPESTATUS[0]}"
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 marlin_gemm_test \
    --gtest_filter='*SanitizerShape*' >"$out/sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool exit: $? ($(tail -1 "$out/sanitizer-$tool.log"))"
done
marlin-bench --json "$out/bench.json" "$@" | tee "$out/bench.md"
