#!/usr/bin/env bash
# Runs on the GPU machine from the repo root (after scripts/stage-device.sh staged the service
# binaries into device-bundle/): the service measured end to end with marlin-loadgen on the same
# machine, covering every run of issue 8's targets:
#   - 8192x8192 and 8192x28672, 1- and 16-row requests, stream and unary, closed loop c = 1..512;
#   - "256 concurrent single-row streams" (one stream per concurrent request: --streams 256
#     --concurrency 256) with batching on and off (--max-batch-rows 1);
#   - an open-loop sweep at 1/4, 1/2, 3/4 and 1x the measured closed-loop peak (p99 at half the
#     peak is target (c));
#   - the null backend (the transport ceiling), and the old timed batching policy
#     (--work-conserving=false) for comparison.
# Streams are spread over --connections TCP connections (one connection's transport is a ceiling
# of its own). 54 points of (1 s warm-up + 2 s) plus weight uploads and four server starts:
# ~4-5 minutes (81 s locally with 0.3 s points and small weights). Everything is logged under
# $OUT (one tarball plus summary.txt, since few files come back).
#
#   scripts/device-service-check.sh [seconds-per-point]
set -uo pipefail
out=${OUT:-device-out}
mkdir -p "$out/svc"
log="$out/svc"
source device-bundle/env.sh
dur=${1:-2}
addr=127.0.0.1:50051
metrics=127.0.0.1:9400
conns=8        # TCP connections of the load generator
server_pid=
t0=$(date +%s)

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
  echo "server ($run) exit: $? at +$(( $(date +%s) - t0 )) s"
}
loadgen() {  # args: name, loadgen flags
  local name=$1; shift
  marlin-loadgen --server "$addr" --metrics "$metrics" --duration "$dur" --warmup 1 --progress never \
    --connections "$conns" --json "$log/$name.json" --csv "$log/$name.csv" \
    --report "$log/$name.html" "$@" >"$log/$name.txt" 2>&1
  echo "== $name (exit $?)"; cat "$log/$name.txt"
}
# The highest req/s of a closed-loop run (column 10 of its CSV); 1000 when it did not run.
peak() { awk -F, 'NR > 1 && $10 > m { m = $10 } END { printf "%d", (m > 0 ? m : 1000) }' "$log/$1.csv"; }
# Rates at the given fractions of a peak, comma-separated.
rates() {  # args: peak, fractions...
  local p=$1; shift
  local r=(); for f in "$@"; do r+=("$(awk -v p="$p" -v f="$f" 'BEGIN { printf "%d", p * f }')"); done
  (IFS=,; echo "${r[*]}")
}
s64=(--mode stream --streams 64)
s256=(--mode stream --streams 256 --concurrency 256)  # one stream per concurrent request

run=cuda
start_server --backend cuda && {
  loadgen w8k-r1-stream --create 8192,8192 --create-id w8k --keep --verify-fraction 0.001 \
    "${s64[@]}" --rows 1 --concurrency 1,16,64,256,512
  loadgen w8k-r1-s256 --ids w8k "${s256[@]}" --rows 1
  loadgen w8k-r1-unary --ids w8k --mode unary --rows 1 --concurrency 1,16,64,256,512
  loadgen w8k-r16-stream --ids w8k "${s64[@]}" --rows 16 --concurrency 1,16,64,256
  loadgen w8k-r16-unary --ids w8k --mode unary --rows 16 --concurrency 1,64,256
  p1=$(peak w8k-r1-stream); p16=$(peak w8k-r16-stream)
  loadgen w8k-r1-open --ids w8k "${s64[@]}" --rows 1 --rate "$(rates "$p1" 0.25 0.5 0.75 1.0)"
  loadgen w8k-r16-open --ids w8k "${s64[@]}" --rows 16 --rate "$(rates "$p16" 0.25 0.5)"
  loadgen w28k-r1-stream --create 8192,28672 --create-id w28k --keep \
    "${s64[@]}" --rows 1 --concurrency 1,64,256,512
  loadgen w28k-r16-stream --ids w28k "${s64[@]}" --rows 16 --concurrency 1,64,256
  loadgen w28k-r1-unary --ids w28k --mode unary --rows 1 --concurrency 64,256
  loadgen w28k-r1-open --ids w28k "${s64[@]}" --rows 1 --rate "$(rates "$(peak w28k-r1-stream)" 0.5)"
  stop_server
}
run=nobatch
start_server --backend cuda --max-batch-rows 1 && {
  loadgen nobatch-w8k-r1-stream --create 8192,8192 --create-id w8k --keep "${s64[@]}" --rows 1 \
    --concurrency 1,64,256
  loadgen nobatch-w8k-r1-s256 --ids w8k "${s256[@]}" --rows 1
  stop_server
}
run=timed
start_server --backend cuda --work-conserving false && {
  loadgen timed-w8k-r1-stream --create 8192,8192 --create-id w8k --keep "${s64[@]}" --rows 1 \
    --concurrency 1,256
  loadgen timed-w8k-r1-s256 --ids w8k "${s256[@]}" --rows 1
  stop_server
}
run=null
start_server --backend null && {
  loadgen null-w8k-r1-stream --create 8192,8192 --create-id w8k --keep "${s64[@]}" --rows 1 \
    --concurrency 1,64,256,512
  loadgen null-w8k-r1-s256 --ids w8k "${s256[@]}" --rows 1
  loadgen null-w8k-r1-unary --ids w8k --mode unary --rows 1 --concurrency 256
  loadgen null-w8k-r16-stream --ids w8k "${s64[@]}" --rows 16 --concurrency 1,64,256
  loadgen null-w28k-r1-stream --create 8192,28672 --create-id w28k --keep "${s64[@]}" --rows 1 \
    --concurrency 256,512
  loadgen null-w28k-r16-stream --ids w28k "${s64[@]}" --rows 16 --concurrency 64,256
  stop_server
}
echo "total: $(( $(date +%s) - t0 )) s"
tar -czf "$out/service-logs.tar.gz" -C "$out" svc && rm -rf "$out/svc"
