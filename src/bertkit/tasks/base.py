"""The Task interface: everything the one training loop needs to know about a task.

A task file subclasses `Task`, sets its class attributes and decorates the class with
`@register("name", ...)`. Adding a task touches no other task's file.

Flow (see DESIGN.md):
    examples = task.read(split)                                  # python objects, errors name file:line
    features = task.encode(examples, tokenizer, max_seq_length)  # list of dicts of python ints/lists
    batch    = task.collate(features_slice)                      # dict of tensors (model kwargs + labels)
    outputs  = model(**batch)                                    # ModelOutput with .loss and logits
    per_feature = task.gather_outputs(batch, outputs)            # list, one numpy item per feature
    predictions = task.postprocess(examples, features, per_feature_outputs)
    metrics     = task.metrics(examples, predictions)            # dict; main_metric is a key
    task.write_predictions(examples, predictions, path)          # the benchmark's format
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence, TextIO

import numpy as np
import torch

from bertkit.config import ModelConfig

TASKS: dict[str, type["Task"]] = {}


def register(*names: str):
    """Class decorator: make a Task available as `--task NAME` for each name given."""

    def wrap(cls: type["Task"]) -> type["Task"]:
        for name in names:
            if name in TASKS and TASKS[name] is not cls:
                raise RuntimeError(f"task name {name!r} registered twice ({TASKS[name].__name__}, {cls.__name__})")
            TASKS[name] = cls
        cls.name = names[0]
        return cls

    return wrap


def get_task_class(name: str) -> type["Task"]:
    import bertkit.tasks  # noqa: F401  (imports every task module so that they register)

    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"--task {name!r} is unknown; valid tasks: {', '.join(sorted(TASKS))}") from None


class DataError(ValueError):
    """Bad input data. The message names the file and line (or example id) and what was expected."""


@dataclass
class TaskOptions:
    """Where a task reads its data from, plus task-specific flags (from `Task.add_arguments`)."""

    data_dir: str | None = None  # directory in the benchmark's standard layout
    train_file: str | None = None  # explicit files override the directory layout
    dev_file: str | None = None
    test_file: str | None = None
    max_seq_length: int = 128  # tokens per sequence after truncation (incl. [CLS]/[SEP])
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific flags by dest name

    def get(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)


def read_data_text(path: Path, encoding: str = "utf-8") -> str:
    """A data file's text, as `path.read_text` gives it; a file that is not UTF-8 (a Latin-1 or
    UTF-16 export) is a DataError naming the file and line, not a UnicodeDecodeError naming neither."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None


def load_json_or_lines(text: str, path: Path) -> Any:
    """A JSON document, or the objects of a JSON-lines file (what `datasets`' to_json writes)."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise DataError(f"{path}: not valid JSON ({err})") from None


def example_records(data: Any, marker: str) -> list[Any] | None:
    """One record per example, as transformers' example scripts read local files: a list (JSON lines),
    one record, or a list under "data"; None for another layout. Records are told by `marker`, a key
    of the first one."""
    if isinstance(data, dict) and marker in data:
        return [data]
    records = data.get("data") if isinstance(data, dict) else data
    if isinstance(records, list) and records and isinstance(records[0], dict) and marker in records[0]:
        return records
    return None


# ---- Parquet: the files of Hugging Face Hub datasets --------------------------------------------------

# bertkit's split names -> the Hub's (`datasets` calls the dev set "validation").
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def is_parquet(path: Path) -> bool:
    """A Parquet file, told by its suffix or, for a name without one, by its PAR1 magic."""
    if path.suffix.lower() == ".parquet":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False


def read_parquet_rows(paths: Sequence[Path], required: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
    """Rows of Parquet files (a Hugging Face Hub dataset's files, `datasets`' to_parquet, pandas'
    to_parquet) as (where, {column: value}) in file order; where = "FILE: row N", N counted from 0 as
    pandas and the Hub's viewer count. Nested columns arrive as Python lists and dicts (SQuAD's
    answers: {"text": [...], "answer_start": [...]}), as in the Hub's JSON. A file without one of the
    `required` columns is a DataError naming the file, the missing columns and those it has."""
    import pyarrow.parquet as pq

    rows: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow's ArrowInvalid and OSError: not a Parquet file, or a damaged one
            raise DataError(f"{path}: cannot read as Parquet ({err})") from None
        missing = [column for column in required if column not in table.column_names]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; expected the columns "
                            f"{', '.join(required)} (the file has {', '.join(table.column_names) or 'none'})")
        rows.extend((f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist()))
    return rows


def hub_split_files(directory: Path, hub_split: str) -> list[Path]:
    """One split's Parquet files in a Hugging Face Hub dataset folder, in each layout the Hub has
    used: SPLIT-00000-of-00002.parquet (a dataset repository's files), SPLIT/0000.parquet (its
    refs/convert/parquet branch), NAME-SPLIT.parquet (earlier conversions). Empty: none there."""
    return (sorted(directory.glob(f"{hub_split}-*.parquet")) or sorted(directory.glob(f"{hub_split}/*.parquet"))
            or sorted(directory.glob(f"*-{hub_split}.parquet")))


def find_hub_split(data_dir: Path, split: str, config_folders: Sequence[str] = ()) -> list[Path]:
    """A split's Parquet files (bertkit's split name: "dev" is the Hub's "validation") in a
    downloaded Hub dataset: in `data_dir` itself or in one of its `config_folders`, where the Hub
    keeps a configuration's files (squad's plain_text/, swag's regular/). Empty: none there. Two
    folders that both hold the split are refused rather than one picked: they are two datasets
    (SQuAD v1.1 beside v2.0) and a silent pick could train on the wrong one."""
    holding = [files for folder in (data_dir, *(data_dir / name for name in config_folders))
               if (files := hub_split_files(folder, HUB_SPLITS[split]))]
    if len(holding) > 1:
        raise ValueError(f"{holding[0][0].parent} and {holding[1][0].parent} both hold {HUB_SPLITS[split]} Parquet "
                         f"files; point --data-dir at the one to use")
    return holding[0] if holding else []


def files_label(paths: Sequence[Path]) -> str:
    """How messages name a split's files: the file, or the first of several Parquet shards (a Hub
    split may be several) and how many more there are."""
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more shards)"


def json_object(where: str, text: str) -> dict[str, Any]:
    """One JSON object (a line of a JSON-lines file, of `predict --input`); anything else is a
    DataError naming `where`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not a JSON object ({err.msg})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def jsonl_objects(path: Path, encoding: str = "utf-8") -> list[tuple[str, dict[str, Any]]]:
    """The objects of a JSON-lines file as ("FILE:LINE", object); blank lines skipped. Lines end at
    newlines only: a U+2028 inside a string is text, not a line break."""
    lines = read_data_text(path, encoding=encoding).split("\n")
    return [(f"{path}:{n}", json_object(f"{path}:{n}", line)) for n, line in enumerate(lines, 1) if line.strip()]


def softmax(logits: Any) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def raw_input_fields(where: str, line: str, names: Sequence[str]) -> dict[str, Any]:
    """One line of `predict --input`: a JSON object, or tab-separated values named `names` in
    order (fewer are fine here; the task checks what it needs)."""
    if line.lstrip().startswith("{"):
        return json_object(where, line)
    values = line.split("\t")
    if len(values) > len(names):
        raise DataError(f"{where}: {len(values)} tab-separated fields; expected at most {len(names)} "
                        f"({', '.join(names)})")
    return dict(zip(names, values))


def class_probabilities(logits: Any, names: Sequence[str]) -> dict[str, float]:
    """Softmax of one example's logits, by class name (6 decimals: a JSON line stays readable)."""
    return {str(name): round(float(p), 6) for name, p in zip(names, softmax(np.reshape(logits, -1)))}


def text_field(fields: dict[str, Any], where: str, *names: str, required: bool = True) -> str | None:
    """The first of `names` present in a raw-input line's fields, which must be text."""
    for name in names:
        if fields.get(name) is not None:
            value = fields[name]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: {name!r} must be non-empty text, got {value!r}")
            return value
    if required:
        raise DataError(f"{where}: no {' or '.join(map(repr, names))} (fields: {', '.join(fields) or 'none'})")
    return None


def not_utf8_error(path: Path) -> DataError:
    """The DataError for a file that does not decode as UTF-8: the line and byte where it fails."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return DataError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); re-encode it "
                         f"as UTF-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        return DataError(f"{path}:{line}: not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}: "
                         f"{err.reason}); re-encode the file as UTF-8")
    return DataError(f"{path}: not UTF-8; re-encode the file as UTF-8")


def file_lines(text: str) -> list[str]:
    """Lines of a data file's text as read by `read_text` (which already turned \\r\\n into \\n),
    trailing blank lines dropped. Not `str.splitlines()`: that also breaks at U+2028, U+0085, form
    feeds and other characters that can sit inside a token of real text."""
    lines = text.split("\n")
    while lines and not lines[-1].strip(" \t\r"):
        lines.pop()
    return lines


@contextmanager
def open_for_writing(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """A prediction file written as PATH.tmp and renamed onto PATH once complete: a predict that
    fails or is interrupted mid-file leaves the earlier file whole, never a half-written one under
    its name (the rename is atomic on one file system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_files_together(contents: dict[Path, str]) -> None:
    """Several files that belong together (SQuAD's predictions, n-best and null odds): each is
    written in full as NAME.tmp before any is renamed, so an interruption while writing leaves
    the earlier set whole rather than a new predictions.json beside the old n-best."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, text in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            written.append((tmp, path))
            tmp.write_text(text, encoding="utf-8")
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in written:
        os.replace(tmp, path)


def pad_sequences(rows: Sequence[Sequence[int]], pad_value: int = 0, length: int | None = None,
                  dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Right-pad lists of ints to one length -> tensor [len(rows), length or max len]."""
    length = length or max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), length), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row[:length], dtype=dtype)
    return out


def padded_inputs(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """input_ids, token_type_ids, attention_mask [B, T], padded to the longest feature of the batch."""
    return {
        "input_ids": pad_sequences([f["input_ids"] for f in features]),
        "token_type_ids": pad_sequences([f["token_type_ids"] for f in features]),
        "attention_mask": pad_sequences([[1] * len(f["input_ids"]) for f in features]),
    }


class Task:
    """Base class. Subclasses set the class attributes and implement `read`, `encode`, `metrics`."""

    name: ClassVar[str] = ""
    # Which model class heads.py builds for this task. Declared, never guessed from label dtypes:
    # "sequence_classification" | "regression" | "token_classification" | "question_answering"
    # | "multiple_choice" | "polyphone" | "pretraining"
    head: ClassVar[str] = "sequence_classification"
    main_metric: ClassVar[str] = "accuracy"  # key of metrics() used to keep the best checkpoint
    greater_is_better: ClassVar[bool] = True
    # Evaluation adds `loss` (the training objective on the split) to metrics() where the split has
    # labels; False for tasks whose metrics hold their own losses.
    reports_loss: ClassVar[bool] = True
    splits: ClassVar[tuple[str, ...]] = ("train", "dev", "test")  # names accepted by read()

    def __init__(self, options: TaskOptions):
        self.options = options
        self._labels: list[str] | None = None

    # ---- command line ---------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add task-specific flags. They arrive in `self.options.extra` by their dest name."""

    # ---- data -----------------------------------------------------------------------------------
    def read(self, split: str) -> list[Any]:
        """Parse one split into examples. Raise DataError naming file and line on bad input."""
        raise NotImplementedError

    def label_names(self) -> list[str] | None:
        """Class names in index order (None for regression and span tasks)."""
        return self._labels

    def set_label_names(self, labels: list[str] | None) -> None:
        """Restore the label set saved with a fine-tuned model (bertkit.json), before encode()."""
        self._labels = labels

    def state_dict(self) -> dict[str, Any]:
        """What the task learned from its training data besides labels (JSON-serialisable), saved in
        bertkit.json so evaluate/predict need no training split."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state_dict() of the run that trained the model."""

    def encode(self, examples: list[Any], tokenizer, max_seq_length: int) -> list[dict[str, Any]]:
        """Examples -> features. Each feature is a dict with at least `input_ids` and
        `token_type_ids` (lists of ints, [CLS] ... [SEP] included), the label field(s) the model
        takes, and `example_index` (which example it came from; span tasks make several features
        per example)."""
        raise NotImplementedError

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Features -> model kwargs with dynamic padding (to the longest in the batch).
        Default: input_ids/token_type_ids/attention_mask [B, T] and `labels` [B]."""
        batch = padded_inputs(features)
        if "labels" in features[0]:
            dtype = torch.float if self.head in ("regression", "multi_label_classification") else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch

    def feature_length(self, feature: dict[str, Any]) -> int:
        """Token count, used by length-grouped sampling."""
        return len(feature["input_ids"])

    # ---- model ----------------------------------------------------------------------------------
    def model_config_updates(self) -> dict[str, Any]:
        """Fields of ModelConfig the head needs (num_labels, id2label, problem_type)."""
        labels = self.label_names()
        if self.head == "regression":
            return {"num_labels": 1, "problem_type": "regression", "id2label": None}
        if labels is not None:
            return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                    "problem_type": "single_label_classification"}
        return {}

    def build_model(self, config: ModelConfig) -> torch.nn.Module:
        """A fresh model with this task's head (weights loaded afterwards by the caller)."""
        from bertkit.modeling.heads import model_class_for_head

        return model_class_for_head(self.head)(config.replace(**self.model_config_updates()))

    # ---- evaluation -----------------------------------------------------------------------------
    def gather_outputs(self, batch: dict[str, torch.Tensor], outputs: Any) -> list[Any]:
        """One numpy item per feature of the batch (default: the row of `outputs.logits`)."""
        return list(outputs.logits.detach().float().cpu().numpy())

    def postprocess(self, examples: list[Any], features: list[dict[str, Any]],
                    outputs: list[Any]) -> list[Any]:
        """Per-feature outputs -> one prediction per example (default: argmax, or the value for
        regression)."""
        logits = np.stack(outputs)
        if self.head == "regression":
            return [float(x) for x in logits.reshape(-1)]
        return [int(i) for i in logits.argmax(-1)]

    def placeholder_predictions(self, examples: list[Any]) -> list[Any]:
        """One prediction per example, of the type postprocess() returns, made without a model:
        metrics() of them names the metrics an evaluation of `examples` reports, so that a
        --best-metric no evaluation has is refused before training, not at the first evaluation."""
        return [0.0 if self.head == "regression" else 0] * len(examples)

    def metrics(self, examples: list[Any], predictions: list[Any]) -> dict[str, float]:
        raise NotImplementedError

    def write_predictions(self, examples: list[Any], predictions: list[Any], path: str | Path) -> Path | list[Path]:
        """Write predictions in the benchmark's format; return the path written (a list where the
        benchmark wants one file per part, as MNLI's matched and mismatched halves)."""
        raise NotImplementedError

    # ---- new text (`bertkit predict --input`): a deployed model's input, not a benchmark file ----
    raw_input: ClassVar[str] = ""  # what one line of --input holds, for help and errors; "": no raw form

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[Any]:
        """Examples (unlabelled) from the non-blank lines of --input, given as (where, line); an
        example without an "id" of its own is numbered from `first_index` (the lines before it)."""
        raise DataError(f"--input: task {self.name} has no raw-text form; predict from its own files "
                        f"(--test-file or --data-dir with --split)")

    def raw_records(self, examples: list[Any], outputs: list[Any], predictions: list[Any]) -> list[dict[str, Any]]:
        """One JSON-able record per example: its id, its input and the prediction (with the class
        probabilities where the head has them); `outputs` are the model's, one per feature."""
        raise NotImplementedError
