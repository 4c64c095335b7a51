#!/usr/bin/env bash
# Byte-identical translations across a code change: one checkpoint translates Multi30k
# test_2016_flickr (greedy and beam 5) with an older copy of the code and with this one,
# and the output files are compared byte for byte.
#
#   git archive <old-commit> nmt conf translate.py | tar -x -C /tmp/old
#   bash bench/identical.sh /tmp/old CHECKPOINT [cpu|cuda]
#
# Prints one line per decoding and, last, one JSON object. Needs NMT_DATA_DIR (or ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(cd "$1" && pwd); ckpt=$(realpath "$2"); device=${3:-cpu}
PY=${PYTHON:-python3}
data=${NMT_DATA_DIR:-../shared/data}
out=${IDENTICAL_OUT:-runs/identical}/$device
mkdir -p "$out"
out=$(cd "$out" && pwd)
gzip -dc "$data/multi30k/test_2016_flickr.en.gz" > "$out/test.en"
result="{\"device\": \"$device\", \"lines\": $(wc -l < "$out/test.en")"
for decoding in greedy beam5; do
  for side in old new; do
    dir=$([ "$side" = old ] && echo "$old" || pwd)
    start=$SECONDS
    (cd "$dir" && "$PY" translate.py "checkpoint=$ckpt" "input=$out/test.en" \
      "output=$out/$side-$decoding.de" "decoding=$decoding" "device=$device" \
      progress=false 2> "$out/$side-$decoding.log")
    echo "$side $decoding: $((SECONDS - start)) s" >&2
  done
  if cmp -s "$out/old-$decoding.de" "$out/new-$decoding.de"; then same=true; else same=false; fi
  echo "$decoding: identical=$same ($(md5sum < "$out/new-$decoding.de" | cut -c1-12))"
  result="$result, \"${decoding}_identical\": $same"
done
echo "$result}"
