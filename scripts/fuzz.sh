#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan+UBSan) and runs each for SECONDS from its
# seed corpus (tests/fuzz/corpus/<target>/, read only; new inputs go to a scratch corpus).
#
#   scripts/fuzz.sh 60                 # every target, 60 s each, JOBS (2) at a time
#   scripts/fuzz.sh 600 npy gptq       # chosen targets
#   JOBS=2 FUZZ_BUILD=build-fuzz scripts/fuzz.sh 60
#
# Prints one summary line per target (executions, corpus size, crashes); exits 1 on a crash, with
# the reproducer under $FUZZ_BUILD/crashes/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(upload gptq safetensors npy matmul_request)
build=${FUZZ_BUILD:-build-fuzz}
jobs=${JOBS:-2}

scripts/install-deps.sh --fuzz >/dev/null
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMARLIN_CUDA=OFF -DMARLIN_FUZZ=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$build" -j "$jobs" --target "${targets[@]/%/_fuzz}"

# One target's run; prints its summary line and returns non-zero on a crash.
run_target() {
  local t=$1 work="$build/corpus/$1" crashes="$build/crashes/$1" log="$build/fuzz-$1.log" rc
  mkdir -p "$work" "$crashes"
  set +e
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 \
    -max_len=262144 -print_final_stats=1 -artifact_prefix="$crashes/" \
    "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  local execs cov found
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  found=$(find "$crashes" -type f | wc -l)
  echo "fuzz: $t seconds=$seconds executions=$execs coverage=$cov corpus=$(find "$work" -maxdepth 1 -type f | wc -l) crashes=$found rc=$rc"
  if ((rc != 0 || found != 0)); then
    tail -40 "$log"
    return 1
  fi
}

# Each libFuzzer process uses one core: JOBS of them run at once, their output printed in target
# order once every one is done.
status=0
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
  pids=()
  for t in "${targets[@]:i:jobs}"; do
    run_target "$t" >"$build/fuzz-$t.summary" 2>&1 &
    pids+=($!)
  done
  for j in "${!pids[@]}"; do
    wait "${pids[j]}" || status=1
    cat "$build/fuzz-${targets[i + j]}.summary"
  done
done
exit $status
