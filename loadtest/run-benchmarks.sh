#!/usr/bin/env bash
# Measures the figures of docs/BENCHMARKS.md from a clean checkout:
#   1. raw SoftHSM AES-256-GCM (services/keyworker BenchmarkEncryptGCM)
#   2. the mesh floor: one JetStream work-queue round trip, and core NATS
#   3. end to end against `sovkeys standalone`: XKS encrypt closed loop
#      (concurrency 32, 60 s), XKS encrypt open loop (1800 req/s, 60 s),
#      XKS decrypt closed loop (concurrency 32, 30 s)
#
#   loadtest/run-benchmarks.sh            (about 5 minutes)
#
# Environment: GW_ADDR (127.0.0.1:18443), NATS_ADDR (127.0.0.1:4333),
# OUT (loadtest/results/<UTC time>), ENC_SECONDS (60), DEC_SECONDS (30),
# OPEN_RATE (1800), CONCURRENCY (32), BENCHTIME (5s, go test -benchtime).
# Only loopback addresses are used. The node's data directory is temporary
# and removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

GW_ADDR=${GW_ADDR:-127.0.0.1:18443}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:4333}
OUT=${OUT:-loadtest/results/$(date -u +%Y%m%dT%H%M%SZ)}
ENC_SECONDS=${ENC_SECONDS:-60}
DEC_SECONDS=${DEC_SECONDS:-30}
OPEN_RATE=${OPEN_RATE:-1800}
CONCURRENCY=${CONCURRENCY:-32}
BENCHTIME=${BENCHTIME:-5s}
GOAL_RPS=1800
GOAL_P99=25ms

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d)
NODE_PID=

log() { printf '\n=== %s\n' "$*"; }

cleanup() {
	if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then
		kill -TERM "$NODE_PID" 2>/dev/null || true
		for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.5; done
		kill -KILL "$NODE_PID" 2>/dev/null || true
	fi
	rm -rf "$DATA"
}
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for addr in "$GW_ADDR" "$NATS_ADDR"; do
	case ${addr%:*} in
	127.*|localhost) ;;
	*) echo "refusing non-loopback address $addr" >&2; exit 2 ;;
	esac
	if port_busy "$addr"; then
		echo "$addr is in use; set GW_ADDR / NATS_ADDR to free loopback ports" >&2
		exit 2
	fi
done

log "machine"
{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "go:      $(go version)"
	echo "softhsm: $(dpkg -s softhsm2 2>/dev/null | awk '/^Version:/ {print $2}')"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
	echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo "${SOVKEYS_COMMIT:-unknown}") (plus uncommitted changes, if any)"
} | tee "$OUT/machine.txt"

log "build"
go build -o bin/sovkeys ./cmd/sovkeys
go build -o bin/loadtest ./loadtest
echo "bin/sovkeys bin/loadtest built"

log "1. raw SoftHSM AES-256-GCM, 1 KiB (go test ./services/keyworker -bench BenchmarkEncryptGCM)"
if grep -qs 'func BenchmarkEncryptGCM' services/keyworker/*_test.go; then
	go test ./services/keyworker -run '^$' -bench BenchmarkEncryptGCM -benchtime "$BENCHTIME" | tee "$OUT/softhsm.txt"
else
	echo "SKIPPED: services/keyworker has no BenchmarkEncryptGCM yet" | tee "$OUT/softhsm.txt"
fi

log "2. mesh floor: JetStream work-queue round trip with a reply mux; core NATS request-reply"
go test ./loadtest -run '^$' -bench 'JetStreamRoundTrip|CoreRequestReply' -benchtime "$BENCHTIME" | tee "$OUT/floor.txt"

log "3. sovkeys standalone on https://$GW_ADDR (nats $NATS_ADDR), log level warn"
bin/sovkeys standalone --data "$DATA" --listen "$GW_ADDR" --nats-listen "$NATS_ADDR" --log-level warn \
	>"$OUT/node.stdout" 2>"$OUT/node.stderr" &
NODE_PID=$!
ready=
for _ in $(seq 1 240); do
	if ! kill -0 "$NODE_PID" 2>/dev/null; then
		echo "sovkeys standalone exited:" >&2
		cat "$OUT/node.stderr" >&2
		exit 1
	fi
	if [[ -f $DATA/tls/ca.pem ]] && curl -fsS --max-time 2 --cacert "$DATA/tls/ca.pem" "https://$GW_ADDR/healthz" >/dev/null 2>&1; then
		ready=1
		break
	fi
	sleep 0.5
done
if [[ -z $ready ]]; then
	echo "healthz not ready after 120 s" >&2
	cat "$OUT/node.stderr" >&2
	exit 1
fi
echo "ready: $(curl -fsS --cacert "$DATA/tls/ca.pem" "https://$GW_ADDR/healthz")"

export SOVKEYS_NATS_URL="nats://$NATS_ADDR" SOVKEYS_NATS_CREDS="$DATA/operator.creds"
bin/sovkeys xks keystore create --prefix /bench >"$OUT/keystore.json"
bin/sovkeys xks key create --keystore /bench --id bench-key-1 | tee "$OUT/key.json"
chmod 600 "$OUT/keystore.json"

LT=(bin/loadtest -url "https://$GW_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$OUT/keystore.json"
	-key bench-key-1 -size 1024 -aad 0 -warmup 5s -goal-rps "$GOAL_RPS" -goal-p99 "$GOAL_P99")

# loadrun NAME ARGS...: one loadtest run, with a CPU snapshot halfway.
loadrun() {
	local name=$1 secs=$2
	shift 2
	log "$name"
	echo "+ ${LT[*]} $*"
	(sleep $((5 + secs / 2)); top -b -n1 -w 160 | head -15 >"$OUT/top-$name.txt") &
	local top_pid=$!
	local rc=0
	"${LT[@]}" "$@" -json "$OUT/$name.json" | tee "$OUT/$name.txt" || rc=$?
	wait "$top_pid" 2>/dev/null || true
	echo "(exit $rc; CPU halfway through:)"
	sed -n '1,3p;7,15p' "$OUT/top-$name.txt"
}

loadrun encrypt-closed "$ENC_SECONDS" -op encrypt -concurrency "$CONCURRENCY" -duration "${ENC_SECONDS}s"
loadrun encrypt-open "$ENC_SECONDS" -op encrypt -rate "$OPEN_RATE" -duration "${ENC_SECONDS}s"
loadrun decrypt-closed "$DEC_SECONDS" -op decrypt -concurrency "$CONCURRENCY" -duration "${DEC_SECONDS}s"

log "stop node"
kill -TERM "$NODE_PID"
rc=0
wait "$NODE_PID" || rc=$?
NODE_PID=
echo "sovkeys standalone exit status $rc"
echo "node stderr: $(wc -l <"$OUT/node.stderr") lines (warn and above)"
grep -o '"level":"[A-Z]*","msg":"[^"]*"' "$OUT/node.stderr" | sort | uniq -c | sort -rn | head -20 || true

log "summary"
for f in "$OUT"/softhsm.txt "$OUT"/floor.txt; do grep -E 'ops/s|SKIPPED' "$f" || true; done
for name in encrypt-closed encrypt-open decrypt-closed; do
	printf '%-15s ' "$name"
	grep -E '^(throughput|verdict)' "$OUT/$name.txt" | tr '\n' ' '
	echo
done
echo "results in $OUT"
