#!/usr/bin/env bash
# Builds the container images of the compose mesh WITHOUT a container
# registry: everything comes from this repository, the Go module proxy and
# the machine's own Debian apt sources.
#
#   sovkeys-base:bookworm  Debian minbase + softhsm2 + ca-certificates + curl
#                          (compose's health checks), made with debootstrap
#                          from the mirror this machine's apt uses, trimmed,
#                          imported with `docker import`. Built once; skipped
#                          when the image exists (with curl).
#   sovkeys:local          the sovkeys binary (built here with `go build`)
#                          on the base image (deploy/compose/Dockerfile).
#   sovkeys-nats:local     a static nats-server built from the module
#                          version pinned in go.mod, on the base image
#                          (deploy/compose/Dockerfile.nats).
#   sovkeys-jaeger:local   the Jaeger binary `make jaeger` caches, on scratch
#                          (deploy/compose/Dockerfile.jaeger); skipped when
#                          that binary is absent.
#   sovkeys-prometheus:local  Debian's `prometheus` package and the
#                          JavaScript packages of its web UI, downloaded with
#                          `apt-get download` from this machine's apt sources
#                          and unpacked (dpkg-deb -x) onto the base image
#                          (deploy/compose/Dockerfile.prometheus).
#
# A machine with registry access can skip debootstrap and start from an
# upstream image instead:  BASE_IMAGE=debian:bookworm-slim scripts/build-images.sh
# (the Dockerfile then installs softhsm2 with apt inside the build).
#
#   REBUILD_BASE=1 scripts/build-images.sh   rebuild the base image too
#   SOVKEYS_IMAGE=T NATS_IMAGE=T JAEGER_IMAGE=T|none PROMETHEUS_IMAGE=T|none
#                                            other tags (none: skip that image)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${GO:-go}
BASE_TAG=sovkeys-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$BASE_TAG}
SUITE=bookworm
SOVKEYS_IMAGE=${SOVKEYS_IMAGE:-sovkeys:local}
NATS_IMAGE=${NATS_IMAGE:-sovkeys-nats:local}
JAEGER_IMAGE=${JAEGER_IMAGE:-sovkeys-jaeger:local}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-sovkeys-prometheus:local}

say() { echo "build-images: $*"; }
die() { echo "build-images: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is required"
command -v "$GO" >/dev/null || die "Go is required (https://go.dev/dl)"
docker info >/dev/null 2>&1 || die "the docker engine is not reachable"
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )

# apt_mirror prints the Debian mirror this machine's apt uses for $SUITE:
# the first URI of a deb822 stanza (/etc/apt/sources.list.d/*.sources)
# listing the suite, else the first matching line of sources.list. The
# mirror is read at build time and never written into the repository.
apt_mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		awk -v suite="$SUITE" '
			function flush() { if (uris != "" && has && types ~ /(^|[ \t])deb([ \t]|$)/) { split(uris, u, /[ \t]+/); print u[1]; uris = ""; exit } uris = ""; has = 0; types = "" }
			/^[ \t]*$/ { flush(); next }
			/^[ \t]*#/ { next }
			tolower($1) == "types:" { $1 = ""; types = $0 }
			tolower($1) == "uris:" { $1 = ""; sub(/^[ \t]+/, ""); uris = $0 }
			tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
			END { flush() }' "$f" && return 0
	done | head -n1 | grep . && return 0
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } if ($(i + 1) == suite) { print $i; exit } }' "$f"
	done | head -n1 | grep .
}

build_base() {
	if [ -z "${REBUILD_BASE:-}" ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
		if docker run --rm --entrypoint /bin/sh "$BASE_TAG" -c 'command -v curl' >/dev/null 2>&1; then
			say "$BASE_TAG exists (REBUILD_BASE=1 to rebuild)"
			return
		fi
		say "$BASE_TAG has no curl (made before compose's health checks): rebuilding it"
	fi
	local mirror
	mirror=$(apt_mirror) || die "no Debian $SUITE mirror found in /etc/apt/sources.list{,.d/}"
	if ! command -v debootstrap >/dev/null; then
		say "installing debootstrap (apt)"
		$SUDO apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
	fi
	local root
	root=$(mktemp -d /tmp/sovkeys-base.XXXXXX)
	# shellcheck disable=SC2064
	trap "$SUDO rm -rf '$root'" EXIT
	say "debootstrap $SUITE (minbase + softhsm2 + curl) from the machine's apt mirror into $root"
	local start=$SECONDS
	$SUDO debootstrap --variant=minbase --include=softhsm2,ca-certificates,curl "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 ||
		{ tail -n 30 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
	rm -f "$root.log"
	# Trim: documentation, manuals, locales, apt caches and lists; keep the
	# image reproducible-ish and small. No apt sources pointing at this
	# machine's mirror stay in the image.
	$SUDO rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
		"$root"/usr/share/locale/* "$root"/usr/share/i18n/* "$root"/usr/share/lintian \
		"$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* \
		"$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/*
	echo "directories.tokendir = /var/lib/softhsm/tokens" | $SUDO tee "$root/etc/softhsm/softhsm2.conf" >/dev/null
	$SUDO tar -C "$root" -c . | docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD ["/bin/sh"]' - "$BASE_TAG" >/dev/null
	$SUDO rm -rf "$root"
	trap - EXIT
	say "built $BASE_TAG in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$BASE_TAG" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}

# drop_old IMAGE OLD_ID: drop the image IMAGE pointed at before this build
# when nothing else uses it, so rebuilding does not pile up untagged images.
drop_old() {
	local now
	now=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)
	if [ -n "$2" ] && [ "$2" != "$now" ]; then
		docker rmi "$2" >/dev/null 2>&1 || true
	fi
}

build_sovkeys() {
	local ctx old
	old=$(docker image inspect -f '{{.Id}}' "$SOVKEYS_IMAGE" 2>/dev/null || true)
	ctx=$(mktemp -d)
	cp "$REPO/deploy/compose/Dockerfile" "$ctx/Dockerfile"
	say "go build sovkeys (host toolchain; same Debian release as the base image)"
	# No -trimpath: the build reuses the packages `go test` compiled (make
	# test runs the compose test last), instead of compiling them all again.
	(cd "$REPO" && CGO_ENABLED=1 "$GO" build -ldflags "-s -w" -o "$ctx/sovkeys" ./cmd/sovkeys)
	docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$SOVKEYS_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
	drop_old "$SOVKEYS_IMAGE" "$old"
	say "built $SOVKEYS_IMAGE from $BASE_IMAGE"
}

build_nats() {
	local ctx version old
	old=$(docker image inspect -f '{{.Id}}' "$NATS_IMAGE" 2>/dev/null || true)
	ctx=$(mktemp -d)
	version=$(cd "$REPO" && "$GO" list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2)
	cp "$REPO/deploy/compose/Dockerfile.nats" "$ctx/Dockerfile"
	say "go build nats-server $version (static, from go.mod)"
	(cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$ctx/nats-server" github.com/nats-io/nats-server/v2)
	docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "org.opencontainers.image.version=$version" -t "$NATS_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
	drop_old "$NATS_IMAGE" "$old"
	say "built $NATS_IMAGE (nats-server $version on $BASE_IMAGE)"
}

# build_jaeger packages the Jaeger binary scripts/install-jaeger.sh caches
# (where shared/testkit/jaegertest finds it); skipped when it is absent.
build_jaeger() {
	local bin="" ctx candidate
	[ "$JAEGER_IMAGE" != none ] || return 0
	for candidate in "$(command -v jaeger || true)" "$("$GO" env GOPATH | cut -d: -f1)/bin/jaeger" "$REPO/bin/jaeger"; do
		if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin=$candidate; break; fi
	done
	if [ -z "$bin" ]; then
		say "no jaeger binary: run \`make jaeger\` first for $JAEGER_IMAGE (skipped)"
		return
	fi
	ctx=$(mktemp -d)
	cp "$bin" "$ctx/jaeger"
	cp "$REPO/deploy/compose/Dockerfile.jaeger" "$ctx/Dockerfile"
	cp "$REPO/deploy/compose/jaeger.yaml" "$ctx/jaeger.yaml"
	docker build -q -t "$JAEGER_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
	say "built $JAEGER_IMAGE from $bin"
}

# build_prometheus packages Debian's prometheus: the package and the
# libjs-*/fonts-* packages its classic web UI links to (closure of its
# dependencies, keeping only those), unpacked; built once per package
# version (the image is labelled with it).
build_prometheus() {
	local ctx version pkgs deb old
	case $PROMETHEUS_IMAGE in none | */*) return 0 ;; esac # none, or an upstream image: nothing to build
	version=$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')
	[ -n "$version" ] && [ "$version" != "(none)" ] || { say "no prometheus package in this machine's apt sources (apt-get update?): $PROMETHEUS_IMAGE skipped"; return 0; }
	if [ "$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$PROMETHEUS_IMAGE" 2>/dev/null)" = "$version" ]; then
		say "$PROMETHEUS_IMAGE exists (prometheus $version)"
		return 0
	fi
	old=$(docker image inspect -f '{{.Id}}' "$PROMETHEUS_IMAGE" 2>/dev/null || true)
	ctx=$(mktemp -d)
	mkdir -p "$ctx/debs" "$ctx/root"
	chmod 755 "$ctx" "$ctx/debs" # apt-get download runs as _apt where it can
	pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances prometheus |
		grep -E '^(prometheus|libjs-[a-z0-9.+-]+|fonts-[a-z0-9.+-]+)$' | sort -u)
	say "apt-get download $(echo "$pkgs" | wc -l) packages (prometheus $version and its web UI's JavaScript)"
	# shellcheck disable=SC2086
	(cd "$ctx/debs" && apt-get download -qq $pkgs) || die "apt-get download failed"
	for deb in "$ctx"/debs/*.deb; do dpkg-deb -x "$deb" "$ctx/root"; done
	rm -rf "$ctx/debs" "$ctx/root/etc/init.d" "$ctx/root/etc/default" "$ctx/root/etc/logrotate.d" "$ctx/root/lib/systemd" \
		"$ctx/root/usr/share/doc" "$ctx/root/usr/share/man" \
		"$ctx/root/usr/share/javascript/moment-timezone/data" # 212 MB of time zone sources the UI does not load
	# Merged /usr: /bin, /lib... are symlinks in the image; a real directory
	# of the same name in root/ would replace them.
	for d in bin sbin lib lib32 lib64; do
		if [ -d "$ctx/root/$d" ] && [ ! -L "$ctx/root/$d" ]; then
			mkdir -p "$ctx/root/usr/$d"
			cp -a "$ctx/root/$d/." "$ctx/root/usr/$d/"
			rm -rf "${ctx:?}/root/$d"
		fi
	done
	cp "$REPO/deploy/compose/Dockerfile.prometheus" "$ctx/Dockerfile"
	docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "org.opencontainers.image.version=$version" -t "$PROMETHEUS_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
	drop_old "$PROMETHEUS_IMAGE" "$old"
	say "built $PROMETHEUS_IMAGE (Debian prometheus $version on $BASE_IMAGE)"
}

if [ "$BASE_IMAGE" = "$BASE_TAG" ]; then
	build_base
fi
build_sovkeys
build_nats
build_jaeger
build_prometheus
