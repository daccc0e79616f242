"""Training and inference throughput: bertkit vs transformers, in one process, on the same inputs.

    python benchmarks/throughput.py --sst2 SST-2/train.tsv.xz --vocab vocab.txt [--compile] --json out.json
    python benchmarks/throughput.py --small          # CPU, mini shape, < 2 minutes

Both sides get the same batches (already on the device before the clock starts), the same shape
(BERT-base, random init, dropout 0.1), bf16 autocast on CUDA, AdamW (fused on CUDA) with gradient
clipping at 1.0 as in both training loops, and optionally torch.compile. transformers runs with
attn_implementation="sdpa". Differences measured are therefore the models' own:

    fine-tuning   bertkit unpads (dense layers on real tokens only) vs transformers padded to 128
                  (run_glue.py's default) and with dynamic padding (pad to the batch's longest row)
    pre-training  bertkit runs the vocabulary decoder, and the last layer's output, on the 15%
                  masked positions only; transformers' BertForPreTraining computes every position.
                  Full rows of random tokens, and with --pretrain-records DIR real NSP records
                  (lengths as they are) against transformers padded to the sequence length
    inference     SST-2 dev sentences and 384-token SQuAD-like windows

MFU counts only useful FLOPs (real tokens, masked positions for the MLM decoder; see
`useful_flops`) against a measured matmul ceiling, so the MFU ratio equals the throughput ratio
and padding shows up as lost utilisation. Peak memory is torch.cuda.max_memory_allocated over the
whole row (warm-up, compilation and CUDA graph recording included); on CPU
it is reported as n/a (the process RSS high-water mark cannot be reset between runs).

Needs only torch, transformers, tokenizers, numpy and bertkit: every data path is a flag, and
.xz files are read directly.
"""

from __future__ import annotations

import argparse
import gc
import json
import lzma
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.profiler import record_function

import transformers
from bertkit.config import ModelConfig, preset
from bertkit.modeling.attention import unpadding_layout
from bertkit.modeling.bert import set_residual_dtype
from bertkit.modeling.heads import (BertForPreTraining, BertForQuestionAnswering,
                                    BertForSequenceClassification)
from bertkit.tokenization import Tokenizer
from bertkit.training.trainer import GRAPH_MODES, WithUnpaddingLayout, cudagraph_skips

SHARED = Path(__file__).resolve().parents[2] / "shared"  # present on the dev machine only
WORKLOADS = ("finetune", "pretrain", "inference")
Batch = dict[str, torch.Tensor]


# ---- data ---------------------------------------------------------------------------------------
def read_text(path: Path) -> str:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


def read_sst2_sentences(path: Path) -> list[str]:
    """GLUE SST-2 tsv (header `sentence<TAB>label`, .tsv or .tsv.xz) -> sentences."""
    lines = read_text(path).splitlines()
    if not lines or lines[0].split("\t")[0] != "sentence":
        raise SystemExit(f"{path}:1: expected the GLUE SST-2 header 'sentence<TAB>label', "
                         f"got {lines[0][:60]!r}" if lines else f"{path}: empty file")
    sentences = []
    for number, line in enumerate(lines[1:], start=2):
        text = line.split("\t")[0].strip()
        if not text:
            raise SystemExit(f"{path}:{number}: empty sentence")
        sentences.append(text)
    return sentences


def read_squad_pairs(path: Path) -> list[tuple[str, str]]:
    """SQuAD json (.json or .json.xz) -> (question, context) pairs."""
    try:
        data = json.loads(read_text(path))["data"]
    except (json.JSONDecodeError, KeyError) as err:
        raise SystemExit(f"{path}: not a SQuAD json file with a top-level 'data' list ({err})")
    return [(qa["question"], para["context"]) for article in data for para in article["paragraphs"]
            for qa in para["qas"]]


def find_default(flag: str, *candidates: Path) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f"{flag} is required here: none of {', '.join(map(str, candidates))} exists")


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def sentence_batches(sentences: list[str], batch_size: int, steps: int, seed: int) -> list[list[str]]:
    """`steps` batches of sentences drawn without replacement (with replacement if too few)."""
    rng = np.random.default_rng(seed)
    need = batch_size * steps
    order = rng.permutation(len(sentences)) if need <= len(sentences) else rng.integers(0, len(sentences), need)
    return [[sentences[i] for i in order[s * batch_size:(s + 1) * batch_size]] for s in range(steps)]


def pretraining_batch(batch_size: int, seq_len: int, vocab_size: int, rng: np.random.Generator,
                      hf_labels: bool) -> Batch:
    """Full-length rows of random tokens, [CLS] A [SEP] B [SEP] layout, 15% masked positions.

    bertkit form: masked_positions/masked_ids [B,P]; transformers form: labels [B,T] (-100 = none)."""
    P = round(0.15 * seq_len)
    ids = torch.from_numpy(rng.integers(1000, vocab_size, (batch_size, seq_len)))  # [B,T]
    half = seq_len // 2
    ids[:, 0], ids[:, half - 1], ids[:, -1] = 101, 102, 102
    types = torch.zeros_like(ids)
    types[:, half:] = 1
    positions = torch.from_numpy(np.sort(np.stack([rng.choice(np.arange(1, seq_len - 1), P, replace=False)
                                                   for _ in range(batch_size)]), axis=1))  # [B,P]
    targets = ids.gather(1, positions)  # [B,P]
    ids = ids.scatter(1, positions, 103)  # [MASK]
    batch = dict(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids),
                 next_sentence_label=torch.from_numpy(rng.integers(0, 2, batch_size)))
    if hf_labels:
        batch["labels"] = torch.full_like(ids, -100).scatter(1, positions, targets)
    else:
        batch["masked_positions"], batch["masked_ids"] = positions, targets
    return batch


def record_batches(path: Path, batch_size: int, count: int, seq_len: int) -> tuple[list[Batch], list[Batch]]:
    """`count` batches of real pre-training records (`bertkit pretrain-data` output with NSP pairs,
    lengths as they are), masks drawn once as the trainer would draw them: (bertkit's collate form,
    transformers' form padded to seq_len with labels [B,T], as run_pretraining feeds it)."""
    from bertkit.data.records import open_pretraining_data
    from bertkit.training.pretraining import PretrainingTask

    if not (path / "manifest.json").is_file() or not (path / "tokenizer").is_dir():
        raise SystemExit(f"--pretrain-records {path}: expected a `bertkit pretrain-data` output directory "
                         f"(manifest.json and tokenizer/); an .xz archive must be unpacked first")
    data = open_pretraining_data(path)
    task = PretrainingTask(data, Tokenizer.from_pretrained(path / "tokenizer"))
    if not task.nsp:
        raise SystemExit(f"--pretrain-records {path}: MLM-only records; this workload compares MLM+NSP steps")
    if task.options.max_seq_length > seq_len:
        raise SystemExit(f"--pretrain-records {path}: built with --max-seq-length {task.options.max_seq_length}, "
                         f"longer than the workload's {seq_len}")
    view = task.training_view(data)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(view))
    if len(order) < batch_size * count:
        order = rng.integers(0, len(view), batch_size * count)
    ours, theirs = [], []
    for i in range(count):
        batch = task.collate([view[int(j)] for j in order[i * batch_size:(i + 1) * batch_size]], rng)
        ours.append(batch)
        B, T = batch["input_ids"].shape
        positions, targets = batch["masked_positions"], batch["masked_ids"]
        valid = positions >= 0
        labels = torch.full((B, seq_len), -100, dtype=torch.long)
        labels[torch.arange(B)[:, None].expand_as(positions)[valid], positions[valid]] = targets[valid]
        widen = lambda t: torch.nn.functional.pad(t, (0, seq_len - T))  # noqa: E731  [B,T] -> [B,seq_len] with 0
        theirs.append(dict(input_ids=widen(batch["input_ids"]), token_type_ids=widen(batch["token_type_ids"]),
                           attention_mask=widen((batch["attention_mask"] > 0).long()), labels=labels,
                           next_sentence_label=batch["next_sentence_label"]))
    return ours, theirs


# ---- FLOPs and the hardware ceiling ---------------------------------------------------------------
def useful_flops(config: ModelConfig, lengths: list[int], masked: int = 0, training: bool = True,
                 head: str = "classification") -> float:
    """Matmul FLOPs of one step on the real tokens only (padding is not useful work).

    Per layer and token: 2 * (4H^2 + 2HI) for the dense layers; per sequence of n tokens and layer:
    2 * 2 * n^2 * H for QK^T and AV. The last layer's output is useful only where the head reads
    it ([CLS] for classification and NSP, the masked tokens for MLM, every token for QA): there
    only the key and value projections (2 * 2H^2) run on every token, the rest on the q read
    tokens, and attention costs 2 * 2 * n * q * H. The MLM decoder costs 2 * (H^2 + HV) per
    masked token. Training = 3x forward (backward computes two products per forward one)."""
    H, I, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    tokens = sum(lengths)
    if head == "question_answering":
        read = list(lengths)
    elif head == "pretraining":  # [CLS] and the masked tokens, spread over rows by length
        read = [1 + masked * n / tokens for n in lengths]
    else:
        read = [1] * len(lengths)
    forward = (L - 1) * (2 * (4 * H * H + 2 * H * I) * tokens + 4 * H * sum(n * n for n in lengths))
    forward += 2 * 2 * H * H * tokens + 2 * (2 * H * H + 2 * H * I) * sum(read)
    forward += 4 * H * sum(n * q for n, q in zip(lengths, read))
    forward += 2 * H * H * len(lengths)  # pooler
    if head == "pretraining":
        forward += 2 * (H * H + H * V) * masked
    elif head == "question_answering":
        forward += 2 * H * 2 * tokens
    return forward * (3 if training else 1)


def matmul_ceiling(device: torch.device) -> tuple[float, str]:
    """Measured FLOP/s of a large square matmul: bf16 8192^3 on CUDA, fp32 1024^3 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - t) / reps
    return 2 * n ** 3 / seconds, f"{str(dtype).split('.')[-1]} {n}^3 matmul"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- models ---------------------------------------------------------------------------------------
def bertkit_model(kind: str, config: ModelConfig) -> torch.nn.Module:
    cls = {"classification": BertForSequenceClassification, "pretraining": BertForPreTraining,
           "question_answering": BertForQuestionAnswering}[kind]
    return cls(config)


def transformers_model(kind: str, config: ModelConfig) -> torch.nn.Module:
    hf_config = transformers.BertConfig(**config.to_hf_dict(), attn_implementation="sdpa")
    cls = {"classification": transformers.BertForSequenceClassification,
           "pretraining": transformers.BertForPreTraining,
           "question_answering": transformers.BertForQuestionAnswering}[kind]
    model = cls(hf_config)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


@dataclass
class Result:
    workload: str
    implementation: str
    samples_per_s: float
    step_ms: float
    peak_mib: float | None
    mfu: float
    tokens_per_sample: float  # real tokens per sample (padding excluded)
    notes: str = ""
    kernels_per_step: float | None = None  # GPU kernels launched per step (with --profile)
    host_ms: dict[str, float] = field(default_factory=dict)  # host time per step by phase (CUDA)
    cudagraph_skips: int = 0  # compiled graphs that inductor ran without CUDA graphs in a graphs mode


@dataclass
class Settings:
    device: torch.device
    precision: str  # "bf16" | "fp32"
    compile: str | None  # None (eager) or a torch.compile mode
    warmup: int
    steps: int
    ceiling: float  # FLOP/s
    profile_dir: Path | None = None  # --profile: per-row kernel tables are written here
    only: str | None = None  # --only: run just the rows whose "workload: implementation" contains one of these ("|" between)
    results: list[Result] = field(default_factory=list)


def measure(settings: Settings, workload: str, implementation: str, model: torch.nn.Module,
            batches: list[Batch], flops_per_step: list[float], training: bool, notes: str = "",
            dynamic: bool | None = None) -> Result | None:
    """`measure_steps`, but a row that fails (a compile mode a GPU lacks, out of memory) is reported
    as failed in the table and the other rows still run. Rows left out by --only return None."""
    row = f"{workload}: {implementation}"
    if settings.only is not None and not any(text in row for text in settings.only.split("|")):
        return None
    try:
        return measure_steps(settings, workload, implementation, model, batches, flops_per_step, training,
                             notes, dynamic)
    except Exception as err:  # noqa: BLE001 - the message goes into the table
        message = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        print(f"  {implementation:<34} FAILED {message}", file=sys.stderr, flush=True)
        settings.results.append(Result(workload, implementation, float("nan"), float("nan"), None, float("nan"),
                                       float("nan"), f"failed: {message}"))
        model.cpu()
        gc.collect()
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
        return None


def measure_steps(settings: Settings, workload: str, implementation: str, model: torch.nn.Module,
                  batches: list[Batch], flops_per_step: list[float], training: bool, notes: str = "",
                  dynamic: bool | None = None) -> Result:
    """Run warmup + timed steps over `batches` (cycled); returns samples/s over the timed steps."""
    device = settings.device
    model.to(device)
    model.train(training)
    run = torch.compile(model, dynamic=dynamic, mode=settings.compile) if settings.compile else model
    graphs = settings.compile in GRAPH_MODES and device.type == "cuda"
    optimizer = None
    if training:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01,
                                      fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
    # Host time per phase: on CUDA the launches are asynchronous, so a phase's wall time is what the
    # host spends issuing it. When the phases add up to the step time, the GPU waits on the host.
    host = dict.fromkeys(("forward", "backward", "clip_grad_norm", "optimizer", "zero_grad"), 0.0)

    @contextmanager
    def phase(name: str):
        start = time.perf_counter()
        with record_function(f"phase: {name}"):  # labels the --profile CPU table
            yield
        host[name] += time.perf_counter() - start

    def step(batch: Batch) -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if training:
            with phase("forward"), autocast:
                loss = run(**batch).loss
            with phase("backward"):
                loss.backward()
            with phase("clip_grad_norm"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            with phase("optimizer"):
                optimizer.step()
            with phase("zero_grad"):
                optimizer.zero_grad(set_to_none=True)
        else:
            with phase("forward"), torch.inference_mode(), autocast:
                run(**batch)

    timed = [settings.warmup + i for i in range(settings.steps)]
    # Peak memory counts from before the warm-up: under CUDA graphs every activation lives in the
    # graph pools allocated while recording, so a peak taken over the replays alone shows little
    # more than weights and optimizer state (1.8 GiB for a pre-training step that needs 14 in eager
    # mode, measured on the H100). The recording is part of what a run must fit into.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    skips_before = cudagraph_skips()
    # Warm up on exactly the batches that are timed, too: with dynamic lengths every new tensor
    # shape pays one-time costs (kernel selection, allocator growth). A real epoch sees each shape
    # many times, so the steady state after one pass is what training runs at. (Measured: without
    # this, 20 steps of fresh shapes made the dynamic rows swing between 118 and 221 ms/step.)
    for i in list(range(settings.warmup)) + timed:
        step(batches[i % len(batches)])
    sync(device)
    host.update(dict.fromkeys(host, 0.0))
    t = time.perf_counter()
    for i in timed:
        step(batches[i % len(batches)])
    sync(device)
    seconds = time.perf_counter() - t
    samples = sum(batches[i % len(batches)]["input_ids"].shape[0] for i in timed)
    flops = sum(flops_per_step[i % len(batches)] for i in timed)
    real_tokens = sum(int(batches[i % len(batches)]["attention_mask"].sum()) for i in timed)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    kernels = None
    if settings.profile_dir is not None:
        kernels = profile_steps(settings, f"{workload} {implementation}", step,
                                [batches[i % len(batches)] for i in timed[:3]])
    host_ms = {k: 1000 * v / len(timed) for k, v in host.items() if v > 0} if device.type == "cuda" else {}
    # Inductor logs why it skipped CUDA graphs only under TORCH_LOGS=cudagraphs: count it here.
    skips = cudagraph_skips() - skips_before if graphs else 0
    result = Result(workload, implementation, samples / seconds, 1000 * seconds / len(timed), peak,
                    flops / seconds / settings.ceiling, real_tokens / samples, notes, kernels, host_ms, skips)
    settings.results.append(result)
    host_note = (f"  host {sum(host_ms.values()):.1f} ms/step ("
                 + ", ".join(f"{k} {v:.1f}" for k, v in host_ms.items()) + ")") if host_ms else ""
    skip_note = f"  CUDA graphs skipped for {skips} compiled graphs (TORCH_LOGS=cudagraphs says why)" if skips else ""
    print(f"  {implementation:<34} {result.samples_per_s:10.1f} samples/s  {result.step_ms:8.1f} ms/step"
          f"{host_note}{skip_note}", file=sys.stderr, flush=True)
    del run, optimizer
    model.cpu()
    if settings.compile:
        torch._dynamo.reset()  # frees this row's CUDA graphs and their pools: each row starts as a fresh process would
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def profile_steps(settings: Settings, name: str, step: Callable[[Batch], None], batches: list[Batch]) -> float:
    """Profile a few more steps: writes the top kernels by device time to --profile DIR and
    returns the device kernels launched per step (a step of short rows is bound by their count)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            step(batch)
        sync(settings.device)
    events = prof.events()
    if settings.device.type == "cuda":
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        sort_by = "self_device_time_total"
    else:  # CPU: count the aten operators instead (there are no kernels to count)
        kernels = sum(1 for e in events if e.name.startswith("aten::"))
        sort_by = "self_cpu_time_total"
    settings.profile_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")[:120]
    averages = prof.key_averages()
    table = averages.table(sort_by=sort_by, row_limit=30)
    # By host time as well: a launch-bound step shows where the host goes ("phase: ..." rows).
    host_table = averages.table(sort_by="cpu_time_total", row_limit=30)
    (settings.profile_dir / f"{slug}.txt").write_text(
        f"{name}\n{len(batches)} steps\n\nby {sort_by}\n{table}\n\nby cpu_time_total\n{host_table}\n",
        encoding="utf-8")
    return kernels / len(batches)


def measure_varlen_dropout(settings: Settings, config: ModelConfig, workload: str, implementation: str,
                           model: torch.nn.Module, batches: list[Batch], flops: list[float]) -> None:
    """A row for the flash varlen kernel with its own attention dropout (no re-padding per layer;
    opt-in for now): CUDA only, and only when there is attention dropout to apply."""
    if settings.device.type != "cuda" or config.attention_probs_dropout_prob == 0:
        return
    model.attn_backend = "varlen_dropout"
    measure(settings, workload, implementation, model, batches, flops, True,
            notes="attention dropout inside the flash varlen kernel", dynamic=True)
    model.attn_backend = "auto"


def seeded(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return factory()


# ---- workloads ------------------------------------------------------------------------------------
def run_finetune(settings: Settings, config: ModelConfig, tok: Tokenizer, sentences: list[str],
                 batch_size: int) -> None:
    workload = f"fine-tune SST-2 train, batch {batch_size}"
    print(workload, file=sys.stderr)
    n = settings.warmup + settings.steps
    groups = sentence_batches(sentences, batch_size, n, seed=0)
    labels = [torch.randint(0, 2, (len(g),), generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)]
    cpu_dynamic = [{**tok(g, max_length=128), "labels": y} for g, y in zip(groups, labels)]
    cpu_padded = [{**tok(g, max_length=128, padding="max_length"), "labels": y} for g, y in zip(groups, labels)]
    dynamic = [to_device(b, settings.device) for b in cpu_dynamic]
    padded = [to_device(b, settings.device) for b in cpu_padded]
    # bertkit's collate adds the unpadded layout on the CPU (DataLoader workers); with CUDA graphs
    # it rounds row widths and token counts up to multiples of 64, exactly as the trainer does.
    multiple = 64 if settings.compile in GRAPH_MODES else 1
    ours_dynamic = [to_device(WithUnpaddingLayout(dict, multiple)(b), settings.device) for b in cpu_dynamic]
    ours_padded = [to_device(WithUnpaddingLayout(dict, multiple)(b), settings.device) for b in cpu_padded]
    flops = [useful_flops(config, b["attention_mask"].sum(1).tolist()) for b in dynamic]
    model = seeded(lambda: bertkit_model("classification", config))
    measure(settings, workload, "bertkit (unpadded, dynamic lengths)", model, ours_dynamic, flops, True, dynamic=True)
    measure_varlen_dropout(settings, config, workload, "bertkit (varlen_dropout backend)", model, ours_dynamic, flops)
    measure(settings, workload, "bertkit (input padded to 128)", model, ours_padded, flops, True,
            notes="unpadding drops the pads inside the model", dynamic=True)
    del model
    model = seeded(lambda: transformers_model("classification", config))
    measure(settings, workload, "transformers (padded to 128)", model, padded, flops, True)
    measure(settings, workload, "transformers (dynamic padding)", model, dynamic, flops, True)
    del model


def run_pretrain(settings: Settings, config: ModelConfig, shapes: list[tuple[int, int]]) -> None:
    for seq_len, batch_size in shapes:
        workload = f"pre-train MLM+NSP, seq {seq_len}, batch {batch_size}"
        print(workload, file=sys.stderr)
        count = min(settings.warmup + settings.steps, 4)  # a few distinct batches, cycled
        # Through the trainer's collate wrapper: whole rows are marked full_rows (no host sync).
        ours = [to_device(WithUnpaddingLayout(dict)(pretraining_batch(batch_size, seq_len, config.vocab_size,
                                                                      np.random.default_rng(i), False)),
                          settings.device) for i in range(count)]
        theirs = [to_device(pretraining_batch(batch_size, seq_len, config.vocab_size,
                                              np.random.default_rng(i), True), settings.device) for i in range(count)]
        masked = round(0.15 * seq_len) * batch_size
        flops = [useful_flops(config, [seq_len] * batch_size, masked, head="pretraining")] * count
        model = seeded(lambda: bertkit_model("pretraining", config))
        measure(settings, workload, "bertkit (decoder on masked only)", model, ours, flops, True)
        if settings.precision == "bf16":
            set_residual_dtype(model, "bf16")
            measure(settings, workload, "bertkit (--residual-dtype bf16)", model, ours, flops, True,
                    notes="hidden states between sublayers in bf16 (LayerNorm computes in fp32)")
            if settings.device.type == "cuda":
                # SDPA's own choice on the H100 was cuDNN's kernel (5.7 ms of a 54 ms step at seq
                # 128): measured against flash attention 2, not assumed. The backend flags are read
                # when the graph is traced, which happens inside this context.
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    measure(settings, workload, "bertkit (bf16 residual, flash attention 2)", model, ours, flops,
                            True, notes="SDPA restricted to the flash backend")
        del model
        model = seeded(lambda: transformers_model("pretraining", config))
        measure(settings, workload, "transformers", model, theirs, flops, True)
        del model


def run_pretrain_records(settings: Settings, config: ModelConfig, path: Path, seq_len: int, batch_size: int) -> None:
    """Pre-training on real records, lengths as they are (BERT's data has ~10% short pairs and
    documents that end early): bertkit unpads them, transformers gets them padded to seq_len."""
    count = min(settings.warmup + settings.steps, 4)  # a few distinct batches, cycled
    cpu_ours, cpu_theirs = record_batches(path, batch_size, count, seq_len)
    lengths = [b["attention_mask"].sum(1).tolist() for b in cpu_theirs]
    mean = sum(map(sum, lengths)) / sum(map(len, lengths))
    workload = f"pre-train MLM+NSP, records of {path.name} ({mean:.1f} tokens), seq {seq_len}, batch {batch_size}"
    print(workload, file=sys.stderr)
    # The collate's layout, with row widths and token counts in multiples of 64 under CUDA graphs,
    # exactly as the trainer builds it.
    multiple = 64 if settings.compile in GRAPH_MODES else 1
    ours = [to_device(WithUnpaddingLayout(dict, multiple)(b), settings.device) for b in cpu_ours]
    theirs = [to_device(b, settings.device) for b in cpu_theirs]
    flops = [useful_flops(config, n, int((b["masked_positions"] >= 0).sum()), head="pretraining")
             for n, b in zip(lengths, cpu_ours)]
    model = seeded(lambda: bertkit_model("pretraining", config))
    # On CUDA "auto" keeps batches at least attention.REPAD_FILL full padded while attention dropout
    # would re-pad every layer; the forced unpadded row and the varlen_dropout row (no re-padding)
    # are the alternatives it is weighed against.
    measure(settings, workload, "bertkit (auto layout, decoder on masked only)", model, ours, flops, True, dynamic=True)
    model.attn_backend = "unpadded"
    measure(settings, workload, "bertkit (unpadded, re-padded attention)", model, ours, flops, True, dynamic=True)
    model.attn_backend = "auto"
    measure_varlen_dropout(settings, config, workload, "bertkit (unpadded, varlen_dropout backend)", model, ours, flops)
    if settings.precision == "bf16":
        set_residual_dtype(model, "bf16")
        measure(settings, workload, "bertkit (auto layout, --residual-dtype bf16)", model, ours, flops, True,
                dynamic=True)
    del model
    model = seeded(lambda: transformers_model("pretraining", config))
    measure(settings, workload, f"transformers (padded to {seq_len})", model, theirs, flops, True)
    del model


def run_inference(settings: Settings, config: ModelConfig, tok: Tokenizer, dev_sentences: list[str],
                  squad_pairs: list[tuple[str, str]] | None, batch_size: int, squad_batch: int,
                  squad_len: int) -> None:
    workload = f"inference SST-2 dev, batch {batch_size}"
    print(workload, file=sys.stderr)
    n = settings.warmup + settings.steps
    groups = [dev_sentences[i:i + batch_size] for i in range(0, len(dev_sentences), batch_size)]
    groups = [g for g in groups if len(g) == batch_size] or groups
    cpu_batches = [tok(groups[i % len(groups)], max_length=128) for i in range(n)]
    batches = [to_device(b, settings.device) for b in cpu_batches]
    ours = [to_device({**b, **unpadding_layout(b["attention_mask"])}, settings.device) for b in cpu_batches]
    flops = [useful_flops(config, b["attention_mask"].sum(1).tolist(), training=False) for b in batches]
    for name, factory, inputs in (
            ("bertkit (unpadded)", lambda: bertkit_model("classification", config), ours),
            ("transformers (dynamic padding)", lambda: transformers_model("classification", config), batches)):
        model = seeded(factory)
        measure(settings, workload, name, model, inputs, flops, False, dynamic=True)
        del model

    source = "SQuAD v1.1 dev questions+contexts" if squad_pairs else "random full windows"
    workload = f"inference QA windows of {squad_len} ({source}), batch {squad_batch}"
    print(workload, file=sys.stderr)
    count = min(n, 8)
    if squad_pairs:
        cpu_batches = []
        for i in range(count):
            pairs = squad_pairs[i * squad_batch:(i + 1) * squad_batch]
            cpu_batches.append(tok([q for q, _ in pairs], [c for _, c in pairs], max_length=squad_len,
                                   truncation="only_second"))
    else:
        g = torch.Generator().manual_seed(0)
        cpu_batches = [dict(input_ids=torch.randint(1000, config.vocab_size, (squad_batch, squad_len), generator=g),
                            token_type_ids=torch.zeros(squad_batch, squad_len, dtype=torch.long),
                            attention_mask=torch.ones(squad_batch, squad_len, dtype=torch.long)) for _ in range(count)]
    batches = [to_device(b, settings.device) for b in cpu_batches]
    flops = [useful_flops(config, b["attention_mask"].sum(1).tolist(), training=False, head="question_answering")
             for b in batches]
    # bertkit's side with the layout its collate adds (full windows: full_rows, no host sync).
    ours = [to_device(WithUnpaddingLayout(dict)(b), settings.device) for b in cpu_batches]
    for name, factory, inputs in (("bertkit", lambda: bertkit_model("question_answering", config), ours),
                                  ("transformers", lambda: transformers_model("question_answering", config), batches)):
        model = seeded(factory)
        measure(settings, workload, name, model, inputs, flops, False, dynamic=True)
        del model


# ---- report ---------------------------------------------------------------------------------------
def markdown(settings: Settings, header: dict[str, str]) -> str:
    lines = [f"- {k}: {v}" for k, v in header.items()]
    profiled = any(r.kernels_per_step is not None for r in settings.results)
    timed_host = any(r.host_ms for r in settings.results)
    kernel_unit = "kernels/step" if settings.device.type == "cuda" else "aten ops/step"
    lines += ["", "| workload | implementation | samples/s | ms/step | bertkit ÷ this | peak MiB | MFU | real tokens/sample |"
              + (" host ms/step |" if timed_host else "") + (f" {kernel_unit} |" if profiled else ""),
              "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if timed_host else "") + ("---:|" if profiled else "")]
    for r in settings.results:
        ours = next(x for x in settings.results if x.workload == r.workload)  # the first row is bertkit's
        ratio = ours.samples_per_s / r.samples_per_s
        peak = f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "n/a"
        name = r.implementation + (f" ({r.notes})" if r.notes.startswith("failed") else "")
        if r.cudagraph_skips:
            name += f" (CUDA graphs skipped for {r.cudagraph_skips} graphs)"
        cells = [r.workload, name, f"{r.samples_per_s:,.1f}", f"{r.step_ms:.1f}", f"{ratio:.2f}x", peak,
                 f"{100 * r.mfu:.1f}%", f"{r.tokens_per_sample:.1f}"]
        if timed_host:
            cells.append(f"{sum(r.host_ms.values()):.1f}" if r.host_ms else "")
        if profiled:
            cells.append(f"{r.kernels_per_step:,.0f}" if r.kernels_per_step is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    if timed_host:
        lines += ["", "host ms/step: what the host spends issuing a step (forward, backward, clipping, optimizer, "
                      "zero_grad); close to ms/step means the GPU waits on the host (launch-bound)."]
    return "\n".join(lines)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"128x256,512x32" -> [(128, 256), (512, 32)]."""
    try:
        shapes = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected SEQxBATCH[,SEQxBATCH...] such as 128x256,512x32, got {text!r}")
    return shapes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true",
                   help="CPU-sized run: mini shape (L4/H256), batch 32 fine-tuning, short pre-training, few steps")
    p.add_argument("--workloads", default=None,
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all; --small: finetune)")
    p.add_argument("--sst2", type=Path, default=None, help="SST-2 train.tsv or train.tsv.xz")
    p.add_argument("--sst2-dev", type=Path, default=None,
                   help="SST-2 dev.tsv(.xz) for inference (default: dev.tsv[.xz] next to --sst2)")
    p.add_argument("--vocab", type=Path, default=None, help="WordPiece vocab.txt (or a model directory)")
    p.add_argument("--squad", type=Path, default=None,
                   help="SQuAD dev json(.xz) for the QA inference windows (default: random tokens)")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile both sides (MODE reduce-overhead: with CUDA graphs)")
    p.add_argument("--pretrain-shapes", type=parse_shapes, default=[(128, 256), (512, 32)], metavar="TxB,...",
                   help="pre-training sequence length x batch size per row group (default 128x256,512x32)")
    p.add_argument("--pretrain-records", type=Path, default=None, metavar="DIR",
                   help="with the pretrain workload: also pre-train on these records (`bertkit pretrain-data` "
                        "output with NSP, lengths as they are) at the first --pretrain-shapes entry")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--attention-dropout", type=float, default=0.1,
                   help="attention_probs_dropout_prob for both sides (0 lets bertkit train with varlen on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per measurement (default 5; --small 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20; --small 4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--combo-kernels", action="store_true",
                   help="with --compile: let inductor fuse independent small kernels horizontally (combo kernels)")
    p.add_argument("--only", default=None, metavar="TEXT[|TEXT...]",
                   help="run only the rows whose 'workload: implementation' contains one of the TEXTs (e.g. "
                        "'residual-dtype bf16' for a max-autotune compile that would not fit a device call twice)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="after each row, profile 3 steps: kernels per step in the table, top kernels in DIR")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.combo_kernels:
        import torch._inductor.config as inductor_config

        inductor_config.combo_kernels = True
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    workloads = (args.workloads or ("finetune" if args.small else ",".join(WORKLOADS))).split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"--workloads: unknown {', '.join(unknown)}; valid: {', '.join(WORKLOADS)}")
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 5)
    steps = args.steps if args.steps is not None else (4 if args.small else 20)

    shape = "mini" if args.small else "base"
    config = preset(shape, attention_probs_dropout_prob=args.attention_dropout)
    ceiling, ceiling_how = matmul_ceiling(device)
    settings = Settings(device, precision, args.compile, warmup, steps, ceiling, args.profile, args.only)

    needs_text = "finetune" in workloads or "inference" in workloads
    tok = sentences = dev_sentences = None
    if needs_text:
        vocab = args.vocab or find_default("--vocab", SHARED / "models/bert-base-uncased/vocab.txt")
        tok = Tokenizer.from_pretrained(vocab)
        sst2 = args.sst2 or find_default("--sst2", SHARED / "data/glue/SST-2/train.tsv")
        sentences = read_sst2_sentences(sst2)
        dev_path = args.sst2_dev or next((p for p in (sst2.parent / "dev.tsv", sst2.parent / "dev.tsv.xz")
                                          if p.is_file()), None)
        # Without a dev file, the last 872 training sentences (SST-2 dev size) stand in for it.
        dev_sentences = read_sst2_sentences(dev_path) if dev_path else sentences[-872:]

    if "finetune" in workloads:
        run_finetune(settings, config, tok, sentences, batch_size=32)
    if "pretrain" in workloads:
        shapes = [(128, 16)] if args.small else args.pretrain_shapes
        run_pretrain(settings, config, shapes)
        if args.pretrain_records:
            run_pretrain_records(settings, config, args.pretrain_records, *shapes[0])
    if "inference" in workloads:
        squad = read_squad_pairs(args.squad) if args.squad else None
        run_inference(settings, config, tok, dev_sentences, squad, batch_size=32 if args.small else 128,
                      squad_batch=4 if args.small else 32, squad_len=384)

    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "torch / transformers": f"{torch.__version__} / {transformers.__version__}",
        "model shape": f"{shape} (L{config.num_hidden_layers}/H{config.hidden_size}), random init, "
                       f"dropout {config.hidden_dropout_prob}, attention dropout {config.attention_probs_dropout_prob}",
        "precision / compile": f"{'bf16 autocast' if precision == 'bf16' else 'fp32'} / "
                               f"{f'torch.compile mode={args.compile}' if args.compile else 'eager'}"
                               f"{', combo kernels' if args.combo_kernels else ''}",
        "steps": f"{warmup} warmup + {steps} timed per row (the timed batches are also run once untimed first)",
        "MFU ceiling": f"{ceiling / 1e12:.2f} TFLOP/s measured ({ceiling_how})",
    }
    table = markdown(settings, header)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"settings": header, "results": [asdict(r) for r in settings.results]},
                                        indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
