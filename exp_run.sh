#!/usr/bin/env bash
# Scratch: three consumer warpgroups with group stages at 64 rows (MARLIN_TRI), tests then an A/B.
set -uo pipefail
source device-bundle/env.sh
r=$OUT/r; mkdir -p $r
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $r/gpu.txt
MARLIN_TRI=2 timeout 300 marlin_gemm_test --gtest_filter='*HopperTmaWgmma*:-*Tall*:*Sanitizer*' > $r/test-tri2.log 2>&1
echo "tri2 tests: $? $(grep -E '^\[  (PASSED|FAILED) ' $r/test-tri2.log | tr '\n' ' ')"
for round in 1 2; do
  for q in 0 1 2; do
    if [[ $q == 0 ]]; then unset MARLIN_TRI; else export MARLIN_TRI=$q; fi
    marlin-bench --paths auto --layers L70B,big,L8B --m 40,64 --json $r/ab-$q-$round.json > $r/ab-$q-$round.md 2>&1
    echo "round $round tri $q:"; grep -E '^\| (L8B|L70B|big) \|' $r/ab-$q-$round.md
  done
done
unset MARLIN_TRI
tar czf $OUT/r.tar.gz -C $OUT r
