#!/usr/bin/env bash
# XKS cost as the key count grows (issue 25, deliverable 2): one standalone
# node, one key store; for each size in KEYS, keys are created with the
# operator CLI (the first) and `loadtest keys` (the rest, the same calls
# from one process) until that many exist, then an XKS encrypt closed loop
# (CONCURRENCY, SECONDS) runs on the first key; the report gives
# throughput, p99, errors, the node's RSS, and the time from a restart
# (SIGTERM, start again, unseal from a dev file) to /healthz ready.
#
#   loadtest/keys-scale.sh                       (KEYS="1 1000 10000")
#   KEYS="1 1000" SECONDS_PER_RUN=10 loadtest/keys-scale.sh
#
# Environment: KEYS, SECONDS_PER_RUN (20), CONCURRENCY (32), CREATE_JOBS
# (4: creations in flight at once), GW_ADDR (127.0.0.1:18543),
# NATS_ADDR (127.0.0.1:4433), OUT (loadtest/results/keys-<UTC time>),
# SOVKEYS_BIN (unset: build bin/sovkeys), NODE_CPU / GEN_CPU (unset: no
# pinning; else taskset CPU lists for the node and the generator),
# KEYSTORES and TENANTS (0: after the key sizes, that many more key stores
# and tenants are made with `loadtest keys -kind`, and the same run, RSS
# and restart are measured again on key 0: row "<keys>+<N>ks+<M>t").
# Loopback only; the data directory is temporary and removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

KEYS=${KEYS:-"1 1000 10000"}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
CONCURRENCY=${CONCURRENCY:-32}
CREATE_JOBS=${CREATE_JOBS:-4}
GW_ADDR=${GW_ADDR:-127.0.0.1:18543}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:4433}
OUT=${OUT:-loadtest/results/keys-$(date -u +%Y%m%dT%H%M%SZ)}
SOVKEYS_BIN=${SOVKEYS_BIN:-}
NODE_CPU=${NODE_CPU:-}
KEYSTORES=${KEYSTORES:-0}
TENANTS=${TENANTS:-0}
GEN_CPU=${GEN_CPU:-}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d)
SHARES=$(mktemp -u)
NODE_PID=

NODE_PIN=()
GEN_PIN=()
if [[ -n $NODE_CPU ]]; then NODE_PIN=(taskset -c "$NODE_CPU"); fi
if [[ -n $GEN_CPU ]]; then GEN_PIN=(taskset -c "$GEN_CPU"); fi

stop_node() {
	if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then
		kill -TERM "$NODE_PID" 2>/dev/null || true
		for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.5; done
		kill -KILL "$NODE_PID" 2>/dev/null || true
	fi
	NODE_PID=
}
cleanup() {
	stop_node
	rm -rf "$DATA" "$SHARES"
}
trap cleanup EXIT

# start_node: starts the node and waits for /healthz; READY_S is the seconds it took.
READY_S=
start_node() {
	local t0 t1
	t0=$(date +%s.%N)
	"${NODE_PIN[@]}" "$SOVKEYS_BIN" standalone --data "$DATA" --listen "$GW_ADDR" --nats-listen "$NATS_ADDR" \
		--log-level warn --dev-unseal-file "$SHARES" >>"$DATA/node.stdout" 2>>"$OUT/node.stderr" &
	NODE_PID=$!
	for _ in $(seq 1 1200); do
		if ! kill -0 "$NODE_PID" 2>/dev/null; then
			echo "sovkeys standalone exited:" >&2
			tail -20 "$OUT/node.stderr" >&2
			exit 1
		fi
		if [[ -f $DATA/tls/ca.pem ]] && curl -fsS --max-time 2 --cacert "$DATA/tls/ca.pem" "https://$GW_ADDR/healthz" >/dev/null 2>&1; then
			t1=$(date +%s.%N)
			READY_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
			return 0
		fi
		sleep 0.1
	done
	echo "healthz not ready after 120 s" >&2
	exit 1
}

rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$NODE_PID/status"; }

if [[ -z $SOVKEYS_BIN ]]; then
	go build -o bin/sovkeys ./cmd/sovkeys
	SOVKEYS_BIN=bin/sovkeys
fi
go build -o bin/loadtest ./loadtest
{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
	echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo "pinning: node ${NODE_CPU:-none}, generator ${GEN_CPU:-none}"
} | tee "$OUT/machine.txt"

start_node
# A person's credential (builds before personal identities: the shared operator.creds).
creds="$DATA/operators/admin.creds"; [[ -f $creds ]] || creds="$DATA/operator.creds"
export SOVKEYS_NATS_URL="nats://$NATS_ADDR" SOVKEYS_NATS_CREDS="$creds"
"$SOVKEYS_BIN" xks keystore create --prefix /scale >"$OUT/keystore.json"
chmod 600 "$OUT/keystore.json"
# measure LABEL CREATE_S: restart the node, time it to ready, run the
# closed loop on key 0, and print the row.
measure() {
	local label=$1 create_s=$2 ready_s name rss rps p50 p99 errs
	stop_node
	start_node
	ready_s=$READY_S
	name=keys-$label
	"${GEN_PIN[@]}" bin/loadtest -url "https://$GW_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$OUT/keystore.json" \
		-key scale-key-0 -size 1024 -aad 0 -warmup 5s -op encrypt -concurrency "$CONCURRENCY" \
		-duration "${SECONDS_PER_RUN}s" -node-pid "$NODE_PID" -json "$OUT/$name.json" >"$OUT/$name.txt" || true
	rss=$(rss_mib)
	read -r rps p50 p99 errs < <(python3 - "$OUT/$name.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['throughput_rps']:.0f} {r['latency']['p50_ms']:.1f} {r['latency']['p99_ms']:.1f} {r['errorCount']}")
EOF
)
	printf '%-7s %-10s %-9s %-9s %-8s %-8s %-9s %s\n' "$label" "$rps" "$p50" "$p99" "$errs" "$rss" "$ready_s" "$create_s" | tee -a "$OUT/summary.txt"
	grep -A5 '^errors' "$OUT/$name.txt" || true
}

have=0
printf '%-7s %-10s %-9s %-9s %-8s %-8s %-9s %s\n' keys req/s p50_ms p99_ms errors rss_MiB ready_s create_s | tee "$OUT/summary.txt"
for want in $KEYS; do
	t0=$(date +%s)
	if ((want > have)); then
		if ((have == 0)); then
			# The first key as an operator makes it; the rest in bulk (loadtest keys).
			"$SOVKEYS_BIN" xks key create --keystore /scale --id scale-key-0 >/dev/null
			have=1
		fi
		if ((want > have)); then
			bin/loadtest keys -keystore /scale -from "$have" -count $((want - have)) -jobs "$CREATE_JOBS" | tee -a "$OUT/create.txt"
		fi
		have=$want
	fi
	measure "$want" $(($(date +%s) - t0))
done
if ((KEYSTORES > 0 || TENANTS > 0)); then
	t0=$(date +%s)
	if ((KEYSTORES > 0)); then
		bin/loadtest keys -kind keystores -id-prefix scale-ks- -count "$KEYSTORES" -jobs "$CREATE_JOBS" | tee -a "$OUT/create.txt"
	fi
	if ((TENANTS > 0)); then
		bin/loadtest keys -kind tenants -id-prefix scale-t- -count "$TENANTS" -jobs "$CREATE_JOBS" | tee -a "$OUT/create.txt"
	fi
	measure "$have+${KEYSTORES}ks+${TENANTS}t" $(($(date +%s) - t0))
fi
grep -ciE '"level":"(WARN|ERROR)"|level=(WARN|ERROR)' "$OUT/node.stderr" | sed 's/^/node WARN+ERROR lines: /' || true
echo "results in $OUT"
