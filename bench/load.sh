#!/usr/bin/env bash
# Load benchmark of POST /route/batch and GET /route against a release
# build, next to the "floor" (examples/floor.rs: same JSON in, same shape
# out, an xxh3 instead of routing).
#
#   bench/load.sh                 # defaults: 3 rounds of 5 s per server, 16 connections
#   DURATION=10s ROUNDS=5 CONNECTIONS=64 bench/load.sh
#
# imroute and the floor take turns (ROUNDS rounds of each), so both see the
# same moments of a shared machine; tables give medians, the per-round
# ratios' range, and each server's own CPU time per request (read from
# /proc, all threads), which moves less than req/s does.
#
# Needs wrk (Debian: apt-get install wrk; installed here when missing and root).
# Servers run on core 0 and wrk on core 1 where taskset exists. Only loopback
# addresses are used; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
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
pids+=($!); FLOOR_PID=$!
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

# run URL BODY_FILE PID [connections] -> "req/s p50 p99 cpu" (latencies in
# ms; cpu: the server's CPU time, all threads, in µs per request);
# BODY_FILE "get" sends GET /route?uid=... with a new uid each time.
run() {
  local out script=bench/post.lua
  [ "$2" = get ] && script=bench/get.lua
  local t0 t1
  t0=$(cpu_ticks "$3")
  out=$(BODY_FILE="$2" "${LOAD_CPU[@]}" wrk -t1 -c"${4:-$CONNECTIONS}" -d"$DURATION" --latency -s "$script" "$1")
  t1=$(cpu_ticks "$3")
  local rps p50 p99 reqs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  if [[ -z $rps || ${reqs:-0} -eq 0 ]]; then
    echo "wrk against $1 failed or answered nothing:" >&2; echo "$out" >&2; exit 1
  fi
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / (n > 0 ? n : 1) }')"
}
HZ=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of every thread (fields 14 and 15, counted after the name)
  kill -0 "$1" 2>/dev/null || { echo "server $1 is gone" >&2; exit 1; }
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
to_ms() { # wrk latency (e.g. 812.00us, 1.20ms, 2.01s) -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }'; }
# Server-side mean latency of an endpoint (default /route/batch) from the
# Prometheus histogram.
server_stats() {
  local endpoint=${1:-/route/batch}
  curl -s "$BASE/metrics" | awk -v e="{endpoint=\"$endpoint\"}" 'index($1, "imroute_http_request_duration_seconds_sum" e) == 1 || index($1, "imroute_http_request_duration_seconds_count" e) == 1 {print $2}' | paste -sd' '
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$IMROUTE_PID/status"; }

# pair LABEL IMROUTE_URL FLOOR_URL BODY_FILE [connections]: ROUNDS rounds of
# both servers, imroute first in odd rounds and the floor first in even ones,
# so both see the same moments of a noisy machine and neither always goes
# first; prints a table row of medians and the per-round ratios' range.
pair() {
  local label=$1 r rps p50 p99 cpu frps fp50 fp99 fcpu
  : >"$work/pair"
  for r in $(seq 1 "$ROUNDS"); do
    if ((r % 2)); then
      read -r rps p50 p99 cpu <<<"$(run "$2" "$4" "$IMROUTE_PID" "${5:-}")"
      read -r frps fp50 fp99 fcpu <<<"$(run "$3" "$4" "$FLOOR_PID" "${5:-}")"
    else
      read -r frps fp50 fp99 fcpu <<<"$(run "$3" "$4" "$FLOOR_PID" "${5:-}")"
      read -r rps p50 p99 cpu <<<"$(run "$2" "$4" "$IMROUTE_PID" "${5:-}")"
    fi
    echo "$rps $p50 $p99 $cpu $frps $fp50 $fp99 $fcpu" >>"$work/pair"
  done
  col() { awk -v c="$1" '{ print $c }' "$work/pair" | median; }
  ratios() { awk '{ print $1 / $5 }' "$work/pair" | "$1"; }
  cpu_ratios() { awk '{ print $8 / $4 }' "$work/pair" | "$1"; }
  printf "| %s | %.0f | %.3f | %.3f | %.2f | %.0f | %.3f | %.2f | **%.2f** (%s) | %.2f (%s) |\n" "$label" \
    "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(col 8)" \
    "$(ratios median)" "$(ratios range)" "$(cpu_ratios median)" "$(cpu_ratios range)"
}

echo "# imroute load benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
echo "# $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB;" \
     "wrk -t1 -c$CONNECTIONS -d$DURATION; $NODES nodes; $ROUNDS alternating rounds; servers ${SERVER_CPU[*]:-unpinned}, wrk ${LOAD_CPU[*]:-unpinned}"
echo
echo "Medians of $ROUNDS rounds. ratio: imroute req/s ÷ floor req/s per round (median, range);"
echo "CPU ratio: floor CPU per request ÷ imroute CPU per request (the same reading, from the servers' own CPU time)."
echo
echo "| request | imroute req/s | p50 ms | p99 ms | CPU µs/req | floor req/s | floor p50 ms | floor CPU µs/req | ratio | CPU ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in 1 100 1000 10000; do
  pair "$n uids" "$BASE/route/batch?intranet=0" "http://127.0.0.1:$FLOOR_PORT/route/batch" "$(body "$n")"
done
# One user per request, as every WuKongIM client asks on connect.
pair "GET /route?uid=" "$BASE/route" "http://127.0.0.1:$FLOOR_PORT/route" get

echo
echo "## 10,000-uid batch, one connection (latency as the client sees it)"
echo
echo "| request | imroute req/s | p50 ms | p99 ms | CPU µs/req | floor req/s | floor p50 ms | floor CPU µs/req | ratio | CPU ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
pair "10000 uids, 1 connection" "$BASE/route/batch?intranet=0" "http://127.0.0.1:$FLOOR_PORT/route/batch" "$work/body-10000.json" 1
awk '{ print $2 / $6 }' "$work/pair" | median | awk -v r="$(awk '{ print $2 / $6 }' "$work/pair" | range)" '{ printf "time ratio (p50, imroute ÷ floor): **%.2f** (rounds %s)\n", $1, r }'

echo
echo "## Throughput while admin writes and overrides reloads arrive (100-uid batches)"
echo
# churn.py runs on wrk's core. Its own CPU there makes the server's every
# wake-up of wrk dearer, whatever the server does; so the quiet rounds run
# the same driver in --idle mode (same rate, same process, GET /healthz and
# an unwatched file) and only the server's side differs.
f="$work/body-100.json"
: >"$work/churn"
: >"$work/churn.out"
# with_driver [--idle] -> "req/s p50 p99 cpu" of a run while churn.py runs
with_driver() {
  local churn out
  "${LOAD_CPU[@]}" python3 bench/churn.py "$BASE" "$TOKEN" "$work/overrides.yaml" "${DURATION%s}" "$NODES" "$@" >>"$work/churn.out" &
  churn=$!
  out=$(run "$BASE/route/batch?intranet=0" "$f" "$IMROUTE_PID")
  wait "$churn" || { echo "churn.py $* failed" >&2; exit 1; }
  echo "$out"
}
for r in $(seq 1 "$ROUNDS"); do
  read -r alone _ _ _ <<<"$(run "$BASE/route/batch?intranet=0" "$f" "$IMROUTE_PID")"
  # The control and the churn take turns going first.
  if ((r % 2)); then
    read -r quiet _ quiet_p99 quiet_cpu <<<"$(with_driver --idle)"
    read -r busy _ busy_p99 busy_cpu <<<"$(with_driver)"
  else
    read -r busy _ busy_p99 busy_cpu <<<"$(with_driver)"
    read -r quiet _ quiet_p99 quiet_cpu <<<"$(with_driver --idle)"
  fi
  echo "$alone $quiet $busy $quiet_p99 $busy_p99 $quiet_cpu $busy_cpu" >>"$work/churn"
done
reloads=$(curl -s "$BASE/metrics" | awk '/^imroute_overrides_reloads_total\{result="ok"\}/ {print $2}')
echo "| rounds | no driver req/s | idle driver req/s | churn req/s | busy ÷ idle driver | busy ÷ no driver | p99 ms idle → churn | CPU µs/req idle → churn |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
c() { awk -v c="$1" '{ print $c }' "$work/churn" | median; }
printf "| %d | %.0f | %.0f | %.0f | **%.3f** (%s) | %.3f (%s) | %.3f → %.3f | %.2f → %.2f |\n" "$ROUNDS" "$(c 1)" "$(c 2)" "$(c 3)" \
  "$(awk '{ print $3 / $2 }' "$work/churn" | median)" "$(awk '{ print $3 / $2 }' "$work/churn" | range)" \
  "$(awk '{ print $3 / $1 }' "$work/churn" | median)" "$(awk '{ print $3 / $1 }' "$work/churn" | range)" \
  "$(c 4)" "$(c 5)" "$(c 6)" "$(c 7)"
echo
echo "Each driver, each round:"
sed 's/^/- /' "$work/churn.out"
echo "- $reloads successful overrides loads in all"

echo
echo "## Memory with 1,000 nodes and 10,000 pins"
add_nodes $((NODES + 1)) 1000
{ echo "pins:"; for i in $(seq 1 10000); do echo "  pinned-$i: gw-$((i % 1000 + 1))"; done; } >"$work/overrides.yaml.tmp"
mv "$work/overrides.yaml.tmp" "$work/overrides.yaml"
curl -sf -o /dev/null -X POST "$BASE/admin/overrides/reload" -H "Authorization: Bearer $TOKEN"
pins=$(curl -s "$BASE/admin/routing" -H "Authorization: Bearer $TOKEN" | sed 's/.*"pins":\([0-9]*\).*/\1/')
read -r rps _ _ _ <<<"$(run "$BASE/route/batch?intranet=0" "$work/body-10000.json" "$IMROUTE_PID")"
echo "RSS $(rss_mib) MiB after a 10,000-uid load over 1000 nodes with $pins pins ($rps req/s)"
