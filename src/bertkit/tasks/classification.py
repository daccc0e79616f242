"""Sentence and sentence-pair classification/regression: the shared encoder for GLUE-style tasks,
and `--task classification` / `--task regression` on the user's own CSV, TSV or JSONL files.

Custom data example:
    bertkit finetune --task classification --train-file train.csv --dev-file dev.csv \
        --text-column review --label-column stars --model M --output-dir O
The label set is inferred from the training file (sorted) and saved with the model (bertkit.json).
`--task multilabel` reads any number of labels per row (a JSON list, or one cell split at
`--label-separator`) and trains independent sigmoid outputs (BCE), as transformers' multi-label
`BertForSequenceClassification` does.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bertkit.metrics.glue import accuracy, glue_metrics, macro_f1, multilabel_scores
from bertkit.tasks.base import (DataError, Task, class_probabilities, is_parquet, jsonl_objects, open_for_writing,
                                raw_input_fields, read_data_text, read_parquet_rows, register, text_field)


@dataclass
class PairExample:
    guid: str  # id written to prediction files (the GLUE index for test sets)
    text_a: str
    text_b: str | None
    label: Any  # label name (str) for classification, float for regression, None when unlabeled
    source: str = ""  # "file:line", for error messages


class SentencePairTask(Task):
    """Encoding, prediction and metrics common to single-sentence and sentence-pair tasks.
    Subclasses implement `read` and set `labels` (None for regression) and `metric_kind`."""

    labels: tuple[str, ...] | None = None
    metric_kind = "acc"  # see bertkit.metrics.glue.glue_metrics
    score_range: tuple[float, float] | None = None  # regression: predictions are clipped to it

    def label_names(self) -> list[str] | None:
        if self._labels is not None:
            return self._labels
        return list(self.labels) if self.labels is not None else None

    def label_index(self, example: PairExample) -> int | float:
        if self.head == "regression":
            return float(example.label)
        names = self.label_names() or []
        try:
            return names.index(example.label)
        except ValueError:
            raise DataError(f"{example.source}: label {example.label!r} is not in the label set of "
                            f"task {self.name!r} ({', '.join(names)})") from None

    def encode(self, examples: list[PairExample], tokenizer, max_seq_length: int) -> list[dict[str, Any]]:
        has_pairs = any(e.text_b is not None for e in examples)
        if has_pairs and any(e.text_b is None for e in examples):
            missing = next(e for e in examples if e.text_b is None)
            raise DataError(f"{missing.source}: second sentence missing while other rows have one")
        encodings = tokenizer.encode_batch([e.text_a for e in examples],
                                           [e.text_b for e in examples] if has_pairs else None,
                                           max_length=max_seq_length, truncation="longest_first")
        features = []
        for i, (example, enc) in enumerate(zip(examples, encodings)):
            feature = {"input_ids": enc.ids, "token_type_ids": enc.type_ids, "example_index": i}
            if example.label is not None:
                feature["labels"] = self.label_index(example)
            features.append(feature)
        return features

    def gold(self, examples: list[PairExample]) -> list:
        unlabelled = next((e for e in examples if e.label is None), None)
        if unlabelled is not None:
            raise DataError(f"{unlabelled.source}: no label; this split has no labels (a test split?); use "
                            f"`bertkit predict` for it")
        return [self.label_index(e) for e in examples]

    def postprocess(self, examples, features, outputs) -> list:
        # Clipped here, before metrics as well as files: the GLUE server scores the values a user
        # submits, which are clipped, so dev metrics score those same values (and equal what the
        # `predict --split dev` file gives). An MSE head routinely predicts a little outside [0, 5].
        return [self.clip_score(p) for p in super().postprocess(examples, features, outputs)]

    def clip_score(self, prediction):
        if self.head != "regression" or self.score_range is None:
            return prediction
        low, high = self.score_range
        return min(max(float(prediction), low), high)

    def metrics(self, examples: list[PairExample], predictions: list) -> dict[str, float]:
        return glue_metrics(self.metric_kind, predictions, self.gold(examples))

    def prediction_label(self, prediction) -> str:
        if self.head == "regression":
            return f"{self.clip_score(prediction):.3f}"
        return (self.label_names() or [])[prediction]

    raw_input = "a text, or text<TAB>second text for a pair task; or JSON {\"text\": ..., \"text_pair\": ..., \"id\": ...}"

    def is_pair_task(self) -> bool:
        """Whether the model reads two texts (MRPC, RTE, ...)."""
        return False

    def raw_field_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """JSON keys a raw input's first and second text may have: "text"/"text_pair", and the
        columns of the task's own data (MNLI's premise/hypothesis, a custom run's --text-column)."""
        return ("text", "sentence", "sentence1"), ("text_pair", "sentence2")

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[PairExample]:
        examples = []
        for where, line in lines:
            fields = raw_input_fields(where, line, ("text", "text_pair"))
            first_names, second_names = self.raw_field_names()
            text = text_field(fields, where, *first_names)
            pair = text_field(fields, where, *second_names, required=False)
            if self.is_pair_task() and pair is None:
                raise DataError(f"{where}: task {self.name} reads a pair of texts: give text<TAB>second text "
                                f"(or JSON with \"text\" and \"text_pair\")")
            if not self.is_pair_task() and pair is not None:
                raise DataError(f"{where}: task {self.name} reads one text, but the line holds two")
            examples.append(PairExample(str(fields.get("id", first_index + len(examples))), text, pair, None, where))
        return examples

    def raw_records(self, examples, outputs, predictions) -> list[dict[str, Any]]:
        records = []
        for example, output, prediction in zip(examples, outputs, predictions):
            record: dict[str, Any] = {"id": example.guid, "text": example.text_a}
            if example.text_b is not None:
                record["text_pair"] = example.text_b
            if self.head == "regression":
                record["prediction"] = float(prediction)
            else:
                record["prediction"] = self.prediction_label(prediction)
                names = self.label_names() or []
                if self.head == "multi_label_classification":  # one independent sigmoid per label
                    sigmoid = 1 / (1 + np.exp(-np.asarray(output, dtype=np.float64)))
                    record["probabilities"] = {name: round(float(p), 6) for name, p in zip(names, sigmoid)}
                else:
                    record["probabilities"] = class_probabilities(output, names)
            records.append(record)
        return records

    def write_predictions(self, examples: list[PairExample], predictions: list, path: str | Path,
                          probabilities: Sequence[np.ndarray] | None = None) -> Path:
        """TSV `index<TAB>prediction` (the GLUE submission layout)."""
        path = Path(path)
        with open_for_writing(path) as f:
            f.write("index\tprediction\n")
            for example, prediction in zip(examples, predictions):
                f.write(f"{example.guid}\t{self.prediction_label(prediction)}\n")
        return path


# ---- the user's own files --------------------------------------------------------------------------
def read_table(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a CSV, TSV (with a header), JSONL or Parquet file as (where, {column: value}); where
    is "FILE:LINE", or "FILE: row N" for Parquet."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if is_parquet(path):
        rows = read_parquet_rows([path])
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = jsonl_objects(path, encoding="utf-8-sig")
    else:
        rows = read_delimited(path)
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def read_delimited(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a CSV or TSV file with a header as ("FILE:LINE", {column: text})."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    rows: list[tuple[str, dict[str, Any]]] = []
    with io.StringIO(read_data_text(path, encoding="utf-8-sig")) as f:
        # TSV as GLUE and most NLP data write it: fields split at tabs, quotes are text. With
        # CSV quoting, a '"' opening a field joined lines until the next one: RTE test.tsv
        # read as 2,985 rows instead of 3,000, the later ones misnumbered.
        reader = (csv.DictReader(f) if suffix == ".csv"
                  else csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file (expected a header row and data rows)")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} "
                                f"columns ({', '.join(reader.fieldnames)})")
            rows.append((f"{path}:{reader.line_num}", row))
    return rows


class CustomTask(SentencePairTask):
    """Shared by --task classification and --task regression."""

    @classmethod
    def add_arguments(cls, parser) -> None:
        group = parser.add_argument_group("custom data (--task classification|regression)")
        group.add_argument("--text-column", default="text", help="column with the (first) text")
        group.add_argument("--text-pair-column", default=None, help="column with the second text, if any")
        group.add_argument("--label-column", default="label", help="column with the label or score")
        group.add_argument("--id-column", default=None, help="column used as example id in predictions")

    def is_pair_task(self) -> bool:
        return bool(self.options.get("text_pair_column"))

    def raw_field_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        first, second = super().raw_field_names()
        column, pair_column = self.options.get("text_column", "text"), self.options.get("text_pair_column")
        return (*first, column), (*second, *([pair_column] if pair_column else []))

    def split_file(self, split: str) -> Path:
        chosen = {"train": self.options.train_file, "dev": self.options.dev_file,
                  "test": self.options.test_file}.get(split)
        if chosen is None:
            raise DataError(f"--task {self.name} reads explicit files: give --{split}-file")
        return Path(chosen)

    def read(self, split: str) -> list[PairExample]:
        path = self.split_file(split)
        text, pair = self.options.get("text_column", "text"), self.options.get("text_pair_column")
        label_col, id_col = self.options.get("label_column", "label"), self.options.get("id_column")
        examples = []
        for source, row in read_table(path):
            for column, flag in ((text, "--text-column"), (pair, "--text-pair-column")):
                if column is not None and column not in row:
                    raise DataError(f"{source}: no column {column!r} ({flag}; columns: {', '.join(map(str, row))})")
                if column is not None and row[column] is None:  # a null cell (JSON, Parquet), not the text "None"
                    raise DataError(f"{source}: {column!r} is null; every row needs its text")
            if split in ("train", "dev") and label_col in row and row[label_col] is None:
                raise DataError(f"{source}: {label_col!r} is null (every {split} row needs a label)")
            label = row.get(label_col)
            if label is not None:
                label = self.parse_label(label, source)
            if isinstance(label, str) and not label.strip() and split in ("train", "dev"):
                raise DataError(f"{source}: empty {label_col!r} (every {split} row needs a label)")
            # dev too: it is scored, and without labels fine-tuning failed at its first evaluation,
            # after training had begun, as an empty label cell here already does not.
            if split in ("train", "dev") and label is None:
                raise DataError(f"{source}: no column {label_col!r} (--label-column; every {split} row needs a label, "
                                f"columns: {', '.join(map(str, row))})")
            examples.append(PairExample(
                guid=str(row[id_col]) if id_col else str(len(examples)), text_a=str(row[text]),
                text_b=str(row[pair]) if pair else None, label=label, source=source))
        if split == "train" and self.head != "regression" and self._labels is None:
            self._labels = self.label_set(examples, path)
        return examples

    def parse_label(self, value: Any, source: str) -> Any:
        """A label cell as the example keeps it: a float for regression, else the class name."""
        if self.head != "regression":
            return str(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{source}: {self.options.get('label_column', 'label')}={value!r} is not a number") from None

    def label_set(self, examples: list[PairExample], path: Path) -> list[str]:
        """The classes, from the training examples (sorted)."""
        labels = sorted({e.label for e in examples})
        if len(labels) < 2:
            raise DataError(f"{path}: only one label ({labels[0]!r}) in the training file")
        return labels

    def prediction_cell(self, prediction: Any) -> str:
        """A prediction as a TSV prediction file's cell."""
        return str(prediction)

    def write_predictions(self, examples, predictions, path, probabilities=None) -> Path:
        """JSONL: id, prediction and (for classification) the probability of each label; a path
        ending in .tsv gets the same as tab-separated columns (id, prediction, p_<label>...)."""
        path = Path(path)
        names = self.label_names()
        records = []
        for i, (example, prediction) in enumerate(zip(examples, predictions)):
            record: dict[str, Any] = {"id": example.guid, "prediction": self.prediction_label(prediction)
                                      if names or self.head == "regression" else prediction}
            if self.head == "regression":
                record["prediction"] = float(prediction)
            if probabilities is not None and names:
                record["probabilities"] = {n: round(float(p), 6) for n, p in zip(names, probabilities[i])}
            records.append(record)
        with open_for_writing(path, newline="") as f:
            if path.suffix.lower() == ".tsv":
                with_probabilities = probabilities is not None and bool(names)
                f.write("\t".join(["id", "prediction", *(f"p_{n}" for n in names if with_probabilities)]) + "\n")
                for r in records:
                    f.write("\t".join([str(r["id"]), self.prediction_cell(r["prediction"]),
                                       *(str(v) for v in r.get("probabilities", {}).values())]) + "\n")
            else:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return path


@register("classification")
class CustomClassification(CustomTask):
    head = "sequence_classification"
    main_metric = "accuracy"

    def metrics(self, examples, predictions) -> dict[str, float]:
        gold = self.gold(examples)
        return {"accuracy": accuracy(predictions, gold),
                "macro_f1": macro_f1(predictions, gold)}  # over the classes present, as sklearn


@register("regression")
class CustomRegression(CustomTask):
    head = "regression"
    main_metric = "pearson"
    metric_kind = "corr"


@register("multilabel", "multi-label")
class CustomMultiLabel(CustomTask):
    """Any number of labels per text (none included). A label is predicted where its sigmoid
    probability exceeds 0.5. Main metric: micro-averaged F1 over all (text, label) decisions."""

    head = "multi_label_classification"
    main_metric = "micro_f1"

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--label-separator", default=",",
                            help="--task multilabel: splits a CSV/TSV label cell into labels (JSONL: a list)")

    def label_set(self, examples: list[PairExample], path: Path) -> list[str]:
        labels = sorted({label for e in examples for label in e.label})
        if not labels:
            raise DataError(f"{path}: no row has a label")
        return labels

    def parse_label(self, value: Any, source: str) -> tuple[str, ...]:
        """A JSON list (JSONL) or a cell split at --label-separator; an empty cell is no label."""
        if isinstance(value, list):
            labels = [str(v).strip() for v in value]
        elif isinstance(value, str):
            labels = [part.strip() for part in value.split(self.options.get("label_separator", ","))]
            labels = [label for label in labels if label]
        else:
            raise DataError(f"{source}: {self.options.get('label_column', 'label')}={value!r}: expected a list of "
                            f"labels or a text of labels separated by --label-separator")
        if len(set(labels)) != len(labels):
            raise DataError(f"{source}: a label is given twice ({', '.join(labels)})")
        return tuple(labels)

    def label_index(self, example: PairExample) -> list[float]:
        """The multi-hot target [C]."""
        names = self.label_names() or []
        unknown = [label for label in example.label if label not in names]
        if unknown:
            raise DataError(f"{example.source}: label {unknown[0]!r} is not in the label set of the training "
                            f"file ({', '.join(names)})")
        return [float(name in example.label) for name in names]

    def model_config_updates(self) -> dict[str, Any]:
        labels = self.label_names() or []
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "problem_type": "multi_label_classification"}

    def postprocess(self, examples, features, outputs) -> list[list[int]]:
        logits = np.stack(outputs)  # [N,C]; sigmoid(x) > 0.5 exactly where x > 0
        return [np.flatnonzero(row > 0).tolist() for row in logits]

    def placeholder_predictions(self, examples) -> list[list[int]]:
        return [[] for _ in examples]

    def metrics(self, examples, predictions) -> dict[str, float]:
        gold = self.gold(examples)
        predicted = [[float(i in p) for i in range(len(self.label_names() or []))] for p in predictions]
        return multilabel_scores(predicted, gold)

    def prediction_label(self, prediction) -> list[str]:
        names = self.label_names() or []
        return [names[i] for i in prediction]

    def prediction_cell(self, prediction: list[str]) -> str:
        """The predicted labels joined by --label-separator (JSONL files hold them as a list)."""
        return self.options.get("label_separator", ",").join(prediction)
