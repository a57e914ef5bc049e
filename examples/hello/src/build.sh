#!/bin/sh
# Builds the example into OUT: the program from its template (sed) and its
# data files (packed and unpacked with tar, as a real build would ship them).
set -eu
version=$1
out=$2
mkdir -p "$out/usr/bin" "$out/usr/share/hello/data"
sed "s/@VERSION@/$version/g" hello.sh.in > "$out/usr/bin/hello"
chmod 0755 "$out/usr/bin/hello"
tar -cf data.tar motd.txt
tar -xf data.tar -C "$out/usr/share/hello/data"
echo "built hello $version into $out"
