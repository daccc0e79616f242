#!/usr/bin/env bash
# The GPU checks of the speed work, sized so that each part fits one 10-minute device call.
#
#   bash benchmarks/gpu_suite.sh PART [OUT]
#   PART: priority | tests | eager | graphs-finetune | graphs-pretrain | graphs-pretrain-records | graphs-pretrain-512 | autotune-pretrain | combo-finetune | trainer | all
#
# priority the first call of a session with little device time (15 minutes, start-up included):
#          the CUDA tests, then the seq 128 x 256 pre-training rows that decide the open target
#          under reduce-overhead: bertkit, --residual-dtype bf16, transformers (graphs-pretrain
#          without its flash-attention-2 row), 10 timed steps each
# tests    the CUDA-only tests (flash varlen, with and without attention dropout; compile over it)
# eager    benchmarks/throughput.py, fine-tuning + pre-training, eager, with kernel profiles
# graphs-finetune, graphs-pretrain (seq 128 x 256), graphs-pretrain-512 (seq 512 x 32)
#          one workload each under torch.compile mode=reduce-overhead (CUDA graphs), with kernel
#          profiles (each compiled row costs a minute or more of compilation: one call per workload;
#          pre-training has four rows per shape: bertkit, --residual-dtype bf16, that with flash
#          attention 2 instead of SDPA's own choice, transformers)
# graphs-pretrain-records
#          pre-training on real Wikipedia NSP records (lengths as they are, mean 116 of 128 tokens;
#          .device-carry/wikipedia-records) under reduce-overhead: bertkit's auto layout (padded at
#          fill >= 0.9 while attention dropout would re-pad every layer), forced unpadded,
#          varlen_dropout, bf16 residual, and transformers padded to 128
# autotune-pretrain
#          the --residual-dtype bf16 pre-training row alone (seq 128 x 256) under mode=max-autotune:
#          Triton matmul templates can take the GELU and its gradient as matmul epilogues, the
#          largest elementwise bytes left (35% per benchmarks/traffic.py); one row, its autotuning
#          takes minutes
# combo-finetune
#          graphs-finetune plus inductor's combo kernels (independent small kernels such as the
#          per-weight bf16 casts fused horizontally: fewer launches where a step is launch-bound)
# trainer  `bertkit finetune` on SST-2 with a random BERT-base: eager vs --compile reduce-overhead,
#          samples/s as the trainer's own log reports it (data loading and the optimizer included)
#
# Results go to OUT (default $OUT, else ./gpu-out): one markdown table and one json per part, the
# profiles as one tar.xz (the device tool returns at most 8 files). Needs the SST-2 tsv and a
# bert-base-uncased vocab.txt under ../shared (on the device: .device-carry/setup.sh puts them there;
# benchmarks/device_carry.sh builds .device-carry here).
# SUITE_PRESET, SUITE_STEPS and SUITE_MODES shrink the trainer part for a CPU dry run.
set -uo pipefail
py=${PYTHON:-python3}  # the device image's torch lives in python3 (a plain `python` may be another one)
part=${1:-all}
out=${2:-${OUT:-gpu-out}}
mkdir -p "$out"
shared=$(cd "$(dirname "$0")/../.." && pwd)/shared
sst2=$shared/data/glue/SST-2/train.tsv
[ -f "$sst2" ] || sst2=$sst2.xz
vocab=$shared/models/bert-base-uncased/vocab.txt

run_tests() {
    "$py" -m pytest -q -p no:cacheprovider tests/test_speed_paths.py tests/test_modeling.py -k "cuda or varlen" \
        2>&1 | tail -30 > "$out/cuda_tests.txt"
}

run_throughput() {  # $1: name, $2: workloads, then extra flags
    local name=$1 workloads=$2; shift 2
    "$py" benchmarks/throughput.py --workloads "$workloads" --sst2 "$sst2" --vocab "$vocab" \
        --profile "$out/profile_$name" --json "$out/$name.json" "$@" > "$out/$name.md" 2> "$out/$name.log"
    tar cJf "$out/profile_$name.tar.xz" -C "$out" "profile_$name" && rm -rf "$out/profile_$name"
}

run_trainer() {
    local model=/tmp/bert-base-random data=/tmp/sst2
    mkdir -p "$data"
    if [[ $sst2 == *.xz ]]; then xz -dc "$sst2" > "$data/train.tsv"; else cp "$sst2" "$data/train.tsv"; fi
    head -n 873 "$data/train.tsv" > "$data/dev.tsv"
    "$py" - "$model" "$vocab" <<'PY'
import shutil, sys
from bertkit.config import preset
from bertkit.modeling.heads import BertForSequenceClassification
import os
model = BertForSequenceClassification(preset(os.environ.get("SUITE_PRESET", "base"), num_labels=2))
model.save_pretrained(sys.argv[1])
shutil.copy(sys.argv[2], f"{sys.argv[1]}/vocab.txt")
PY
    : > "$out/trainer.md"
    for mode in ${SUITE_MODES:-eager reduce-overhead}; do
        local flags=()
        [ "$mode" = eager ] || flags=(--compile "$mode")
        "$py" -m bertkit finetune --task sst2 --model "$model" --data-dir "$data" --output-dir "/tmp/run-$mode" \
            --max-steps "${SUITE_STEPS:-400}" --batch-size 32 --lr 2e-5 --eval-every none --log-every 50 --no-progress \
            "${flags[@]}" > "$out/trainer-$mode.log" 2>&1
        "$py" - "/tmp/run-$mode/log.jsonl" "$mode" >> "$out/trainer.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
speeds = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
speeds = speeds[2:] or speeds  # after compile and warm-up
print(f"| trainer finetune SST-2, batch 32, {sys.argv[2]} | {sum(speeds) / max(len(speeds), 1):,.1f} samples/s "
      f"(mean of {len(speeds)} log intervals; the first two, compile and warm-up, left out when there are more) |")
PY
    done
}

case $part in
    priority) run_tests
              run_throughput priority pretrain --compile reduce-overhead --pretrain-shapes 128x256 --steps 10 \
                  --only "decoder on masked only|--residual-dtype bf16|transformers" ;;
    tests) run_tests ;;
    eager) run_throughput eager finetune,pretrain ;;
    graphs-finetune) run_throughput graphs-finetune finetune --compile reduce-overhead ;;
    graphs-pretrain) run_throughput graphs-pretrain pretrain --compile reduce-overhead --pretrain-shapes 128x256 ;;
    graphs-pretrain-records) run_throughput graphs-pretrain-records pretrain --compile reduce-overhead \
                                 --pretrain-shapes 128x256 --pretrain-records .device-carry/wikipedia-records \
                                 --only "records of" ;;
    autotune-pretrain) run_throughput autotune-pretrain pretrain --compile max-autotune --pretrain-shapes 128x256 \
                           --only "residual-dtype bf16" ;;
    graphs-pretrain-512) run_throughput graphs-pretrain-512 pretrain --compile reduce-overhead --pretrain-shapes 512x32 ;;
    combo-finetune) run_throughput combo-finetune finetune --compile reduce-overhead --combo-kernels ;;
    trainer) run_trainer ;;
    all) run_tests; run_throughput eager finetune,pretrain
         run_throughput graphs-finetune finetune --compile reduce-overhead
         run_throughput graphs-pretrain pretrain --compile reduce-overhead --pretrain-shapes 128x256
         run_throughput graphs-pretrain-512 pretrain --compile reduce-overhead --pretrain-shapes 512x32; run_trainer ;;
    *) echo "unknown part $part: priority | tests | eager | graphs-finetune | graphs-pretrain | graphs-pretrain-records | graphs-pretrain-512 | autotune-pretrain | combo-finetune | trainer | all" >&2
       exit 2 ;;
esac
ls -l "$out"
