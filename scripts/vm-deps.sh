#!/usr/bin/env bash
# Fetches what the VM boot test (test/vm) needs on Debian: qemu-system-x86
# and busybox-static from apt, and Debian's kernel package, downloaded with
# `apt-get download` (never installed: the test unpacks it with dpkg-deb -x).
# The package mirror is the machine's own apt configuration.
#
#   scripts/vm-deps.sh      (as root, or with sudo)
#
# The .deb goes into $SOVKEYS_VM_CACHE (default ~/.cache/sovkeys-vm), where
# test/vm looks for it.
set -euo pipefail

CACHE=${SOVKEYS_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sovkeys-vm}
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
export DEBIAN_FRONTEND=noninteractive

missing=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$missing qemu-system-x86"
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || missing="$missing busybox-static"
command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
if [ -n "$missing" ]; then
	echo "vm-deps: installing:$missing (apt)"
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# linux-image-amd64 is a metapackage: its dependency names the kernel.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
	$SUDO apt-get update -qq
	pkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "vm-deps: apt knows no linux-image-amd64 (no Debian mirror in the apt sources?)" >&2; exit 1; }
mkdir -p "$CACHE"
if ! ls "$CACHE/${pkg}_"*.deb >/dev/null 2>&1; then
	echo "vm-deps: downloading $pkg into $CACHE"
	# apt-get download writes into the working directory; as root apt warns
	# that the download is unsandboxed (_apt cannot write here): harmless.
	(cd "$CACHE" && apt-get download -q "$pkg" 2>&1 | grep -v -e 'unsandboxed' -e '^$' || true)
	ls "$CACHE/${pkg}_"*.deb >/dev/null 2>&1 || { echo "vm-deps: apt-get download $pkg failed" >&2; exit 1; }
fi
# Older kernels (and their unpacked trees, ~400 MB each) are dropped.
for old in "$CACHE"/linux-image-*; do
	case $(basename "$old") in "${pkg}_"*) ;; *) rm -rf "$old" ;; esac
done
