#!/usr/bin/env bash
# Runs the docs/operations.md runbook end to end on loopback: a SoftHSM
# token made outside standalone, `sovkeys cluster init`, three nats-server
# nodes, two gateways, two authn, two audit and two keyworkers on one token,
# unseal, a key store and a key, XKS calls through both gateways, adding a
# keyworker and a pool, rotating and revoking a credential live, a rolling
# restart of every node and service. It stops everything it started (also
# on failure).
#
#   scripts/cluster-runbook.sh            work dir: a new temp dir (kept, path printed)
#   WORK=DIR scripts/cluster-runbook.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${GO:-go}
WORK=${WORK:-$(mktemp -d -t sovkeys-runbook.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOGS=$WORK/logs
mkdir -p "$LOGS"
for t in curl jq softhsm2-util; do command -v $t >/dev/null || { echo "runbook: $t is required (make deps)" >&2; exit 1; }; done

declare -A PIDS=()   # name -> pid of every process this script started
stop() { # stop NAME: SIGTERM, wait, then SIGKILL
	local pid=${PIDS[$1]:-}
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	unset "PIDS[$1]"
}
cleanup() {
	local rc=$?
	for name in "${!PIDS[@]}"; do stop "$name"; done
	if [ $rc -ne 0 ]; then
		echo "runbook: FAILED (exit $rc); logs in $LOGS" >&2
		for f in "$LOGS"/*.log; do echo "--- $f"; tail -5 "$f"; done >&2
	fi
	exit $rc
}
trap cleanup EXIT INT TERM
step() { echo; echo "== $*"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local n=$(( $1 * 5 )) what=$2; shift 2
	for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
	echo "runbook: timed out waiting for $what" >&2; return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

step "0. build sovkeys and nats-server (the version pinned in go.mod)"
(cd "$REPO" && "$GO" build -o "$WORK/bin/sovkeys" ./cmd/sovkeys)
NATS_SERVER=$(GO="$GO" "$REPO/scripts/install-nats-server.sh")
SK=$WORK/bin/sovkeys
echo "sovkeys $SK, nats-server $NATS_SERVER"

step "1. HSM token (SoftHSM here; a real HSM's token is made with its own tools)"
export SOFTHSM2_CONF=$WORK/hsm/softhsm2.conf
mkdir -p "$WORK/hsm/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/hsm/tokens" > "$SOFTHSM2_CONF"
PIN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
softhsm2-util --init-token --free --label sovkeys --so-pin "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" --pin "$PIN" >/dev/null
MODULE=$(for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so; do [ -f "$p" ] && echo "$p" && break; done)
# Split the PIN into unseal shares, then forget it: keyworkers start sealed.
echo "$PIN" | "$SK" unseal split --pool default --shares 3 --threshold 2 > "$WORK/shares.txt"
mapfile -t SHARES < <(grep -o 'sovkeys-share:[^ ]*' "$WORK/shares.txt")
unset PIN
echo "token 'sovkeys' made; ${#SHARES[@]} shares (2 needed) in $WORK/shares.txt (hand them to different people)"

step "2. sovkeys cluster init"
BASE=$(( 20000 + RANDOM % 20000 ))
"$SK" cluster init --out "$WORK/cluster" --nodes 3 --gateways 2 --port-base "$BASE" \
	--operator admin:admin+security+custodian+auditor | tee "$WORK/cluster-init.txt"
C=$WORK/cluster
# shellcheck disable=SC1091
set -a; . "$C/cluster.env"; set +a     # SOVKEYS_NATS_URL = the three nodes, SOVKEYS_NATS_CA = the cluster CA (TLS)
export SOVKEYS_NATS_CREDS=$C/operators/admin.creds

step "3. start the three nats-server nodes"
start_node() { # start_node N
	"$NATS_SERVER" -c "$C/nats/n$1.conf" >>"$LOGS/nats-n$1.log" 2>&1 &
	PIDS[nats-n$1]=$!
}
node_healthy() { curl -fsS "http://127.0.0.1:$(( BASE + 200 + $1 - 1 ))/healthz?js-enabled-only=true"; }
for n in 1 2 3; do start_node $n; done
for n in 1 2 3; do wait_for 30 "nats node n$n" node_healthy $n; done
echo "3 nodes up: $SOVKEYS_NATS_URL"

step "3b. declare the streams and buckets once, with the bootstrap identity (services only bind)"
wait_for 60 "sovkeys init" "$SK" init --creds "$C/trust/bootstrap.creds" --pools default --replicas 3

step "4. start the services (two of each; keyworkers sealed)"
GW_PORTS=("$(free_port)" "$(free_port)")
start_svc() { # start_svc NAME SERVICE ARGS...
	local name=$1 svc=$2; shift 2
	"$SK" "$svc" --creds "${CREDS:-$C/creds/$svc.creds}" --replicas 3 "$@" >>"$LOGS/$name.log" 2>&1 &
	PIDS[$name]=$!
}
start_keyworker() { # start_keyworker NAME POOL TOKEN
	# One keyworker user per pool (cluster init): creds/keyworker-<pool>.creds.
	CREDS="$C/creds/keyworker-$2.creds" SOVKEYS_HSM_PIN= start_svc "$1" keyworker --pool "$2" --hsm-module "$MODULE" --hsm-token-label "$3" --sessions 4
}
start_gateway() { # start_gateway I
	start_svc "gateway-$1" gateway --listen "127.0.0.1:${GW_PORTS[$1]}" --tls-cert "$C/tls/cert.pem" --tls-key "$C/tls/key.pem"
}
for i in 0 1; do
	start_svc "audit-$i" audit
	start_svc "authn-$i" authn
	start_keyworker "keyworker-$i" default sovkeys
done
for i in 0 1; do start_gateway $i; done

step "5. unseal the pool (two of the three shares)"
wait_for 30 "shares accepted" "$SK" unseal --share "${SHARES[0]}" --share "${SHARES[1]}"
gw_ready() { curl -fsS --cacert "$C/tls/ca.pem" "https://127.0.0.1:${GW_PORTS[$1]}/healthz"; }
for i in 0 1; do wait_for 120 "gateway $i ready" gw_ready $i; done
echo "both gateways ready"
# Again, now that the services' consumers exist: their leaders are placed
# with their streams' (sibling leaders one per node).
wait_for 60 "sovkeys init (place leaders)" "$SK" init --creds "$C/trust/bootstrap.creds" --pools default --replicas 3

step "6. a key store and a key"
"$SK" xks keystore create --prefix /runbook --replicas 3 > "$WORK/ks.json"
"$SK" xks key create --keystore /runbook --id key-1 --usage encrypt,decrypt --replicas 3 >/dev/null
AK=$(jq -r .accessKeyId "$WORK/ks.json"); SKEY=$(jq -r .secretAccessKey "$WORK/ks.json")
xks() { # xks GATEWAY_INDEX OP BODY
	curl -fsS --max-time 5 --cacert "$C/tls/ca.pem" --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AK:$SKEY" \
		-H 'Content-Type: application/json' -d "$3" "https://127.0.0.1:${GW_PORTS[$1]}/runbook/kms/xks/v1/keys/key-1/$2"
}
meta='"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/ops","kmsOperation":"Encrypt","kmsRequestId":"r-1","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/k"}'
roundtrip() { # roundtrip GATEWAY_INDEX: encrypt on it, decrypt on the other
	local ct pt
	ct=$(xks "$1" encrypt "{$meta,\"plaintext\":\"aGVsbG8gY2x1c3Rlcg==\",\"encryptionAlgorithm\":\"AES_GCM\"}") || return 1
	pt=$(xks $(( 1 - $1 )) decrypt "{$meta,\"ciphertext\":$(jq .ciphertext <<<"$ct"),\"initializationVector\":$(jq .initializationVector <<<"$ct"),\"authenticationTag\":$(jq .authenticationTag <<<"$ct"),\"ciphertextMetadata\":$(jq .ciphertextMetadata <<<"$ct"),\"encryptionAlgorithm\":\"AES_GCM\"}") || return 1
	[ "$(jq -r .plaintext <<<"$pt")" = "aGVsbG8gY2x1c3Rlcg==" ]
}
check_xks() { wait_for 60 "XKS round trip via gateway 0 and 1" roundtrip 0 && wait_for 60 "XKS round trip via gateway 1 and 0" roundtrip 1; }
check_xks
echo "XKS encrypt/decrypt through both gateways: ok"

step "7. add a keyworker to the pool (same token)"
start_keyworker keyworker-2 default sovkeys
wait_for 30 "shares accepted" "$SK" unseal --share "${SHARES[1]}" --share "${SHARES[2]}"   # the new process is sealed too
check_xks

step "8. add a pool: a second HSM token, cluster init --pool, its keyworker"
PIN2=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
softhsm2-util --init-token --free --label sovkeys-2 --so-pin "so-$PIN2" --pin "$PIN2" >/dev/null
mapfile -t SHARES2 < <(echo "$PIN2" | "$SK" unseal split --pool hsm2 --shares 3 --threshold 2 | grep -o 'sovkeys-share:[^ ]*')
unset PIN2
# Rewrites only the creds whose permissions name pools, revokes the keys they
# replace and has the running nodes reload: the keyworkers reconnect with
# their new file at once.
"$SK" cluster init --out "$C" --pool hsm2 > "$WORK/cluster-init-2.txt"
grep -q "node(s) reloaded" "$WORK/cluster-init-2.txt" || { echo "runbook: nodes did not reload" >&2; exit 1; }
wait_for 60 "sovkeys init (pool hsm2)" "$SK" init --creds "$C/trust/bootstrap.creds" --pools default,hsm2 --replicas 3
head -1 "$WORK/cluster-init-2.txt"
# The new pool's keyworker starts with the new credential.
start_keyworker keyworker-hsm2 hsm2 sovkeys-2
wait_for 30 "shares accepted" "$SK" unseal --share "${SHARES2[0]}" --share "${SHARES2[2]}"
ks2() { "$SK" xks keystore create --prefix /runbook2 --pool hsm2 --replicas 3 > "$WORK/ks2.json"; }
wait_for 60 "a key store on pool hsm2 (its keyworker unsealed)" ks2
echo "key store $(jq -r .uriPrefix "$WORK/ks2.json") on pool hsm2"

step "8b. rotate credentials live: authn's (it keeps serving), the bootstrap identity's (the copy is refused)"
cp "$C/trust/bootstrap.creds" "$WORK/bootstrap-copy.creds"
"$SK" cluster init --out "$C" --rotate authn --rotate bootstrap > "$WORK/cluster-init-3.txt"
grep "reloaded" "$WORK/cluster-init-3.txt"
check_xks   # authn follows its rotated file without a restart
if "$SK" init --creds "$WORK/bootstrap-copy.creds" --pools default,hsm2 --replicas 3 >/dev/null 2>&1; then
	echo "runbook: the revoked bootstrap key still connects" >&2; exit 1
fi
"$SK" init --creds "$C/trust/bootstrap.creds" --pools default,hsm2 --replicas 3 >/dev/null
echo "authn rotated and serving; the old bootstrap key is refused, the new one declares"

step "9. rolling restart: each NATS node, then each service, one at a time"
for n in 1 2 3; do
	stop "nats-n$n"; start_node $n
	wait_for 60 "nats node n$n back" node_healthy $n
	check_xks
	# A node that comes back leads nothing: give it back its sibling leaders.
	wait_for 60 "sovkeys init (leaders back on n$n)" "$SK" init --creds "$C/trust/bootstrap.creds" --pools default,hsm2 --replicas 3
	check_xks
	echo "node n$n restarted"
done
for i in 0 1; do
	for s in audit authn; do stop "$s-$i"; start_svc "$s-$i" $s; done
	stop "gateway-$i"; start_gateway $i
	wait_for 60 "gateway $i ready" gw_ready $i
	check_xks
	echo "audit-$i, authn-$i, gateway-$i restarted"
done
for i in 0 1 2; do
	stop "keyworker-$i"; start_keyworker "keyworker-$i" default sovkeys
	wait_for 30 "shares accepted" "$SK" unseal --share "${SHARES[0]}" --share "${SHARES[2]}"
	check_xks
	echo "keyworker-$i restarted and unsealed"
done

step "10. audit log of the key store"
# Right after the rolling restart the keyworkers that sign were just
# unsealed: the first checkpoint may take a few rounds.
wait_for 120 "a signed checkpoint of every record" "$SK" audit checkpoint --keystore /runbook
"$SK" audit verify --keystore /runbook

echo
echo "runbook: OK (work dir $WORK); stopping everything"
