"""Multiple choice: SWAG (rowanz/swagaf CSV layout) and a generic JSONL reader.

Each example is one context and C candidate continuations; the model scores
`[CLS] context [SEP] choice_i [SEP]` for every i and a softmax over the C scores picks one
(`BertForMultipleChoice`, inputs [B, C, T] -> logits [B, C]).

SWAG (`--task swag`), as released in rowanz/swagaf `data/{train,val,test}.csv`:
    ,video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label
context = sent1, choice i = sent2 + " " + ending_i (the split BERT's SWAG recipe uses), label 0-3;
test.csv has no label column. `--split dev` reads val.csv. The Parquet files of the Hub's swag
("regular" config: regular/train-00000-of-00001.parquet, validation-..., test-...) hold the same
columns and are read alike, from --*-file or from --data-dir (in it or regular/) without the CSVs.

Generic (`--task multiple-choice`): JSON lines with a context string, a list of choices and the
index of the right one, e.g. `{"id": "q1", "context": "...", "choices": ["a", "b"], "label": 1}`;
field names are set with --context-field / --choices-field / --label-field / --id-field. Parquet
files with those columns are read too (a Hub dataset's SPLIT-0000x-of-N.parquet in --data-dir).
All examples of a file must have the same number of choices (the model takes [B, C, T]).
In Parquet files a label of -1 is no label: `datasets` writes -1 for an unlabelled ClassLabel (swag's
test split).

The tokenizer helpers at the top (`plain_backend`, `special_ids`, `encode_pair`) are shared with
the other pair/word-level tasks (semeval.py, conll.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tokenizers
import torch

from bertkit.tasks.base import (HUB_SPLITS, DataError, Task, TaskOptions, class_probabilities, files_label,
                                find_hub_split, is_parquet, jsonl_objects, open_for_writing, pad_sequences, raw_input_fields,
                                read_data_text, read_parquet_rows, register, text_field)

# ---- tokenizer helpers ---------------------------------------------------------------------------


def plain_backend(tokenizer: Any) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` behind `tokenizer` (a bertkit Tokenizer, whose `.backend` it is,
    or a `tokenizers.Tokenizer` itself) with truncation and padding switched off: a
    tokenizer.json may carry them (all-MiniLM-L6-v2's pads and truncates to 128), and the tasks
    decide truncation and windows themselves."""
    backend = getattr(tokenizer, "backend", tokenizer)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise TypeError(f"expected a bertkit Tokenizer or tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    if backend.truncation is None and backend.padding is None:
        return backend
    plain = tokenizers.Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(cls_id, sep_id, unk_id) of a bertkit Tokenizer or a WordPiece `tokenizers.Tokenizer`."""
    if all(hasattr(tokenizer, a) for a in ("cls_id", "sep_id", "unk_id")):
        return int(tokenizer.cls_id), int(tokenizer.sep_id), int(tokenizer.unk_id)
    backend = getattr(tokenizer, "backend", tokenizer)
    ids = [backend.token_to_id(t) for t in ("[CLS]", "[SEP]", "[UNK]")]
    if None in ids:
        raise ValueError("tokenizer has no [CLS]/[SEP]/[UNK] tokens; BERT tasks need a WordPiece vocabulary")
    return ids[0], ids[1], ids[2]


def truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Drop tokens from the end of the longer of a/b until len(a) + len(b) <= budget (BERT's
    `_truncate_seq_pair`). Returns (a, b, truncated?)."""
    la, lb = len(a), len(b)
    truncated = la + lb > budget
    while la + lb > budget:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return a[:la], b[:lb], truncated


def encode_pair(first_ids: list[int], second_ids: list[int], max_seq_length: int,
                cls_id: int, sep_id: int) -> tuple[list[int], list[int], bool]:
    """`[CLS] first [SEP] second [SEP]` within max_seq_length tokens, longest-first truncation.
    Returns (input_ids, token_type_ids, truncated?)."""
    a, b, truncated = truncate_longest_first(first_ids, second_ids, max_seq_length - 3)
    input_ids = [cls_id, *a, sep_id, *b, sep_id]
    token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return input_ids, token_type_ids, truncated


# ---- examples ------------------------------------------------------------------------------------


@dataclass
class ChoiceExample:
    guid: str  # id from the file (SWAG: "<video-id>/<fold-ind>") or "<split>-<n>"
    context: str
    choices: list[str]
    label: int | None  # index into choices; None for unlabelled test data
    source: str  # "file:line", for error messages


class MultipleChoiceTask(Task):
    """JSON-lines multiple choice; SwagTask below changes only how files are read."""

    head = "multiple_choice"
    main_metric = "accuracy"
    file_names: dict[str, tuple[str, ...]] = {
        "train": ("train.jsonl",), "dev": ("dev.jsonl", "valid.jsonl", "val.jsonl"), "test": ("test.jsonl",)}
    hub_config_folders: tuple[str, ...] = ()  # where a Hub dataset keeps its files, besides --data-dir itself

    def __init__(self, options: TaskOptions):
        super().__init__(options)
        self.truncated = 0  # features whose context+choice was cut to fit max_seq_length

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--context-field", default="context", help="JSONL key of the context text")
        parser.add_argument("--choices-field", default="choices", help="JSONL key of the list of choices")
        parser.add_argument("--label-field", default="label", help="JSONL key of the right choice's index")
        parser.add_argument("--id-field", default="id", help="JSONL key of the example id (optional)")

    def split_files(self, split: str) -> list[Path]:
        """The split's file: an explicit --*-file, else the task's file in --data-dir, else a Hub
        dataset's Parquet files there (in it or its `hub_config_folders`)."""
        explicit = {"train": self.options.train_file, "dev": self.options.dev_file,
                    "test": self.options.test_file}.get(split)
        if split not in self.splits:
            raise ValueError(f"--split {split!r} is not one of {', '.join(self.splits)}")
        if explicit:
            return [Path(explicit)]
        if not self.options.data_dir:
            raise ValueError(f"task {self.name}: give --data-dir or --{split}-file")
        data_dir = Path(self.options.data_dir)
        tried = [data_dir / n for n in self.file_names[split]]
        for path in tried:
            if path.is_file():
                return [path]
        hub_files = find_hub_split(data_dir, split, self.hub_config_folders)
        if hub_files:
            return hub_files
        folders = "".join(f", {name}/" for name in self.hub_config_folders)
        raise FileNotFoundError(f"task {self.name}: no {split} file; looked for {', '.join(map(str, tried))} and "
                                f"the Hub's {HUB_SPLITS[split]} Parquet files (in {data_dir}{folders}); pass "
                                f"--{split}-file")

    @staticmethod
    def parquet_rows(paths: list[Path], required: Sequence[str], label_column: str) -> list[tuple[str, dict]]:
        """Rows of Parquet files, a label of -1 read as none: `datasets` writes -1 for an unlabelled
        ClassLabel (swag's test split), and -1 would otherwise be an out-of-range choice."""
        rows = read_parquet_rows(paths, required)
        for _, row in rows:
            if row.get(label_column) == -1:
                row[label_column] = None
        return rows

    def read(self, split: str) -> list[ChoiceExample]:
        paths = self.split_files(split)
        f_context = self.options.get("context_field", "context")
        f_choices = self.options.get("choices_field", "choices")
        f_label = self.options.get("label_field", "label")
        f_id = self.options.get("id_field", "id")
        if is_parquet(paths[0]):
            rows = self.parquet_rows(paths, (f_context, f_choices), f_label)
        else:
            rows = jsonl_objects(paths[0])
        examples: list[ChoiceExample] = []
        for where, row in rows:
            context, choices = row.get(f_context), row.get(f_choices)
            if not isinstance(context, str):
                raise DataError(f"{where}: field {f_context!r} (--context-field) must be a string; "
                                f"keys present: {', '.join(row)}")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise DataError(f"{where}: field {f_choices!r} (--choices-field) must be a list of at "
                                f"least 2 strings")
            label = self._parse_label(row.get(f_label), len(choices), where, f"field {f_label!r}")
            guid = str(row[f_id]) if row.get(f_id) is not None else f"{split}-{len(examples)}"
            examples.append(ChoiceExample(guid, context, choices, label, where))
        return self._check_labels(self._check_choice_counts(examples, files_label(paths)), split)

    @staticmethod
    def _parse_label(value: Any, n_choices: int, where: str, what: str) -> int | None:
        if value is None or value == "":
            return None
        try:
            label = int(value)
            if isinstance(value, float) and value != label:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{where}: {what} = {value!r} is not an integer choice index") from None
        if not 0 <= label < n_choices:
            raise DataError(f"{where}: {what} = {label} is out of range; expected 0..{n_choices - 1} "
                            f"for {n_choices} choices")
        return label

    @staticmethod
    def _check_labels(examples: list[ChoiceExample], split: str) -> list[ChoiceExample]:
        """Train and dev rows need a label: an unlabelled training row was left out of the loss
        (-100) without a word, and an unlabelled dev file scored as {}, so that no best model was
        kept and the run still ended well."""
        unlabelled = next((ex for ex in examples if ex.label is None), None)
        if split in ("train", "dev") and unlabelled is not None:
            raise DataError(f"{unlabelled.source}: no label; every {split} row needs one (a test file belongs "
                            f"to --split test / --test-file)")
        return examples

    @staticmethod
    def _check_choice_counts(examples: list[ChoiceExample], path: Path | str) -> list[ChoiceExample]:
        if not examples:
            raise DataError(f"{path}: no examples")
        n = len(examples[0].choices)
        for ex in examples:
            if len(ex.choices) != n:
                raise DataError(f"{ex.source}: {len(ex.choices)} choices, but the first example has {n}; "
                                f"every example of a file must have the same number")
        return examples

    # ---- features -------------------------------------------------------------------------------
    def encode(self, examples: list[ChoiceExample], tokenizer: Any, max_seq_length: int) -> list[dict[str, Any]]:
        """One feature per example: `input_ids`/`token_type_ids` are C lists (one per choice) of
        `[CLS] context [SEP] choice [SEP]`, `labels` the right index (-100 when unknown)."""
        backend = plain_backend(tokenizer)
        cls_id, sep_id, _ = special_ids(tokenizer)
        contexts = backend.encode_batch([ex.context for ex in examples], add_special_tokens=False)
        features = []
        for i, (ex, ctx) in enumerate(zip(examples, contexts)):
            choice_encodings = backend.encode_batch(ex.choices, add_special_tokens=False)
            ids, types = [], []
            for enc in choice_encodings:
                row_ids, row_types, cut = encode_pair(list(ctx.ids), list(enc.ids), max_seq_length, cls_id, sep_id)
                self.truncated += cut
                ids.append(row_ids)
                types.append(row_types)
            features.append({"input_ids": ids, "token_type_ids": types,
                             "labels": -100 if ex.label is None else ex.label, "example_index": i})
        return features

    def feature_length(self, feature: dict[str, Any]) -> int:
        return max(len(row) for row in feature["input_ids"])

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """-> input_ids, token_type_ids, attention_mask [B, C, T] (T = longest row of the batch),
        labels [B]."""
        n_choices = len(features[0]["input_ids"])
        length = max(self.feature_length(f) for f in features)
        flat_ids = [row for f in features for row in f["input_ids"]]
        flat_types = [row for f in features for row in f["token_type_ids"]]
        shape = (len(features), n_choices, length)
        return {
            "input_ids": pad_sequences(flat_ids, length=length).view(shape),
            "token_type_ids": pad_sequences(flat_types, length=length).view(shape),
            "attention_mask": pad_sequences([[1] * len(r) for r in flat_ids], length=length).view(shape),
            "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
        }

    # ---- evaluation -----------------------------------------------------------------------------
    def metrics(self, examples: list[ChoiceExample], predictions: list[int]) -> dict[str, float]:
        scored = [(ex.label, p) for ex, p in zip(examples, predictions) if ex.label is not None]
        if not scored:
            return {}
        return {"accuracy": float(np.mean([g == p for g, p in scored])), "n": float(len(scored))}

    raw_input = ("JSON {\"context\": ..., \"choices\": [...], \"id\": ...} (SWAG: startphrase, ending0..3), or "
                 "context<TAB>choice<TAB>choice...")

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[ChoiceExample]:
        examples = []
        for where, line in lines:
            if line.lstrip().startswith("{"):
                fields = raw_input_fields(where, line, ())
                context = text_field(fields, where, "context", "startphrase")
                choices = fields.get("choices")
                if choices is None:
                    choices = [fields[f"ending{k}"] for k in range(10) if f"ending{k}" in fields]
            else:
                context, *choices = line.split("\t")
                fields = {}
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip()
                                                                            for c in choices):
                raise DataError(f"{where}: expected a context and at least 2 non-empty choices")
            examples.append(ChoiceExample(str(fields.get("id", first_index + len(examples))), context, choices, None, where))
        return self._check_choice_counts(examples, "--input")

    def raw_records(self, examples, outputs, predictions) -> list[dict[str, Any]]:
        return [{"id": ex.guid, "context": ex.context, "prediction": int(pred), "choice": ex.choices[int(pred)],
                 "probabilities": list(class_probabilities(out, range(len(ex.choices))).values())}
                for ex, out, pred in zip(examples, outputs, predictions)]

    def write_predictions(self, examples: list[ChoiceExample], predictions: list[int], path: str | Path) -> Path:
        """JSON lines: {"id", "prediction" (choice index), "label" (gold index or null)}; for a `.csv`
        path, the layout of swagaf's csv_predict.py (the script its leaderboard runs): a `,pred`
        header, then the row number and the predicted ending's index, in input order."""
        path = Path(path)
        with open_for_writing(path) as out:
            if path.suffix == ".csv":
                out.write(",pred\n")
                out.writelines(f"{row},{int(pred)}\n" for row, pred in enumerate(predictions))
                return path
            for ex, pred in zip(examples, predictions):
                out.write(json.dumps({"id": ex.guid, "prediction": int(pred), "label": ex.label}) + "\n")
        return path


register("multiple-choice")(MultipleChoiceTask)


@register("swag")
class SwagTask(MultipleChoiceTask):
    """SWAG in the rowanz/swagaf CSV layout (see the module docstring)."""

    file_names = {"train": ("train.csv",), "dev": ("val.csv",), "test": ("test.csv",)}
    hub_config_folders = ("regular",)
    n_choices = 4
    required_columns = ("video-id", "fold-ind", "sent1", "sent2", "ending0", "ending1", "ending2", "ending3")
    text_columns = ("sent1", "sent2", "ending0", "ending1", "ending2", "ending3")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """SWAG's layout is fixed; no extra flags."""

    def read(self, split: str) -> list[ChoiceExample]:
        paths = self.split_files(split)
        if is_parquet(paths[0]):
            rows = self.parquet_rows(paths, self.required_columns, "label")
        else:
            rows = self.csv_rows(paths[0])
        examples: list[ChoiceExample] = []
        for where, row in rows:
            # A CSV cell is always text; a Parquet cell may be null (or a number where text belongs).
            not_text = next((c for c in self.text_columns if not isinstance(row[c], str)), None)
            if not_text is not None:
                raise DataError(f"{where}: column {not_text} = {row[not_text]!r}; expected text")
            empty = [f"ending{i}" for i in range(self.n_choices) if not row[f"ending{i}"].strip()]
            if empty:  # trained on, it is a free wrong answer ("He " against three real endings)
                raise DataError(f"{where}: column {empty[0]} is empty; every SWAG example needs "
                                f"{self.n_choices} endings")
            choices = [f"{row['sent2']} {row[f'ending{i}']}" for i in range(self.n_choices)]
            label = self._parse_label(row.get("label"), self.n_choices, where, "column 'label'")
            guid = f"{row['video-id']}/{row['fold-ind']}"
            examples.append(ChoiceExample(guid, row["sent1"], choices, label, where))
        return self._check_labels(self._check_choice_counts(examples, files_label(paths)), split)

    raw_input = ("JSON with SWAG's columns {\"sent1\", \"sent2\", \"ending0\".. \"ending3\"} (read as in training: "
                 "context sent1, choice i sent2 + ending i), or as --task multiple-choice reads it")

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[ChoiceExample]:
        examples = []
        for where, line in lines:  # each line in its own form
            fields = raw_input_fields(where, line, ()) if line.lstrip().startswith("{") else {}
            if "sent2" not in fields:
                examples += super().raw_examples([(where, line)], first_index + len(examples))
                continue
            context, sent2 = text_field(fields, where, "sent1"), text_field(fields, where, "sent2")
            endings = [text_field(fields, where, f"ending{i}") for i in range(self.n_choices)]
            examples.append(ChoiceExample(str(fields.get("id", first_index + len(examples))), context,
                                          [f"{sent2} {ending}" for ending in endings], None, where))
        return self._check_choice_counts(examples, "--input")

    def csv_rows(self, path: Path) -> list[tuple[str, dict]]:
        """The rows of a swagaf CSV file as ("FILE:LINE", {column: text}), LINE the first physical
        line of the record (a quoted field may span lines)."""
        rows = []
        with io.StringIO(read_data_text(path)) as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in self.required_columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)}; expected the "
                                f"swagaf layout ,video-id,fold-ind,startphrase,sent1,sent2,gold-source,"
                                f"ending0..ending3,label")
            line_no = reader.line_num
            for row in reader:
                where = f"{path}:{line_no + 1}"
                line_no = reader.line_num
                if None in row or any(row[c] is None for c in self.required_columns):
                    raise DataError(f"{where}: wrong number of columns; expected {len(reader.fieldnames)} "
                                    f"as in the header")
                rows.append((where, row))
        return rows
