#!/usr/bin/env bash
# Makes a minimal busybox root filesystem in DIR from Debian's busybox-static:
# /bin/busybox plus a symlink per applet, /etc/passwd and /etc/group with root
# and nobody, /tmp with mode 1777. This is Kiln's locally made base image.
set -euo pipefail
dir=${1:?usage: make-busybox-rootfs.sh DIR}
bb=/bin/busybox
[[ -x $bb ]] || { echo "make-busybox-rootfs: $bb not found; apt-get install busybox-static" >&2; exit 1; }
mkdir -p "$dir"/{bin,etc,tmp,root,home,var,proc,sys,dev}
cp "$bb" "$dir/bin/busybox"
for applet in $("$bb" --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
chmod 1777 "$dir/tmp"
chmod 0700 "$dir/root"
