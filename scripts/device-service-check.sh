#!/usr/bin/env bash
# Runs on the GPU machine from the repo root (after scripts/stage-device.sh staged the service
# binaries into device-bundle/): the CUDA-backend service measured end to end with marlin-loadgen
# on the same machine. Closed-loop sweeps for 1- and 16-row requests (stream and unary), batching
# off, the null backend (transport ceiling) and an open-loop rate sweep. Everything is logged
# under $OUT (one tarball plus summary.txt, since few files come back).
#
#   scripts/device-service-check.sh [seconds-per-point]
set -uo pipefail
out=${OUT:-device-out}
mkdir -p "$out/svc"
log="$out/svc"
source device-bundle/env.sh
dur=${1:-3}
addr=127.0.0.1:50051
metrics=127.0.0.1:9400
server_pid=

start_server() {  # args: extra server flags
  marlin-server --listen "$addr" --metrics-listen "$metrics" "$@" >"$log/server-$run.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    marlin-cli --server "$addr" health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server did not become healthy ($run)"; tail -5 "$log/server-$run.log"; return 1
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid"
  echo "server ($run) exit: $?"
}
loadgen() {  # args: name, loadgen flags
  local name=$1; shift
  marlin-loadgen --server "$addr" --metrics "$metrics" --duration "$dur" --warmup 1 --progress never \
    --json "$log/$name.json" --csv "$log/$name.csv" "$@" >"$log/$name.txt" 2>&1
  echo "== $name (exit $?)"; cat "$log/$name.txt"
}

run=cuda
start_server --backend cuda && {
  loadgen w8k-r1-stream --create 8192,8192 --create-id w8k --keep --verify-fraction 0.02 \
    --mode stream --streams 64 --rows 1 --concurrency 1,16,64,256,512
  loadgen w8k-r16-stream --ids w8k --mode stream --streams 64 --rows 16 --concurrency 1,16,64,256
  loadgen w8k-r1-unary --ids w8k --mode unary --rows 1 --concurrency 1,16,64,256
  loadgen w8k-r1-open --ids w8k --mode stream --streams 64 --rows 1 --rate 2000,10000,40000
  loadgen w28k-r1-stream --create 8192,28672 --create-id w28k --keep \
    --mode stream --streams 64 --rows 1 --concurrency 1,64,256,512
  loadgen w28k-r16-stream --ids w28k --mode stream --streams 64 --rows 16 --concurrency 1,64,256
  stop_server
}
run=nobatch
start_server --backend cuda --max-batch-rows 1 && {
  loadgen nobatch-w8k-r1-stream --create 8192,8192 --create-id w8k --mode stream --streams 64 \
    --rows 1 --concurrency 1,256
  stop_server
}
run=null
start_server --backend null && {
  loadgen null-r1-stream --create 8192,8192 --create-id w8k --keep --mode stream --streams 64 \
    --rows 1 --concurrency 1,64,256,512
  loadgen null-r16-stream --ids w8k --mode stream --streams 64 --rows 16 --concurrency 1,64,256
  stop_server
}
tar -czf "$out/service-logs.tar.gz" -C "$out" svc && rm -rf "$out/svc"
