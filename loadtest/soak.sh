#!/usr/bin/env bash
# Memory and goroutines of `sovkeys standalone` under steady XKS load: one
# node, an open-loop encrypt load for SOAK_SECONDS, and every 10 s a sample
# of the node's /proc/PID/status (VmRSS, VmHWM, threads) and of its metrics
# endpoint (goroutines, heap in use, open fds, CPU seconds, requests). The
# series goes to OUT/soak.csv; the summary compares the first and the last
# minute after the first two (JetStream's de-duplication window is 2 min, so
# the node's memory grows until then by design).
#
#   loadtest/soak.sh                              (10 minutes at 1800 req/s)
#   SOAK_RATE=600 SOAK_SECONDS=600 loadtest/soak.sh
#
# Environment: SOAK_RATE (1800), SOAK_SECONDS (600), EVERY (10), GW_ADDR
# (127.0.0.1:18463), NATS_ADDR (127.0.0.1:4363), METRICS_ADDR
# (127.0.0.1:19463), SOVKEYS_BIN (unset: build bin/sovkeys), OUT
# (loadtest/results/soak-<UTC time>). Loopback only; the data directory is
# temporary.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
SOAK_RATE=${SOAK_RATE:-1800}
SOAK_SECONDS=${SOAK_SECONDS:-600}
EVERY=${EVERY:-10}
GW_ADDR=${GW_ADDR:-127.0.0.1:18463}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:4363}
METRICS_ADDR=${METRICS_ADDR:-127.0.0.1:19463}
OUT=${OUT:-loadtest/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d)
NODE_PID=
LOAD_PID=

cleanup() {
	if [[ -n $LOAD_PID ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
	if [[ -n $NODE_PID ]]; then
		kill -TERM "$NODE_PID" 2>/dev/null || true
		for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.5; done
		kill -KILL "$NODE_PID" 2>/dev/null || true
	fi
	rm -rf "$DATA"
}
trap cleanup EXIT

if [[ -z ${SOVKEYS_BIN:-} ]]; then
	go build -o bin/sovkeys ./cmd/sovkeys
	SOVKEYS_BIN=bin/sovkeys
fi
go build -o bin/loadtest ./loadtest

"$SOVKEYS_BIN" standalone --data "$DATA" --listen "$GW_ADDR" --nats-listen "$NATS_ADDR" \
	--metrics-listen "$METRICS_ADDR" --log-level warn >"$DATA/node.stdout" 2>"$OUT/node.stderr" &
NODE_PID=$!
for _ in $(seq 1 240); do
	if [[ -f $DATA/tls/ca.pem ]] && curl -fsS --max-time 2 --cacert "$DATA/tls/ca.pem" "https://$GW_ADDR/healthz" >/dev/null 2>&1; then
		break
	fi
	sleep 0.5
done
export SOVKEYS_NATS_URL="nats://$NATS_ADDR" SOVKEYS_NATS_CREDS="$DATA/operators/admin.creds"
"$SOVKEYS_BIN" xks keystore create --prefix /bench >"$DATA/keystore.json"
"$SOVKEYS_BIN" xks key create --keystore /bench --id bench-key-1 >/dev/null
{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before)"
	echo "node:    $SOVKEYS_BIN (pid $NODE_PID)${GOGC:+, GOGC=$GOGC}"
	echo "offered: XKS encrypt 1 KiB, open loop $SOAK_RATE req/s for $SOAK_SECONDS s"
} | tee "$OUT/machine.txt"

bin/loadtest -url "https://$GW_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$DATA/keystore.json" -key bench-key-1 \
	-size 1024 -aad 0 -op encrypt -rate "$SOAK_RATE" -duration "${SOAK_SECONDS}s" -warmup 0s -node-pid "$NODE_PID" \
	-json "$OUT/load.json" >"$OUT/load.txt" 2>&1 &
LOAD_PID=$!

echo "t_s,rss_kib,hwm_kib,threads,goroutines,heap_inuse_mib,open_fds,cpu_s,requests_total" | tee "$OUT/soak.csv"
t0=$(date +%s)
while kill -0 "$LOAD_PID" 2>/dev/null; do
	t=$(($(date +%s) - t0))
	st=/proc/$NODE_PID/status
	m=$(curl -s --max-time 3 "http://$METRICS_ADDR/metrics" || true)
	printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" \
		"$(awk '/^VmRSS/ {print $2}' "$st")" "$(awk '/^VmHWM/ {print $2}' "$st")" "$(awk '/^Threads/ {print $2}' "$st")" \
		"$(awk '/^go_goroutines / {print $2}' <<<"$m")" \
		"$(awk '/^go_memstats_heap_inuse_bytes / {printf "%.1f", $2 / 1048576}' <<<"$m")" \
		"$(awk '/^process_open_fds / {print $2}' <<<"$m")" \
		"$(awk '/^process_cpu_seconds_total / {print $2}' <<<"$m")" \
		"$(awk '/^sovkeys_gateway_requests_total/ {s += $2} END {printf "%d", s}' <<<"$m")" | tee -a "$OUT/soak.csv"
	sleep "$EVERY"
done
wait "$LOAD_PID" || true
LOAD_PID=
cat "$OUT/load.txt"

# Summary: the minute after the first two against the last minute.
awk -F, -v every="$EVERY" 'NR > 1 && $1 >= 120 && $1 < 180 {ra += $2; ga += $5; na++}
	NR > 1 {last[++n] = $0}
	END {
		k = int(60 / every); if (k < 1) k = 1
		for (i = n - k + 1; i <= n; i++) { split(last[i], f, ","); rb += f[2]; gb += f[5]; nb++ }
		if (na && nb) printf "summary: RSS %.0f MiB (t=120-180 s) -> %.0f MiB (last minute); goroutines %.0f -> %.0f\n", ra/na/1024, rb/nb/1024, ga/na, gb/nb
	}' "$OUT/soak.csv" | tee "$OUT/summary.txt"
echo "results in $OUT"
