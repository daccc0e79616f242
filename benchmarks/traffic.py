"""Bytes a compiled pre-training step moves, per token, as inductor's scheduler counts them.

    python benchmarks/traffic.py                     # CPU, BERT-base shape, ~5 minutes on 2 cores
    python benchmarks/traffic.py --json out.json

Why: on an H100 a compiled BERT-base pre-training step (seq 128, batch 256) spends 17.0 of its
54.0 ms in memory-bound elementwise kernels (dropout, residual adds, LayerNorm, GELU and their
gradients), the part that work on the residual stream changes. Those kernels are what inductor
fuses, and its scheduler records the bytes every fused kernel reads and writes
(`Scheduler.count_bytes`, logged under TORCH_LOGS=inductor_metrics). That count depends on the
fusion decisions and the dtypes, not on the device's speed, so it can be taken on the CPU and
compared between variants when no GPU is at hand. It is a proxy: the CPU backend fuses somewhat
differently from Triton, so read the ratios, not the absolute bytes.

Each variant is compiled at two batch sizes; the difference gives the bytes per token and the
rest the fixed bytes per step (weight casts, embedding and optimizer-sized buffers). Rows:
bertkit with the fp32 residual stream (the default), bertkit with --residual-dtype bf16, and
transformers' BertForPreTraining. All run bf16 autocast with LayerNorm on CUDA's autocast policy
(fp32 in, fp32 out; CPU autocast alone would return bf16; transformers' LayerNorms are made
BertLayerNorms for that) and attention dropout 0 (with dropout
the CPU decomposes SDPA into explicit softmax kernels that a GPU runs inside flash attention).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the same batches and models as the throughput benchmark)
from bertkit.config import preset  # noqa: E402
from bertkit.modeling.bert import BertLayerNorm, set_residual_dtype  # noqa: E402
from bertkit.training.trainer import WithUnpaddingLayout  # noqa: E402

VARIANTS = {"bertkit (fp32 residual)": "fp32", "bertkit (--residual-dtype bf16)": "bf16", "transformers": None}


def step_bytes(variant: str, batch_size: int, seq_len: int, shape: str = "base") -> dict[str, float]:
    """Compile one training step (forward + backward) and sum inductor's byte counts:
    {"fused": bytes of generated kernels, "matmul": bytes of extern kernels (GEMMs, attention)}."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    from torch._inductor import metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    torch._dynamo.reset()
    config = preset(shape, attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    residual = VARIANTS[variant]
    torch.manual_seed(0)
    if residual is None:
        model = throughput.transformers_model("pretraining", config)
        for module in model.modules():  # CUDA autocast's LayerNorm policy (fp32 out) here too
            if type(module) is torch.nn.LayerNorm:
                module.__class__ = BertLayerNorm
        batch = throughput.pretraining_batch(batch_size, seq_len, config.vocab_size, rng, True)
    else:
        model = throughput.bertkit_model("pretraining", config)
        set_residual_dtype(model, residual)
        batch = WithUnpaddingLayout(dict)(throughput.pretraining_batch(batch_size, seq_len, config.vocab_size,
                                                                       rng, False))
    model.train()
    compiled = torch.compile(model, dynamic=False)
    metrics.reset()
    # A graph served from inductor's caches skips the scheduler and reports no bytes.
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled(**batch).loss
        loss.backward()
    totals = {"fused": 0.0, "matmul": 0.0}
    for node, num_elem in metrics.nodes_num_elem:  # count_bytes stores bytes // 4
        if isinstance(node, NopKernelSchedulerNode):
            continue
        totals["matmul" if isinstance(node, ExternKernelSchedulerNode) else "fused"] += 4.0 * num_elem
    if not totals["fused"]:
        raise SystemExit("inductor reported no kernel bytes: is TORCH_LOGS=inductor_metrics honoured by this torch?")
    return totals


def split_bytes(variant: str, seq_len: int, small: int, large: int, shape: str = "base") -> dict[str, float]:
    """Bytes per token and fixed bytes per step, fused and matmul kernels apart, from compiles at
    batch sizes `small` and `large`: {"fused_per_token", "fused_fixed", "matmul_per_token", ...}."""
    a, b = step_bytes(variant, small, seq_len, shape), step_bytes(variant, large, seq_len, shape)
    out = {}
    for kind in ("fused", "matmul"):
        per_token = (b[kind] - a[kind]) / ((large - small) * seq_len)
        out[f"{kind}_per_token"] = per_token
        out[f"{kind}_fixed"] = a[kind] - per_token * small * seq_len
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batches", default="8,16", help="two batch sizes to compile at (default 8,16)")
    p.add_argument("--at-batch", type=int, default=256, help="report the bytes of a step of this batch size too")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    small, large = (int(b) for b in args.batches.split(","))
    from torch._inductor.compile_fx import inductor_metrics_log

    torch._logging.set_logs(inductor_metrics=True)  # makes inductor count the bytes ...
    inductor_metrics_log.propagate = False  # ... without printing every kernel's count

    rows = []
    for variant in VARIANTS:
        start = time.perf_counter()
        rows.append({"variant": variant, **split_bytes(variant, args.seq_len, small, large)})
        print(f"  {variant}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    base = rows[0]["fused_per_token"]
    step_tokens = args.at_batch * args.seq_len
    print(f"- torch {torch.__version__}, CPU inductor, BERT-base, seq {args.seq_len}, bf16 autocast, "
          f"compiled at batch {small} and {large}\n")
    print(f"| variant | fused kernels KB/token | ÷ bertkit fp32 | matmul kernels KB/token | fixed GB/step "
          f"| fused GB at batch {args.at_batch} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        fused_at = (r["fused_per_token"] * step_tokens + r["fused_fixed"]) / 1e9
        print(f"| {r['variant']} | {r['fused_per_token'] / 1e3:,.1f} | {r['fused_per_token'] / base:.3f} "
              f"| {r['matmul_per_token'] / 1e3:,.1f} | {(r['fused_fixed'] + r['matmul_fixed']) / 1e9:.2f} "
              f"| {fused_at:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
