#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan+UBSan) and runs each for SECONDS from its
# seed corpus (tests/fuzz/corpus/<target>/, read only; new inputs go to a scratch corpus).
#
#   scripts/fuzz.sh 60                 # every target, 60 s each, one after another
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

status=0
for t in "${targets[@]}"; do
  work="$build/corpus/$t"
  crashes="$build/crashes/$t"
  mkdir -p "$work" "$crashes"
  log="$build/fuzz-$t.log"
  set +e
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 \
    -max_len=262144 -print_final_stats=1 -artifact_prefix="$crashes/" \
    "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  found=$(find "$crashes" -type f | wc -l)
  echo "fuzz: $t seconds=$seconds executions=$execs coverage=$cov corpus=$(find "$work" -maxdepth 1 -type f | wc -l) crashes=$found rc=$rc"
  if ((rc != 0 || found != 0)); then
    status=1
    tail -40 "$log"
  fi
done
exit $status
