#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after scripts/stage-device.sh: the GPU tests
# (kernel, CUDA backend, the end-to-end suite on the CUDA backend), compute-sanitizer memcheck and
# racecheck on a small shape (both kernel paths), a SASS summary (HGMMA = the Hopper path's wgmma,
# HMMA = the Ampere path's mma.sync), then the kernel benchmark with both paths and the dispatch
# side by side (BENCH_PATHS overrides which: marlin-bench --paths). Logs go to $OUT (or
# ./device-out): bench.md, bench.json and kernel-logs.tar.gz.
#
#   [BENCH_PATHS=hopper:striped,hopper:cluster] scripts/device-kernel-check.sh [marlin-bench args...]
set -uo pipefail
out=${OUT:-device-out}
logs="$out/kernel-logs"
mkdir -p "$logs"
source device-bundle/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$logs/gpu.txt"
cuobjdump -sass device-bundle/bin/marlin-bench |
  grep -oE '\b(HMMA|HGMMA|UTMALDG|WARPGROUP|LDSM|LDGSTS|LDL|STL)[.A-Z0-9_]*' | sort | uniq -c \
  >"$logs/sass.txt"
cat "$logs/sass.txt"
run_test() {  # name, then the command
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1
  echo "$name exit: $? ($(grep -E '^\[  (PASSED|FAILED) ' "$logs/$name.log" | tr '\n' ' '))"
}
run_test gemm-tests marlin_gemm_test
run_test cuda-backend-tests marlin_server_cuda_backend_test
run_test e2e-cuda env MARLIN_E2E_BACKEND=cuda marlin_e2e_test
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 marlin_gemm_test \
    --gtest_filter='*SanitizerShape*' >"$logs/sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool exit: $? ($(tail -1 "$logs/sanitizer-$tool.log"))"
done
marlin-bench --paths "${BENCH_PATHS:-ampere,hopper:striped,hopper:cluster,auto}" --json "$out/bench.json" "$@" >"$out/bench.md"
grep -E '^\| (L8B|L70B|big) \|' "$out/bench.md"
tar -czf "$out/kernel-logs.tar.gz" -C "$out" kernel-logs && rm -rf "$logs"
