#!/usr/bin/env bash
# Builds .device-carry/ (git-ignored), what a `device` call carries for benchmarks/gpu_suite.sh:
# the SST-2 train/dev files and bert-base-uncased's vocab.txt from ../shared (which does not
# travel), xz-compressed, and setup.sh, which unpacks them where gpu_suite.sh looks (../shared
# beside the checkout) and installs bertkit into the device image's python without dependencies
# (the image has torch, transformers, tokenizers, safetensors, scipy).
#
#   bash benchmarks/device_carry.sh         # here, once per checkout
#   run(carry=[".device-carry"], command="source .device-carry/setup.sh && bash benchmarks/gpu_suite.sh tests")
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(dirname "$repo")  # holds shared/
files=(shared/data/glue/SST-2/train.tsv shared/data/glue/SST-2/dev.tsv shared/models/bert-base-uncased/vocab.txt)
for f in "${files[@]}"; do
    [ -f "$root/$f" ] || { echo "device_carry.sh: $root/$f is missing; gpu_suite.sh needs it" >&2; exit 1; }
done
mkdir -p "$repo/.device-carry"
tar cJf "$repo/.device-carry/data.tar.xz.part" -C "$root" "${files[@]}"
mv "$repo/.device-carry/data.tar.xz.part" "$repo/.device-carry/data.tar.xz"
# Real pre-training records for gpu_suite.sh graphs-pretrain-records, built here (prepare-wiki
# needs wikitextparser, which the device image may lack): the shared Wikipedia dump's articles as
# NSP pairs of up to 128 tokens, masks drawn at batch time (about 5,600 records, 0.9 MB as xz).
dump=$(ls "$root"/shared/data/wikipedia_dump/*.xml*.bz2 | head -1)
work=$(mktemp -d)
bertkit prepare-wiki "$dump" --output "$work/wiki.txt" > /dev/null
bertkit pretrain-data --input "$work/wiki.txt" --tokenizer "$root/shared/models/bert-base-uncased/vocab.txt" \
    --output-dir "$work/wikipedia-records" --masking dynamic --max-seq-length 128 --dupe-factor 1 > /dev/null
tar cJf "$repo/.device-carry/records.tar.xz" -C "$work" wikipedia-records
rm -rf "$work"
cat > "$repo/.device-carry/setup.sh" <<'SETUP'
# Sourced from the checkout's root on the device: ../shared gets the data, bertkit gets installed.
# (--no-build-isolation only if the plain install cannot reach a build backend: nothing can be
# fetched there.)
tar xJf .device-carry/data.tar.xz -C .. && tar xJf .device-carry/records.tar.xz -C .device-carry \
    && { python3 -m pip install -q --no-deps -e . > /tmp/bertkit-install.log 2>&1 \
         || python3 -m pip install -q --no-deps --no-build-isolation -e . >> /tmp/bertkit-install.log 2>&1; } \
    || { echo "setup.sh failed; /tmp/bertkit-install.log:"; tail -20 /tmp/bertkit-install.log; false; }
SETUP
ls -l "$repo/.device-carry"
