#!/usr/bin/env bash
# Finds what makes the tail of a standalone node's latency: an open-loop
# run at RATE against the floor (`loadtest floor`, same rate, same run: the
# machine's own tail) and against `sovkeys standalone` started with
# GODEBUG=gctrace=1, every request kept (-requests), then `loadtest stalls`
# asks whether the requests over p99 bunch up at a phase of the node's
# periodic work (1 s checkpoint rounds, 10 s event purge) or overlap its
# garbage collections. Writes the chart of the node's run with -chart.
#
#   loadtest/tails.sh                       # 1,000 req/s, 60 s
#   RATE=1800 SECONDS_PER_RUN=120 loadtest/tails.sh
#   RUNS=node SECONDS_PER_RUN=1200 loadtest/tails.sh   # the node alone, 20 minutes
#
# Environment: RATE (1000), SECONDS_PER_RUN (60), RUNS ("floor node"),
# SOVKEYS_BIN (built from the tree), NODE_FLAGS (extra flags for the node), OUT (loadtest/results/tails-<UTC
# time>), BASE_PORT (19600).
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
RATE=${RATE:-1000}
SECS=${SECONDS_PER_RUN:-60}
BASE_PORT=${BASE_PORT:-19600}
OUT=${OUT:-loadtest/results/tails-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -rf "$DATA"
}
trap cleanup EXIT

if [[ -z ${SOVKEYS_BIN:-} ]]; then
	go build -o bin/sovkeys ./cmd/sovkeys
	SOVKEYS_BIN=bin/sovkeys
fi
go build -o bin/loadtest ./loadtest
GW=127.0.0.1:$((BASE_PORT + 1))
NATS=127.0.0.1:$((BASE_PORT + 11))
FLOOR=127.0.0.1:$((BASE_PORT + 3))

START_US=$(date +%s%6N)
# shellcheck disable=SC2086
GODEBUG=gctrace=1 "$SOVKEYS_BIN" standalone --data "$DATA" --listen "$GW" --nats-listen "$NATS" --log-level warn ${NODE_FLAGS:-} \
	>"$DATA/node.stdout" 2>"$OUT/node.stderr" &
PIDS+=($!)
NODE_PID=$!
for _ in $(seq 1 240); do
	if [[ -f $DATA/tls/ca.pem ]] && curl -fsS --max-time 2 --cacert "$DATA/tls/ca.pem" "https://$GW/healthz" >/dev/null 2>&1; then
		break
	fi
	sleep 0.5
done
export SOVKEYS_NATS_URL="nats://$NATS" SOVKEYS_NATS_CREDS="$DATA/operators/admin.creds"
"$SOVKEYS_BIN" xks keystore create --prefix /bench >"$DATA/ks.json"
"$SOVKEYS_BIN" xks key create --keystore /bench --id bench-key-1 >/dev/null
bin/loadtest floor -listen "$FLOOR" -cert "$DATA/tls/cert.pem" -key "$DATA/tls/key.pem" -creds-json "$DATA/ks.json" >"$OUT/floor-server.txt" 2>&1 &
PIDS+=($!)
sleep 1
{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before)"
	echo "node:    $SOVKEYS_BIN (pid $NODE_PID), GODEBUG=gctrace=1"
	echo "offered: XKS encrypt 1 KiB, open loop $RATE req/s, $SECS s each: ${RUNS:-floor node}"
} | tee "$OUT/machine.txt"

for who in ${RUNS:-floor node}; do
	url=https://$GW
	[[ $who == floor ]] && url=https://$FLOOR
	bin/loadtest -url "$url" -ca "$DATA/tls/ca.pem" -creds-json "$DATA/ks.json" -key bench-key-1 -size 1024 -aad 0 \
		-op encrypt -rate "$RATE" -duration "${SECS}s" -warmup 5s -node-pid "$NODE_PID" \
		-json "$OUT/$who.json" -requests "$OUT/$who.csv" -chart "$OUT/$who.png" >"$OUT/$who.txt" 2>&1 || true
	echo "== $who: $(grep -E '^(throughput|latency)' "$OUT/$who.txt" | tr '\n' ' ')"
	bin/loadtest stalls -requests "$OUT/$who.csv" -period 1s,10s \
		$([[ $who == node ]] && echo "-gctrace $OUT/node.stderr -gc-start $START_US") | tee "$OUT/$who-stalls.txt"
done
echo "results in $OUT"
