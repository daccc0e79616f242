"""Multi-task fine-tuning: one shared encoder, one head per task (hard parameter sharing).

    bertkit finetune --task sst2 --task rte --task stsb --task mrpc --model M \
        --data-dir glue_data --output-dir O [--task-sampling proportional|uniform|temperature]

Batches. Every training micro-batch holds examples of ONE task. An epoch is
`sum_t ceil(n_t / b_t)` micro-batches (n_t training features, b_t the task's batch size), and the
task of each micro-batch is drawn from the sampling distribution, per batch:
    proportional  p_t = n_t / sum_s n_s
    uniform       p_t = 1 / K
    temperature   p_t = n_t^(1/T) / sum_s n_s^(1/T)   (T = 1 is proportional, T -> inf uniform)
Each task walks through its own shuffled order; a task that runs out within an epoch starts a new
shuffled pass of its own data (the other tasks go on), so no task ever runs dry. The plan is a
function of (seed, epoch) alone, which is what the trainer needs for exact resume.

Evaluation. The eval set is every task's dev split; a batch may mix tasks: the encoder runs once on
the whole batch and each row goes through its own task's head. Metrics come back as
`<task>/<metric>` plus `average`, the mean of the tasks' main metrics (the run's main metric).

Run directory. One model.safetensors holds the encoder under Hugging Face's names (`bert.*`, so
`transformers.AutoModel.from_pretrained(dir)` loads it) and every head under
`heads.<task>.classifier.*`; bertkit.json lists `tasks` and `heads: {task: {head, labels,
num_labels, ...}}`. `load_head_model` rebuilds one task's `BertForSequenceClassification` from it
(what `bertkit evaluate/predict --task T --model DIR` use).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bertkit.config import ModelConfig
from bertkit.modeling.bert import BertModel, init_bert_weights
from bertkit.modeling.heads import ModelOutput, _cross_entropy, _dropout, pooled_output
from bertkit.tasks.base import Task, pad_sequences

# Heads a shared-encoder run supports: both read the pooled [CLS] vector, so one encoder pass
# serves a batch that mixes tasks.
SUPPORTED_HEADS = ("sequence_classification", "regression")
SAMPLING = ("proportional", "uniform", "temperature")


# ---- model ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadSpec:
    """One task's head, as saved in bertkit.json under `heads`."""

    task: str  # canonical task name; also the module key (heads.<task>.*)
    head: str  # "sequence_classification" | "regression"
    num_labels: int  # outputs of the head (1 for regression)
    labels: list[str] | None  # class names in index order (None for regression)
    problem_type: str  # "single_label_classification" | "regression"

    @classmethod
    def from_task(cls, task: Task) -> "HeadSpec":
        if task.head not in SUPPORTED_HEADS:
            raise ValueError(f"--task {task.name}: its head is {task.head!r}; multi-task training supports "
                             f"tasks with a {' or '.join(SUPPORTED_HEADS)} head (GLUE-style tasks)")
        updates = task.model_config_updates()
        return cls(task=task.name, head=task.head, num_labels=int(updates["num_labels"]),
                   labels=task.label_names(), problem_type=updates["problem_type"])


class SequenceHead(nn.Module):
    """Pooled [CLS] -> dropout -> Linear(H, C): BertForSequenceClassification's head, with its
    parameter names (`classifier.*`) so that one head plus the encoder loads as that class."""

    def __init__(self, config: ModelConfig, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, spec.num_labels)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pooled [N,H], labels [N] (class index or score, any dtype) -> logits [N,C], loss."""
        logits = self.classifier(self.dropout(pooled))  # [N,C]
        if labels is None:
            return logits, None
        if self.spec.problem_type == "regression":
            return logits, F.mse_loss(logits[:, 0].float(), labels.float().view(-1))
        return logits, _cross_entropy(logits, labels.view(-1).long())


class MultiTaskModel(nn.Module):
    """A shared `BertModel` (`bert`) and one `SequenceHead` per task (`heads[task]`)."""

    def __init__(self, config: ModelConfig, specs: Sequence[HeadSpec]):
        super().__init__()
        if not specs:
            raise ValueError("MultiTaskModel needs at least one task head")
        self.config = config
        self.specs = list(specs)
        self.task_names = [s.task for s in specs]
        self.max_labels = max(s.num_labels for s in specs)
        self.bert = BertModel(config)
        self.heads = nn.ModuleDict({s.task: SequenceHead(config, s) for s in specs})
        self.heads.apply(lambda m: init_bert_weights(m, config))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                task: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                single_task: int | None = None, **layout: torch.Tensor) -> ModelOutput:
        """input_ids [B,T] (+ mask/types [B,T]); task [B]: index into `task_names` per row;
        labels [B]; single_task: the task index when every row has it (collate sets it; it saves
        a device->host sync per training step) -> logits [B, max_labels] (row r's first
        num_labels(task r) columns are its logits, the rest NaN) and the loss: the mean over rows
        of each row's task loss."""
        if task is None:
            raise ValueError("MultiTaskModel.forward needs `task` [B]: the task index of every row")
        pooled = pooled_output(self.bert, input_ids, attention_mask, token_type_ids, position_ids, **layout)  # [B,H]
        B = pooled.shape[0]
        logits = torch.full((B, self.max_labels), float("nan"), device=pooled.device)
        if single_task is not None:  # every training batch: no row gathering
            out, loss = self.heads[self.task_names[single_task]](pooled, labels)
            logits[:, :out.shape[1]] = out.float()
            return ModelOutput(loss=loss, logits=logits)
        present = torch.unique(task).tolist()
        losses = []
        for k in present:
            rows = (task == k).nonzero(as_tuple=True)[0]  # [N_k]
            out, loss = self.heads[self.task_names[int(k)]](pooled[rows], labels[rows] if labels is not None else None)
            logits[rows, :out.shape[1]] = out.float()
            if loss is not None:
                losses.append(loss * (len(rows) / B))  # weighted so the total is a per-row mean
        return ModelOutput(loss=sum(losses) if losses else None, logits=logits)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, specs: Sequence[HeadSpec]) -> "MultiTaskModel":
        """Encoder weights from any checkpoint bertkit reads; heads from `heads.<task>.*` when the
        checkpoint is a multi-task run with the same task, else newly initialised (and logged)."""
        from bertkit.modeling import checkpoints

        path = checkpoints.resolve_model_path(path_or_hub_id)
        kind, file = checkpoints.find_weights(path)
        config = checkpoints.read_config(file if kind != "tf" else file.parent)
        state = checkpoints.to_bertkit_names(checkpoints.load_state_dict(file))
        checkpoints.check_consistency(config, state, file)
        model = checkpoints.uninitialised(lambda: cls(config, specs))
        checkpoints.load_into(model, state, file)
        return model

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, weights: bool = True) -> Path:
        """config.json (the encoder's, as a plain BertModel) + one model.safetensors with the
        encoder (`bert.*`) and every head (`heads.<task>.classifier.*`) + tokenizer files;
        weights=False leaves out model.safetensors (a training checkpoint has its model.pt)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # The heads' label sets live in bertkit.json; config.json describes the shared encoder only,
        # so a base checkpoint's id2label must not leak into it.
        self.config.replace(architectures=["BertModel"], num_labels=2, id2label=None,
                            problem_type=None).save(directory)
        if weights:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        return directory


def load_head_model(model_dir: str | Path, task_name: str, task: Task) -> nn.Module:
    """The single-task model of `task_name` from a multi-task run directory: a
    BertForSequenceClassification holding the shared encoder and that task's head weights."""
    from bertkit.commands.common import BERTKIT_JSON, read_run_info
    from bertkit.modeling import checkpoints
    from bertkit.modeling.heads import model_class_for_head

    saved = read_run_info(str(model_dir))
    heads = saved.get("heads") or {}
    if task_name not in heads:
        raise ValueError(f"--task {task_name}: {Path(model_dir) / BERTKIT_JSON} has no head for it "
                         f"(heads: {', '.join(heads) or 'none'})")
    info = heads[task_name]
    if info.get("head") not in SUPPORTED_HEADS:
        raise ValueError(f"{Path(model_dir) / BERTKIT_JSON}: head {info.get('head')!r} of task {task_name} "
                         f"is not one of {', '.join(SUPPORTED_HEADS)}")
    if info.get("labels") is not None:
        task.set_label_names(list(info["labels"]))
    path = checkpoints.resolve_model_path(model_dir)
    _, file = checkpoints.find_weights(path)
    config = checkpoints.read_config(path).replace(**task.model_config_updates())
    if config.num_labels != int(info.get("num_labels", config.num_labels)):
        raise ValueError(f"--task {task_name}: the task has {config.num_labels} labels but its saved head "
                         f"in {model_dir} has {info['num_labels']}")
    state = checkpoints.to_bertkit_names(checkpoints.load_state_dict(file))
    prefix = f"heads.{task_name}."
    head_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not head_state:
        raise ValueError(f"{file}: no tensors named {prefix}* (the weights do not hold the head that "
                         f"{BERTKIT_JSON} lists for {task_name})")
    single = {k: v for k, v in state.items() if k.startswith("bert.")} | head_state
    checkpoints.check_consistency(config, single, file)
    model = checkpoints.uninitialised(lambda: model_class_for_head(info["head"])(config))
    checkpoints.load_into(model, single, file)
    return model


# ---- the task object the trainer sees ---------------------------------------------------------------
@dataclass
class MultiTaskExample:
    """An example of one of the tasks (evaluation examples of all tasks form one list)."""

    task: str
    example: Any


def sampling_probabilities(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> np.ndarray:
    """Probability of each task per micro-batch: sizes [K] -> p [K] (see the module docstring)."""
    n = np.asarray(sizes, dtype=np.float64)
    if sampling == "proportional":
        weights = n
    elif sampling == "uniform":
        weights = np.ones_like(n)
    elif sampling == "temperature":
        if not temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {temperature}")
        weights = n ** (1.0 / temperature)
    else:
        raise ValueError(f"--task-sampling {sampling!r} is not one of {', '.join(SAMPLING)}")
    return weights / weights.sum()


class MultiTask:
    """What the trainer calls a task, for several tasks at once: features of task k carry
    `task_index` = k; training features are the tasks' features concatenated in task order."""

    name = "multitask"
    head = "multitask"
    main_metric = "average"
    # One mean over rows of MSE and cross-entropy losses would mean little: each task reports its own
    # (`<task>/loss`, in metrics()).
    reports_loss = False
    greater_is_better = True

    def __init__(self, tasks: Sequence[Task], train_sizes: Sequence[int], batch_sizes: Sequence[int],
                 default_batch_size: int, sampling: str = "proportional", temperature: float = 2.0):
        if len(tasks) != len(train_sizes) or len(tasks) != len(batch_sizes):
            raise ValueError("MultiTask: one training size and one batch size per task")
        for task, size in zip(tasks, train_sizes):
            if size < 1:
                raise ValueError(f"--task {task.name}: the training set is empty")
        self.tasks = list(tasks)
        self.names = [t.name for t in tasks]
        self.train_sizes = [int(n) for n in train_sizes]
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.default_batch_size = default_batch_size
        self.sampling, self.temperature = sampling, temperature
        self.probabilities = sampling_probabilities(self.train_sizes, sampling, temperature)
        self.offsets = np.concatenate([[0], np.cumsum(self.train_sizes)[:-1]]).astype(np.int64)

    # ---- batch plan ---------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        return sum(math.ceil(n / b) for n, b in zip(self.train_sizes, self.batch_sizes))

    def epoch_batches(self, epoch: int, seed: int, global_batch: int) -> list[np.ndarray]:
        """The epoch's global micro-batches: index arrays into the concatenated training features,
        each from one task, of that task's batch size x world size. Depends on its arguments only."""
        world = max(1, global_batch // self.default_batch_size)
        rng = np.random.default_rng([seed, epoch, 1])
        choices = rng.choice(len(self.tasks), size=self.batches_per_epoch(), p=self.probabilities)
        orders = [np.empty(0, dtype=np.int64)] * len(self.tasks)
        positions, passes = [0] * len(self.tasks), [-1] * len(self.tasks)
        batches = []
        for k in choices:
            want, parts = self.batch_sizes[k] * world, []
            while want > 0:
                if positions[k] == len(orders[k]):  # out of data: a new shuffled pass of this task only
                    passes[k] += 1
                    orders[k] = np.random.default_rng([seed, epoch, 2, int(k), passes[k]]).permutation(
                        self.train_sizes[k])
                    positions[k] = 0
                part = orders[k][positions[k]:positions[k] + want]
                parts.append(part)
                positions[k] += len(part)
                want -= len(part)
            batches.append(self.offsets[k] + np.concatenate(parts))
        return batches

    # ---- batches and outputs ------------------------------------------------------------------
    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Features (of one or several tasks) -> input_ids/token_type_ids/attention_mask [B,T],
        task [B], labels [B] float (class indices are exact in float32; heads cast back) and
        single_task (a python int) when all features come from one task."""
        batch = {
            "input_ids": pad_sequences([f["input_ids"] for f in features]),
            "token_type_ids": pad_sequences([f["token_type_ids"] for f in features]),
            "attention_mask": pad_sequences([[1] * len(f["input_ids"]) for f in features]),
            "task": torch.tensor([f["task_index"] for f in features], dtype=torch.long),
        }
        tasks = {f["task_index"] for f in features}
        if len(tasks) == 1:
            batch["single_task"] = tasks.pop()
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float)
        return batch

    def feature_length(self, feature: dict[str, Any]) -> int:
        return len(feature["input_ids"])

    def gather_outputs(self, batch: dict[str, torch.Tensor], outputs: ModelOutput
                       ) -> list[tuple[np.ndarray, float | None]]:
        """Per feature: its logits cut to its task's label count [C_task], and its loss under its
        task's head (cross entropy, or squared error for regression; None without labels)."""
        logits = outputs.logits.detach().float()
        task_of_row = batch["task"].to(logits.device)
        losses = torch.full((logits.shape[0],), float("nan"), device=logits.device)
        labels = batch.get("labels")
        if labels is not None:
            labels = labels.to(logits.device)
            for k in task_of_row.unique().tolist():
                rows = (task_of_row == k).nonzero(as_tuple=True)[0]
                mine = logits[rows, :self._num_labels(k)]  # [N_k, C_k]
                if self.tasks[k].head == "regression":
                    losses[rows] = (mine[:, 0] - labels[rows]) ** 2
                else:
                    losses[rows] = F.cross_entropy(mine, labels[rows].long(), reduction="none")
        widths = [self._num_labels(k) for k in range(len(self.tasks))]
        return [(row[:widths[k]], None if labels is None else float(loss)) for row, k, loss in
                zip(logits.cpu().numpy(), task_of_row.tolist(), losses.tolist())]

    def _num_labels(self, k: int) -> int:
        return int(self.tasks[k].model_config_updates().get("num_labels", 1))

    def _split(self, examples: Sequence[MultiTaskExample], items: Sequence[Any]) -> dict[str, list]:
        by_task: dict[str, list] = {name: [] for name in self.names}
        for example, item in zip(examples, items):
            by_task[example.task].append(item)
        return by_task

    def postprocess(self, examples: list[MultiTaskExample], features: list[dict[str, Any]],
                    outputs: list[Any]) -> list[Any]:
        """Each task postprocesses its own examples; predictions come back in `examples` order, each
        with its feature's loss: (prediction, loss or None)."""
        per_task = {}
        for k, (name, task) in enumerate(zip(self.names, self.tasks)):
            mine = [i for i, f in enumerate(features) if f["task_index"] == k]
            task_examples = [e.example for e in examples if e.task == name]
            predictions = task.postprocess(task_examples, [features[i] for i in mine], [outputs[i][0] for i in mine])
            # One feature per example (sequence-level heads only), so losses pair with predictions.
            per_task[name] = iter(zip(predictions, [outputs[i][1] for i in mine]))
        return [next(per_task[e.task]) for e in examples]

    def placeholder_predictions(self, examples: list[MultiTaskExample]) -> list[Any]:
        per_task = {name: iter(task.placeholder_predictions([e.example for e in examples if e.task == name]))
                    for name, task in zip(self.names, self.tasks)}
        return [(next(per_task[e.task]), None) for e in examples]

    def metrics(self, examples: list[MultiTaskExample], predictions: list[Any]) -> dict[str, float]:
        """`<task>/<metric>` for every task's metrics (with `<task>/loss`, its head's mean loss over
        its examples, where they have labels) and `average` of the tasks' main metrics."""
        ex_by_task = self._split(examples, [e.example for e in examples])
        pred_by_task = self._split(examples, predictions)
        out: dict[str, float] = {}
        mains = []
        for name, task in zip(self.names, self.tasks):
            if not ex_by_task[name]:
                continue
            metrics = task.metrics(ex_by_task[name], [prediction for prediction, _ in pred_by_task[name]])
            losses = [loss for _, loss in pred_by_task[name]]
            if all(loss is not None for loss in losses):
                metrics["loss"] = float(np.mean(losses))
            out.update({f"{name}/{key}": value for key, value in metrics.items()})
            mains.append(metrics[task.main_metric])
        out["average"] = float(np.mean(mains)) if mains else float("nan")
        return out


# ---- `bertkit finetune` with several --task -------------------------------------------------------
def parse_task_batch_sizes(values: Sequence[str] | None, names: Sequence[str], default: int) -> list[int]:
    """`--task-batch-size rte=16` (repeatable) -> one batch size per task (default: --batch-size)."""
    from bertkit.tasks import get_task_class

    sizes = dict.fromkeys(names, default)
    for value in values or []:
        task, sep, size = value.partition("=")
        try:  # aliases (sts-b, sst-2) name the same task
            task = get_task_class(task.strip().lower()).name
        except ValueError:
            pass  # reported below with the valid names
        if not sep or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"--task-batch-size {value!r}: expected TASK=N with N >= 1, e.g. rte=16")
        if task not in sizes:
            raise ValueError(f"--task-batch-size {value!r}: {task!r} is not one of the --task names "
                             f"({', '.join(names)})")
        sizes[task] = int(size)
    return [sizes[n] for n in names]


def run_finetune(args: argparse.Namespace) -> int:
    """Multi-task fine-tuning (finetune.run calls this when several --task are given)."""
    from bertkit.commands import common
    from bertkit.tasks import get_task_class
    from bertkit.training import distributed
    from bertkit.training.trainer import apply_best_metric, seed_everything, train

    task_classes = [get_task_class(name) for name in args.task]
    names = [cls.name for cls in task_classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--task {', '.join(duplicates)} given more than once")
    for flag in ("train_file", "dev_file", "test_file"):
        if getattr(args, flag, None):
            raise ValueError(f"--{flag.replace('_', '-')} names one file but {len(names)} tasks were given; "
                             f"multi-task training reads every task from --data-dir")
    config = common.train_config_from_args(args)
    if config.group_by_length:
        raise ValueError("--group-by-length does not apply with several --task: batches are planned "
                         "by --task-sampling; drop the flag")
    sampling = getattr(args, "task_sampling", "proportional")
    temperature = getattr(args, "temperature", 2.0)
    batch_sizes = parse_task_batch_sizes(getattr(args, "task_batch_size", None), names, config.batch_size)

    info = distributed.setup(config.device)
    tasks = [cls(common.task_options_from_args(args, cls)) for cls in task_classes]
    for task in tasks:
        if not task.greater_is_better:
            raise ValueError(f"--task {task.name}: its main metric {task.main_metric!r} is lower-is-better; "
                             f"the multi-task `average` needs greater-is-better metrics")
    specs = [HeadSpec.from_task(task) for task in tasks]  # rejects unsupported heads before any reading
    tokenizer = common.load_tokenizer(args.model, args.do_lower_case)

    train_features: list[dict[str, Any]] = []
    eval_examples: list[MultiTaskExample] = []
    eval_features: list[dict[str, Any]] = []
    sizes = []
    for k, task in enumerate(tasks):
        max_len = task.options.max_seq_length
        features = common.encode_cached(task, "train", task.read("train"), tokenizer, max_len, info)
        train_features += [{**f, "task_index": k} for f in features]
        sizes.append(len(features))
        if config.eval_every != "none":
            examples = task.read(args.eval_split)
            features = common.encode_cached(task, args.eval_split, examples, tokenizer, max_len, info)
            eval_examples += [MultiTaskExample(task.name, e) for e in examples]
            eval_features += [{**f, "task_index": k} for f in features]
    multi = MultiTask(tasks, sizes, batch_sizes, config.batch_size, sampling, temperature)
    eval_set = (eval_examples, eval_features) if config.eval_every != "none" else None
    apply_best_metric(multi, config, eval_set)

    output_dir = Path(config.output_dir)
    if (output_dir / common.BERTKIT_JSON).exists() and not config.resume and info.is_main:
        common.eprint(f"note: {output_dir} holds a finished run; it will be overwritten")
        (output_dir / common.BERTKIT_JSON).unlink()

    seed_everything(config.seed)  # head initialisation is part of the seeded run
    model = MultiTaskModel.from_pretrained(args.model, specs)
    common.check_model_fits(model.config, tokenizer, max(t.options.max_seq_length for t in tasks), args.model)
    run_info = {
        "task": names[0], "tasks": names, "head": "multitask", "main_metric": multi.main_metric,
        "heads": {s.task: {**dataclasses.asdict(s), "main_metric": t.main_metric,
                           "max_seq_length": t.options.max_seq_length}
                  for s, t in zip(specs, tasks)},
        "max_seq_length": max(t.options.max_seq_length for t in tasks), "data_dir": args.data_dir,
        "extra": {k: v for t in tasks for k, v in t.options.extra.items()},
        "task_sampling": sampling, "temperature": temperature,
        "task_batch_sizes": dict(zip(names, batch_sizes)),
        "sampling_probabilities": dict(zip(names, multi.probabilities.round(6).tolist())),
        "train_sizes": dict(zip(names, sizes)), "base_model": args.model,
        "train": dataclasses.asdict(config), "command": " ".join(["bertkit", *sys.argv[1:]]),
    }

    save_model = common.model_saver(tokenizer, run_info)

    if info.is_main:
        shares = ", ".join(f"{n} {s} ({p:.2f})" for n, s, p in zip(names, sizes, multi.probabilities))
        common.eprint(f"multi-task: {len(train_features)} training features ({shares}); "
                      f"{len(eval_features)} eval features; {multi.batches_per_epoch()} micro-batches per epoch, "
                      f"{sampling} sampling; {config.precision} on {info.device}")
    result = train(multi, model, train_features, eval_set, config, info=info, save_model=save_model)
    if info.is_main:
        metrics = {"tasks": names, "best_step": result.state.best_step, "steps": result.state.global_step,
                   "skipped_steps": result.state.skipped_steps,
                   args.eval_split: result.final_metrics, "history": result.state.history}
        common.write_run_metrics(output_dir / "metrics.json", metrics, result.model_kept)
        common.write_json_atomic(output_dir / common.BERTKIT_JSON, run_info)  # last: marks a complete run
        print(f"{'+'.join(names)} {args.eval_split}: {result.final_metrics}")
    distributed.shutdown()
    return 0
