#!/usr/bin/env bash
# Kiln's main command, end to end and offline:
#   1. make a busybox base image locally from Debian's busybox-static
#      (scripts/make-busybox-rootfs.sh → an OCI layout with umoci),
#   2. import it into Kiln's image store as busybox:latest,
#   3. kiln build -t hello:latest examples/hello   (a multi-stage Dockerfile),
#   4. kiln run --rm hello:latest.
# Needs root (mounts, containers) and busybox-static + umoci (Debian packages).
# State goes to $KILN_ROOT (default: a fresh temporary directory, removed at
# the end unless KEEP=1). PROGRESS=plain|tty|auto selects the progress view.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
kiln="$repo/bin/kiln"
work=$(mktemp -d /tmp/kiln-build-demo-XXXXXX)
export KILN_ROOT=${KILN_ROOT:-$work/root}
cleanup() {
  if [[ ${KEEP:-0} != 1 ]]; then
    # Unmount anything a killed run left behind under the work directory first.
    grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
  else
    echo "kept $work (KILN_ROOT=$KILN_ROOT)"
  fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. a busybox base image from Debian's busybox-static"
bash "$repo/scripts/make-busybox-rootfs.sh" "$work/rootfs"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:latest"
umoci insert --image "$work/layout:latest" --history.created_by "busybox-static rootfs (make-busybox-rootfs.sh)" "$work/rootfs" /
umoci config --image "$work/layout:latest" --config.cmd sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci gc --layout "$work/layout"

step "2. kiln images import (→ busybox:latest)"
"$kiln" images import "$work/layout" --name busybox:latest --unpack
"$kiln" images ls

step "3. kiln build -t hello:latest examples/hello"
"$kiln" build --progress="${PROGRESS:-auto}" -t hello:latest "$repo/examples/hello"

step "4. kiln run --rm hello:latest"
"$kiln" run --rm hello:latest

step "5. again: every step is cached"
"$kiln" build --progress=plain -t hello:latest "$repo/examples/hello" 2>&1 | grep -E '^(#[0-9]+ (\[|CACHED)|Built)'
