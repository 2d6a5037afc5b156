#!/usr/bin/env bash
# The local compose cluster (deploy/compose/compose.yaml), with no registry:
#
#   scripts/compose.sh up [--profile traces|metrics|grafana] images, credentials, start, unseal, wait
#   scripts/compose.sh unseal                   give the sealed keyworkers 2 of the 3 PIN shares until both are healthy
#   scripts/compose.sh init                     `sovkeys init` again: leaders back on a restarted NATS node
#   scripts/compose.sh cli ARGS...              the operator CLI on the cluster network
#   scripts/compose.sh down [--volumes]         stop (--volumes: also drop NATS data and the token)
#   scripts/compose.sh compose ARGS...          docker-compose with this project's file and name
#
# Environment: COMPOSE_PROJECT_NAME (default sovkeys), SOVKEYS_GENERATED
# (credentials, TLS and unseal shares; default deploy/compose/.generated),
# SOVKEYS_GATEWAY_PORT / SOVKEYS_GATEWAY2_PORT (published on 127.0.0.1;
# default 8443 / 8444), SOVKEYS_PROMETHEUS_PORT (profiles metrics and
# grafana; default 9090). Steps and why: docs/observability.md, "Compose".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$REPO/deploy/compose
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-sovkeys}
SOVKEYS_GENERATED=${SOVKEYS_GENERATED:-$DIR/.generated}
mkdir -p "$SOVKEYS_GENERATED"
SOVKEYS_GENERATED=$(cd "$SOVKEYS_GENERATED" && pwd)
export SOVKEYS_GENERATED
SOVKEYS_IMAGE=${SOVKEYS_IMAGE:-sovkeys:local}
GATEWAY_PORT=${SOVKEYS_GATEWAY_PORT:-8443}

say() { echo "compose: $*"; }
die() { echo "compose: $*" >&2; exit 1; }

dc() { docker-compose -f "$DIR/compose.yaml" "$@"; }
command -v docker-compose >/dev/null || die "docker-compose is required (Debian package docker-compose)"

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local deadline=$((SECONDS + $1)) what=$2; shift 2
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || { echo "compose: timed out after ${what}" >&2; return 1; }
		sleep 1
	done
}

# healthy SERVICE: its container's health check passes.
healthy() {
	local id
	id=$(dc ps -q "$1") && [ -n "$id" ] &&
		[ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]
}

# running SERVICE: its container runs.
running() {
	local id
	id=$(dc ps -q "$1") && [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Running}}' "$id")" = true ]
}

# images builds the images from this checkout: the base image only when
# missing, sovkeys and nats-server from go's build cache (seconds when
# nothing changed), so the cluster always runs the code at hand.
images() {
	"$REPO/scripts/build-images.sh"
}

# generate writes the cluster's NATS trust, per-service credentials, node
# configs and the gateways' test TLS with `sovkeys cluster init`, run in the
# sovkeys image with the output directory mounted where the nodes see it.
# Running it again changes nothing.
generate() {
	mkdir -p "$SOVKEYS_GENERATED/unseal" "$SOVKEYS_GENERATED/work"
	chmod 700 "$SOVKEYS_GENERATED" "$SOVKEYS_GENERATED/unseal"
	docker run --rm --user "$(id -u):$(id -g)" -v "$SOVKEYS_GENERATED:/sovkeys" "$SOVKEYS_IMAGE" \
		cluster init --out /sovkeys --nodes 3 --hosts nats-1,nats-2,nats-3 --port-base 4222 --gateways 2 \
		--operator admin:admin+security+custodian+auditor >/dev/null
	say "credentials in $SOVKEYS_GENERATED (cluster init)"
}

# unseal gives every keyworker that is sealed now 2 of the pool's 3 PIN
# shares, each encrypted to that keyworker's published key (docs/operations.md,
# "Unseal"). The shares stay in the container.
unseal() {
	dc run --rm -T -v "$SOVKEYS_GENERATED/unseal:/unseal:ro" --entrypoint /bin/sh cli \
		-c "grep -o 'sovkeys-share:[^ ]*' /unseal/shares | head -n 2 | sovkeys unseal" >/dev/null
}

# unseal_all succeeds once both keyworkers are healthy, giving shares to
# the sealed ones meanwhile: a keyworker that publishes its key after a
# round needs another.
unseal_all() {
	healthy keyworker-1 && healthy keyworker-2 && return 0
	unseal || true
	return 1
}

up() {
	local profile=()
	if [ "${1:-}" = --profile ]; then
		profile=(--profile "$2")
		case $2 in traces | grafana) export SOVKEYS_OTLP_ENDPOINT=${SOVKEYS_OTLP_ENDPOINT:-http://jaeger:4317} ;; esac
	fi
	images
	generate
	local start=$SECONDS
	dc "${profile[@]}" up -d --remove-orphans
	wait_for 120 "waiting for the keyworkers to start" running keyworker-1
	wait_for 60 "waiting for the keyworkers to start" running keyworker-2
	# Shares are submitted only when a keyworker is sealed: unused ones would
	# wait in the unseal bucket for its 1 h TTL.
	sleep 3
	if ! healthy keyworker-1 || ! healthy keyworker-2; then
		say "unsealing the keyworkers (2 of 3 shares from $SOVKEYS_GENERATED/unseal/shares)"
		wait_for 120 "unsealing" unseal_all
	fi
	for s in keyworker-1 keyworker-2 gateway-1 gateway-2; do
		wait_for 120 "waiting for $s to be healthy" healthy "$s"
	done
	say "up in $((SECONDS - start)) s: https://127.0.0.1:$GATEWAY_PORT (trust anchor $SOVKEYS_GENERATED/tls/ca.pem)"
	case ${profile[1]:-} in metrics | grafana)
		wait_for 60 "waiting for Prometheus" curl -fsS "http://127.0.0.1:${SOVKEYS_PROMETHEUS_PORT:-9090}/-/ready"
		# Debian's package serves its classic UI under /classic (/alerts with an upstream image).
		say "Prometheus: http://127.0.0.1:${SOVKEYS_PROMETHEUS_PORT:-9090}/ (alerts: /classic/alerts; rules: deploy/prometheus/rules; runbook: docs/operations.md)"
		;;
	esac
	say "operator CLI: scripts/compose.sh cli xks keystore list"
}

case "${1:-}" in
up) shift; up "$@" ;;
unseal) wait_for 120 "unsealing every keyworker" unseal_all && say "keyworkers unsealed" ;;
init) dc run --rm -T init && say "streams and leaders declared" ;;
cli) shift; dc run --rm -T cli "$@" ;;
compose) shift; dc "$@" ;;
down)
	shift
	if [ "${1:-}" = --volumes ]; then
		dc --profile traces --profile metrics --profile grafana --profile tools down --volumes --remove-orphans
	else
		dc --profile traces --profile metrics --profile grafana --profile tools down --remove-orphans
	fi
	;;
*) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
