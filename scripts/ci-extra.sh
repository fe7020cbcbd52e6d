#!/usr/bin/env bash
# The slower checks beyond scripts/test.sh: sanitizer builds, fuzz smoke runs and the soak.
#
#   scripts/ci-extra.sh            # asan + tsan + fuzz (60 s each) + soak (60 s)
#   scripts/ci-extra.sh asan fuzz  # chosen steps
#
# asan: ASan+UBSan build (build-asan), every test except labels gpu, soak and deploy.
# tsan: TSan build (build-tsan), every test except labels gpu, soak and deploy (see the step).
# fuzz: scripts/fuzz.sh ${FUZZ_SECONDS:-60} for every target.
# soak: the bounded soak (MARLIN_SOAK_SECONDS, default 60) in the ASan build.
# Each step prints its wall time. .ci/run runs all four after scripts/test.sh; docs/reliability.md
# has the measured budget.
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
  # Line tables only (-g1: file and line in every report, a fraction of full debug info's compile
  # time). ASan+UBSan at -O1, as their documentation advises; TSan stays at -O2: its annotations
  # for gRPC (tests/tsan/library_sync_annotations.cc) hold for the code -O2 inlines from gRPC's
  # headers, and at -O1 two fault tests reported races inside that code. Measured on a 2-core
  # machine like CI's: the ASan build 630 -> 358 s, the TSan build ~300 -> 232 s.
  local opt=-O2
  [[ $san == address ]] && opt=-O1
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMARLIN_CUDA=OFF \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="$opt -g1 -DNDEBUG" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$opt -g1 -DNDEBUG" \
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
      # Every test but gpu, soak and deploy: the batcher, weight store, executor, service, server,
      # client, e2e and hardening suites (the client suites also run TSan builds of marlin-server,
      # marlin-cli and marlin-loadgen). Debian's gRPC and Abseil are not TSan-built: the
      # happens-before edges they guarantee are marked by tests/tsan/library_sync_annotations.cc,
      # linked into every executable of this build, and scripts/tsan.supp has TSan ignore the
      # memory accesses of the C library calls they make. Reports of every process go to
      # build-tsan/tsan-reports/ (a child server's stderr may not reach ctest); any fails the step.
      configure build-tsan thread
      cmake --build build-tsan -j "$jobs"
      reports=$PWD/build-tsan/tsan-reports
      rm -rf "$reports" && mkdir -p "$reports"
      status=0
      TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp:second_deadlock_stack=1:log_path=$reports/tsan" \
        ctest --test-dir build-tsan --output-on-failure -j "$jobs" --timeout 900 \
        -LE 'gpu|soak|deploy' || status=$?
      shopt -s nullglob
      logs=("$reports"/tsan.*)
      shopt -u nullglob
      if ((${#logs[@]})); then
        cat "${logs[@]}"
        echo "ci-extra: ThreadSanitizer reported in ${#logs[@]} processes (above)" >&2
        status=1
      fi
      ((status == 0)) || exit "$status"
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
