#!/usr/bin/env bash
# Builds nats-server from the version pinned in go.mod (the same server the
# embedded tests run) into a cache dir, once, and prints its path. Used by
# the cluster fault tests and scripts/cluster-runbook.sh.
#
#   scripts/install-nats-server.sh          -> prints e.g. ~/.cache/sovkeys/nats-server-v2.15.2
#   NATS_SERVER_CACHE=DIR scripts/install-nats-server.sh
set -euo pipefail

GO=${GO:-go}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG=github.com/nats-io/nats-server/v2
command -v "$GO" >/dev/null || { echo "install-nats-server: Go is required (https://go.dev/dl)" >&2; exit 1; }

version=$(cd "$REPO" && "$GO" list -m -f '{{.Version}}' "$PKG")
cache=${NATS_SERVER_CACHE:-$(cd "$REPO" && "$GO" env GOCACHE | xargs dirname)/sovkeys}
bin="$cache/nats-server-$version"
if [ ! -x "$bin" ]; then
	mkdir -p "$cache"
	echo "install-nats-server: building nats-server $version into $cache (once)" >&2
	(cd "$REPO" && "$GO" build -o "$bin.tmp" "$PKG") && mv "$bin.tmp" "$bin"
fi
echo "$bin"
