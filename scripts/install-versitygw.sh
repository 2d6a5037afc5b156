#!/usr/bin/env bash
# Installs versitygw (the S3 server the tests run on loopback) if it is
# missing. Looks where shared/testkit/s3test looks, in the same order: PATH,
# $(go env GOPATH)/bin, <repo>/bin. Builds from source with `go install`
# (about 90 s the first time; the binary is then cached).
#
#   scripts/install-versitygw.sh              install into $(go env GOPATH)/bin
#   VERSITYGW_BIN_DIR=bin scripts/install-versitygw.sh   install into <repo>/bin
set -euo pipefail

VERSION=v1.8.0
PKG=github.com/versity/versitygw/cmd/versitygw
GO=${GO:-go}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

command -v "$GO" >/dev/null || { echo "install-versitygw: Go is required (https://go.dev/dl)" >&2; exit 1; }

gopath_bin="$("$GO" env GOPATH | cut -d: -f1)/bin"

found=""
if command -v versitygw >/dev/null 2>&1; then
	found=$(command -v versitygw)
else
	for candidate in "$gopath_bin/versitygw" "$REPO/bin/versitygw"; do
		if [ -x "$candidate" ]; then found=$candidate; break; fi
	done
fi

if [ -n "$found" ]; then
	have=$("$GO" version -m "$found" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/versity/versitygw" {print $3}')
	if [ "$have" != "$VERSION" ]; then
		echo "install-versitygw: warning: $found is ${have:-of unknown version}, tests expect $VERSION" >&2
	fi
	exit 0
fi

dest=${VERSITYGW_BIN_DIR:-$gopath_bin}
case $dest in /*) ;; *) dest="$REPO/$dest" ;; esac
mkdir -p "$dest"
echo "install-versitygw: building versitygw $VERSION into $dest (about 90 s, once)"
start=$SECONDS
GOBIN=$dest "$GO" install "$PKG@$VERSION"
echo "install-versitygw: built $dest/versitygw in $((SECONDS - start)) s"
