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
    assert unpadded_kernel("cuda", torch.bfloat16, 0.1, dropout_kernel=True) == "varlen"  # "varlen_dropout"
    assert unpadded_kernel("cpu", torch.bfloat16, 0.1, dropout_kernel=True) == "sdpa_unpadded"
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
    qkv = torch.randn(4, 24)
    a = prepare_attention(mask, "varlen").attend(qkv, 2, 0.0)
    b = prepare_attention(mask, "sdpa_unpadded").attend(qkv, 2, 0.0)
    c = prepare_attention(mask, "varlen_dropout").attend(qkv, 2, 0.0)
    assert a.shape == (4, 8) and torch.equal(a, b) and torch.equal(a, c)


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


def test_layer_norm_returns_the_residual_dtype_under_autocast_on_every_device() -> None:
    # CPU autocast alone would return bf16 from LayerNorm and CUDA autocast fp32: BertLayerNorm
    # makes both devices follow the residual policy, and always normalises in fp32.
    from bertkit.modeling.bert import BertLayerNorm

    torch.manual_seed(5)
    norm = BertLayerNorm(32, eps=1e-12)
    reference = torch.nn.LayerNorm(32, eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(6, 32).to(torch.bfloat16)  # a bf16 residual sum
    exact = reference(x.float())
    assert torch.equal(norm(x.float()), exact)  # no autocast: plain nn.LayerNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        as_fp32 = norm(x)
        norm.output_dtype = torch.bfloat16
        as_bf16 = norm(x)
    assert as_fp32.dtype == torch.float32 and torch.allclose(as_fp32, exact, atol=1e-6)
    assert as_bf16.dtype == torch.bfloat16 and torch.equal(as_bf16, exact.to(torch.bfloat16))


def test_bf16_residual_stream_stays_bf16_and_close_to_fp32() -> None:
    from bertkit.modeling.bert import set_residual_dtype

    torch.manual_seed(6)
    model = BertForPreTraining(tiny_config(num_hidden_layers=4))
    batch = packed_pretraining_batch()
    layer_dtypes: list[torch.dtype] = []
    hooks = [layer.register_forward_hook(lambda m, i, out: layer_dtypes.append(out.dtype))
             for layer in model.bert.encoder.layer]
    runs = {}
    for name in ("fp32", "bf16"):
        set_residual_dtype(model, name)
        layer_dtypes.clear()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch)
        out.loss.backward()
        expected = torch.float32 if name == "fp32" else torch.bfloat16
        assert layer_dtypes == [expected] * 4, (name, layer_dtypes)
        # The decoder's bias is added inside the matmul: no fp32 copy of the [M, V] logits.
        assert out.mlm_logits.dtype == torch.bfloat16
        runs[name] = (out.loss.detach(), grads(model))
    for h in hooks:
        h.remove()
    (loss32, grads32), (loss16, grads16) = runs["fp32"], runs["bf16"]
    assert abs(loss32 - loss16) < 2e-2 * loss32
    assert grads32.keys() == grads16.keys() and all(g.dtype == torch.float32 for g in grads16.values())
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([g.flatten() for g in grads16.values()])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.995
    with pytest.raises(ValueError, match="'fp16' is not one of fp32, bf16"):
        set_residual_dtype(model, "fp16")


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


@pytest.mark.slow
def test_traffic_benchmark_counts_fewer_fused_bytes_with_a_bf16_residual_stream() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    _load_benchmark()
    import traffic
    from torch._inductor.compile_fx import inductor_metrics_log

    torch._logging.set_logs(inductor_metrics=True)
    inductor_metrics_log.propagate = False
    try:
        fp32 = traffic.split_bytes("bertkit (fp32 residual)", 32, 4, 8, shape="tiny")
        bf16 = traffic.split_bytes("bertkit (--residual-dtype bf16)", 32, 4, 8, shape="tiny")
    finally:
        torch._logging.set_logs()
        sys.path.remove(str(REPO / "benchmarks"))
    # Per token (the fixed part is the 30,522-row embedding's). Measured ratio: 0.929 here, where
    # the masked tokens' vocabulary logits weigh more than at H=768 (BERT-base: 0.837).
    assert fp32["fused_per_token"] > 0 and fp32["matmul_per_token"] > 0
    assert bf16["fused_per_token"] < 0.96 * fp32["fused_per_token"], (fp32, bf16)
    assert bf16["matmul_per_token"] == pytest.approx(fp32["matmul_per_token"], rel=0.05)


def test_benchmark_useful_flops_counts_real_tokens_only() -> None:
    bench = _load_benchmark()
    config = tiny_config()  # H=32, I=64, L=2, V=99
    dense = 2 * (4 * 32 * 32 + 2 * 32 * 64)  # per token and layer
    first = dense * 7 + 4 * 32 * (3 * 3 + 4 * 4)
    pooler = 2 * 32 * 32 * 2
    key_value = 2 * 2 * 32 * 32 * 7  # the last layer's keys and values, every token
    read_rest = 2 * (2 * 32 * 32 + 2 * 32 * 64)  # its query, output and feed-forward, per read token
    qa = first + key_value + read_rest * 7 + 4 * 32 * (3 * 3 + 4 * 4) + pooler + 2 * 32 * 2 * 7
    assert bench.useful_flops(config, [3, 4], training=False, head="question_answering") == qa
    assert qa == 2 * first + pooler + 2 * 32 * 2 * 7  # every token read: the full last layer
    # Classification reads [CLS] only: one query per sequence in the last layer.
    expected = first + key_value + read_rest * 2 + 4 * 32 * (3 + 4) + pooler
    assert bench.useful_flops(config, [3, 4], training=False) == expected
    assert bench.useful_flops(config, [3, 4]) == 3 * expected
    # Pre-training: [CLS] and the masked tokens (5 over 7 tokens, spread by length).
    mlm = 2 * (32 * 32 + 32 * 99) * 5
    read = [1 + 5 * 3 / 7, 1 + 5 * 4 / 7]
    expected = (first + key_value + read_rest * sum(read) + 4 * 32 * (3 * read[0] + 4 * read[1]) + pooler + mlm)
    assert bench.useful_flops(config, [3, 4], masked=5, training=False, head="pretraining") == pytest.approx(expected)


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
    # Whole single-sequence rows need no layout, only the word that there is no padding.
    assert unpadding_layout(torch.ones(2, 4, dtype=torch.long)) == {"full_rows": True}
    # Packed rows without padding: a layout with an empty filler (nothing to round up into).
    full_packed = unpadding_layout(torch.tensor([[1, 1, 2, 2], [1, 1, 1, 1]]), multiple=8)
    assert full_packed["unpad_indices"].tolist() == list(range(8))
    assert full_packed["cu_seqlens"].tolist() == [0, 2, 4, 8, 8]
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


def test_full_rows_and_static_masked_slots_trace_without_graph_breaks() -> None:
    # Pre-training batches of whole rows: the collate says "full_rows", so the model needs no host
    # sync to choose its attention layout, and the MLM decoder runs on the fixed [B,P] slots (no
    # boolean indexing): the whole step is one graph, which is what CUDA graphs can replay.
    from bertkit.training.trainer import WithUnpaddingLayout

    torch.manual_seed(8)
    model = BertForPreTraining(tiny_config())
    ids = torch.randint(5, 99, (3, 12))
    batch = dict(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.ones_like(ids),
                 masked_positions=torch.tensor([[1, 4, 7], [2, 3, -1], [0, -1, -1]]),
                 masked_ids=torch.tensor([[5, 6, 7], [8, 9, -100], [10, -100, -100]]),
                 next_sentence_label=torch.tensor([0, 1, -100]))
    with_layout = WithUnpaddingLayout(dict)(batch)
    assert with_layout["full_rows"] is True
    reference = model(**batch)
    out = model(**with_layout)
    assert abs(out.loss - reference.loss) <= TOL and out.mlm_logits.shape == (3, 3, 99)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(**with_layout)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_packed_rows_without_padding_use_an_empty_filler() -> None:
    torch.manual_seed(9)
    model = BertForPreTraining(tiny_config())
    mask = torch.tensor([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 3, 3]])
    ids = torch.randint(5, 99, mask.shape)
    batch = dict(input_ids=ids, attention_mask=mask, masked_positions=torch.tensor([[1, 4], [0, 5]]),
                 masked_ids=torch.tensor([[5, 6], [7, 8]]), next_sentence_label=torch.tensor([-100, -100]))
    model.attn_backend = "padded"
    reference = model(**batch).loss
    model.attn_backend = "auto"
    layout = unpadding_layout(mask, multiple=4)
    assert layout["cu_seqlens"].tolist() == [0, 3, 6, 8, 10, 12, 12]
    assert abs(model(**batch, **layout).loss - reference) <= TOL


def test_fused_optimizer_skips_non_finite_steps_on_the_device() -> None:
    # AdamW(fused=True) also runs on the CPU, so the no-host-sync skip is tested here: the kernel
    # reads found_inf and leaves weights, moments and the step count as they were.
    from bertkit.training.trainer import optimizer_step

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    weight.grad = torch.full((4,), 0.5)
    assert optimizer_step(optimizer, None, torch.tensor(1.0)).item() == 0.0
    after_first = weight.detach().clone()
    assert not torch.equal(after_first, torch.ones(4))
    moments = {k: v.clone() for k, v in optimizer.state[weight].items()}
    weight.grad = torch.full((4,), float("nan"))
    assert optimizer_step(optimizer, None, torch.tensor(float("inf"))).item() == 1.0
    assert torch.equal(weight.detach(), after_first)
    for key, value in optimizer.state[weight].items():
        assert torch.equal(value, moments[key]), key
    weight.grad = torch.full((4,), 0.5)
    optimizer_step(optimizer, None, torch.tensor(1.0))  # a finite step after the skip still updates
    assert not torch.equal(weight.detach(), after_first)
    assert optimizer.state[weight]["step"].item() == 2.0


def test_fused_qkv_projection_keeps_hugging_face_parameter_names() -> None:
    model = BertForSequenceClassification(tiny_config())
    names = set(model.state_dict())
    for part in ("query", "key", "value"):
        assert f"bert.encoder.layer.0.attention.self.{part}.weight" in names
    assert not any("qkv" in name for name in names)


def test_varlen_dropout_kernel_traces_as_one_graph_with_its_backward() -> None:
    # No GPU needed: on the meta device the flash ops run their shape functions, which is enough
    # for dynamo and AOTAutograd to trace the autograd function forward and backward (what
    # torch.compile does before inductor). Numbers are checked by the CUDA tests below.
    from bertkit.modeling.flash_varlen import _VarlenFlashAttention

    q, k, v = (torch.empty(40, 4, 64, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    cu = torch.empty(3, device="meta", dtype=torch.int32)

    def attend(q, k, v, cu):
        return _VarlenFlashAttention.apply(q, k, v, cu, 30, 0.1) * 2

    torch._dynamo.reset()
    explained = torch._dynamo.explain(attend)(q, k, v, cu)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    out = torch.compile(attend, backend="aot_eager")(q, k, v, cu)
    out.sum().backward()
    assert out.shape == q.grad.shape == v.grad.shape == (40, 4, 64)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs a CUDA GPU")


def _packed_qkv(lengths: list[int], heads: int = 4, dim: int = 64, dtype=torch.float16):
    g = torch.Generator(device="cuda").manual_seed(0)
    N = sum(lengths)
    q, k, v = (torch.randn(N, heads, dim, device="cuda", dtype=dtype, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    return q, k, v, cu


@needs_cuda
def test_varlen_dropout_kernel_without_dropout_equals_varlen_attn() -> None:
    from torch.nn.attention.varlen import varlen_attn

    from bertkit.modeling.flash_varlen import varlen_attention

    q, k, v, cu = _packed_qkv([5, 17, 1, 40])
    expected = varlen_attn(q, k, v, cu, cu, 40, 40)
    assert (varlen_attention(q, k, v, cu, 40, 0.0) - expected).abs().max().item() <= 1e-3


@needs_cuda
def test_varlen_dropout_kernel_is_unbiased_seeded_and_its_gradient_is_exact() -> None:
    from torch.nn.attention.varlen import varlen_attn

    from bertkit.modeling.flash_varlen import varlen_attention

    q, k, v, cu = _packed_qkv([5, 17, 1, 40])
    plain = varlen_attn(q, k, v, cu, cu, 40, 40).float()
    torch.manual_seed(1)
    a = varlen_attention(q, k, v, cu, 40, 0.1)
    torch.manual_seed(1)
    b = varlen_attention(q, k, v, cu, 40, 0.1)
    assert torch.equal(a, b) and not torch.equal(a, varlen_attention(q, k, v, cu, 40, 0.1))
    # Inverted dropout keeps the expectation: the mean of many draws approaches the plain output.
    mean = torch.stack([varlen_attention(q, k, v, cu, 40, 0.1).float() for _ in range(400)]).mean(0)
    assert (mean - plain).abs().mean().item() < 0.1 * plain.abs().mean().item()
    # For one dropout mask the output is linear in v, so <dL/dv, d> must equal L(v + d) - L(v).
    g = torch.randn_like(q, dtype=torch.float32)
    d = torch.randn_like(v) * 0.1
    v_leaf = v.clone().requires_grad_(True)
    torch.manual_seed(2)
    loss = (varlen_attention(q, k, v_leaf, cu, 40, 0.1).float() * g).sum()
    loss.backward()
    torch.manual_seed(2)
    shifted = (varlen_attention(q, k, v + d, cu, 40, 0.1).float() * g).sum()
    predicted = (v_leaf.grad.float() * d.float()).sum()
    assert abs((shifted - loss).item() - predicted.item()) <= 0.02 * abs(predicted.item()) + 0.05


@needs_cuda
@pytest.mark.parametrize("compiled", [False, True])
def test_varlen_dropout_backend_trains_a_model(compiled: bool) -> None:
    from bertkit.training.trainer import WithUnpaddingLayout

    torch.manual_seed(10)
    config = tiny_config(hidden_size=128, num_attention_heads=2, attention_probs_dropout_prob=0.1)
    model = BertForSequenceClassification(config).cuda()
    batch = {k: v.cuda() for k, v in WithUnpaddingLayout(dict, 16)(heavy_padding_batch([3, 40, 1, 7, 12], T=48)).items()}
    model.eval()
    model.attn_backend = "varlen"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model(**batch).logits
        model.attn_backend = "varlen_dropout"
        assert (model(**batch).logits - reference).abs().max().item() <= 1e-2  # eval: no dropout
    model.train()
    run = torch.compile(model) if compiled else model
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = run(**batch)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("multiple", [1, 8])
def test_multiple_choice_rows_take_the_unpadded_layout(multiple: int) -> None:
    from bertkit.modeling.heads import BertForMultipleChoice
    from bertkit.training.trainer import WithUnpaddingLayout

    torch.manual_seed(11)
    model = BertForMultipleChoice(tiny_config())
    lengths = torch.tensor([[5, 9, 3, 7], [12, 2, 6, 4]])  # [B,C]
    mask = (torch.arange(12)[None, None, :] < lengths[..., None]).long()  # [B,C,T]
    ids = torch.randint(1, 99, mask.shape) * mask
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), labels=torch.tensor([1, 3]))
    with_layout = WithUnpaddingLayout(dict, multiple)(batch)
    assert with_layout["unpad_indices"].shape[0] % multiple == 0 and with_layout["input_ids"].shape[-1] % multiple == 0
    model.attn_backend = "padded"
    reference = model(**batch)
    reference.loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    model.attn_backend = "auto"
    out = model(**with_layout)
    out.loss.backward()
    assert (out.logits - reference.logits).abs().max() <= TOL
    for name, grad in grads(model).items():
        assert (grad - expected[name]).abs().max() <= TOL, name


def test_a_run_that_loses_its_cuda_graphs_is_told_so() -> None:
    # Inductor counts every graph it runs without CUDA graphs under mode="reduce-overhead" (on the
    # CPU every graph: there are no CUDA graphs there). The trainer reads that counter after its
    # first step; this checks the counter is the one the installed torch bumps, and the message.
    from bertkit.training.trainer import cudagraph_skip_warning, cudagraph_skips

    before = cudagraph_skips()
    assert cudagraph_skip_warning(before, "reduce-overhead") is None
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2 + 1, mode="reduce-overhead")
    assert torch.equal(compiled(torch.ones(4)), torch.full((4,), 3.0))
    assert cudagraph_skips() == before + 1
    message = cudagraph_skip_warning(before, "reduce-overhead")
    assert message is not None and "1 compiled graph(s)" in message and "TORCH_LOGS=cudagraphs" in message
    assert cudagraph_skip_warning(cudagraph_skips(), "reduce-overhead") is None
    torch._dynamo.reset()


LAYOUTS = {  # attention masks: padded rows, packed documents with padding, whole rows
    "padded": torch.tensor([[1] * 9 + [0] * 3, [1] * 4 + [0] * 8, [1] * 12]),
    "packed": torch.tensor([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0], [1] * 6 + [2] * 5 + [0], [1] * 12]),
    "full": torch.ones(3, 12, dtype=torch.long),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("backend", ["padded", "auto", "sdpa_unpadded", "flex", "collate"])
def test_last_layer_at_output_positions_equals_the_full_layer(backend: str, layout: str) -> None:
    # The last layer computes its output only where a head reads it; the states there, the pooled
    # [CLS] and every gradient must be what the full layer gives.
    from bertkit.modeling.bert import BertModel

    torch.manual_seed(12)
    model = BertModel(tiny_config())
    mask = LAYOUTS[layout]
    ids = torch.randint(1, 99, mask.shape) * (mask > 0)
    columns = torch.tensor([[3, 1, 8, 0], [2, 2, 3, 1], [11, 5, 7, 0]])  # [B,P] real tokens, repeats allowed
    extra = unpadding_layout(mask, 8) if backend == "collate" else {}
    model.attn_backend = "auto" if backend == "collate" else backend
    weights = torch.randn(3, 4, 32), torch.randn(3, 32)
    backward = backend != "flex"  # FlexAttention has no backward on the CPU
    results = {}
    for name, positions in (("full", None), ("sparse", columns)):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            out = model(ids, mask, **extra, output_positions=positions)
        hidden = out.last_hidden_state
        if positions is None:
            hidden = hidden.gather(1, columns[..., None].expand(-1, -1, 32))  # [B,T,H] -> [B,P,H]
        if backward:
            ((hidden * weights[0]).sum() + (out.pooler_output * weights[1]).sum()).backward()
        results[name] = hidden.detach(), out.pooler_output.detach(), grads(model)
    (hidden_a, pooled_a, grads_a), (hidden_b, pooled_b, grads_b) = results["full"], results["sparse"]
    assert hidden_b.shape == (3, 4, 32)
    assert (hidden_a - hidden_b).abs().max() <= TOL
    assert (pooled_a - pooled_b).abs().max() <= TOL
    if not backward:
        return
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    for name in grads_a:  # sums of up to 36 outputs: fp32 rounding relative to the gradient's size
        scale = max(1.0, grads_a[name].abs().max().item())
        assert (grads_a[name] - grads_b[name]).abs().max() <= TOL * scale, name


def test_pretraining_loss_and_gradients_with_the_sparse_last_layer_equal_the_dense_labels() -> None:
    # masked_positions make the last layer compute the masked tokens and [CLS] only; HF-style
    # labels [B,T] run it everywhere. Same loss, same gradients (dropout off, fp32).
    torch.manual_seed(13)
    model = BertForPreTraining(tiny_config())
    batch = packed_pretraining_batch()
    positions, targets = batch["masked_positions"], batch["masked_ids"]
    labels = torch.full_like(batch["input_ids"], -100)
    valid = positions >= 0
    labels[torch.arange(2)[:, None].expand_as(positions)[valid], positions[valid]] = targets[valid]
    dense_batch = {k: v for k, v in batch.items() if k not in ("masked_positions", "masked_ids")}
    results = {}
    for name, inputs in (("sparse", batch), ("dense", dict(dense_batch, labels=labels))):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, **unpadding_layout(batch["attention_mask"], 4))
        out.loss.backward()
        results[name] = out.loss.detach(), grads(model)
    assert abs(results["sparse"][0] - results["dense"][0]) <= TOL
    for name, grad in results["dense"][1].items():
        assert (grad - results["sparse"][1][name]).abs().max() <= TOL, name


def test_heads_that_read_a_few_columns_give_what_the_full_encoder_gives() -> None:
    # Polyphone reads its target character, multi-task the pooler: through the sparse last layer
    # their logits equal the head applied to the full encoder's output (eval, so no dropout).
    from bertkit.modeling.heads import BertForPolyphone
    from bertkit.tasks.multitask import HeadSpec, MultiTaskModel

    torch.manual_seed(14)
    batch = heavy_padding_batch([9, 4, 12], T=12)
    layout = unpadding_layout(batch["attention_mask"], 8)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    poly = BertForPolyphone(tiny_config(num_labels=6)).eval()
    targets = torch.tensor([7, 0, 11])
    with torch.no_grad():
        hidden = poly.bert(**inputs).last_hidden_state  # [B,T,H], every column
        expected = poly.classifier(hidden[torch.arange(3), targets])
        out = poly(**inputs, **layout, target_positions=targets)
    assert (out.logits - expected).abs().max() <= TOL

    specs = [HeadSpec("sst2", "sequence_classification", 2, ["0", "1"], "single_label_classification"),
             HeadSpec("stsb", "regression", 1, None, "regression")]
    mtl = MultiTaskModel(tiny_config(), specs).eval()
    with torch.no_grad():
        pooled = mtl.bert(**inputs).pooler_output
        out = mtl(**inputs, **layout, task=torch.tensor([0, 1, 0]))
    assert (out.logits[[0, 2], :2] - mtl.heads["sst2"].classifier(pooled[[0, 2]])).abs().max() <= TOL
    assert (out.logits[1, :1] - mtl.heads["stsb"].classifier(pooled[1])).abs().max() <= TOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA attention kernels need a CUDA GPU")
@pytest.mark.parametrize("layout", ["full", "padded"])
def test_last_layer_at_output_positions_on_cuda_bf16(layout: str) -> None:
    # On CUDA under bf16 autocast SDPA takes its flash/cuDNN kernels with fewer queries than keys,
    # and the other layers of the padded batch run varlen_attn: the sparse last layer must still
    # give the full layer's states and gradients to bf16 precision.
    from bertkit.modeling.bert import BertModel

    torch.manual_seed(15)
    model = BertModel(tiny_config(hidden_size=128, num_attention_heads=2, intermediate_size=256)).cuda()
    mask = LAYOUTS[layout].cuda()
    ids = torch.randint(1, 99, mask.shape, device="cuda") * (mask > 0)
    columns = torch.tensor([[3, 1, 8, 0], [2, 2, 3, 1], [11, 5, 7, 0]], device="cuda")
    extra = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in unpadding_layout(mask.cpu(), 8).items()}
    results = {}
    for name, positions in (("full", None), ("sparse", columns)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, mask, **extra, output_positions=positions)
        hidden = out.last_hidden_state.float()
        if positions is None:
            hidden = hidden.gather(1, columns[..., None].expand(-1, -1, 128))
        (hidden.sum() + out.pooler_output.float().sum()).backward()
        results[name] = hidden.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert (results["full"][0] - results["sparse"][0]).abs().max() <= 5e-2
    cosine = torch.nn.functional.cosine_similarity(results["full"][1], results["sparse"][1], dim=0)
    assert cosine > 0.999, cosine


def test_auto_keeps_nearly_full_batches_padded_when_unpadding_would_repad_every_layer(monkeypatch) -> None:
    # Attention dropout (or a device without the varlen kernel) re-pads q/k/v in every layer of the
    # unpadded path; on CUDA, for a batch at least REPAD_FILL full, that costs more than the padding saves.
    import bertkit.modeling.bert as bert
    from bertkit.modeling.attention import (REPAD_FILL, attention_from_layout, keep_full_batches_padded,
                                            repads_per_layer)

    assert repads_per_layer("auto", "cuda", torch.bfloat16, 0.1)  # SDPA re-padded for its dropout
    assert not repads_per_layer("auto", "cuda", torch.bfloat16, 0.0)  # varlen_attn on the packed tokens
    assert not repads_per_layer("varlen_dropout", "cuda", torch.bfloat16, 0.1)
    assert repads_per_layer("auto", "cpu", torch.float32, 0.0) and repads_per_layer("sdpa_unpadded", "cuda",
                                                                                      torch.bfloat16, 0.0)
    assert keep_full_batches_padded("auto", "cuda", torch.bfloat16, 0.1)
    assert not keep_full_batches_padded("auto", "cpu", torch.bfloat16, 0.1)  # matmul-bound: unpadding wins
    assert not keep_full_batches_padded("auto", "cuda", torch.bfloat16, 0.0)
    nearly_full = torch.tensor([[1] * 20, [1] * 18 + [0] * 2, [1] * 20])  # fill 0.967
    packed_full = torch.tensor([[1] * 8 + [2] * 12, [1] * 20, [1] * 5 + [2] * 15])
    sparse = torch.tensor([[1] * 20, [1] * 4 + [0] * 16, [1] * 9 + [0] * 11])  # fill 0.55
    assert REPAD_FILL <= 0.95
    for mask, kept_padded in ((nearly_full, True), (packed_full, True), (sparse, False)):
        layout = unpadding_layout(mask, 1)
        indices, cu = layout["unpad_indices"], layout["cu_seqlens"]
        ctx = attention_from_layout(mask, indices, cu, "auto", padded_if_full=True)
        assert isinstance(ctx, PaddedAttention) is kept_padded
        if kept_padded:  # packed rows keep their documents apart: the same-id mask
            assert ctx.mask.shape == ((3, 1, 20, 20) if mask.max() > 1 else (3, 1, 1, 20))
        assert isinstance(attention_from_layout(mask, indices, cu, "auto"), UnpaddedAttention)
        forced = attention_from_layout(mask, indices, cu, "unpadded", padded_if_full=True)
        assert isinstance(forced, UnpaddedAttention)  # an explicit backend is obeyed
        assert isinstance(prepare_attention(mask, "auto", padded_if_full=True), PaddedAttention) is kept_padded

    # With the rule on (as on CUDA), the model takes the padded path for the nearly full packed
    # batch and computes what the forced unpadded path computes.
    chosen = []

    def spy(*args, **kwargs):
        chosen.append(type(attention_from_layout(*args, **kwargs)))
        return attention_from_layout(*args, **kwargs)

    monkeypatch.setattr(bert, "keep_full_batches_padded", lambda *args: True)
    monkeypatch.setattr(bert, "attention_from_layout", spy)
    torch.manual_seed(16)
    model = BertForPreTraining(tiny_config())
    ids = torch.randint(5, 99, packed_full.shape)
    batch = dict(input_ids=ids, attention_mask=packed_full, masked_positions=torch.tensor([[1, 9], [3, 4], [0, 17]]),
                 masked_ids=torch.tensor([[5, 6], [7, 8], [9, 10]]), **unpadding_layout(packed_full, 8))
    results = {}
    for backend in ("auto", "unpadded"):
        model.zero_grad(set_to_none=True)
        model.attn_backend = backend
        out = model(**batch)
        out.loss.backward()
        results[backend] = out.loss.detach(), grads(model)
    assert chosen == [PaddedAttention, UnpaddedAttention]
    assert abs(results["auto"][0] - results["unpadded"][0]) <= TOL
    for name, grad in results["unpadded"][1].items():
        assert (grad - results["auto"][1][name]).abs().max() <= TOL, name


def test_benchmark_record_batches_agree_between_libraries(tmp_path: Path, shared_dir: Path) -> None:
    # The real-records pre-training workload: the same tokens, masks and NSP labels for both
    # libraries, transformers' rows padded to the workload's length with HF-style labels.
    from bertkit.data.pretraining import PretrainDataConfig, create_pretraining_data

    corpus = shared_dir / "data/wikitext-2/valid.txt"
    vocab = shared_dir / "models/bert-base-uncased"
    if not corpus.is_file() or not vocab.is_dir():
        pytest.skip("needs ../shared wikitext-2 and bert-base-uncased")
    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(corpus.read_text(encoding="utf-8").splitlines()[:300]) + "\n", encoding="utf-8")
    create_pretraining_data([str(text)], str(vocab), tmp_path / "records",
                            PretrainDataConfig(max_seq_length=64, masking="dynamic", dupe_factor=1), log=lambda _m: None)
    bench = _load_benchmark()
    ours, theirs = bench.record_batches(tmp_path / "records", 8, 2, 80)
    for a, b in zip(ours, theirs):
        T = a["input_ids"].shape[1]
        assert b["input_ids"].shape == (8, 80) and T <= 64
        assert torch.equal(b["input_ids"][:, :T], a["input_ids"]) and (b["input_ids"][:, T:] == 0).all()
        assert torch.equal(b["attention_mask"][:, :T], (a["attention_mask"] > 0).long())
        assert torch.equal(b["next_sentence_label"], a["next_sentence_label"])
        valid = a["masked_positions"] >= 0
        assert valid.any() and (b["labels"] != -100).sum() == valid.sum()
        assert torch.equal(b["labels"].gather(1, a["masked_positions"].clamp(min=0))[valid], a["masked_ids"][valid])
        assert (a["input_ids"].gather(1, a["masked_positions"].clamp(min=0))[valid] != 0).all()
    with pytest.raises(SystemExit, match="longer than the workload"):
        bench.record_batches(tmp_path / "records", 8, 1, 32)
    with pytest.raises(SystemExit, match="expected a `bertkit pretrain-data` output directory"):
        bench.record_batches(text, 8, 1, 80)


def _pretrain_step_splits(tmp_path: Path, device: str, runs: list[tuple[int, int, str, str | None]]):
    """Logged losses and final weights of 3 MLM+NSP steps of 16 records, dropout off, for each
    (micro-batch, --grad-accum, precision, compile mode) in `runs`, on static records built from
    the SST-2 sentences (4 to a document), so that every run sees the same masks."""
    import json

    from bertkit.cli import main
    from bertkit.config import TrainConfig, preset
    from bertkit.data.records import open_pretraining_data
    from bertkit.tokenization import Tokenizer
    from bertkit.training.pretraining import PretrainingTask
    from bertkit.training.trainer import train

    shared = REPO.parent / "shared"
    sst2, vocab = shared / "data" / "glue" / "SST-2" / "train.tsv", shared / "models" / "bert-base-uncased" / "vocab.txt"
    if not sst2.is_file() or not vocab.is_file():
        pytest.skip(f"{sst2} or {vocab} is absent")
    lines = [line.split("\t")[0] for line in sst2.read_text(encoding="utf-8").splitlines()[1:401]]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join("\n".join(lines[i:i + 4]) + "\n\n" for i in range(0, 400, 4)), encoding="utf-8")
    records = tmp_path / "records"
    assert main(["pretrain-data", "--input", str(corpus), "--tokenizer", str(vocab), "--output-dir", str(records),
                 "--max-seq-length", "64", "--seed", "3"]) == 0
    data = open_pretraining_data(records)
    task = PretrainingTask(data, Tokenizer.from_pretrained(vocab, do_lower_case=True))
    results = []
    for batch, accum, precision, mode in runs:
        torch.manual_seed(0)
        model = BertForPreTraining(preset("tiny", vocab_size=30522, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0))
        out = tmp_path / f"run-{batch}-{accum}-{precision}-{mode}"
        config = TrainConfig(output_dir=str(out), max_steps=3, batch_size=batch, grad_accum=accum, lr=1e-3,
                             device=device, precision=precision, compile=mode is not None,
                             compile_mode=mode or "default", eval_every="none", progress=False, max_grad_norm=0,
                             log_every=1, seed=5, num_workers=0)
        state = {k: v.float().cpu() for k, v in train(task, model, task.training_view(data), None, config)
                 .model.state_dict().items()}
        losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
        results.append((losses, state))
    return results


def test_pretraining_step_splits_agree_on_the_cpu(tmp_path) -> None:
    """The CPU twin of the CUDA test below (same helper): 1 x 16 and 4 x 4 records per step."""
    (one, one_state), (four, four_state) = _pretrain_step_splits(tmp_path, "cpu", [(16, 1, "fp32", None),
                                                                                 (4, 4, "fp32", None)])
    assert four == pytest.approx(one, rel=1e-5)
    assert max(float((one_state[k] - four_state[k]).abs().max()) for k in one_state) < 2e-5


@pytest.mark.gpu
@needs_cuda
def test_pretraining_token_loss_on_cuda_is_split_invariant_and_compiles_with_graphs(tmp_path) -> None:
    """On CUDA: the step's masked-token count reaches the device from pinned memory and scales each
    micro-batch's summed loss, so 1 x 16 and 4 x 4 give the same fp32 training; under bf16 with
    --compile reduce-overhead (CUDA graphs, the loss sums read outside the graph) the 4 x 4 run
    trains too, with losses within 2% of the fp32 ones."""
    runs = _pretrain_step_splits(tmp_path, "cuda", [(16, 1, "fp32", None), (4, 4, "fp32", None),
                                                    (4, 4, "bf16", "reduce-overhead")])
    (one, one_state), (four, four_state), (graphs, _) = runs
    assert four == pytest.approx(one, rel=1e-4)
    assert max(float((one_state[k] - four_state[k]).abs().max()) for k in one_state) < 1e-4
    assert graphs == pytest.approx(one, rel=2e-2)
