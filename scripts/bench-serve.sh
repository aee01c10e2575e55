#!/usr/bin/env bash
# Request rate and latency of `segtrain serve` for small PNGs, for one or more segtrain binaries
# (e.g. before and after a change to the HTTP stack), measured with ApacheBench (apache2-utils).
#
#   scripts/bench-serve.sh [ROUNDS] BINARY...     # default 3 rounds
#
# A tiny model (32 px, base 4, depth 2) is trained once with the first binary; each binary serves it
# on 127.0.0.1 with --threads 1, and `ab` posts one 32x32 PNG (about 2.5 KB) to /v1/segment: N
# requests at concurrency C (BENCH_N, default 4000; BENCH_C, default 4), first on a new connection
# per request, then kept alive (-k). Binaries alternate within each round, so that load from other
# work on the machine spreads over all of them. One line per run: requests/s, mean and p50/p99 ms,
# failed requests, and the server's CPU time per request (user + system from /proc/PID/stat, which
# other work on a shared machine disturbs far less than the rate). Compare medians over rounds.
set -euo pipefail
rounds=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
(( $# >= 1 )) || { echo "usage: scripts/bench-serve.sh [ROUNDS] BINARY..." >&2; exit 64; }
command -v ab >/dev/null || { echo "bench-serve.sh: ab not found (apt-get install apache2-utils)" >&2; exit 1; }
n=${BENCH_N:-4000}
c=${BENCH_C:-4}
work=$(mktemp -d /tmp/segtrain-bench-serve.XXXXXX)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

first=$1
"$first" synth --out "$work/data" --count 8 --size 32 --classes 1 >/dev/null
"$first" train --data "$work/data" --out "$work/run" --epochs 1 --image-size 32 --base-channels 4 --depth 2 \
    --batch-size 4 --threads 1 >/dev/null 2>&1
png=$(ls "$work"/data/images/*.png | head -1)
echo "image: $(basename "$png"), $(stat -c %s "$png") bytes; $n requests, concurrency $c"

for round in $(seq 1 "$rounds"); do
    for binary in "$@"; do
        : >"$work/out"
        "$binary" serve --model "$work/run" --port 0 --threads 1 >"$work/out" 2>/dev/null &
        pid=$!
        for _ in $(seq 1 100); do grep -q '^serving ' "$work/out" && break; sleep 0.05; done
        port=$(sed -n 's/^serving .*:\([0-9]*\)$/\1/p' "$work/out")
        [[ -n $port ]] || { echo "bench-serve.sh: $binary did not start" >&2; exit 1; }
        url="http://127.0.0.1:$port/v1/segment"
        ab -q -n 200 -c "$c" -p "$png" -T image/png "$url" >/dev/null  # warm-up
        for mode in new keepalive; do
            flag=(); [[ $mode == keepalive ]] && flag=(-k)
            cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            ab -q "${flag[@]}" -n "$n" -c "$c" -p "$png" -T image/png "$url" >"$work/ab" 2>&1 || true
            cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            ticks=$(getconf CLK_TCK)
            cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$ticks" -v n="$n" 'BEGIN {printf "%.0f", (b - a) / t / n * 1e6}')
            rate=$(awk '/^Requests per second/ {print $4}' "$work/ab")
            mean=$(awk '/^Time per request:.*\(mean\)$/ {print $4}' "$work/ab")
            p50=$(awk '$1 == "50%" {print $2}' "$work/ab")
            p99=$(awk '$1 == "99%" {print $2}' "$work/ab")
            failed=$(awk '/^Failed requests/ {print $3}' "$work/ab")
            printf 'round %d  %-40s %-9s %8s req/s  mean %6s ms  p50 %3s ms  p99 %3s ms  failed %s  server CPU %s us/request\n' \
                "$round" "$binary" "$mode" "${rate:-?}" "${mean:-?}" "${p50:-?}" "${p99:-?}" "${failed:-?}" "$cpu"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    done
done
