#!/usr/bin/env bash
# The slower checks beyond scripts/test.sh: sanitizer builds, fuzz smoke runs and the soak.
#
#   scripts/ci-extra.sh            # asan + tsan + fuzz (60 s each) + soak (60 s)
#   scripts/ci-extra.sh asan fuzz  # chosen steps
#
# asan: ASan+UBSan build (build-asan), every test except label gpu and soak.
# tsan: TSan build (build-tsan), the tests of std-synchronized code (see the step).
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
  # Warnings are errors in the main build (scripts/test.sh); instrumented builds only report them:
  # GCC 12's flow analysis under -fsanitize=thread flags std::vector inserts it cannot see through.
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMARLIN_CUDA=OFF \
    -DMARLIN_WERROR=OFF -DMARLIN_SANITIZE="$san" "$@" >/dev/null
}

for step in "${steps[@]}"; do
  start=$(date +%s)
  case $step in
    asan)
      configure build-asan address -DMARLIN_SOAK=ON
      cmake --build build-asan -j "$jobs"
      ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -LE 'gpu|soak|deploy'
      ;;
    tsan)
      # Debian's Abseil is not built with TSan, so absl::Mutex (the batcher, the service, the weight
      # store) is invisible to it and every section it guards reads as a race. TSan therefore covers
      # the code synchronized through the C++ standard library: the CPU backend's thread pool and
      # concurrent products. The absl::Mutex code is exercised by the e2e, hardening and soak tests.
      configure build-tsan thread
      cmake --build build-tsan -j "$jobs" --target thread_pool_test cpu_gemm_test
      TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        ctest --test-dir build-tsan --output-on-failure -j "$jobs" --timeout 900 \
        -R 'ThreadPool|CpuGemm'
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
