#!/usr/bin/env bash
# Kiln's main job until `kiln build` exists: the containerd-style core end to
# end. A busybox root filesystem (made from Debian's busybox-static) becomes a
# committed snapshot; a writable snapshot on top of it is changed (a file
# added, one modified, one deleted, a directory replaced, a capability set);
# the change is exported as an OCI layer (gzip) into the content store and
# shown with GNU tar; the layer is unpacked again onto a fresh snapshot and
# the trees are compared; finally gc removes what nothing refers to.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/kiln-demo.XXXXXX)
root="$work/state"
kiln() { bin/kiln --root "$root" "$@"; }
cleanup() {
  for m in "$work/mnt" "$work/check"; do mountpoint -q "$m" 2>/dev/null && bin/kiln snapshot unmount "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "make a busybox root filesystem from busybox-static"
scripts/make-busybox-rootfs.sh "$work/rootfs"
echo "$(find "$work/rootfs" | wc -l) paths in $work/rootfs"

step "import it as the committed snapshot 'base'"
kiln snapshot import base "$work/rootfs"
kiln snapshot ls

step "prepare a writable snapshot 'work' on top of 'base', mount it and change it"
kiln snapshot prepare work base
mkdir -p "$work/mnt"
kiln snapshot mount work "$work/mnt"
echo 'Hello from Kiln' >"$work/mnt/etc/motd"
echo 'kiln:x:1000:1000::/home/kiln:/bin/sh' >>"$work/mnt/etc/passwd"
rm "$work/mnt/bin/vi"
rm -rf "$work/mnt/home" && mkdir -m 0750 "$work/mnt/home" && touch "$work/mnt/home/.keep"
cp "$work/mnt/bin/busybox" "$work/mnt/bin/ping-cap"
setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 "$work/mnt/bin/ping-cap" # cap_net_raw+ep
chown 1000:1000 "$work/mnt/home/.keep"
kiln snapshot unmount "$work/mnt"

step "export the change as an OCI layer (overlay upperdir read directly)"
desc=$(SOURCE_DATE_EPOCH=0 kiln diff base work)
echo "$desc"
digest=$(jq -r .digest <<<"$desc")

step "the layer, as GNU tar lists it"
kiln content get "$digest" | tar -tvz --numeric-owner

step "commit 'work' as 'app'; unpack the layer onto a fresh snapshot on 'base' and compare the trees"
kiln snapshot commit app work
kiln snapshot prepare check base
kiln apply check "$digest" >/dev/null
mkdir -p "$work/check" "$work/app"
kiln snapshot mount check "$work/check"
kiln snapshot view app-view app
kiln snapshot mount app-view "$work/app"
if diff -r --no-dereference "$work/app" "$work/check" >/dev/null &&
  [[ $(getfattr --absolute-names -n security.capability -e hex "$work/check/bin/ping-cap" 2>/dev/null | tail -2) == \
    $(getfattr --absolute-names -n security.capability -e hex "$work/app/bin/ping-cap" 2>/dev/null | tail -2) ]]; then
  echo "the unpacked tree matches 'app' (contents, links, capability xattr)"
else
  echo "MISMATCH between unpacked layer and snapshot" >&2
  exit 1
fi
kiln snapshot unmount "$work/check"
kiln snapshot unmount "$work/app"
kiln snapshot rm app-view check
kiln snapshot tree
kiln snapshot usage

step "garbage collection: the layer blob is unreferenced, 'base' and 'app' are kept by a gc.root label"
kiln snapshot label app containerd.io/gc.root=demo
kiln gc
kiln content ls
kiln snapshot ls
