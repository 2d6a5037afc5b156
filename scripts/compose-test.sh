#!/usr/bin/env bash
# The compose cluster end to end, on real containers (the last step of
# `make test`; alone: `make compose-test`): builds images of this checkout
# under its own tags (the base image once), brings
# deploy/compose/compose.yaml up under its own project name, ports and
# credentials directory (a running `make compose-up` is not touched),
# then through the published gateway ports:
#   - an XKS key store and key; encrypt on one gateway, decrypt on the other
#   - a volume-secret tenant, an instance certificate, generate-secret and
#     decrypt-secret (docs/examples/volume-secret.sh)
#   - `docker kill` of a NATS node and of a keyworker: calls still succeed
#     (retried for a bounded time while JetStream and the pool recover)
#   - both restarted (`sovkeys init` again for the node's sibling leaders,
#     the keyworker unsealed again): calls succeed
#   - `sovkeys audit verify` of the key store's log
#   - with Prometheus (profile metrics, rules' `for:` shortened to 3 s):
#     NATSNodeDown and SovkeysTargetDown fire during the kills and every
#     alert of the faults is gone after the repairs
# and tears everything down on exit, also on failure (logs printed then).
# Skipped, with a message, when no Docker engine answers.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "compose-test: $*"; }

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
	say "SKIPPED: no Docker engine answers (\`docker info\` failed); the compose cluster was not tested"
	exit 0
fi
if ! command -v docker-compose >/dev/null 2>&1; then
	say "SKIPPED: a Docker engine answers but docker-compose is not installed (apt-get install docker-compose)"
	exit 0
fi
for t in curl jq openssl; do command -v $t >/dev/null || { say "$t is required (make deps)" >&2; exit 1; }; done

START=$SECONDS
# Images of its own, from this checkout: a parallel run from another
# checkout cannot swap sovkeys:local under it.
export SOVKEYS_IMAGE=sovkeys:compose-test-$$ NATS_IMAGE=sovkeys-nats:compose-test-$$ JAEGER_IMAGE=none
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export COMPOSE_PROJECT_NAME=sovkeys-test-$$
export SOVKEYS_GENERATED
SOVKEYS_GENERATED=$(mktemp -d -t sovkeys-compose.XXXXXX)
export SOVKEYS_GATEWAY_PORT SOVKEYS_GATEWAY2_PORT
SOVKEYS_GATEWAY_PORT=$(free_port)
SOVKEYS_GATEWAY2_PORT=$(free_port)
C="$REPO/scripts/compose.sh"
GEN=$SOVKEYS_GENERATED
CA=$GEN/tls/ca.pem

cleanup() {
	local rc=$?
	trap - EXIT
	if [ $rc -ne 0 ]; then
		say "FAILED (exit $rc) after $((SECONDS - START)) s; last log lines of every container:" >&2
		"$C" compose ps >&2 || true
		"$C" compose logs --no-color --tail 15 >&2 || true
	fi
	"$C" down --volumes >/dev/null 2>&1 || true
	docker rmi "$SOVKEYS_IMAGE" "$NATS_IMAGE" >/dev/null 2>&1 || true
	rm -rf "$GEN"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT # an interrupted test fails; cleanup runs on the way out
trap 'exit 143' TERM

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local deadline=$((SECONDS + $1)) what=$2 t0=$SECONDS; shift 2
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || { say "timed out: $what" >&2; return 1; }
		sleep 1
	done
	say "$what: ok ($((SECONDS - t0)) s)"
}
cli() { "$C" cli "$@"; }
container() { "$C" compose ps -q "$1"; }

# Prometheus (profile metrics, Debian's package) with the alerting rules,
# their `for:` shortened to 3 s so the faults below fire them in seconds;
# skipped when this machine's apt has no prometheus package to build from.
PROFILE=()
# (awk reads the whole answer: `grep -q` would close the pipe early and,
# under pipefail, apt-cache's SIGPIPE would read as "no package".)
candidate=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ $candidate =~ ^[0-9] ]]; then
	export SOVKEYS_PROMETHEUS_PORT SOVKEYS_PROMETHEUS_RULES=$GEN/rules
	SOVKEYS_PROMETHEUS_PORT=$(free_port)
	mkdir -p "$SOVKEYS_PROMETHEUS_RULES"
	for f in "$REPO"/deploy/prometheus/rules/*.yml; do
		sed -E 's/^([[:space:]]*for:[[:space:]]*)[^[:space:]]+[[:space:]]*$/\13s/' "$f" >"$SOVKEYS_PROMETHEUS_RULES/${f##*/}"
	done
	PROFILE=(--profile metrics)
	say "Prometheus on 127.0.0.1:$SOVKEYS_PROMETHEUS_PORT"
else
	say "no prometheus package in apt: alerts NOT checked"
fi
alerts() { curl -fsS --max-time 5 "http://127.0.0.1:$SOVKEYS_PROMETHEUS_PORT/api/v1/alerts"; }
firing() { # firing NAME [LABEL VALUE]: the alert fires (with that label)
	alerts | jq -e --arg n "$1" --arg k "${2:-alertname}" --arg v "${3:-$1}" \
		'[.data.alerts[] | select(.state == "firing" and .labels.alertname == $n and .labels[$k] == $v)] | length > 0' >/dev/null
}
quiet() { # quiet NAME: neither pending nor firing
	alerts | jq -e --arg n "$1" '[.data.alerts[] | select(.labels.alertname == $n)] | length == 0' >/dev/null
}

say "project $COMPOSE_PROJECT_NAME, gateways on 127.0.0.1:$SOVKEYS_GATEWAY_PORT and :$SOVKEYS_GATEWAY2_PORT"
"$C" up "${PROFILE[@]}"
UP=$((SECONDS - START))

# XKS: a key store and a key, then encrypt on one gateway, decrypt on the other.
wait_for 60 "key store created" sh -c "'$C' cli xks keystore create --prefix /compose --replicas 3 > '$GEN/ks.json'"
cli xks key create --keystore /compose --id key-1 --usage encrypt,decrypt --replicas 3 >/dev/null
AK=$(jq -r .accessKeyId "$GEN/ks.json")
SK=$(jq -r .secretAccessKey "$GEN/ks.json")
PORTS=("$SOVKEYS_GATEWAY_PORT" "$SOVKEYS_GATEWAY2_PORT")
xks() { # xks GATEWAY_INDEX OP BODY
	curl -fsS --max-time 5 --cacert "$CA" --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AK:$SK" \
		-H 'Content-Type: application/json' -d "$3" "https://127.0.0.1:${PORTS[$1]}/compose/kms/xks/v1/keys/key-1/$2"
}
meta='"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/ops","kmsOperation":"Encrypt","kmsRequestId":"r-1","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/k"}'
roundtrip() { # encrypt on gateway 1, decrypt on gateway 2
	local ct pt
	ct=$(xks 0 encrypt "{$meta,\"plaintext\":\"aGVsbG8gY29tcG9zZQ==\",\"encryptionAlgorithm\":\"AES_GCM\"}") || return 1
	pt=$(xks 1 decrypt "{$meta,\"ciphertext\":$(jq .ciphertext <<<"$ct"),\"initializationVector\":$(jq .initializationVector <<<"$ct"),\"authenticationTag\":$(jq .authenticationTag <<<"$ct"),\"ciphertextMetadata\":$(jq .ciphertextMetadata <<<"$ct"),\"encryptionAlgorithm\":\"AES_GCM\"}") || return 1
	[ "$(jq -r .plaintext <<<"$pt")" = "aGVsbG8gY29tcG9zZQ==" ]
}
wait_for 30 "XKS encrypt (gateway-1) + decrypt (gateway-2)" roundtrip

# Volume secrets: a tenant and an instance certificate (CA key in the HSM).
cli tenant create --id vpc-compose >/dev/null
cli instance issue-cert --tenant vpc-compose --instance i-compose --out /work/i-compose >/dev/null
vs() {
	GATEWAY=https://127.0.0.1:$SOVKEYS_GATEWAY_PORT TLS_CA=$CA CERT_DIR=$GEN/work/i-compose INSTANCE=i-compose VOLUME=vol-1 \
		"$REPO/docs/examples/volume-secret.sh" > "$GEN/vs.out" 2>&1 || return 1
	local a b
	a=$(sed -n 's/^generate-secret: //p' "$GEN/vs.out")
	b=$(sed -n 's/^decrypt-secret: //p' "$GEN/vs.out")
	[ -n "$a" ] && [ "$a" = "$b" ]
}
wait_for 30 "volume secret generate + decrypt" vs

# Faults: kill -9 (docker kill) one NATS node and one keyworker.
T0=$SECONDS
docker kill "$(container nats-2)" >/dev/null
docker kill "$(container keyworker-1)" >/dev/null
say "docker kill nats-2 and keyworker-1"
wait_for 90 "XKS after the kills" roundtrip
wait_for 60 "volume secret after the kills" vs
KILLED=$((SECONDS - T0))
if [ ${#PROFILE[@]} -gt 0 ]; then
	wait_for 60 "alert NATSNodeDown firing (nats-2 killed)" firing NATSNodeDown
	wait_for 30 "alert SovkeysTargetDown firing (keyworker-1 killed)" firing SovkeysTargetDown instance keyworker-1:9464
fi

# Both back: the node rejoins, the keyworker starts sealed and is unsealed.
docker start "$(container nats-2)" "$(container keyworker-1)" >/dev/null
wait_for 60 "nats-2 healthy again" "$C" compose exec -T nats-2 sh -c 'curl -fsS -o /dev/null "http://127.0.0.1:4422/healthz?js-enabled-only=true"'
wait_for 60 "sovkeys init again (nats-2 leads its siblings again)" "$C" init
wait_for 60 "keyworker-1 unsealed again" "$C" unseal
wait_for 60 "keyworker-1 healthy again" sh -c "[ \"\$(docker inspect -f '{{.State.Health.Status}}' $(container keyworker-1))\" = healthy ]"
wait_for 60 "XKS after the restarts" roundtrip
if [ ${#PROFILE[@]} -gt 0 ]; then
	wait_for 90 "alert NATSNodeDown resolved" quiet NATSNodeDown
	wait_for 30 "alert SovkeysTargetDown resolved" quiet SovkeysTargetDown
	wait_for 30 "alert KeyworkerSealed resolved" quiet KeyworkerSealed
fi

# The audit log of the key store: gapless, hash-chained, HSM-signed.
cli audit checkpoint --keystore /compose >/dev/null
cli audit verify --keystore /compose | tee "$GEN/verify.out"

say "PASS in $((SECONDS - START)) s (stack up in $UP s; calls served again $KILLED s after the kills)"
