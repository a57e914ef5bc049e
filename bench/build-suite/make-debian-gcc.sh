#!/usr/bin/env bash
# Makes the Debian bookworm minbase + gcc/make/libc6-dev layer tar OUT (a
# plain tar of the root file system, sorted, fixed mtimes, numeric owners)
# with debootstrap from the host's apt mirror. A few minutes the first time;
# the bench caches OUT. Usage: make-debian-gcc.sh OUT
set -euo pipefail
out=${1:?usage: make-debian-gcc.sh OUT}
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
dir=$(mktemp -d "$(dirname "$out")/debian-rootfs.XXXXXX")
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase --include=gcc,make,libc6-dev bookworm "$dir" "$mirror" >&2
# Like a registry image: no device nodes, no apt caches or lists.
rm -rf "$dir"/dev/* "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log
tar --sort=name --numeric-owner --mtime=@1700000000 -C "$dir" -cf "$out.tmp" .
sync "$out.tmp"
mv "$out.tmp" "$out"
