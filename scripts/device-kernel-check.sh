#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after scripts/stage-device.sh: the GPU tests
# (kernel, CUDA backend, the end-to-end suite on the CUDA backend), compute-sanitizer memcheck and
# racecheck on a small shape (both kernel paths), a SASS summary (HGMMA = the Hopper path's wgmma,
# HMMA = the Ampere path's mma.sync), then the kernel benchmark with both paths and the dispatch
# side by side (BENCH_PATHS overrides which: marlin-bench --paths; FULL_BENCH=0 skips it), and
# tall products (257-4096 rows; TALL_M overrides, TALL_BENCH=0 skips) with the Hopper path, the
# dequant-cublas path and the dispatch side by side (TALL_PATHS overrides which; bench-tall.md,
# bench-tall.json). SUSTAIN_MS=800 adds to both benchmarks each path and cuBLAS timed alone for
# that long (marlin-bench --sustain-ms: the clock each settles at on a power-limited card; ~4.5 s a
# layer and row count at 800). Where COMPARE_REF=... scripts/stage-device.sh staged another build, its kernel
# tests and an A/B of the two benchmarks come first (see below). Logs go to $OUT (or
# ./device-out): bench.md, bench.json, bench-tall.md, bench-tall.json and kernel-logs.tar.gz (test
# logs, sanitizer logs, SASS summary, the A/B tables ab-*.md/json).
#
#   [BENCH_PATHS=hopper:striped,hopper:cluster] scripts/device-kernel-check.sh [marlin-bench args...]
#   [COMPARE_BENCH_ARGS="--layers L8B --m 128,256"] [FULL_BENCH=0] scripts/device-kernel-check.sh
#   COMPARE_TESTS=0 ...   # skip the compared build's kernel tests and sanitizer runs (~210 s on an
#                         # H100), e.g. when that build passed them in an earlier call
#   GEMM_TESTS=0 ...      # skip marlin_gemm_test (run it alone in another call: a device command
#                         # runs 10 minutes at most)
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
run_test() {  # name, then the command (killed after TEST_TIMEOUT s, 300 unless set: a hung kernel
  local name=$1; shift  # must not eat the lease)
  timeout "${TEST_TIMEOUT:-300}" "$@" >"$logs/$name.log" 2>&1
  echo "$name exit: $? ($(grep -E '^\[  (PASSED|FAILED) ' "$logs/$name.log" | tr '\n' ' '))"
}
if [[ ${GEMM_TESTS:-1} == 1 ]]; then  # GEMM_TESTS=0: run in a call of its own (one command's limit)
  # Five paths: 273 s on an H200 machine (16 host cores) since the reference runs on every core.
  TEST_TIMEOUT=540 run_test gemm-tests marlin_gemm_test
fi
run_test device-layout-tests device_layout_test
run_test bench-timing-tests graph_timing_test
run_test power-monitor-tests power_monitor_test
run_test dequantize-tests dequantize_weight_test
run_test cuda-backend-tests marlin_server_cuda_backend_test
run_test e2e-cuda env MARLIN_E2E_BACKEND=cuda marlin_e2e_test
# racecheck only on our kernels: the dequant-cublas path's dequantization shares no memory between
# threads, and cuBLAS's kernels are not ours to check.
for tool in memcheck racecheck; do
  filter='*SanitizerShape*'
  [[ $tool == racecheck ]] && filter='*SanitizerShape*:-*DequantCublas*'
  compute-sanitizer --tool $tool --error-exitcode 9 marlin_gemm_test \
    --gtest_filter="$filter" >"$logs/sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool exit: $? ($(tail -1 "$logs/sanitizer-$tool.log"))"
done
# A/B against the build that COMPARE_REF=... scripts/stage-device.sh staged: its kernel tests, both
# builds' bit-identity test four times over, its sanitizer runs, then both benchmarks (the API as
# dispatched) alternated twice: this build, that build, this build, that build.
if [[ -d device-bundle/compare ]]; then
  ref=device-bundle/compare
  echo "compare: $(cat $ref/REF)"
  run_test bit-identity-x4 marlin_gemm_test --gtest_filter='*BitIdentical*' --gtest_repeat=4
  if [[ ${COMPARE_TESTS:-1} == 1 ]]; then
    TEST_TIMEOUT=540 run_test compare-gemm-tests $ref/marlin_gemm_test
    run_test compare-bit-identity-x4 $ref/marlin_gemm_test --gtest_filter='*BitIdentical*' \
      --gtest_repeat=4
    for tool in memcheck racecheck; do
      compute-sanitizer --tool $tool --error-exitcode 9 $ref/marlin_gemm_test \
        --gtest_filter='*SanitizerShape*' >"$logs/compare-sanitizer-$tool.log" 2>&1
      echo "compare compute-sanitizer $tool exit: $? ($(tail -1 "$logs/compare-sanitizer-$tool.log"))"
    done
  fi
  read -ra ab_args <<<"${COMPARE_BENCH_ARGS:---layers L8B,L70B}"
  for round in 1 2; do
    for side in this compare; do
      bench=marlin-bench
      [[ $side == compare ]] && bench=$ref/marlin-bench
      $bench --paths auto "${ab_args[@]}" \
        --json "$logs/ab-$side-$round.json" >"$logs/ab-$side-$round.md"
      echo "A/B round $round, $side:"
      grep -E '^\| (L8B|L70B|big) \|' "$logs/ab-$side-$round.md"
    done
  done
fi
sustain=()
[[ -n ${SUSTAIN_MS:-} ]] && sustain=(--sustain-ms "$SUSTAIN_MS")
if [[ ${FULL_BENCH:-1} == 1 ]]; then
  marlin-bench --paths "${BENCH_PATHS:-ampere,hopper:striped,hopper:cluster,auto}" \
    --json "$out/bench.json" "${sustain[@]}" "$@" >"$out/bench.md"
  grep -E '^\| (L8B|L70B|big) \|' "$out/bench.md"
fi
# Tall products: the Hopper path (passes, or tall launches from 256 rows) against the
# dequant-cublas path and the dispatch.
if [[ ${TALL_BENCH:-1} == 1 ]]; then
  marlin-bench --paths "${TALL_PATHS:-hopper,dequant-cublas,auto}" \
    --m "${TALL_M:-257,320,384,512,768,1024,2048,4096}" \
    --json "$out/bench-tall.json" "${sustain[@]}" >"$out/bench-tall.md"
  grep -E '^\| (L8B|L70B|big) \|' "$out/bench-tall.md"
fi
tar -czf "$out/kernel-logs.tar.gz" -C "$out" kernel-logs && rm -rf "$logs"
