# Generates a deterministic table with busybox awk and gzips it (no mtime in the header).
set -e
mkdir -p "$1"
seq 1 ${ROWS:-300000} | awk '{ h = ($1 * 2654435761) % 4294967296; printf "%08d %010d %s\n", $1, h, substr("abcdefghijklmnopqrstuvwxyz", h % 20 + 1, 6) }' > "$1/table.txt"
gzip -9 -c < "$1/table.txt" > "$1/table.txt.gz"
sort -k2 "$1/table.txt" | md5sum > "$1/table.sorted.md5"
