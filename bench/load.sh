#!/usr/bin/env bash
# Load benchmark of POST /route/batch against a release build, next to the
# "floor" (examples/floor.rs: same JSON in, same shape out, trivial routing).
#
#   bench/load.sh                 # defaults: 10 s per run, 16 connections
#   DURATION=30s CONNECTIONS=64 bench/load.sh
#
# Needs wrk (Debian: apt-get install wrk; installed here when missing and root).
# Servers run on core 0 and wrk on core 1 where taskset exists. Only loopback
# addresses are used; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
NODES=${NODES:-50}
PORT=${PORT:-5901}
FLOOR_PORT=${FLOOR_PORT:-5902}
TOKEN=bench-admin-token-0123456789
BASE=http://127.0.0.1:$PORT
H='Content-Type: application/json'

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
  else
    echo "wrk is required (apt-get install wrk)" >&2; exit 1
  fi
fi
SERVER_CPU=() LOAD_CPU=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0) LOAD_CPU=(taskset -c 1)
fi

cargo build --release --quiet --bin imroute --example floor

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_up() { # url
  for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "server at $1 did not start" >&2; exit 1
}

IMROUTE_LISTEN=127.0.0.1:$PORT IMROUTE_DATABASE_URL="sqlite://$work/imroute.db" \
IMROUTE_OVERRIDES_PATH="$work/overrides.yaml" IMROUTE_ADMIN_TOKEN=$TOKEN \
TOKIO_WORKER_THREADS=1 RUST_LOG=warn "${SERVER_CPU[@]}" target/release/imroute serve 2>"$work/imroute.log" &
pids+=($!); IMROUTE_PID=$!
TOKIO_WORKER_THREADS=1 "${SERVER_CPU[@]}" target/release/examples/floor 127.0.0.1:$FLOOR_PORT &
pids+=($!)
wait_up "$BASE/healthz"; wait_up "http://127.0.0.1:$FLOOR_PORT/"

add_nodes() { # from to
  for i in $(seq "$1" "$2"); do
    curl -sf -o /dev/null -X POST "$BASE/admin/nodes" -H "Authorization: Bearer $TOKEN" -H "$H" -d "{
      \"id\": \"gw-$i\", \"region\": \"eu\",
      \"external\": {\"tcp_addr\": \"10.0.$((i / 256)).$((i % 256)):5100\",
                     \"ws_addr\": \"ws://gw-$i.example.com:5200\", \"wss_addr\": \"wss://gw-$i.example.com:5300\"}}"
  done
}
add_nodes 1 "$NODES"

body() { # n -> file
  seq -f '"user-%08g"' 0 $(($1 - 1)) | paste -sd, | sed 's/^/[/; s/$/]/' >"$work/body-$1.json"
  echo "$work/body-$1.json"
}

# run URL BODY_FILE [connections] -> "req/s p50 p99" (latencies in ms);
# BODY_FILE "get" sends GET /route?uid=... with a new uid each time.
run() {
  local out script=bench/post.lua
  [ "$2" = get ] && script=bench/get.lua
  out=$(BODY_FILE="$2" "${LOAD_CPU[@]}" wrk -t1 -c"${3:-$CONNECTIONS}" -d"$DURATION" --latency -s "$script" "$1")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk latency (e.g. 812.00us, 1.20ms, 2.01s) -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# Server-side mean latency of an endpoint (default /route/batch) from the
# Prometheus histogram.
server_stats() {
  local endpoint=${1:-/route/batch}
  curl -s "$BASE/metrics" | awk -v e="{endpoint=\"$endpoint\"}" 'index($1, "imroute_http_request_duration_seconds_sum" e) == 1 || index($1, "imroute_http_request_duration_seconds_count" e) == 1 {print $2}' | paste -sd' '
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$IMROUTE_PID/status"; }

echo "# imroute load benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
echo "# $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB;" \
     "wrk -t1 -c$CONNECTIONS -d$DURATION; $NODES nodes; servers ${SERVER_CPU[*]:-unpinned}, wrk ${LOAD_CPU[*]:-unpinned}"
echo
echo "| uids/batch | imroute req/s | imroute uids/s | p50 ms | p99 ms | server mean ms | floor req/s | floor p50 ms | ratio |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in 1 100 1000 10000; do
  f=$(body "$n")
  read -r s0 c0 <<<"$(server_stats)"
  read -r rps p50 p99 <<<"$(run "$BASE/route/batch?intranet=0" "$f")"
  read -r s1 c1 <<<"$(server_stats)"
  read -r frps fp50 _ <<<"$(run "http://127.0.0.1:$FLOOR_PORT/route/batch" "$f")"
  awk -v n="$n" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v frps="$frps" -v fp50="$fp50" \
      -v s0="${s0:-0}" -v s1="${s1:-0}" -v c0="${c0:-0}" -v c1="${c1:-0}" 'BEGIN {
    mean = (c1 > c0) ? (s1 - s0) / (c1 - c0) * 1000 : 0
    printf "| %d | %.0f | %.0f | %.3f | %.3f | %.3f | %.0f | %.3f | %.2f |\n", n, rps, rps * n, p50, p99, mean, frps, fp50, rps / frps }'
done

# One user per request, as every WuKongIM client asks on connect.
read -r s0 c0 <<<"$(server_stats /route)"
read -r rps p50 p99 <<<"$(run "$BASE/route" get)"
read -r s1 c1 <<<"$(server_stats /route)"
read -r frps fp50 _ <<<"$(run "http://127.0.0.1:$FLOOR_PORT/route" get)"
awk -v rps="$rps" -v p50="$p50" -v p99="$p99" -v frps="$frps" -v fp50="$fp50" \
    -v s0="${s0:-0}" -v s1="${s1:-0}" -v c0="${c0:-0}" -v c1="${c1:-0}" 'BEGIN {
  mean = (c1 > c0) ? (s1 - s0) / (c1 - c0) * 1000 : 0
  printf "| GET /route?uid= | %.0f | %.0f | %.3f | %.3f | %.3f | %.0f | %.3f | %.2f |\n", rps, rps, p50, p99, mean, frps, fp50, rps / frps }'

echo
echo "## 10,000-uid batch, one connection (latency as the client sees it)"
read -r rps p50 p99 <<<"$(run "$BASE/route/batch?intranet=0" "$work/body-10000.json" 1)"
read -r frps fp50 fp99 <<<"$(run "http://127.0.0.1:$FLOOR_PORT/route/batch" "$work/body-10000.json" 1)"
echo "imroute: req/s $rps, p50 ${p50} ms, p99 ${p99} ms"
echo "floor:   req/s $frps, p50 ${fp50} ms, p99 ${fp99} ms"
awk -v a="$p50" -v b="$fp50" 'BEGIN { printf "time ratio (p50, imroute / floor): %.2f\n", a / b }'

echo
echo "## Throughput while admin writes and overrides reloads arrive (100-uid batches)"
f="$work/body-100.json"
read -r s0 c0 <<<"$(server_stats)"
read -r base _ base_p99 <<<"$(run "$BASE/route/batch?intranet=0" "$f")"
read -r s1 c1 <<<"$(server_stats)"
"${LOAD_CPU[@]}" python3 bench/churn.py "$BASE" "$TOKEN" "$work/overrides.yaml" "${DURATION%s}" "$NODES" >"$work/churn.out" &
churn=$!
read -r busy _ busy_p99 <<<"$(run "$BASE/route/batch?intranet=0" "$f")"
read -r s2 c2 <<<"$(server_stats)"
wait "$churn"
reloads=$(curl -s "$BASE/metrics" | awk '/^imroute_overrides_reloads_total\{result="ok"\}/ {print $2}')
awk -v a="$base" -v b="$busy" -v ap="$base_p99" -v bp="$busy_p99" -v s0="$s0" -v s1="$s1" -v s2="$s2" -v c0="$c0" -v c1="$c1" -v c2="$c2" 'BEGIN {
  printf "quiet: %.0f req/s, p99 %.3f ms, server mean %.4f ms\n", a, ap, (s1 - s0) / (c1 - c0) * 1000
  printf "busy:  %.0f req/s, p99 %.3f ms, server mean %.4f ms (%+.1f%% req/s)\n", b, bp, (s2 - s1) / (c2 - c1) * 1000, (b / a - 1) * 100 }'
echo "churn: $(cat "$work/churn.out"); $reloads successful overrides loads in all"

echo
echo "## Memory with 1,000 nodes and 10,000 pins"
add_nodes $((NODES + 1)) 1000
{ echo "pins:"; for i in $(seq 1 10000); do echo "  pinned-$i: gw-$((i % 1000 + 1))"; done; } >"$work/overrides.yaml.tmp"
mv "$work/overrides.yaml.tmp" "$work/overrides.yaml"
curl -sf -o /dev/null -X POST "$BASE/admin/overrides/reload" -H "Authorization: Bearer $TOKEN"
pins=$(curl -s "$BASE/admin/routing" -H "Authorization: Bearer $TOKEN" | sed 's/.*"pins":\([0-9]*\).*/\1/')
read -r rps _ _ <<<"$(run "$BASE/route/batch?intranet=0" "$work/body-10000.json")"
echo "RSS $(rss_mib) MiB after a 10,000-uid load over 1000 nodes with $pins pins ($rps req/s)"
