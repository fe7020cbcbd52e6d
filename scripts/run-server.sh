#!/usr/bin/env bash
# Installs what is needed, builds marlin-server (Release, into build/), and starts it on localhost
# (CUDA backend when a GPU is visible, CPU otherwise). Extra arguments go to marlin-server, e.g.
#
#   scripts/run-server.sh                          # 127.0.0.1:50051, metrics on 127.0.0.1:9400
#   scripts/run-server.sh --weights-dir ./weights  # load weights before reporting SERVING
#   scripts/run-server.sh --backend=null           # transport ceiling (answers zeros)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs" --target marlin-server marlin-cli marlin-loadgen

listen=127.0.0.1:50051
prev=""
for arg in "$@"; do
  case $arg in --listen=*) listen=${arg#--listen=} ;; esac
  [[ $prev == --listen ]] && listen=$arg
  prev=$arg
done
cat <<MSG

marlin-server starting on ${listen} (stop with Ctrl-C: it drains, then exits 0).
Call it from another shell:
  ${build}/bin/marlin-cli --server localhost:${listen##*:} info
  grpcurl -plaintext localhost:${listen##*:} list                      # server reflection
  grpcurl -plaintext localhost:${listen##*:} grpc.health.v1.Health/Check
  curl -s localhost:9400/metrics | grep ^marlin_                        # Prometheus metrics
Flags: ${build}/bin/marlin-server --help   Docs: docs/server.md

MSG
exec "${build}/bin/marlin-server" "$@"
