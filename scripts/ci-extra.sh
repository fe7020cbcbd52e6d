#!/usr/bin/env bash
# The slower checks beyond scripts/test.sh: sanitizer builds, fuzz smoke runs and the soak.
#
#   scripts/ci-extra.sh            # asan + tsan + fuzz (60 s each) + soak (60 s)
#   scripts/ci-extra.sh asan fuzz  # chosen steps
#
# asan: ASan+UBSan build (build-asan), every test except label gpu and soak.
# tsan: TSan build (build-tsan), the batcher, service, server-app (e2e) and hardening tests.
# fuzz: scripts/fuzz.sh ${FUZZ_SECONDS:-60} for every target.
# soak: the bounded soak (MARLIN_SOAK_SECONDS, default 60) in the ASan build.
# Each step prints its wall time. Not wired into .ci/run: see docs/reliability.md for the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
((${#steps[@]})) || steps=(asan tsan fuzz soak)
jobs=${JOBS:-2}
scripts/install-deps.sh >/dev/null

configure() {  # dir sanitizer [extra cmake args]
  local dir=$1 san=$2
  shift 2
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMARLIN_CUDA=OFF \
    -DMARLIN_WERROR=ON -DMARLIN_SANITIZE="$san" "$@" >/dev/null
}

for step in "${steps[@]}"; do
  start=$(date +%s)
  case $step in
    asan)
      configure build-asan address -DMARLIN_SOAK=ON
      cmake --build build-asan -j "$jobs"
      ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -LE 'gpu|soak'
      ;;
    tsan)
      configure build-tsan thread
      cmake --build build-tsan -j "$jobs" --target marlin_batcher_test marlin_server_executor_test \
        marlin_e2e_test marlin_hardening_security_test marlin_hardening_bad_input_test \
        marlin_hardening_fault_test
      TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        ctest --test-dir build-tsan --output-on-failure -j "$jobs" --timeout 900 \
        -R 'Batcher|Executor|E2e|Token|Tls|Listen|BadInput|Fault'
      ;;
    fuzz)
      JOBS=$jobs scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
      ;;
    soak)
      [[ -d build-asan ]] || { configure build-asan address -DMARLIN_SOAK=ON; }
      cmake --build build-asan -j "$jobs" --target marlin_hardening_soak_test
      MARLIN_SOAK_SECONDS=${MARLIN_SOAK_SECONDS:-60} ctest --test-dir build-asan \
        --output-on-failure -L soak --timeout 900
      ;;
    *)
      echo "ci-extra: unknown step $step (asan, tsan, fuzz, soak)" >&2
      exit 2
      ;;
  esac
  echo "ci-extra: $step took $(($(date +%s) - start)) s"
done
