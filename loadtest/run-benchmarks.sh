#!/usr/bin/env bash
# Measures the figures of docs/BENCHMARKS.md from a clean checkout:
#   1. raw SoftHSM AES-256-GCM (services/keyworker/internal/hsm BenchmarkEncryptGCM)
#   2. the mesh floor: one JetStream work-queue round trip, and core NATS
#   3. end to end against `sovkeys standalone`, each closed loop after the
#      same run against the floor (`loadtest floor`: the gateway's TLS and
#      certificate, authn's SigV4 check, software AES-GCM; no mesh, no HSM,
#      no audit) with the ratio sovkeys / floor printed: XKS encrypt closed
#      loop (concurrency 32, 60 s), XKS encrypt open loop (1800 req/s,
#      60 s), XKS decrypt closed loop (concurrency 32, 30 s), XKS decrypt open
#      loop (1800 req/s, 60 s)
#   4. volume secrets against the same node, as instances i-bench-0..7 of
#      tenant vpc-bench (certificates from `sovkeys instance issue-cert`):
#      generate-secret and decrypt-secret open loop (200 req/s, 30 s each),
#      then closed-loop peak of each (concurrency 16, 20 s each)
#
#   loadtest/run-benchmarks.sh            (about 13 minutes)
#   SKIP_XKS=1 loadtest/run-benchmarks.sh (steps 3-4 without the XKS load: about 3 minutes)
#   ONLY_RATIO=1 ENC_SECONDS=20 loadtest/run-benchmarks.sh (floor and sovkeys
#                                         encrypt closed loop only, and their ratio)
#
# Environment: GW_ADDR (127.0.0.1:18443), NATS_ADDR (127.0.0.1:4333),
# OUT (loadtest/results/<UTC time>), ENC_SECONDS (60), DEC_SECONDS (30),
# DEC_OPEN_SECONDS (60: the decrypt open loop, as issue 13 asks),
# OPEN_RATE (1800), CONCURRENCY (32), BENCHTIME (5s, go test -benchtime),
# VS_RATE (200), VS_SECONDS (30), VS_PEAK_SECONDS (20), VS_CONCURRENCY (16),
# VS_INSTANCES (8),
# SKIP_XKS (unset; 1 skips steps 1-2 and the XKS load of step 3), ONLY_RATIO
# (unset; 1 runs only the floor and sovkeys encrypt closed loops), FLOOR_ADDR
# (127.0.0.1:18444), SOVKEYS_BIN (unset: build bin/sovkeys; else that binary),
# METRICS_ADDR (unset; the node's --metrics-listen).
# Only loopback addresses are used. The node's data directory (and with it
# the HSM unseal shares a fresh node prints, and the instance key) is
# temporary and removed on exit. Memory over 10 minutes: loadtest/soak.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

GW_ADDR=${GW_ADDR:-127.0.0.1:18443}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:4333}
OUT=${OUT:-loadtest/results/$(date -u +%Y%m%dT%H%M%SZ)}
ENC_SECONDS=${ENC_SECONDS:-60}
DEC_SECONDS=${DEC_SECONDS:-30}
DEC_OPEN_SECONDS=${DEC_OPEN_SECONDS:-60}
OPEN_RATE=${OPEN_RATE:-1800}
CONCURRENCY=${CONCURRENCY:-32}
BENCHTIME=${BENCHTIME:-5s}
GOAL_RPS=1800
GOAL_P99=25ms
VS_RATE=${VS_RATE:-200}
VS_SECONDS=${VS_SECONDS:-30}
VS_PEAK_SECONDS=${VS_PEAK_SECONDS:-20}
VS_CONCURRENCY=${VS_CONCURRENCY:-16}
VS_INSTANCES=${VS_INSTANCES:-8}
VS_GOAL_P99=50ms  # at VS_RATE
VS_GOAL_PEAK=400  # req/s, closed loop (issue 13)
SKIP_XKS=${SKIP_XKS:-}
ONLY_RATIO=${ONLY_RATIO:-}
FLOOR_ADDR=${FLOOR_ADDR:-127.0.0.1:18444}
SOVKEYS_BIN=${SOVKEYS_BIN:-}
METRICS_ADDR=${METRICS_ADDR:-}
if [[ -n $ONLY_RATIO ]]; then SKIP_STEPS_1_2=1; else SKIP_STEPS_1_2=$SKIP_XKS; fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d)
NODE_PID=
FLOOR_PID=

log() { printf '\n=== %s\n' "$*"; }

cleanup() {
	if [[ -n $FLOOR_PID ]]; then kill -TERM "$FLOOR_PID" 2>/dev/null || true; fi
	if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then
		kill -TERM "$NODE_PID" 2>/dev/null || true
		for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.5; done
		kill -KILL "$NODE_PID" 2>/dev/null || true
	fi
	if [[ -f $DATA/node.stdout ]]; then
		sed -E 's/sovkeys-share:v[0-9]+:[^ ]*/(unseal share redacted)/g' "$DATA/node.stdout" >"$OUT/node.stdout" || true
	fi
	rm -rf "$DATA"
}
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for addr in "$GW_ADDR" "$NATS_ADDR" "$FLOOR_ADDR"; do
	case ${addr%:*} in
	127.*|localhost) ;;
	*) echo "refusing non-loopback address $addr" >&2; exit 2 ;;
	esac
	if port_busy "$addr"; then
		echo "$addr is in use; set GW_ADDR / NATS_ADDR / FLOOR_ADDR to free loopback ports" >&2
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
if [[ -z $SOVKEYS_BIN ]]; then
	go build -o bin/sovkeys ./cmd/sovkeys
	SOVKEYS_BIN=bin/sovkeys
fi
go build -o bin/loadtest ./loadtest
echo "$SOVKEYS_BIN bin/loadtest ready"

log "1. raw SoftHSM AES-256-GCM, 1 KiB (go test ./services/keyworker/internal/hsm -bench BenchmarkEncryptGCM)"
if [[ -n $SKIP_STEPS_1_2 ]]; then
	echo "SKIPPED: SKIP_XKS or ONLY_RATIO is set" | tee "$OUT/softhsm.txt"
elif grep -qs 'func BenchmarkEncryptGCM' services/keyworker/internal/hsm/*_test.go; then
	go test ./services/keyworker/internal/hsm -run '^$' -bench BenchmarkEncryptGCM -benchtime "$BENCHTIME" | tee "$OUT/softhsm.txt"
else
	echo "SKIPPED: services/keyworker/internal/hsm has no BenchmarkEncryptGCM" | tee "$OUT/softhsm.txt"
fi

log "2. mesh floor: JetStream work-queue round trip with a reply mux; core NATS request-reply"
if [[ -n $SKIP_STEPS_1_2 ]]; then
	echo "SKIPPED: SKIP_XKS or ONLY_RATIO is set" | tee "$OUT/floor.txt"
else
	go test ./loadtest -run '^$' -bench 'JetStreamRoundTrip|CoreRequestReply' -benchtime "$BENCHTIME" | tee "$OUT/floor.txt"
fi

log "3. sovkeys standalone on https://$GW_ADDR (nats $NATS_ADDR), log level warn"
# stdout stays in the temporary DATA: a fresh node prints its HSM unseal
# shares there. A copy with the shares redacted goes to OUT at the end.
NODE_FLAGS=()
if [[ -n $METRICS_ADDR ]]; then NODE_FLAGS+=(--metrics-listen "$METRICS_ADDR"); fi
"$SOVKEYS_BIN" standalone --data "$DATA" --listen "$GW_ADDR" --nats-listen "$NATS_ADDR" --log-level warn "${NODE_FLAGS[@]}" \
	>"$DATA/node.stdout" 2>"$OUT/node.stderr" &
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

export SOVKEYS_NATS_URL="nats://$NATS_ADDR" SOVKEYS_NATS_CREDS="$DATA/operators/admin.creds"
"$SOVKEYS_BIN" xks keystore create --prefix /bench >"$OUT/keystore.json"
"$SOVKEYS_BIN" xks key create --keystore /bench --id bench-key-1 | tee "$OUT/key.json"
chmod 600 "$OUT/keystore.json"

# The floor serves with the gateway's own certificate and the key store's
# credentials, so the generator talks to both the same way.
bin/loadtest floor -listen "$FLOOR_ADDR" -cert "$DATA/tls/cert.pem" -key "$DATA/tls/key.pem" \
	-creds-json "$OUT/keystore.json" >"$OUT/floor-server.txt" 2>&1 &
FLOOR_PID=$!
for _ in $(seq 1 40); do port_busy "$FLOOR_ADDR" && break; sleep 0.25; done

LT=(bin/loadtest -url "https://$GW_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$OUT/keystore.json"
	-key bench-key-1 -size 1024 -aad 0 -warmup 5s -goal-rps "$GOAL_RPS" -goal-p99 "$GOAL_P99" -node-pid "$NODE_PID")
LTF=(bin/loadtest -url "https://$FLOOR_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$OUT/keystore.json"
	-key bench-key-1 -size 1024 -aad 0 -warmup 5s -node-pid "$FLOOR_PID")

# loadrun NAME SECONDS PREP_SECONDS COMMAND...: one loadtest run, with a CPU
# snapshot halfway through the measured part (after PREP_SECONDS of
# preparation and the 5 s warmup).
RUNS=()
loadrun() {
	local name=$1 secs=$2 prep=$3
	shift 3
	RUNS+=("$name")
	log "$name"
	echo "+ $*"
	(sleep $((prep + 5 + secs / 2)); top -b -n1 -w 160 | head -15 >"$OUT/top-$name.txt") &
	local top_pid=$!
	local rc=0
	"$@" -json "$OUT/$name.json" | tee "$OUT/$name.txt" || rc=$?
	wait "$top_pid" 2>/dev/null || true
	echo "(exit $rc; CPU halfway through:)"
	sed -n '1,3p;7,15p' "$OUT/top-$name.txt"
}

# figure NAME FIELD: one number from a run's text report ("throughput" or
# the node's "ms per answer").
figure() {
	case $2 in
	throughput) awk '/^throughput/ {print $2}' "$OUT/$1.txt" ;;
	cpu) sed -n 's/.*node (pid [0-9]*) [0-9.]* cores, \([0-9.]*\) ms per answer.*/\1/p' "$OUT/$1.txt" ;;
	esac
}
# ratio FLOOR_RUN SOVKEYS_RUN: sovkeys req/s / floor req/s, and the CPU per
# answer of each process.
RATIOS=()
ratio() {
	local line
	line=$(awk -v f="$(figure "$1" throughput)" -v s="$(figure "$2" throughput)" \
		-v fc="$(figure "$1" cpu)" -v sc="$(figure "$2" cpu)" -v n="$2" 'BEGIN {
		r = (f > 0) ? s / f : 0
		printf "%-15s sovkeys %.0f req/s / floor %.0f req/s = %.3f; CPU per answer sovkeys %s ms, floor %s ms", n, s, f, r, sc, fc
		if (fc > 0 && sc > 0) printf " (x%.1f)", sc / fc
	}')
	RATIOS+=("$line")
	echo "ratio: $line"
}

if [[ -z $SKIP_XKS ]]; then
	loadrun floor-encrypt-closed "$ENC_SECONDS" 0 "${LTF[@]}" -op encrypt -concurrency "$CONCURRENCY" -duration "${ENC_SECONDS}s"
	loadrun encrypt-closed "$ENC_SECONDS" 0 "${LT[@]}" -op encrypt -concurrency "$CONCURRENCY" -duration "${ENC_SECONDS}s"
	ratio floor-encrypt-closed encrypt-closed
fi
if [[ -z $SKIP_XKS && -z $ONLY_RATIO ]]; then
	loadrun encrypt-open "$ENC_SECONDS" 0 "${LT[@]}" -op encrypt -rate "$OPEN_RATE" -duration "${ENC_SECONDS}s"
	loadrun floor-decrypt-closed "$DEC_SECONDS" 5 "${LTF[@]}" -op decrypt -concurrency "$CONCURRENCY" -duration "${DEC_SECONDS}s"
	loadrun decrypt-closed "$DEC_SECONDS" 5 "${LT[@]}" -op decrypt -concurrency "$CONCURRENCY" -duration "${DEC_SECONDS}s"
	ratio floor-decrypt-closed decrypt-closed
	loadrun decrypt-open "$DEC_OPEN_SECONDS" 5 "${LT[@]}" -op decrypt -rate "$OPEN_RATE" -duration "${DEC_OPEN_SECONDS}s"
fi

if [[ -n $ONLY_RATIO ]]; then
	SKIP_VS=1
fi
if [[ -z ${SKIP_VS:-} ]]; then
log "4. volume secrets: tenant vpc-bench, instances i-bench-0..$((VS_INSTANCES - 1))"
"$SOVKEYS_BIN" tenant create --id vpc-bench | tee "$OUT/tenant.json"
# The instance keys stay in DATA (removed on exit); the public parts are kept.
for i in $(seq 0 $((VS_INSTANCES - 1))); do
	"$SOVKEYS_BIN" instance issue-cert --tenant vpc-bench --instance "i-bench-$i" --out "$DATA/i-bench-$i" >/dev/null
done
cp "$DATA/i-bench-0/cert.pem" "$DATA/i-bench-0/signing-key.pem" "$OUT/"
echo "certificate: $(openssl x509 -in "$DATA/i-bench-0/cert.pem" -noout -ext subjectAltName 2>/dev/null | tail -1 | sed 's/^ *//') (and $((VS_INSTANCES - 1)) more)"
# Calls are spread over VS_INSTANCES instances (each has its own rate limit,
# as a fleet booting does). The decrypt runs use a pool of 256
# encrypted_secrets, each from a generate-secret with a fresh volume_uuid,
# made before the run. 8 one-time RSA-3072 wrapping keys are made before
# every run and rotated through: key generation is the instance's work.
# Every call opens a new TLS connection, as a booting instance does.
# -node-pid adds the node's CPU per answer.
VS=(bin/loadtest -api vs -url "https://$GW_ADDR" -ca "$DATA/tls/ca.pem" -cert "$DATA/i-bench-%d/cert.pem"
	-key "$DATA/i-bench-%d/key.pem" -signing-key "$DATA/i-bench-0/signing-key.pem" -instance "i-bench-%d"
	-instances "$VS_INSTANCES" -wrap-keys 8 -rsa-bits 3072 -warmup 5s -node-pid "$NODE_PID")
PREP=8 # s before the warmup: key generation, preflight and (decrypt) the pool
loadrun vs-generate-open "$VS_SECONDS" 3 "${VS[@]}" -op generate -rate "$VS_RATE" -duration "${VS_SECONDS}s" \
	-goal-rps "$VS_RATE" -goal-p99 "$VS_GOAL_P99"
loadrun vs-decrypt-open "$VS_SECONDS" "$PREP" "${VS[@]}" -op decrypt -rate "$VS_RATE" -duration "${VS_SECONDS}s" \
	-goal-rps "$VS_RATE" -goal-p99 "$VS_GOAL_P99"
loadrun vs-generate-peak "$VS_PEAK_SECONDS" 3 "${VS[@]}" -op generate -concurrency "$VS_CONCURRENCY" \
	-duration "${VS_PEAK_SECONDS}s" -goal-rps "$VS_GOAL_PEAK"
loadrun vs-decrypt-peak "$VS_PEAK_SECONDS" "$PREP" "${VS[@]}" -op decrypt -concurrency "$VS_CONCURRENCY" \
	-duration "${VS_PEAK_SECONDS}s" -goal-rps "$VS_GOAL_PEAK"
fi

log "stop node"
kill -TERM "$NODE_PID"
rc=0
wait "$NODE_PID" || rc=$?
NODE_PID=
echo "sovkeys standalone exit status $rc"
echo "node stderr: $(wc -l <"$OUT/node.stderr") lines (warn and above)"
grep -o '"level":"[A-Z]*","msg":"[^"]*"' "$OUT/node.stderr" | sort | uniq -c | sort -rn | head -20 || true

log "summary"
for r in "${RATIOS[@]}"; do echo "ratio: $r"; done
for f in "$OUT"/softhsm.txt "$OUT"/floor.txt; do grep -E 'ops/s|SKIPPED' "$f" || true; done
for name in "${RUNS[@]}"; do
	printf '%-17s ' "$name"
	grep -E '^(throughput|verdict)' "$OUT/$name.txt" | tr '\n' ' '
	echo
done
echo "results in $OUT"
