"""The one training loop, shared by fine-tuning and pre-training. Read it top to bottom:

    setup -> batch order for the epoch (seeded) -> load the step's micro-batches (and, for a loss
    averaged over tokens, sum their token counts over all ranks) -> [micro-steps: forward, backward
    (no all-reduce until the last micro-step of an accumulation)] -> optimizer step (unscale,
    non-finite check, clip, step, schedule) -> log / evaluate / checkpoint -> final model + metrics.

A step's loss is the mean over the whole step whatever its split into micro-batches and ranks: the
mean over its examples (each micro-batch's mean weighted by its share), or for a loss averaged over
tokens, each micro-batch's summed loss over the step's token count (`loss_term_scales`).

Variation enters only through the Task (collate, head, metrics) and TrainConfig fields. There are
no callbacks.

Data order and exact resume. The order of an epoch is a function of (seed, epoch) alone: a
permutation of the examples, or with --group-by-length, a permutation in which each run of
`MEGABATCH_FACTOR x batch` examples is sorted by length. Global micro-batches are consecutive
chunks of that order (per-device batch x world size), and rank r takes the r-th slice of each. The
data position saved in a checkpoint is (epoch, examples consumed in the epoch): resume rebuilds the
order and starts at that offset, so no batch is replayed and a run saved with N ranks resumes with
M ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from bertkit.config import TrainConfig
from bertkit.modeling.attention import pad_rows, unpadding_layout
from bertkit.training import distributed
from bertkit.training.distributed import DistInfo
from bertkit.training.optim import build_optimizer, build_scheduler, clip_each_tensor

MEGABATCH_FACTOR = 50  # length grouping sorts within runs of 50 batches: little padding, still random
STATE_FILE = "trainer_state.json"


# ---- data order ---------------------------------------------------------------------------------
def epoch_order(lengths: Sequence[int] | None, n: int, seed: int, epoch: int, batch_size: int,
                group_by_length: bool) -> np.ndarray:
    """Indices of the examples in the order epoch `epoch` visits them (depends on seed, epoch only)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if group_by_length and lengths is not None:
        lengths_arr = np.asarray(lengths)
        mega = MEGABATCH_FACTOR * batch_size
        chunks = [order[i:i + mega] for i in range(0, n, mega)]
        # Longest first within a megabatch so the biggest batch comes first (fail early on OOM).
        order = np.concatenate([c[np.argsort(-lengths_arr[c], kind="stable")] for c in chunks])
        # Shuffle whole batches so training does not see lengths in a sawtooth pattern.
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        perm = rng.permutation(len(batches))
        order = np.concatenate([batches[i] for i in perm]) if batches else order
    return order


def global_batches_of_epoch(task, lengths, n: int, config: TrainConfig, epoch: int, global_batch: int,
                            info: DistInfo) -> list[np.ndarray]:
    """The epoch's global micro-batches (index arrays). A task may plan them itself
    (`task.epoch_batches(epoch, seed, global_batch)`, e.g. multi-task sampling); the plan must be a
    function of its arguments so that resume can rebuild it."""
    plan = getattr(task, "epoch_batches", None)
    if plan is not None:
        return [np.asarray(b) for b in plan(epoch, config.seed, global_batch)]
    # A task may read a part of its examples per epoch (pre-training records of several generated
    # epochs: one generated epoch per training epoch).
    subset = task.epoch_examples(epoch) if hasattr(task, "epoch_examples") else None
    if subset is None:
        order = epoch_order(lengths, n, config.seed, epoch, config.batch_size, config.group_by_length)
    else:
        part_lengths = None if lengths is None else np.asarray(lengths)[subset]
        order = subset[epoch_order(part_lengths, subset.size, config.seed, epoch, config.batch_size,
                                   config.group_by_length)]
    batches = [order[i:i + global_batch] for i in range(0, order.size, global_batch)]
    if info.enabled and batches and len(batches[-1]) < info.world_size:
        batches.pop()  # a rank without an example would have no backward to join
    return batches


class _BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole collated batches (so workers collate in parallel)."""

    def __init__(self, features, batches: list[np.ndarray], collate, rng_seeds: list[int] | None):
        self.features, self.batches, self.collate, self.rng_seeds = features, batches, collate, rng_seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        items = [self.features[int(j)] for j in self.batches[i]]
        if self.rng_seeds is not None:  # tasks that draw random numbers in collate (dynamic masking)
            return self.collate(items, rng=np.random.default_rng(self.rng_seeds[i]))
        return self.collate(items)


class WithUnpaddingLayout:
    """A task's collate plus the batch's `unpadding_layout`, computed in the loader workers so the
    model unpads without a device->host sync. `multiple` > 1 rounds the row width and the token
    count up to multiples of it: CUDA graphs are recorded per shape, so batches must share a few
    (measured on an H100: graphs over rows of free width ran at 189 samples/s, over rows of one
    width at 3,493)."""

    def __init__(self, collate, multiple: int = 1):
        self.collate, self.multiple = collate, multiple

    def __call__(self, features, **kwargs):
        batch = pad_rows(self.collate(features, **kwargs), self.multiple)
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() in (2, 3):  # [B,C,T] (multiple choice): the B*C rows
            batch.update(unpadding_layout(mask.reshape(-1, mask.shape[-1]), self.multiple))
        return batch


GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


def cudagraph_skips() -> int:
    """Compiled graphs that inductor has run without CUDA graphs in a graphs mode, in this process."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def cudagraph_skip_warning(skips_before: int, mode: str) -> str | None:
    """The message for a run that asked for CUDA graphs and did not get them (or None).

    Inductor falls back to launching every kernel (a CPU tensor in the graph, a mutated input, an
    op that cannot be captured) and says why only under TORCH_LOGS=cudagraphs, so a run would go on
    at eager-like speed without a word."""
    skipped = cudagraph_skips() - skips_before
    if skipped <= 0:
        return None
    return (f"warning: --compile {mode}: {skipped} compiled graph(s) run without CUDA graphs, so their "
            f"kernels are launched one by one; rerun with TORCH_LOGS=cudagraphs to see why")


def layout_collate(task, config: TrainConfig | None = None):
    """The collate the loops use: with the unpadded layout (every head takes one)."""
    graphs = config is not None and config.compile and config.compile_mode in GRAPH_MODES
    return WithUnpaddingLayout(task.collate, multiple=64 if graphs else 1)


def make_loader(features, batches: list[np.ndarray], task, config: TrainConfig, device: torch.device,
                rng_seeds: list[int] | None = None, epoch: int = 0):
    dataset = _BatchDataset(features, batches, layout_collate(task, config), rng_seeds)
    # Its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
    # which would shift the dropout stream of a resumed run relative to an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    workers = loader_workers(config, device)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, generator=generator,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers else None)


def apply_model_settings(model: nn.Module, config: TrainConfig) -> None:
    """--attn-backend, --attention-dropout and --residual-dtype onto the model (the dropout onto its
    config too, so a saved model carries the dropout it was trained with)."""
    from bertkit.modeling.bert import BertModel, BertSelfAttention, set_residual_dtype

    set_residual_dtype(model, config.residual_dtype)
    for module in model.modules():
        if isinstance(module, BertModel) and config.attn_backend != "auto":  # else keep the model's own
            module.attn_backend = config.attn_backend
        elif isinstance(module, BertSelfAttention) and config.attention_dropout is not None:
            module.dropout_p = config.attention_dropout
    model_config = getattr(model, "config", None)
    if config.attention_dropout is not None and model_config is not None:
        model_config.attention_probs_dropout_prob = config.attention_dropout


def optimizer_step(optimizer: torch.optim.Optimizer, scaler, grad_norm: torch.Tensor,
                   sharded: bool = False) -> torch.Tensor:
    """Apply the update unless the gradients are not finite; returns 1.0 (skipped) or 0.0 as a
    tensor on grad_norm's device.

    A fused optimizer (AdamW on CUDA) is told through `found_inf`, which its kernel reads on the
    device: weights, moments and step counts stay as they were, and the host never waits for the
    GPU, so the next batch is queued while this step still runs. Other optimizers, and sharded
    (FSDP, DTensor) parameters, for which a plain found_inf tensor is not known to work, ask the host."""
    not_finite = (~torch.isfinite(grad_norm)).float()
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when it found inf/nan gradients
        scaler.update()
    elif optimizer.defaults.get("fused") and not sharded:
        optimizer.found_inf = not_finite
        optimizer.step()
    elif not bool(not_finite):
        optimizer.step()
    return not_finite


def loader_workers(config: TrainConfig, device: torch.device) -> int:
    """--num-workers, or by default 4 on CUDA and 0 on CPU, where workers would only compete with
    the model for the cores. (On an H100, with collate in the main process, target-word dynamic
    masking held a medium model's pre-training to ~780 samples/s against ~1,490 with uniform
    masking: the GPU waited on the CPU.) Batches are seeded per index, so the count never
    changes the data."""
    if config.num_workers >= 0:
        return config.num_workers
    return min(4, max((os.cpu_count() or 1) // 2, 1)) if device.type == "cuda" else 0


def data_fingerprint(features) -> str:
    """Identifies the training data: count and a sample of token ids. A resume on other data is refused."""
    h = hashlib.sha256(str(len(features)).encode())
    n = len(features)
    for i in sorted({0, n // 2, n - 1}) if n else []:
        ids = features[i]["input_ids"]
        # A multiple-choice feature holds one row per choice, of different lengths.
        rows = ids if len(ids) and isinstance(ids[0], (list, tuple, np.ndarray)) else [ids]
        for row in rows:
            h.update(np.asarray(row, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# ---- helpers --------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def loss_term_scales(loss_weights: Callable[[dict], torch.Tensor | None] | None, step_batches: list[dict],
                     info: DistInfo, device: torch.device) -> torch.Tensor | None:
    """What each micro-batch's `loss_sums` are multiplied by, for a model whose loss terms average over
    counts the data decides (masked or labelled tokens; `BertPreTrainedModel.loss_weights`): the
    number of processes over the term's total weight in the whole optimizer step, every micro-batch
    on every process. None for a loss that is a plain mean over examples. The counts are taken from
    the loader's (host) batches, which costs a GPU step no kernel launches."""
    weights = [loss_weights(batch) for batch in step_batches] if loss_weights is not None else [None]
    if weights[0] is None:
        return None
    totals = torch.stack(weights).sum(0).double()
    if device.type == "cuda":
        totals = totals.pin_memory()  # a copy from pageable memory would make the host wait for the GPU
    totals = totals.to(device, non_blocking=True)
    if info.enabled:  # one all-reduce of a few numbers per step, queued on the device (NCCL)
        totals = distributed.all_reduce_sum(totals, info)
    # A term with no label in the whole step (no NSP labels in MLM-only records) contributes 0.
    return torch.where(totals > 0, info.world_size / totals.clamp(min=1e-30), torch.zeros_like(totals)).float()


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluations_since_best(state: "TrainerState") -> int:
    """Evaluations after the one that set the best metric (all of them when none did)."""
    steps = [record["step"] for record in state.history]
    return len(steps) - 1 - steps.index(state.best_step) if state.best_step in steps else len(steps)


def apply_best_metric(task, config: TrainConfig, eval_set: tuple[list, list] | None) -> None:
    """--best-metric: make it the task's main metric, the one that keeps the best model, stops early and
    is saved in bertkit.json; names ending in loss or perplexity are lower-is-better. A name the
    evaluations of `eval_set` will not report is refused (check_best_metric_reported)."""
    name = config.best_metric
    if not name or getattr(task, "best_metric_applied", None) == name:  # commands apply it before train() does
        return
    if name == task.main_metric:
        config.best_metric = ""  # saved as "the task's own", so a resume with or without the flag agrees
        return
    check_best_metric_reported(task, config, eval_set)
    task.main_metric = name
    task.greater_is_better = not name.rsplit("/", 1)[-1].endswith(("loss", "perplexity"))
    task.best_metric_applied = name


def check_best_metric_reported(task, config: TrainConfig, eval_set: tuple[list, list] | None) -> None:
    """Refuse a --best-metric that the evaluations will not report, before any training: the names
    come from metrics() of placeholder predictions for the dev examples (the first evaluation checks
    again, with the model's own)."""
    name = config.best_metric
    if not name or eval_set is None or config.eval_every == "none":
        return
    examples = eval_set[0]
    try:
        reported = set(task.metrics(examples, task.placeholder_predictions(examples)))
    except Exception:  # noqa: BLE001 - what is wrong with the dev data is the evaluation's to say
        return
    # Losses come from the model's outputs, not from metrics(): `loss`, or `<task>/loss` per task.
    if getattr(task, "reports_loss", True):
        reported.add("loss")
    reported |= {key.split("/")[0] + "/loss" for key in reported if "/" in key}
    if name not in reported:
        import difflib

        close = difflib.get_close_matches(name, sorted(reported), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"--best-metric {name}: the evaluations of this run report "
                         f"{', '.join(sorted(reported))}{hint}")


def is_better(value: float, best: float | None, greater: bool) -> bool:
    """NaN (a diverged model's loss or correlation) is worse than any number, so that a NaN first
    evaluation cannot stay the best forever."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or (value > best if greater else value < best)


@dataclass
class TrainerState:
    """What, besides model/optimizer tensors, a checkpoint must hold to continue exactly."""

    global_step: int = 0
    epoch: int = 0
    examples_in_epoch: int = 0  # examples of the current epoch already consumed (data position)
    best_metric: float | None = None
    best_step: int | None = None
    skipped_steps: int = 0  # optimizer steps skipped because the loss or gradients were not finite
    fingerprint: str = ""
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)  # eval results so far
    # Flags that decide the data order or the optimizer's state: a resume must keep them
    # (`resume_conflicts`). Empty in checkpoints written before they were recorded.
    settings: dict[str, Any] = field(default_factory=dict)
    # Training loss summed since the last log line (mean over ranks) and the steps in it, so that a
    # resumed run logs the same averages as an uninterrupted one.
    pending_loss: tuple[float, int] = (0.0, 0)


def resume_settings(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The flags a checkpoint was trained with that matter to a resume (see RESUME_FIXED)."""
    return {"seed": config.seed, "global_batch": config.batch_size * world_size, "grad_accum": config.grad_accum,
            "group_by_length": config.group_by_length, "lr": config.lr, "weight_decay": config.weight_decay,
            "optimizer": config.optimizer, "best_metric": config.best_metric, "keep_best": config.keep_best}


# A resume cannot change these: the seed and length grouping decide which examples the rest of the
# epoch holds (another seed re-visits some and skips others), and the learning rate and AdamW
# settings live in the restored optimizer state. The batch may change where it divides the
# position reached (fewer processes, say).
# The best model so far and the early-stopping count were judged by --best-metric, so it is fixed too,
# and so is --keep-last (a run that kept no best model cannot start keeping one halfway).
RESUME_FIXED = ("seed", "group_by_length", "lr", "weight_decay", "optimizer", "best_metric", "keep_best")


def resume_conflicts(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    if saved and "best_metric" not in saved:  # written before --best-metric existed: the task's own metric
        saved = {**saved, "best_metric": ""}
    if saved and "keep_best" not in saved:  # written before --keep-last existed
        saved = {**saved, "keep_best": True}
    return [f"{name} {saved[name]!r} (now {now[name]!r})" for name in RESUME_FIXED
            if name in saved and saved[name] != now[name]]


# ---- checkpoints -----------------------------------------------------------------------------------
def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A directory is complete only once renamed from *.tmp and
    holding its state file, so a crash mid-write can never be picked up by --resume."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
             and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def ended_with_best(output_dir: Path) -> set[int]:
    """Best steps named by the "end" records of log.jsonl: a run that ended promoted that step's
    model to the run directory."""
    path = output_dir / "log.jsonl"
    if not path.is_file():
        return set()
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip())
    return {r.get("best_step") for r in records if r.get("event") == "end"}


def check_output_dir(config: TrainConfig) -> list[Path]:
    """The complete checkpoints in config.output_dir; refuses a fresh run (no --resume) where an
    earlier run left checkpoints, unless --overwrite-output-dir. Training on would interleave the
    two runs' checkpoints: pruning keeps the highest step numbers, so the old, later steps would
    survive and a later --resume would bring back the old model."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a directory; give a directory path for the run")
    found = checkpoint_dirs(output_dir)
    if found and not config.resume and not config.overwrite_output_dir:
        raise ValueError(
            f"--output-dir {output_dir} holds checkpoints of an earlier run "
            f"({', '.join(p.name for p in found)}): continue it with --resume, or start afresh with "
            f"--overwrite-output-dir (deletes them), or pick a new --output-dir")
    return found


def save_checkpoint(output_dir: Path, model, optimizer, scheduler, scaler, state: TrainerState,
                    info: DistInfo, keep: int, describe: Callable[[Path], None] | None = None) -> None:
    """checkpoints/step-N: model.pt, training.pt (optimizer, schedule, scaler, every rank's RNG)
    and the trainer state; `describe(directory)` adds config.json, tokenizer files and bertkit.json,
    so that `--model RUN/checkpoints/step-N` evaluates, predicts, converts or fine-tunes from it."""
    rng_states = distributed.all_gather_objects(rng_state(), info)  # every rank's RNG, in rank order
    # Unsharded (gathered to rank 0 under FSDP2), so that any run layout can resume from it.
    model_state = distributed.full_state_dict(model, info)
    optimizer_state = distributed.full_optimizer_state(model, optimizer, info)
    if not info.is_main:
        distributed.barrier()
        return
    root = output_dir / "checkpoints"
    final = root / f"step-{state.global_step}"
    tmp = root / f"step-{state.global_step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save(model_state, tmp / "model.pt")
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng_states}, tmp / "training.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
        if describe is not None:
            describe(tmp)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError of its zip writer
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free if root.is_dir() else 0
        raise OSError(f"could not write the checkpoint {final} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                      f"{free / 2**30:.2f} GiB free on that disk. The earlier checkpoints are intact: free space "
                      f"(or lower --keep-checkpoints) and rerun with --resume") from err
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler, info: DistInfo) -> TrainerState:
    distributed.load_full_state_dict(model, torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    blob = torch.load(path / "training.pt", map_location="cpu", weights_only=False)
    distributed.load_full_optimizer_state(model, optimizer, blob["optimizer"])
    # Loading restores the saved param groups' implementation flags too: a checkpoint of an
    # unfused AdamW (FSDP, or a CPU run of an earlier version) made this run's fused one step as a
    # loop, which refuses the found_inf that optimizer_step gives a fused optimizer. The
    # implementation is this run's choice, not the checkpoint's.
    for group in optimizer.param_groups:
        for flag in ("fused", "foreach"):
            if flag in optimizer.defaults:
                group[flag] = optimizer.defaults[flag]
    scheduler.load_state_dict(blob["scheduler"])
    # The restored rates are the saved schedule's; a run resumed to train longer (a higher
    # --max-steps) takes the next step's rate from this run's schedule instead.
    for group, base, rate in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * rate(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if scaler is not None and blob["scaler"] is not None:
        scaler.load_state_dict(blob["scaler"])
    rngs = blob["rng"]
    # Same world size: each rank continues its own random stream. Otherwise rank r takes rank r's
    # stream where one was saved (dropout masks then differ from the original run, the data does not).
    set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


# ---- evaluation --------------------------------------------------------------------------------------
def predict_features(task, model: nn.Module, features: Sequence[dict], batch_size: int,
                     device: torch.device, precision: str = "fp32",
                     info: DistInfo | None = None) -> list[Any]:
    """Per-feature outputs (task.gather_outputs) for every feature, in input order. With several
    ranks each evaluates a contiguous slice and the slices are gathered, so the result covers
    exactly the features given (no padding duplicates when the size does not divide)."""
    return _predict(task, model, features, batch_size, device, precision, info)[0]


@torch.no_grad()
def _predict(task, model: nn.Module, features: Sequence[dict], batch_size: int, device: torch.device,
             precision: str = "fp32", info: DistInfo | None = None) -> tuple[list[Any], float | None]:
    """predict_features' outputs, and the model's loss over the features where their batches carry
    labels: the training objective's mean over every feature (or every labelled token, for a loss
    averaged over tokens), not a mean of batch means; None without labels."""
    info = info or DistInfo(device=device)
    n = len(features)
    per_rank = math.ceil(n / info.world_size)
    start, stop = min(n, info.rank * per_rank), min(n, (info.rank + 1) * per_rank)
    mine = list(range(start, stop))
    # Sorting by length makes eval batches nearly pad-free; results are put back in input order.
    mine.sort(key=lambda i: task.feature_length(features[i]))
    collate = layout_collate(task)
    was_training = model.training
    model.eval()
    outputs: dict[int, Any] = {}
    loss_weights = getattr(unwrap(model), "loss_weights", None)
    loss_sums = loss_totals = None  # [n_terms] on the device, summed over this rank's batches
    # Every rank runs the same number of forward passes (sharded models run collectives in
    # forward); a rank with a shorter slice repeats a feature and discards the result.
    n_batches = math.ceil(per_rank / batch_size) if info.enabled else math.ceil(len(mine) / batch_size)
    for b in range(n_batches):
        idx = mine[b * batch_size:(b + 1) * batch_size]
        padding = not idx
        batch = move_to(collate([features[i] for i in (idx or [0])]), device)
        with autocast_context(precision, device):
            out = model(**batch)
        if padding:
            continue
        for i, item in zip(idx, task.gather_outputs(batch, out)):
            outputs[i] = item
        if out.loss is not None:
            weights = loss_weights(batch) if loss_weights is not None else None
            if weights is None or out.loss_sums is None:  # a mean over the batch's rows
                sums, weights = out.loss.float()[None] * len(idx), torch.tensor([float(len(idx))], device=device)
            else:
                sums = out.loss_sums.float()
            loss_sums = sums if loss_sums is None else loss_sums + sums
            loss_totals = weights.float() if loss_totals is None else loss_totals + weights
    model.train(was_training)
    mine_loss = None if loss_sums is None else (loss_sums.tolist(), loss_totals.tolist())
    gathered = distributed.all_gather_objects((outputs, mine_loss), info)
    merged: dict[int, Any] = {}
    for part, _ in gathered:
        merged.update(part)
    losses = [np.array(part) for _, part in gathered if part is not None]
    loss = None
    if losses:
        sums, totals = np.sum(losses, axis=0)
        # Each term's mean (MLM over masked tokens, NSP over pairs, ...) as in training, summed.
        loss = float(sum(s / t for s, t in zip(sums, totals) if t > 0))
    return [merged[i] for i in range(n)], loss


def evaluate(task, model: nn.Module, examples: list, features: list[dict], batch_size: int,
             device: torch.device, precision: str = "fp32", info: DistInfo | None = None
             ) -> tuple[dict[str, float], list[Any]]:
    """Metrics and per-example predictions of `model` on one split. The metrics include `loss`, the
    training objective on the split, where its features carry labels and the task reports no loss
    of its own (see Task.reports_loss)."""
    outputs, loss = _predict(task, model, features, batch_size, device, precision, info)
    predictions = task.postprocess(examples, features, outputs)
    metrics = task.metrics(examples, predictions)
    if loss is not None and getattr(task, "reports_loss", True):
        metrics["loss"] = loss
    return metrics, predictions


# ---- logging ------------------------------------------------------------------------------------------
class RunLog:
    """log.jsonl writer and console progress: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, enabled: bool, progress: bool):
        self.enabled = enabled
        self.path = output_dir / "log.jsonl"
        self.bar = None
        if enabled and start_step > 0 and self.path.is_file():
            # A resumed run redoes the steps after its checkpoint: their old records would appear twice.
            # A finished run's "end" record is written again when it ends again.
            records = [json.loads(line) for line in self.path.read_text(encoding="utf-8").split("\n") if line]
            kept = [json.dumps(r) for r in records if r.get("step", 0) <= start_step and r.get("event") != "end"]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        if enabled and progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if "loss" in record:
            text = f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['samples_per_s']:.0f} samples/s"
            if self.bar is not None:
                self.bar.set_postfix_str(text)
            else:
                print(f"step {record['step']}: {text}", file=sys.stderr, flush=True)
        elif "eval" in record:
            shown = {k: round(v, 4) for k, v in record["eval"].items() if isinstance(v, (int, float))}
            (self.bar.write if self.bar is not None else lambda s: print(s, file=sys.stderr))(
                f"eval at step {record['step']}: {shown}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_curves(output_dir: Path, main_metric: str | None) -> None:
    """curves.png: training loss and the eval metric over steps, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval"].get(main_metric)) for r in records
             if "eval" in r and main_metric and isinstance(r["eval"].get(main_metric), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", label=f"eval {main_metric}", color="tab:orange")
        ax2.set_ylabel(main_metric)
    fig.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # room above the axes for the legend
    fig.savefig(output_dir / "curves.png", dpi=100)
    plt.close(fig)


# ---- the loop ----------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    state: TrainerState
    final_metrics: dict[str, float] | None
    model: nn.Module
    model_kept: bool = False  # the run directory's model was left as it was (promoted by an earlier invocation)


def train(task, model: nn.Module, train_features: Sequence[dict], eval_set: tuple[list, list] | None,
          config: TrainConfig, info: DistInfo | None = None, save_model=None,
          stop_after_steps: int | None = None) -> TrainResult:
    """Train `model` on `train_features`, evaluating on `eval_set` = (examples, features).

    save_model(model, directory) writes the HF-format model (+ tokenizer, bertkit.json); the
    caller provides it because it knows the tokenizer and the task description.
    stop_after_steps stops early (as if killed) without finishing: used by resume tests.
    """
    apply_best_metric(task, config, eval_set)
    info = info or distributed.setup(config.device)
    device = info.device
    output_dir = Path(config.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    n = len(train_features)
    if n == 0:
        raise ValueError("the training set is empty")
    global_batch = config.batch_size * info.world_size
    lengths = ([task.feature_length(f) for f in train_features] if config.group_by_length else None)
    def steps_in_epoch(epoch: int) -> int:
        return math.ceil(len(global_batches_of_epoch(task, lengths, n, config, epoch, global_batch, info))
                         / config.grad_accum)

    steps_per_epoch = steps_in_epoch(0)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n} training examples make no optimizer step with --batch-size {config.batch_size} x "
            f"{info.world_size} processes: every process needs at least one example; run on fewer processes")
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    if not config.max_steps and getattr(task, "epoch_examples", lambda epoch: None)(0) is not None:
        whole = int(config.epochs)  # epochs of different sizes: count each one's steps
        total_steps = sum(steps_in_epoch(e) for e in range(whole))
        if config.epochs > whole:
            total_steps += math.ceil((config.epochs - whole) * steps_in_epoch(whole))

    apply_model_settings(model, config)
    model.to(device)
    if config.fsdp:
        distributed.wrap_fsdp(model, info)
    optimizer = build_optimizer(model, config, device)
    scheduler = build_scheduler(optimizer, config, total_steps)
    # --stop-at-step (NVIDIA's --max_steps in fine-tuning, --steps_this_run in pre-training): the run
    # ends early, while the learning rate follows the schedule of all total_steps.
    end_step = min(total_steps, config.stop_at_step) if config.stop_at_step else total_steps
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None

    state = TrainerState(fingerprint=data_fingerprint(train_features), world_size=info.world_size,
                         settings=resume_settings(config, info.world_size))
    saved_settings: dict[str, Any] | None = None  # those of the checkpoint a resume continues
    found = check_output_dir(config)
    distributed.barrier()  # every rank has looked before the main one may delete
    if config.resume:
        # Every rank loads the checkpoint rank 0 wrote. With --output-dir on each machine's own disk
        # the others find none (or an older one) and train from another step: on 2 machines rank 1
        # started from step 0 beside rank 0's step 8, mixing the two runs' gradients, then hung.
        seen = distributed.all_gather_objects(found[-1].name if found else None, info)
        differs = [rank for rank, name in enumerate(seen) if name != seen[0]]
        if differs:
            raise ValueError(
                f"--resume: the processes see different checkpoints in {output_dir / 'checkpoints'} (rank 0: "
                f"{seen[0] or 'none'}, rank {differs[0]}: {seen[differs[0]] or 'none'}); put --output-dir on a "
                f"file system every machine sees (NFS, Lustre, ...), so that all resume from rank 0's checkpoint")
    if found and not config.resume:
        if info.is_main:
            shutil.rmtree(output_dir / "checkpoints")
            shutil.rmtree(output_dir / "best", ignore_errors=True)
        distributed.barrier()
    if config.resume:
        if found:
            saved = json.loads((found[-1] / STATE_FILE).read_text())
            saved_fingerprint, saved_step = saved["fingerprint"], saved["global_step"]
            if saved_fingerprint != state.fingerprint:
                raise ValueError(
                    f"--resume: {found[-1]} was written for other training data (fingerprint "
                    f"{saved_fingerprint}, now {state.fingerprint}); use the same data or a new --output-dir")
            if saved_step > total_steps:
                raise ValueError(
                    f"--resume: {found[-1]} is at step {saved_step}, past the {total_steps} steps this run "
                    f"trains for (--max-steps / --epochs); it belongs to a longer run")
            changed = resume_conflicts(saved.get("settings") or {}, state.settings)
            if changed:
                raise ValueError(f"--resume: {found[-1]} was trained with {', '.join(changed)}; a resumed run must "
                                 f"keep these flags (they decide the data order and the optimizer state). Give the "
                                 f"saved values, or start a new run in another --output-dir")
            now = state.settings
            state = load_checkpoint(found[-1], model, optimizer, scheduler, scaler, info)
            saved_settings = state.settings
            state.world_size, state.settings = info.world_size, now
        else:
            if info.is_main:
                print(f"--resume: no complete checkpoint in {output_dir / 'checkpoints'}; starting fresh",
                      file=sys.stderr)
                (output_dir / "log.jsonl").unlink(missing_ok=True)  # the old records would appear twice
    elif info.is_main and (output_dir / "log.jsonl").exists():
        (output_dir / "log.jsonl").unlink()  # a fresh run: do not append to an old run's log

    train_model: nn.Module = model
    ddp_model = None
    if info.enabled and not config.fsdp:
        # Heads that ignore the pooler leave parameters without gradients; DDP must know.
        unused = getattr(task, "head", "") in ("token_classification", "question_answering", "polyphone", "pretraining",
                                                  "multitask")
        train_model = ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused)
    graphs = config.compile and config.compile_mode in GRAPH_MODES and device.type == "cuda"
    skips_before = cudagraph_skips() if graphs else None  # checked once, after the first step
    if config.compile:
        train_model = torch.compile(train_model, dynamic=True, mode=config.compile_mode)

    promoted_before = state.best_step is not None and state.best_step in ended_with_best(output_dir)
    log = RunLog(output_dir, end_step, state.global_step, info.is_main, config.progress)
    if info.is_main and state.global_step == 0:
        log.write({"event": "start", "examples": n, "total_steps": total_steps, "world_size": info.world_size,
                   "global_batch": global_batch * config.grad_accum, "device": str(device),
                   "precision": config.precision})
    eval_steps = int(config.eval_every) if config.eval_every.isdigit() else 0
    needs_rng = getattr(task, "collate_needs_rng", False)
    best_dir = output_dir / "best"

    def run_eval(epoch: int) -> dict[str, float] | None:
        if eval_set is None:
            return None
        metrics, _ = evaluate(task, unwrap(model), eval_set[0], eval_set[1], config.eval_batch_size,
                              device, config.precision, info)
        record = {"step": state.global_step, "epoch": epoch, "eval": metrics}
        if config.best_metric and config.best_metric not in metrics:
            log.write(record)
            raise ValueError(f"--best-metric {config.best_metric}: the evaluation at step {state.global_step} has no "
                             f"such metric; it has {', '.join(sorted(metrics))}")
        state.history.append(record)
        log.write(record)
        value = metrics.get(task.main_metric)
        if value is not None and is_better(value, state.best_metric, task.greater_is_better):
            state.best_metric, state.best_step = float(value), state.global_step
            if not config.keep_best:  # --keep-last: the best step is recorded, its model is not kept
                return metrics
            plain = distributed.full_model(model, info) if config.fsdp else unwrap(model)
            if info.is_main and save_model is not None:
                tmp, old = output_dir / "best.tmp", output_dir / "best.old"
                shutil.rmtree(tmp, ignore_errors=True)
                save_model(plain, tmp)
                if best_dir.is_dir():  # renamed, not deleted, so that a kill here leaves a best model
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(best_dir, old)
                os.replace(tmp, best_dir)
                shutil.rmtree(old, ignore_errors=True)
        return metrics

    def checkpoint() -> None:
        settle_skipped()
        state.pending_loss = (distributed.all_reduce_mean(loss_sum, info).item(), loss_count)
        describe = (lambda directory: save_model(unwrap(model), directory, weights=False)) if save_model else None
        save_checkpoint(output_dir, model, optimizer, scheduler, scaler, state, info, config.keep_checkpoints,
                        describe)
        saved_steps.add(state.global_step)

    saved_steps: set[int] = set()
    if info.is_main and not best_dir.is_dir() and (output_dir / "best.old").is_dir():
        os.replace(output_dir / "best.old", best_dir)  # killed between the two renames in run_eval

    train_model.train()
    loss_weights = getattr(unwrap(model), "loss_weights", None)
    # Listed once: walking the module tree for clipping costs host time in every step of a
    # launch-bound fine-tune (about 0.2 ms for BERT-base's 201 tensors).
    clipped_parameters = list(model.parameters())
    loss_sum = torch.tensor(state.pending_loss[0], device=device)  # summed on device: no host sync per micro-step
    skipped_pending = torch.zeros((), device=device)  # skipped steps not yet added to state (read at logs/saves)

    def settle_skipped() -> None:
        state.skipped_steps += int(skipped_pending.item())
        skipped_pending.zero_()
    loss_count, t_last, samples_since = state.pending_loss[1], time.perf_counter(), 0
    stopped_early = False

    def patience_exhausted(logged: bool = True) -> bool:
        """--early-stopping-patience: derived from the evaluation history, so that a resumed run
        stops where the uninterrupted one did (and a stopped run resumed does not train on)."""
        patience = config.early_stopping_patience
        if not patience or evaluations_since_best(state) < patience:
            return False
        if info.is_main:
            best = "no evaluation gave a number" if state.best_step is None else (
                f"best {state.best_metric:.4f} at step {state.best_step}")
            print(f"early stop at step {state.global_step}: {task.main_metric} did not improve in the last "
                  f"{patience} evaluation{'s' if patience > 1 else ''} ({best})", file=sys.stderr)
            if logged:
                log.write({"event": "early_stop", "step": state.global_step, "best_step": state.best_step,
                           "patience": patience})
        return True

    out_of_patience = patience_exhausted(logged=False)  # a resumed run that had stopped: logged then
    while state.global_step < end_step and not out_of_patience:
        epoch_batches = global_batches_of_epoch(task, lengths, n, config, state.epoch, global_batch, info)
        epoch_examples = sum(len(g) for g in epoch_batches)
        # Seek to the saved data position: skip the batches already consumed (nothing is loaded).
        start, first, consumed = state.examples_in_epoch, 0, 0
        while first < len(epoch_batches) and consumed < start:
            consumed += len(epoch_batches[first])
            first += 1
        if consumed != start:
            saved_batch = (saved_settings or {}).get("global_batch")
            raise ValueError(
                f"--resume: the checkpoint stopped {start} examples into epoch {state.epoch}, which is not a "
                f"whole number of global batches of {global_batch} (--batch-size {config.batch_size} x "
                f"{info.world_size} processes); resume with a global batch that divides {start}"
                + (f", such as the run's own {saved_batch} (--batch-size x processes)" if saved_batch else ""))
        global_batches = epoch_batches[first:]
        # Examples in each optimizer step: the epoch's last step may hold fewer micro-batches, or a
        # short last batch, and every micro-batch's loss is weighted by its share of its step.
        step_sizes = [sum(len(g) for g in global_batches[k:k + config.grad_accum])
                      for k in range(0, len(global_batches), config.grad_accum)]
        my_batches = [np.array_split(g, info.world_size)[info.rank] for g in global_batches]
        seeds = ([hash((config.seed, state.epoch, first + k, info.rank)) % 2**63
                  for k in range(len(my_batches))] if needs_rng else None)
        loader = iter(make_loader(train_features, my_batches, task, config, device, seeds, state.epoch))
        # `first` is a step boundary: a checkpoint is only written after an optimizer step.
        for step_index, step_size in enumerate(step_sizes):
            step_groups = global_batches[step_index * config.grad_accum:(step_index + 1) * config.grad_accum]
            # The step's micro-batches are all loaded first: a loss averaged over tokens needs their
            # token counts (over every process) before the first backward.
            step_batches = [next(loader) for _ in step_groups]
            term_scales = loss_term_scales(loss_weights, step_batches, info, device)
            step_batches = [move_to(batch, device) for batch in step_batches]
            for micro, (batch, g) in enumerate(zip(step_batches, step_groups)):
                boundary = micro == len(step_groups) - 1
                sync = (contextlib.nullcontext() if boundary or not info.enabled
                        else distributed.no_sync(ddp_model if ddp_model is not None else model))
                if graphs:  # outputs of the last replay (loss, logits) are not read after this point
                    torch.compiler.cudagraph_mark_step_begin()
                with sync:
                    with autocast_context(config.precision, device):
                        out = train_model(**batch)
                    if term_scales is not None:
                        # Each term summed over this micro-batch's tokens x (ranks / the step's tokens on
                        # all ranks): DDP's average over ranks and the sum over micro-batches then give
                        # the mean over every token of the step, as one batch on one process would.
                        loss = (out.loss_sums.float() * term_scales).sum()
                    else:
                        # Each rank's mean loss x (its examples x ranks / the step's examples): the
                        # same sum over micro-batches and average over ranks give the mean over the
                        # step's examples.
                        local = len(np.array_split(g, info.world_size)[info.rank])
                        loss = out.loss * (local * info.world_size / step_size)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += loss.detach()
                samples_since += len(g)
                state.examples_in_epoch += len(g)
            del step_batches, batch, out, loss
            if scaler is not None:
                scaler.unscale_(optimizer)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            clip = clip_each_tensor if config.clip_per_tensor else torch.nn.utils.clip_grad_norm_
            grad_norm = distributed.to_local_scalar(clip(clipped_parameters, max_norm))
            skipped_pending += optimizer_step(optimizer, scaler, grad_norm, sharded=config.fsdp)
            optimizer.zero_grad(set_to_none=True)
            step_lr = scheduler.get_last_lr()[0]  # the rate this step used; step() moves to the next one
            scheduler.step()
            state.global_step += 1
            loss_count += 1
            log.advance()
            if skips_before is not None:  # after the first step, forward and backward are compiled
                message = cudagraph_skip_warning(skips_before, config.compile_mode)
                skips_before = None
                if message and info.is_main:
                    print(message, file=sys.stderr)
                    log.write({"event": "warning", "step": state.global_step, "message": message})

            if state.global_step % config.log_every == 0 or state.global_step == end_step:
                settle_skipped()
                mean_loss = distributed.all_reduce_mean(loss_sum / max(loss_count, 1), info).item()
                now = time.perf_counter()
                log.write({"step": state.global_step, "epoch": state.epoch, "loss": mean_loss,
                           "lr": step_lr, "grad_norm": float(grad_norm),
                           "samples_per_s": samples_since / max(now - t_last, 1e-9),
                           "skipped_steps": state.skipped_steps})
                loss_sum.zero_()
                loss_count, t_last, samples_since = 0, now, 0
            evaluated = bool(eval_steps and state.global_step % eval_steps == 0 and eval_set is not None)
            if evaluated:
                run_eval(state.epoch)
            if (state.global_step % config.save_every == 0 if config.save_every else evaluated):
                checkpoint()
            if evaluated and patience_exhausted():
                out_of_patience = True
                break
            if stop_after_steps is not None and state.global_step >= stop_after_steps:
                stopped_early = True
                break
            if state.global_step >= end_step:
                break
        if stopped_early:
            break
        if state.examples_in_epoch >= epoch_examples:  # epoch finished
            state.epoch += 1
            state.examples_in_epoch = 0
            if config.eval_every == "epoch" and eval_set is not None:
                run_eval(state.epoch - 1)
                out_of_patience = patience_exhausted()
                if not config.save_every and state.global_step < end_step and not out_of_patience:
                    checkpoint()  # at the end of the run, the final checkpoint below

    log.close()
    settle_skipped()
    if stopped_early:
        return TrainResult(state, None, unwrap(model))
    if config.eval_every != "none" and eval_set is not None and (
            not state.history or state.history[-1]["step"] != state.global_step):
        run_eval(state.epoch if state.examples_in_epoch else state.epoch - 1)
    if state.global_step not in saved_steps and not (
            found and config.resume and int(found[-1].name.split("-")[1]) == state.global_step):
        checkpoint()  # the last one, unless this step was just saved (or resumed from)
    final_metrics, model_kept = None, False
    # Rank 0's disk decides which model the run directory gets; under FSDP the other ranks must know,
    # since gathering this model to save it is a collective.
    # --keep-last: the model as trained; the best step stays in metrics.json as information.
    from_best_dir = config.keep_best and state.best_step is not None and best_dir.is_dir()
    kept_earlier = config.keep_best and state.best_step is not None and promoted_before and \
        (output_dir / "config.json").is_file()
    saves_this_model = distributed.broadcast_object(not (from_best_dir or kept_earlier), info)
    plain = distributed.full_model(model, info) if config.fsdp and saves_this_model else unwrap(model)
    if info.is_main:
        # The run directory's model is the best one seen in evaluation (or the last without eval).
        if from_best_dir:
            for item in best_dir.iterdir():
                target = output_dir / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                shutil.copy2(item, target) if item.is_file() else shutil.copytree(item, target)
            shutil.rmtree(best_dir)  # promoted to the run directory; no second copy of the weights
            final_metrics = next(r["eval"] for r in state.history if r["step"] == state.best_step)
        elif kept_earlier:
            # Promoted at the end of an earlier invocation (a finished run resumed, or trained on with
            # no better evaluation since): the run directory already holds the best model.
            print(f"the run directory keeps the best model (step {state.best_step}), promoted earlier",
                  file=sys.stderr)
            final_metrics = next(r["eval"] for r in state.history if r["step"] == state.best_step)
            model_kept = True
        else:
            if state.best_step is not None and config.keep_best:  # best/ is gone (a copied checkpoint, deleted)
                last = state.history[-1]
                print(f"warning: the best model (step {state.best_step}) is not in {best_dir}; the run directory "
                      f"gets the last evaluated one (step {last['step']})", file=sys.stderr)
                state.best_step, state.best_metric = last["step"], last["eval"].get(task.main_metric)
            if save_model is not None:
                save_model(plain, output_dir)
            final_metrics = state.history[-1]["eval"] if state.history else None
        log.write({"event": "end", "step": state.global_step, "best_step": state.best_step,
                   "best_metric": state.best_metric, "skipped_steps": state.skipped_steps})
        try:
            plot_curves(output_dir, getattr(task, "main_metric", None))
        except Exception as err:  # a plotting problem must not lose a finished run
            print(f"warning: could not write curves.png: {err}", file=sys.stderr)
    distributed.barrier()
    return TrainResult(state, final_metrics, unwrap(model), model_kept)
