#!/usr/bin/env bash
# Graceful overload (issue 25, deliverable 1): the node pinned to one CPU,
# the generator to another; XKS encrypt capacity in closed loop, then open
# loop at 1.3x and 2x that capacity. For each run: goodput / capacity,
# success latency p99, refusal (429/503) latency p99, errors by kind, and a
# latency-over-time chart (loadtest chart).
#
#   loadtest/overload.sh
#   BINS="new:bin/sovkeys old:/tmp/sovkeys-old" loadtest/overload.sh   (same run, two builds)
#
# Environment: BINS (name:path pairs, run in that order, names unique;
# default "new:bin/sovkeys", built), NODE_CPU (0), GEN_CPU (1) (none: not
# pinned), CAP_CONCURRENCY (16: few enough callers that their answers fit
# the gateway's 150 ms admission budget, so the closed loop measures
# answers, not a storm of refusals; 64 did not on a busy machine), CAP_SECONDS (15),
# OPEN_SECONDS (20), FACTORS ("1.3 2"), MAX_INFLIGHT (512, loadtest's default), CONNS (64:
# the generator's connections, a pool as KMS keeps; 0: one per request in flight), NODE_FLAGS
# (extra flags for `sovkeys standalone`), NODE_ENV (VAR=value pairs for the node only, e.g.
# GOMAXPROCS=2), GW_ADDR (127.0.0.1:18643),
# NATS_ADDR (127.0.0.1:4533), FLOOR_ADDR (127.0.0.1:18644: `loadtest floor`, pinned
# like the node, measured in closed loop after each build's capacity step so
# a change of the machine's speed between builds shows), OUT (loadtest/results/overload-<UTC time>).
# The machine may be shared: compare builds within one run, never across runs.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

BINS=${BINS:-"new:bin/sovkeys"}
NODE_CPU=${NODE_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
CAP_CONCURRENCY=${CAP_CONCURRENCY:-16}
CAP_SECONDS=${CAP_SECONDS:-15}
OPEN_SECONDS=${OPEN_SECONDS:-20}
FACTORS=${FACTORS:-"1.3 2"}
MAX_INFLIGHT=${MAX_INFLIGHT:-512}
CONNS=${CONNS:-64}
NODE_FLAGS=${NODE_FLAGS:-}
NODE_ENV=${NODE_ENV:-}
GW_ADDR=${GW_ADDR:-127.0.0.1:18643}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:4533}
FLOOR_ADDR=${FLOOR_ADDR:-127.0.0.1:18644}
OUT=${OUT:-loadtest/results/overload-$(date -u +%Y%m%dT%H%M%SZ)}

NODE_PIN=(taskset -c "$NODE_CPU")
GEN_PIN=(taskset -c "$GEN_CPU")
if [[ $NODE_CPU == none ]]; then NODE_PIN=(); fi
if [[ $GEN_CPU == none ]]; then GEN_PIN=(); fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=
NODE_PID=

FLOOR_PID=
stop_node() {
	if [[ -n $FLOOR_PID ]]; then kill -TERM "$FLOOR_PID" 2>/dev/null || true; wait "$FLOOR_PID" 2>/dev/null || true; fi
	FLOOR_PID=
	if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then
		kill -TERM "$NODE_PID" 2>/dev/null || true
		for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.5; done
		kill -KILL "$NODE_PID" 2>/dev/null || true
	fi
	NODE_PID=
	if [[ -n $DATA ]]; then rm -rf "$DATA"; fi
	DATA=
}
trap stop_node EXIT

if [[ $BINS == "new:bin/sovkeys" ]]; then go build -o bin/sovkeys ./cmd/sovkeys; fi
go build -o bin/loadtest ./loadtest
{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before the run; other jobs share the machine)"
	echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo "pinning: node CPU $NODE_CPU, generator CPU $GEN_CPU"
	echo "builds:  $BINS"
} | tee "$OUT/machine.txt"

# figures NAME: throughput, success p99, refusal p99, refusals, other
# errors, success max, node cores, refusals/s.
figures() {
	python3 - "$OUT/$1.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ref = r.get("refusalLatency") or {}
refused = sum(e["count"] for e in r["errors"] if e["kind"].startswith(("HTTP 429", "HTTP 503")))
other = r["errorCount"] - refused
cores = (r.get("cpu") or {}).get("nodeCores", 0)
print(f"{r['throughput_rps']:.0f} {r['latency']['p99_ms']:.1f} {ref.get('p99_ms', 0):.1f} {refused} {other} {r['latency']['max_ms']:.1f} {cores:.2f} {refused / r['windowSeconds']:.0f}")
EOF
}

# node_cores: CPU the node used; r_ms: node CPU per refusal, estimated as
# (node cores - goodput x CPU per answer at capacity) / refusals per second.
printf '%-5s %-9s %-8s %-9s %-8s %-10s %-11s %-9s %-7s %-12s %-10s %s\n' build run offered goodput ratio ok_p99_ms ok_max_ms ref_p99_ms refused other_errors node_cores r_ms | tee "$OUT/summary.txt"
for pair in $BINS; do
	name=${pair%%:*} bin=${pair#*:}
	DATA=$(mktemp -d)
	# shellcheck disable=SC2086
	env $NODE_ENV "${NODE_PIN[@]}" "$bin" standalone --data "$DATA" --listen "$GW_ADDR" --nats-listen "$NATS_ADDR" \
		--log-level warn $NODE_FLAGS >"$DATA/node.stdout" 2>"$OUT/node-$name.stderr" &
	NODE_PID=$!
	for _ in $(seq 1 600); do
		kill -0 "$NODE_PID" 2>/dev/null || { tail "$OUT/node-$name.stderr" >&2; exit 1; }
		if [[ -f $DATA/tls/ca.pem ]] && curl -fsS --max-time 2 --cacert "$DATA/tls/ca.pem" "https://$GW_ADDR/healthz" >/dev/null 2>&1; then break; fi
		sleep 0.2
	done
	# A person's credential (builds before personal identities: the shared operator.creds).
	creds="$DATA/operators/admin.creds"; [[ -f $creds ]] || creds="$DATA/operator.creds"
	export SOVKEYS_NATS_URL="nats://$NATS_ADDR" SOVKEYS_NATS_CREDS="$creds"
	"$bin" xks keystore create --prefix /overload >"$DATA/keystore.json"
	"$bin" xks key create --keystore /overload --id overload-key >/dev/null
	LT=("${GEN_PIN[@]}" bin/loadtest -url "https://$GW_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$DATA/keystore.json"
		-key overload-key -size 1024 -aad 0 -warmup 5s -node-pid "$NODE_PID" -timeout 5s -conns "$CONNS")
	run=$name-capacity
	"${LT[@]}" -op encrypt -concurrency "$CAP_CONCURRENCY" -duration "${CAP_SECONDS}s" -json "$OUT/$run.json" >"$OUT/$run.txt" || true
	read -r cap p99 rp99 refused other max capcores _ < <(figures "$run") || cap=0
	printf '%-5s %-9s %-8s %-9s %-8s %-10s %-11s %-9s %-7s %-12s %-10s %s\n' "$name" capacity "c=$CAP_CONCURRENCY" "$cap" 1.00 "$p99" "$max" "$rp99" "$refused" "$other" "$capcores" - | tee -a "$OUT/summary.txt"
	# The floor on the node's CPU, same generator, same closed loop.
	"${NODE_PIN[@]}" bin/loadtest floor -listen "$FLOOR_ADDR" -cert "$DATA/tls/cert.pem" -key "$DATA/tls/key.pem" \
		-creds-json "$DATA/keystore.json" >"$OUT/floor-$name.server.txt" 2>&1 &
	FLOOR_PID=$!
	sleep 1
	run=$name-floor
	"${GEN_PIN[@]}" bin/loadtest -url "https://$FLOOR_ADDR" -ca "$DATA/tls/ca.pem" -creds-json "$DATA/keystore.json" \
		-key overload-key -size 1024 -aad 0 -warmup 3s -node-pid "$FLOOR_PID" -timeout 5s -conns "$CONNS" \
		-op encrypt -concurrency "$CAP_CONCURRENCY" -duration "${CAP_SECONDS}s" -json "$OUT/$run.json" >"$OUT/$run.txt" || true
	kill -TERM "$FLOOR_PID" 2>/dev/null || true
	wait "$FLOOR_PID" 2>/dev/null || true
	FLOOR_PID=
	read -r fl p99 rp99 refused other max flcores _ < <(figures "$run") || fl=0
	ratio=$(awk -v g="$fl" -v c="$cap" 'BEGIN {printf "%.2f", g / c}')
	printf '%-5s %-9s %-8s %-9s %-8s %-10s %-11s %-9s %-7s %-12s %-10s %s\n' "$name" floor "c=$CAP_CONCURRENCY" "$fl" "$ratio" "$p99" "$max" "$rp99" "$refused" "$other" "$flcores" - | tee -a "$OUT/summary.txt"
	for f in $FACTORS; do
		# The previous step's connections may still wait in the backlog: start when the node answers again.
		for _ in $(seq 1 120); do
			curl -fsS --max-time 1 --cacert "$DATA/tls/ca.pem" "https://$GW_ADDR/healthz" >/dev/null 2>&1 && break
			sleep 0.5
		done
		rate=$(awk -v c="$cap" -v f="$f" 'BEGIN {printf "%.0f", c * f}')
		run=$name-open-$f
		"${LT[@]}" -op encrypt -rate "$rate" -max-inflight "$MAX_INFLIGHT" -duration "${OPEN_SECONDS}s" \
			-json "$OUT/$run.json" -chart "$OUT/$run.png" >"$OUT/$run.txt" || true
		read -r good p99 rp99 refused other max cores refps < <(figures "$run") || good=0
		ratio=$(awk -v g="$good" -v c="$cap" 'BEGIN {printf "%.2f", g / c}')
		rms=$(awk -v k="$cores" -v g="$good" -v c="$cap" -v kc="$capcores" -v n="$refps" \
			'BEGIN { if (n > 0 && c > 0) printf "%.3f", (k - g * kc / c) * 1000 / n; else printf "-" }')
		printf '%-5s %-9s %-8s %-9s %-8s %-10s %-11s %-9s %-7s %-12s %-10s %s\n' "$name" "open-$f" "$rate" "$good" "$ratio" "$p99" "$max" "$rp99" "$refused" "$other" "$cores" "$rms" | tee -a "$OUT/summary.txt"
	done
	grep -h '"refusal_reason"\|refusal_reason=' "$OUT/node-$name.stderr" | tail -3 || true
	stop_node
done
echo "results in $OUT"
