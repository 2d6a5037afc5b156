#!/usr/bin/env bash
# Makes the charts of docs/BENCHMARKS.md "Charts" from a real run on the
# compose cluster (deploy/compose; a Docker engine is needed):
#   1. throughput vs concurrency: closed-loop XKS encrypt at 1, 2, 4, 8, 16
#      and 32 callers (STEP_SECONDS each) through gateway-1;
#   2. latency over time during faults: open-loop XKS encrypt (RATE req/s,
#      FAULT_SECONDS) while nats-2 and keyworker-1 are killed (`docker
#      kill`) and started again (`sovkeys init` for the node's leaders, the
#      keyworker unsealed), each fault marked.
# It brings up its own compose project (own ports and credentials) and tears
# it down on exit.
#
#   loadtest/compose-charts.sh                       charts in docs/img/
#   OUT=DIR STEP_SECONDS=8 RATE=100 FAULT_SECONDS=60 loadtest/compose-charts.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$REPO/docs/img}
STEP_SECONDS=${STEP_SECONDS:-8}
RATE=${RATE:-100}
FAULT_SECONDS=${FAULT_SECONDS:-60}
GO=${GO:-go}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export COMPOSE_PROJECT_NAME=sovkeys-charts-$$ SOVKEYS_GENERATED SOVKEYS_GATEWAY_PORT SOVKEYS_GATEWAY2_PORT
SOVKEYS_GENERATED=$(mktemp -d -t sovkeys-charts.XXXXXX)
SOVKEYS_GATEWAY_PORT=$(free_port)
SOVKEYS_GATEWAY2_PORT=$(free_port)
GEN=$SOVKEYS_GENERATED
C="$REPO/scripts/compose.sh"
cleanup() {
	"$C" down --volumes >/dev/null 2>&1 || true
	rm -rf "$GEN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
say() { echo "compose-charts: $*"; }

(cd "$REPO" && "$GO" build -o "$GEN/loadtest" ./loadtest)
LT=$GEN/loadtest
"$C" up
"$C" cli xks keystore create --prefix /charts --replicas 3 > "$GEN/ks.json"
"$C" cli xks key create --keystore /charts --id key-1 --usage encrypt,decrypt --replicas 3 >/dev/null
common=(-url "https://127.0.0.1:$SOVKEYS_GATEWAY_PORT" -ca "$GEN/tls/ca.pem" -creds-json "$GEN/ks.json" -key key-1 -op encrypt)

reports=()
for c in 1 2 4 8 16 32; do
	say "closed loop, concurrency $c, ${STEP_SECONDS}s"
	"$LT" "${common[@]}" -concurrency "$c" -duration "${STEP_SECONDS}s" -warmup 2s -json "$GEN/c$c.json" | grep -iE 'throughput|p99' | head -3 || true
	reports+=("$GEN/c$c.json")
done
"$LT" chart -out "$OUT/throughput-vs-concurrency.png" \
	-title "XKS encrypt through one compose gateway: throughput vs concurrency" "${reports[@]}"

say "open loop, $RATE req/s for ${FAULT_SECONDS}s, with faults"
# Container ids first: docker-compose takes a second or more to answer,
# which would skew the marks.
NATS2=$("$C" compose ps -q nats-2)
KW1=$("$C" compose ps -q keyworker-1)
now() { date +%s.%N; }
"$LT" "${common[@]}" -rate "$RATE" -duration "${FAULT_SECONDS}s" -warmup 2s -timeout 5s -json "$GEN/faults.json" > "$GEN/faults.txt" 2>&1 &
LPID=$!
sleep 2 # warmup: the window starts now
T0=$(now)
at() { # at SECONDS: sleep until SECONDS into the window
	sleep "$(python3 -c "print(max(0, $T0 + $1 - $(now)))")"
}
at 8; K1=$(now); docker kill "$NATS2" >/dev/null
at 20; K2=$(now); docker start "$NATS2" >/dev/null
"$C" init >/dev/null 2>&1 || true # its sibling leaders back (runbook step 7)
at 32; K3=$(now); docker kill "$KW1" >/dev/null
at 44; K4=$(now); docker start "$KW1" >/dev/null
"$C" unseal || true
wait "$LPID" || true # errors during faults fail the run's verdict; the chart shows them
grep -iE 'throughput|p99|error' "$GEN/faults.txt" | head -8 || true
off() { python3 -c "print(f'{$1 - $T0:.1f}')"; }
"$LT" chart -out "$OUT/latency-during-faults.png" \
	-title "XKS encrypt at $RATE req/s on the compose cluster: slowest request per second" \
	-mark "$(off "$K1")=kill nats-2" -mark "$(off "$K2")=start nats-2, init" \
	-mark "$(off "$K3")=kill keyworker-1" -mark "$(off "$K4")=start+unseal keyworker-1" \
	"$GEN/faults.json"
say "charts in $OUT"
