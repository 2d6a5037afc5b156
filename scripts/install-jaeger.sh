#!/usr/bin/env bash
# Installs Jaeger (all-in-one: OTLP receiver, in-memory store, query API) for
# the trace test if it is missing. Looks where shared/testkit/jaegertest
# looks, in the same order: PATH, $(go env GOPATH)/bin, <repo>/bin.
#
# `go install github.com/jaegertracing/jaeger/cmd/jaeger@VERSION` is refused
# (the module has replace directives), so the binary is built in a scratch
# module that records it as a tool. About 7 min on 2 cores the first time
# (about 120 MB); the binary is then cached.
#
#   scripts/install-jaeger.sh                  install into $(go env GOPATH)/bin
#   JAEGER_BIN_DIR=bin scripts/install-jaeger.sh   install into <repo>/bin
set -euo pipefail

VERSION=v1.76.0
MODULE=github.com/jaegertracing/jaeger
PKG=$MODULE/cmd/jaeger
GO=${GO:-go}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

command -v "$GO" >/dev/null || { echo "install-jaeger: Go is required (https://go.dev/dl)" >&2; exit 1; }

gopath_bin="$("$GO" env GOPATH | cut -d: -f1)/bin"

found=""
if command -v jaeger >/dev/null 2>&1; then
	found=$(command -v jaeger)
else
	for candidate in "$gopath_bin/jaeger" "$REPO/bin/jaeger"; do
		if [ -x "$candidate" ]; then found=$candidate; break; fi
	done
fi

if [ -n "$found" ]; then
	have=$("$GO" version -m "$found" 2>/dev/null | awk -v m="$MODULE" '($1 == "mod" || $1 == "dep") && $2 == m {print $3}')
	if [ "$have" != "$VERSION" ]; then
		echo "install-jaeger: warning: $found is ${have:-of unknown version}, tests expect $VERSION" >&2
	fi
	exit 0
fi

dest=${JAEGER_BIN_DIR:-$gopath_bin}
case $dest in /*) ;; *) dest="$REPO/$dest" ;; esac
mkdir -p "$dest"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "install-jaeger: building jaeger $VERSION into $dest (about 7 min on 2 cores, once)"
start=$SECONDS
(
	cd "$scratch"
	"$GO" mod init sovkeys-jaeger-build >/dev/null 2>&1
	"$GO" get -tool "$PKG@$VERSION" >/dev/null
	# Build to a temporary name, then rename: an interrupted build never
	# leaves a half-written binary where the tests look.
	CGO_ENABLED=0 "$GO" build -trimpath -o "$dest/.jaeger.tmp" "$PKG"
)
mv "$dest/.jaeger.tmp" "$dest/jaeger"
echo "install-jaeger: built $dest/jaeger in $((SECONDS - start)) s"
