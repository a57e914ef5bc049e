# Generates deterministic text and compresses it with bzip2 -9 and gzip -9.
set -e
mkdir -p "$1"
i=0
while [ $i -lt ${BLOCKS:-50} ]; do
  seq $((i * 5000)) $((i * 5000 + 4999)) | sed 's/$/ lorem ipsum dolor sit amet/' | md5sum
  i=$((i + 1))
done > "$1/sums.txt"
seq 1 600000 | sed 's/^/line /' > /tmp/corpus.txt
bzip2 -9 -c < /tmp/corpus.txt > "$1/corpus.bz2"
gzip -9 -c < /tmp/corpus.txt > "$1/corpus.gz"
rm /tmp/corpus.txt
