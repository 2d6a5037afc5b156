#!/usr/bin/env bash
# Compares two sovkeys builds against the floor in one run, for measuring one
# change on a shared machine: both nodes (`sovkeys standalone`, each with its
# own data directory and ports) and the floor (`loadtest floor`) run side by
# side, and closed-loop runs alternate floor, A, B, floor, B, A, ... so that
# other load on the machine falls on all three alike. Prints each run and,
# per round, A / floor and B / floor.
#
#   loadtest/compare.sh OLD_SOVKEYS_BINARY NEW_SOVKEYS_BINARY
#
# Environment: ROUNDS (2), SECONDS_PER_RUN (20), CONCURRENCY (32), OP
# (encrypt | decrypt), SIZE (1024), OUT (loadtest/results/compare-<UTC time>),
# A_ENV / B_ENV (extra environment for node A / B, e.g. B_ENV="GOGC=200"),
# BASE_PORT (19500: gateways on BASE_PORT+1, +2, NATS on +11, +12, floor on
# +3). Loopback only; the data directories are temporary.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
[[ $# -eq 2 ]] || { echo "usage: $0 OLD_SOVKEYS_BINARY NEW_SOVKEYS_BINARY" >&2; exit 2; }
BIN_A=$(realpath "$1")
BIN_B=$(realpath "$2")
ROUNDS=${ROUNDS:-2}
SECS=${SECONDS_PER_RUN:-20}
CONCURRENCY=${CONCURRENCY:-32}
OP=${OP:-encrypt}
SIZE=${SIZE:-1024}
BASE_PORT=${BASE_PORT:-19500}
OUT=${OUT:-loadtest/results/compare-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT

go build -o bin/loadtest ./loadtest

# start_node NAME BINARY GW NATS ENV: a standalone node with its key store.
start_node() {
	local name=$1 bin=$2 gw=$3 nats=$4 extra_env=$5 data=$TMP/$1
	mkdir -p "$data"
	env $extra_env "$bin" standalone --data "$data" --listen "$gw" --nats-listen "$nats" --log-level warn \
		>"$data/node.stdout" 2>"$OUT/$name.stderr" &
	PIDS+=($!)
	eval "PID_$name=$!"
	for _ in $(seq 1 240); do
		if [[ -f $data/tls/ca.pem ]] && curl -fsS --max-time 2 --cacert "$data/tls/ca.pem" "https://$gw/healthz" >/dev/null 2>&1; then
			break
		fi
		sleep 0.5
	done
	# Builds before personal identities wrote a shared operator.creds.
	creds="$data/operators/admin.creds"; [ -f "$creds" ] || creds="$data/operator.creds"
	SOVKEYS_NATS_URL="nats://$nats" SOVKEYS_NATS_CREDS="$creds" "$bin" xks keystore create --prefix /bench >"$TMP/$name.ks.json"
	SOVKEYS_NATS_URL="nats://$nats" SOVKEYS_NATS_CREDS="$creds" "$bin" xks key create --keystore /bench --id bench-key-1 >/dev/null
	echo "node $name ($bin${extra_env:+, $extra_env}) ready on $gw"
}

GW_A=127.0.0.1:$((BASE_PORT + 1))
GW_B=127.0.0.1:$((BASE_PORT + 2))
FLOOR=127.0.0.1:$((BASE_PORT + 3))
start_node A "$BIN_A" "$GW_A" "127.0.0.1:$((BASE_PORT + 11))" "${A_ENV:-}"
start_node B "$BIN_B" "$GW_B" "127.0.0.1:$((BASE_PORT + 12))" "${B_ENV:-}"
bin/loadtest floor -listen "$FLOOR" -cert "$TMP/A/tls/cert.pem" -key "$TMP/A/tls/key.pem" -creds-json "$TMP/A.ks.json" >"$OUT/floor-server.txt" 2>&1 &
PIDS+=($!)
PID_F=$!
sleep 1

{
	echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:   $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (before)"
	echo "A:      $BIN_A ${A_ENV:-}"
	echo "B:      $BIN_B ${B_ENV:-}"
	echo "runs:   $OP, closed loop $CONCURRENCY, $SECS s each (5 s warmup), $ROUNDS rounds"
} | tee "$OUT/machine.txt"

# one WHO ROUND: a closed-loop run against the floor (F) or node A or B.
one() {
	local who=$1 round=$2 url pid node
	case $who in
	F) url=https://$FLOOR pid=$PID_F node=A ;; # the floor serves A's certificate and credentials
	A) url=https://$GW_A pid=$PID_A node=A ;;
	B) url=https://$GW_B pid=$PID_B node=B ;;
	esac
	local ks=$TMP/$node.ks.json
	bin/loadtest -url "$url" -ca "$TMP/$node/tls/ca.pem" -creds-json "$ks" -key bench-key-1 -size "$SIZE" -aad 0 \
		-op "$OP" -concurrency "$CONCURRENCY" -duration "${SECS}s" -warmup 5s -node-pid "$pid" \
		-json "$OUT/$who-$round.json" >"$OUT/$who-$round.txt" 2>&1 || true
	printf '%s round %s: %s | %s\n' "$who" "$round" "$(grep '^throughput' "$OUT/$who-$round.txt")" \
		"$(grep -o 'node (pid [0-9]*) [0-9.]* cores, [0-9.]* ms per answer' "$OUT/$who-$round.txt" | sed 's/(pid [0-9]*) //')"
}

rps() { awk '/^throughput/ {print $2}' "$OUT/$1.txt"; }
cpu() { sed -n 's/.*node (pid [0-9]*) [0-9.]* cores, \([0-9.]*\) ms per answer.*/\1/p' "$OUT/$1.txt"; }

for r in $(seq 1 "$ROUNDS"); do
	order=(F A B)
	if ((r % 2 == 0)); then order=(F B A); fi
	for who in "${order[@]}"; do one "$who" "$r"; done
	awk -v f="$(rps "F-$r")" -v a="$(rps "A-$r")" -v b="$(rps "B-$r")" \
		-v fc="$(cpu "F-$r")" -v ac="$(cpu "A-$r")" -v bc="$(cpu "B-$r")" -v r="$r" 'BEGIN {
		printf "round %s: A/floor %.3f  B/floor %.3f  B/A %.3f | CPU ms per answer floor %s A %s B %s\n", r, a/f, b/f, b/a, fc, ac, bc
	}' | tee -a "$OUT/summary.txt"
done
echo "results in $OUT"
