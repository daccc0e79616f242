"""The fast paths compute what the plain path computes: unpadded vs padded outputs and gradients
(fp32, CPU), the kernel policy of attn_backend="auto", torch.compile over the unpadded path, and
the throughput benchmark's own arithmetic and --small run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertkit.config import ModelConfig
from bertkit.modeling.attention import (PaddedAttention, UnpaddedAttention, prepare_attention, unpadding_layout,
                                        unpadded_kernel)
from bertkit.modeling.heads import BertForPreTraining, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    return ModelConfig(**{**base, **overrides})


def heavy_padding_batch(lengths: list[int], T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of the given real lengths right-padded to T (most of the batch is padding)."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # [B,T]
    ids = torch.randint(1, 99, mask.shape, generator=g) * mask
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                labels=torch.tensor([i % 2 for i in range(len(lengths))]))


def packed_pretraining_batch() -> dict[str, torch.Tensor]:
    """Two rows: three documents packed into the first, one into the second, both padded."""
    mask = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0],
                         [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]])
    ids = torch.randint(1, 99, mask.shape) * (mask > 0)
    return dict(input_ids=ids, attention_mask=mask, masked_positions=torch.tensor([[1, 5, -1], [2, 3, 4]]),
                masked_ids=torch.tensor([[7, 8, -100], [9, 10, 11]]), next_sentence_label=torch.tensor([0, 1]))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["unpadded", "sdpa_unpadded", "varlen"])
def test_unpadded_outputs_and_gradients_equal_padded(backend: str) -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    batch = heavy_padding_batch([3, 40, 1, 7, 12], T=48)  # 63 real tokens of 240
    results = {}
    for name in ("padded", backend):
        model.zero_grad(set_to_none=True)
        model.attn_backend = name
        out = model(**batch)
        out.loss.backward()
        results[name] = (out.logits.detach(), out.loss.detach(), grads(model))
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = results["padded"], results[backend]
    assert (logits_a - logits_b).abs().max() <= TOL
    assert abs(loss_a - loss_b) <= TOL
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    for name in grads_a:
        assert (grads_a[name] - grads_b[name]).abs().max() <= TOL, name


def test_packed_rows_unpadded_gradients_equal_padded() -> None:
    torch.manual_seed(1)
    model = BertForPreTraining(tiny_config())
    batch = packed_pretraining_batch()
    mask = batch["attention_mask"]
    results = {}
    for name in ("padded", "sdpa_unpadded"):
        model.zero_grad(set_to_none=True)
        model.attn_backend = name
        loss = model(**batch).loss
        loss.backward()
        results[name] = (loss.detach(), grads(model))
    assert abs(results["padded"][0] - results["sdpa_unpadded"][0]) <= TOL
    for name, grad in results["padded"][1].items():
        assert (grad - results["sdpa_unpadded"][1][name]).abs().max() <= TOL, name


def test_auto_policy_kernel_choice() -> None:
    # Flash varlen only where it exists and applies: CUDA, 16-bit, no attention dropout.
    assert unpadded_kernel("cuda", torch.bfloat16, 0.0) == "varlen"
    assert unpadded_kernel("cuda", torch.float16, 0.0) == "varlen"
    assert unpadded_kernel("cuda", torch.bfloat16, 0.1) == "sdpa_unpadded"  # training with dropout
    assert unpadded_kernel("cuda", torch.float32, 0.0) == "sdpa_unpadded"
    assert unpadded_kernel("cpu", torch.bfloat16, 0.0) == "sdpa_unpadded"

    full = torch.ones(2, 5, dtype=torch.long)
    ctx = prepare_attention(full, "auto")
    assert isinstance(ctx, PaddedAttention) and ctx.mask is None  # nothing to skip: no gather/scatter

    padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    ctx = prepare_attention(padded, "auto")
    assert isinstance(ctx, UnpaddedAttention) and ctx.kernel == "varlen"
    assert ctx.cu_seqlens.tolist() == [0, 3, 8, 8] and ctx.max_seqlen == 5
    assert ctx.indices.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]

    packed = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    ctx = prepare_attention(packed, "auto")
    assert ctx.cu_seqlens.tolist() == [0, 2, 5, 9] and ctx.mask.shape == (2, 1, 6, 6)
    assert prepare_attention(packed, "sdpa_unpadded").kernel == "sdpa_unpadded"


def test_varlen_context_on_cpu_falls_back_to_repadded_sdpa() -> None:
    # The same context object serves CPU and CUDA: on CPU (or fp32, or with dropout) its "varlen"
    # kernel must take the re-padded SDPA path and give the same numbers.
    torch.manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    q, k, v = (torch.randn(4, 8) for _ in range(3))
    a = prepare_attention(mask, "varlen").attend(q, k, v, 2, 0.0)
    b = prepare_attention(mask, "sdpa_unpadded").attend(q, k, v, 2, 0.0)
    assert a.shape == (4, 8) and torch.equal(a, b)


def test_unpadded_path_under_bf16_autocast_is_close_to_fp32() -> None:
    torch.manual_seed(3)
    model = BertForSequenceClassification(tiny_config()).eval()
    batch = heavy_padding_batch([5, 17, 2], T=20)
    with torch.no_grad():
        reference = model(**batch).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(**batch).logits
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - reference).abs().max() < 5e-2


def test_compile_over_unpadded_path_matches_eager_without_recompiles() -> None:
    # aot_eager traces through dynamo + AOTAutograd (graph breaks, dynamic shapes, the backward)
    # like inductor does, without the minutes of C++ codegen that inductor needs on 2 CPU cores.
    torch._dynamo.reset()
    torch.manual_seed(4)
    model = BertForSequenceClassification(tiny_config())
    compiled = torch.compile(model, dynamic=True, backend="aot_eager")
    from torch._dynamo.utils import counters

    counters.clear()
    for step, lengths in enumerate([[9, 5, 3], [12, 2, 7, 4], [6, 6, 1], [20, 3, 3, 3, 3]]):
        batch = heavy_padding_batch(lengths, T=max(lengths), seed=step)
        eager = model(**batch)
        out = compiled(**batch)
        assert torch.allclose(out.logits, eager.logits, atol=TOL)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad(set_to_none=True)
    # New token counts and widths must not recompile the layers: the shapes are symbolic.
    assert counters["stats"]["unique_graphs"] <= 6, dict(counters["stats"])


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_benchmark_useful_flops_counts_real_tokens_only() -> None:
    bench = _load_benchmark()
    config = tiny_config()  # H=32, I=64, L=2, V=99
    dense = 2 * (4 * 32 * 32 + 2 * 32 * 64)  # per token and layer
    expected = 2 * (dense * 7 + 4 * 32 * (3 * 3 + 4 * 4)) + 2 * 32 * 32 * 2
    assert bench.useful_flops(config, [3, 4], training=False) == expected
    assert bench.useful_flops(config, [3, 4]) == 3 * expected
    mlm = 2 * (32 * 32 + 32 * 99) * 5
    assert bench.useful_flops(config, [3, 4], masked=5, training=False, head="pretraining") == expected + mlm


def test_benchmark_pretraining_batches_agree_between_libraries() -> None:
    import numpy as np

    bench = _load_benchmark()
    ours = bench.pretraining_batch(3, 32, 2000, np.random.default_rng(0), hf_labels=False)
    theirs = bench.pretraining_batch(3, 32, 2000, np.random.default_rng(0), hf_labels=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert ours["masked_positions"].shape == (3, 5) and (ours["input_ids"].gather(1, ours["masked_positions"]) == 103).all()
    labels = theirs["labels"]
    assert (labels != -100).sum() == 15
    assert torch.equal(labels.gather(1, ours["masked_positions"]), ours["masked_ids"])


@pytest.mark.slow
def test_benchmark_small_mode_runs(tmp_path: Path, shared_dir: Path) -> None:
    # --small with minimal steps; several minutes on the loaded 2-core dev machine, hence slow.
    out = tmp_path / "small.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--small",
                           "--workloads", "finetune,pretrain,inference", "--warmup", "1", "--steps", "1",
                           "--sst2", str(shared_dir / "data/glue/SST-2/train.tsv"),
                           "--vocab", str(shared_dir / "models/bert-base-uncased/vocab.txt"),
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    results = json.loads(out.read_text())["results"]
    assert len(results) == 10 and all(r["samples_per_s"] > 0 for r in results)
    assert "| fine-tune SST-2 train, batch 32 | bertkit (unpadded, dynamic lengths) |" in proc.stdout
    # SST-2 sentences are short: ~13 real tokens per sample of the 128 transformers pads to.
    finetune = [r for r in results if r["workload"].startswith("fine-tune")]
    assert all(5 < r["tokens_per_sample"] < 40 for r in finetune)


def test_unpadding_layout_from_the_collate_has_fillers_and_boundaries() -> None:
    padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])  # N = 9 of 15
    layout = unpadding_layout(padded)  # N + 1 tokens: one filler
    assert layout["unpad_indices"].tolist() == [0, 1, 2, 5, 6, 7, 8, 9, 10, 3]
    assert layout["cu_seqlens"].tolist() == [0, 3, 8, 9, 10]
    bucketed = unpadding_layout(padded, multiple=8)  # rounded up to 16, capped at B * T = 15
    assert bucketed["unpad_indices"].shape == (15,) and bucketed["cu_seqlens"].tolist() == [0, 3, 8, 9, 15]
    assert sorted(bucketed["unpad_indices"].tolist()) == list(range(15))
    # Batches without padding need no layout (the filler would have nowhere to sit).
    assert unpadding_layout(torch.tensor([[1, 1, 2, 2], [1, 1, 1, 1]])) == {}
    assert unpadding_layout(torch.ones(2, 4, dtype=torch.long)) == {}
    packed = unpadding_layout(torch.tensor([[1, 1, 2, 2, 0], [1, 1, 1, 1, 1]]))
    assert packed["cu_seqlens"].tolist() == [0, 2, 4, 9, 10]


@pytest.mark.parametrize("multiple", [1, 16])
def test_precomputed_layout_gives_the_padded_outputs_and_gradients(multiple: int) -> None:
    torch.manual_seed(5)
    model = BertForSequenceClassification(tiny_config())
    batch = heavy_padding_batch([3, 40, 1, 7, 12], T=48)
    results = {}
    for name, extra in (("padded", {}), ("layout", unpadding_layout(batch["attention_mask"], multiple))):
        model.zero_grad(set_to_none=True)
        model.attn_backend = "padded" if name == "padded" else "auto"
        out = model(**batch, **extra)
        out.loss.backward()
        results[name] = (out.logits.detach(), grads(model))
    assert (results["padded"][0] - results["layout"][0]).abs().max() <= TOL
    for name, grad in results["padded"][1].items():
        assert (grad - results["layout"][1][name]).abs().max() <= TOL, name

    # Token-level outputs read as zeros at padding, filler tokens included.
    encoder = model.bert.eval()
    layout = unpadding_layout(batch["attention_mask"], multiple)
    hidden = encoder(batch["input_ids"], batch["attention_mask"], **layout).last_hidden_state
    assert (hidden[batch["attention_mask"] == 0] == 0).all()


def test_precomputed_layout_for_packed_rows_equals_padded() -> None:
    torch.manual_seed(6)
    model = BertForPreTraining(tiny_config())
    batch = packed_pretraining_batch()
    mask = batch["attention_mask"]
    model.attn_backend = "padded"
    reference = model(**batch).loss
    model.attn_backend = "auto"
    for multiple in (1, 4):
        assert abs(model(**batch, **unpadding_layout(mask, multiple)).loss - reference) <= TOL


def test_loss_needs_no_host_sync_and_is_zero_without_labels() -> None:
    from bertkit.modeling.heads import _cross_entropy

    logits = torch.randn(4, 3, requires_grad=True)
    none_given = _cross_entropy(logits, torch.full((4,), -100))
    assert none_given.item() == 0.0 and none_given.requires_grad
    labels = torch.tensor([0, 2, -100, 1])
    weights = torch.tensor([1.0, 2.0, 0.5])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights, ignore_index=-100)
    assert torch.allclose(_cross_entropy(logits, labels, weights), expected)
    # Traced without a graph break: no `.any()` read back to the host.
    explained = torch._dynamo.explain(lambda x, y: _cross_entropy(x, y))(logits, labels)
    assert explained.graph_break_count == 0


def test_graph_friendly_batches_pad_rows_and_keep_the_results() -> None:
    from bertkit.modeling.heads import BertForTokenClassification
    from bertkit.training.trainer import WithUnpaddingLayout

    torch.manual_seed(7)
    batch = heavy_padding_batch([3, 11, 5], T=11)
    bucketed = WithUnpaddingLayout(dict, multiple=8)(batch)
    assert bucketed["input_ids"].shape == (3, 16) and bucketed["unpad_indices"].shape == (24,)
    model = BertForSequenceClassification(tiny_config())
    assert (model(**batch).logits - model(**bucketed).logits).abs().max() <= TOL

    token_labels = torch.where(batch["attention_mask"] > 0, batch["input_ids"] % 3, torch.full_like(batch["input_ids"], -100))
    tagged = {**batch, "labels": token_labels}
    bucketed = WithUnpaddingLayout(dict, multiple=8)(tagged)
    assert bucketed["labels"].shape == (3, 16) and (bucketed["labels"][:, 11:] == -100).all()
    tagger = BertForTokenClassification(tiny_config(num_labels=3))
    assert abs(tagger(**tagged).loss - tagger(**bucketed).loss) <= TOL
