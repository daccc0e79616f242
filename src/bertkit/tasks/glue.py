"""The GLUE benchmark: nine tasks plus the AX diagnostic set, read from the standard
`glue_data/<TASK>/` layout that GLUE's download script writes, or from the Parquet files of the
Hugging Face Hub's nyu-mll/glue (`sst2/train-00000-of-00001.parquet`, ...; labels as class indices).

Quirks handled: CoLA train/dev have no header (columns: source, label, original label, sentence);
MRPC files begin with a UTF-8 byte-order mark; MNLI has matched and mismatched dev/test files and
reports both accuracies; STS-B is regression (declared, MSE head); AX is predicted with an MNLI model.
Prediction files are named and formatted as the GLUE server expects (`index<TAB>prediction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertkit.metrics.glue import accuracy
from bertkit.tasks.base import (HUB_SPLITS, DataError, file_lines, hub_split_files, is_parquet, read_data_text,
                                read_parquet_rows, register)
from bertkit.tasks.classification import PairExample, SentencePairTask


@dataclass(frozen=True)
class Columns:
    """Where the fields are: header names (or positions for CoLA's headerless files)."""

    text_a: str | int
    text_b: str | int | None
    label: str | int | None
    guid: str | int | None = "index"


def read_glue_tsv(path: Path, columns: Columns, has_header: bool, also_looked: str = "") -> list[PairExample]:
    """`also_looked`: where else the split was looked for, for the not-found message."""
    if not path.is_file():
        if not path.parent.is_dir():
            raise DataError(f"{path}: split file not found: the directory {path.parent} does not exist "
                            f"(check --data-dir)")
        siblings = sorted(p.name for p in path.parent.glob("*.tsv"))
        raise DataError(f"{path}: split file not found (files there: {', '.join(siblings) or 'none'}){also_looked}")
    # utf-8-sig drops MRPC's byte-order mark; GLUE text contains quotes, so no CSV quoting rules.
    lines = file_lines(read_data_text(path, encoding="utf-8-sig"))
    if not lines or (has_header and len(lines) == 1):
        raise DataError(f"{path}: empty file (expected {'a header and ' if has_header else ''}data rows)")
    header = lines[0].split("\t") if has_header else None

    def position(name: str | int | None) -> int | None:
        if name is None or isinstance(name, int):
            return name
        if name not in header:
            raise DataError(f"{path}:1: header has no column {name!r} (found: {', '.join(header)})")
        return header.index(name)

    a, b, y, g = (position(c) for c in (columns.text_a, columns.text_b, columns.label, columns.guid))
    needed = max(p for p in (a, b, y, g) if p is not None) + 1
    examples = []
    for line_no, line in enumerate(lines[1:] if has_header else lines, 2 if has_header else 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < needed:
            raise DataError(f"{path}:{line_no}: expected at least {needed} tab-separated columns, "
                            f"found {len(cells)}")
        examples.append(PairExample(
            guid=cells[g] if g is not None else str(len(examples)), text_a=cells[a],
            text_b=cells[b] if b is not None else None, label=cells[y] if y is not None else None,
            source=f"{path}:{line_no}"))
    return examples


def is_mismatched(example: PairExample) -> bool:
    """An MNLI example of a mismatched file (MNLI.read marks their ids)."""
    return example.guid.startswith("mm:")


class GlueTask(SentencePairTask):
    directory: str = ""  # folder name inside glue_data
    submission_name: str = ""  # file name the GLUE server expects for test predictions
    train_columns: Columns
    test_columns: Columns
    # The Hub's nyu-mll/glue: its folder, text columns, and class names in the order of its label
    # indices (None: the task's own `labels` order, which is the Hub's for all but MNLI and AX).
    hub_config: str = ""
    hub_columns: tuple[str, str | None] = ("sentence", None)
    hub_labels: tuple[str, ...] | None = None

    def task_dir(self) -> Path:
        if not self.options.data_dir:
            raise DataError(f"--task {self.name} needs --data-dir (the {self.directory}/ folder of glue_data, "
                            f"or glue_data itself)")
        root = Path(self.options.data_dir)
        return root / self.directory if (root / self.directory).is_dir() else root

    def split_path(self, split: str) -> Path:
        explicit = {"train": self.options.train_file, "dev": self.options.dev_file,
                    "test": self.options.test_file}.get(split)
        if explicit:
            return Path(explicit)
        if split not in self.splits:
            raise DataError(f"--task {self.name} has no split {split!r}; valid: {', '.join(self.splits)}")
        return self.task_dir() / f"{split}.tsv"

    def is_pair_task(self) -> bool:
        return self.train_columns.text_b is not None

    def raw_field_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        first, second = super().raw_field_names()
        own = [(c.text_a, c.text_b) for c in (self.train_columns, self.test_columns)] + [self.hub_columns]
        return ((*first, *(a for a, _ in own if isinstance(a, str))),
                (*second, *(b for _, b in own if isinstance(b, str))))

    def read(self, split: str) -> list[PairExample]:
        examples = self.read_split(split, has_header=True)
        self.check(examples)
        return examples

    def read_split(self, split: str, has_header: bool) -> list[PairExample]:
        """The split's rows from the Hub's Parquet files where they are given or found, else from
        glue_data's TSV file."""
        hub_files = self.hub_files(split)
        if hub_files:
            return self.read_hub(hub_files, split)
        is_test = split.startswith("test")
        also_looked = ""
        if self.options.data_dir and not self.explicit_file(split):
            folders = " or ".join(str(d) for d in self.hub_folders())
            also_looked = f"; nor the Hub's nyu-mll/glue Parquet files of {self.hub_split(split)} in {folders}"
        return read_glue_tsv(self.split_path(split), self.test_columns if is_test else self.train_columns,
                             has_header=has_header, also_looked=also_looked)

    def explicit_file(self, split: str) -> str | None:
        return {"train": self.options.train_file, "dev": self.options.dev_file,
                "test": self.options.test_file}.get(split.split("_")[0])

    def hub_split(self, split: str) -> str:
        part, _, half = split.partition("_")  # MNLI's dev_matched -> validation_matched
        return HUB_SPLITS[part] + (f"_{half}" if half else "")

    def hub_folders(self) -> tuple[Path, Path]:
        root = Path(self.options.data_dir or ".")
        return root / self.hub_config, root

    def hub_files(self, split: str) -> list[Path]:
        """Parquet files for `split`: an explicit --{split}-file that is Parquet, or, when the TSV
        is not in --data-dir, nyu-mll/glue's files for it in --data-dir/<config> or --data-dir."""
        explicit = self.explicit_file(split)
        if explicit:
            return [Path(explicit)] if is_parquet(Path(explicit)) else []
        if not self.options.data_dir or split not in self.splits or self.split_path(split).is_file():
            return []
        for directory in self.hub_folders():
            found = hub_split_files(directory, self.hub_split(split))
            if found:
                return found
        return []

    def read_hub(self, files: list[Path], split: str) -> list[PairExample]:
        """nyu-mll/glue rows: the task's text columns, `label` (a class index; -1 on the unlabelled
        test rows; STS-B's score) and `idx` (the GLUE submission's index)."""
        text_a, text_b = self.hub_columns
        names = self.hub_labels or self.labels
        examples = []
        for where, row in read_parquet_rows(files):
            missing = [c for c in (text_a, text_b, "label") if c is not None and c not in row]
            if missing:
                raise DataError(f"{where}: no column {', '.join(map(repr, missing))} (columns: {', '.join(row)}); "
                                f"expected the columns of the Hub's glue/{self.hub_config}")
            null = next((c for c in (text_a, text_b) if c is not None and row[c] is None), None)
            if null is not None:
                raise DataError(f"{where}: {null!r} is null; every row needs its text")
            label = row["label"]
            if label is None or label == -1:
                if not split.startswith("test"):
                    raise DataError(f"{where}: label {label} (the Hub's mark of an unlabelled test row) in the "
                                    f"{split} split; every {split} row needs a label")
                label = None
            elif self.head == "regression":
                label = float(label)
            elif not isinstance(label, int) or not 0 <= label < len(names):
                raise DataError(f"{where}: label {label!r} is not a class index 0..{len(names) - 1} "
                                f"({', '.join(names)})")
            else:
                label = names[label]
            examples.append(PairExample(
                guid=str(row.get("idx", len(examples))), text_a=str(row[text_a]),
                text_b=str(row[text_b]) if text_b is not None else None, label=label, source=where))
        if not examples:
            raise DataError(f"{files[0]}{f' (+{len(files) - 1} more)' if len(files) > 1 else ''}: no rows")
        return examples

    def check(self, examples: list[PairExample]) -> None:
        """Validate labels up front so a bad row fails before any training starts."""
        for example in examples:
            if example.label is None:
                continue
            if self.head == "regression":
                try:
                    example.label = float(example.label)
                except ValueError:
                    raise DataError(f"{example.source}: score {example.label!r} is not a number") from None
            else:
                self.label_index(example)


@register("cola")
class CoLA(GlueTask):
    directory, submission_name = "CoLA", "CoLA.tsv"
    hub_config, hub_columns = "cola", ("sentence", None)
    labels, metric_kind, main_metric = ("0", "1"), "mcc", "mcc"
    train_columns = Columns(text_a=3, text_b=None, label=1, guid=None)
    test_columns = Columns(text_a="sentence", text_b=None, label=None)

    def read(self, split: str) -> list[PairExample]:
        examples = self.read_split(split, has_header=split.startswith("test"))
        self.check(examples)
        return examples


@register("sst2", "sst-2")
class SST2(GlueTask):
    directory, submission_name = "SST-2", "SST-2.tsv"
    hub_config, hub_columns = "sst2", ("sentence", None)
    labels = ("0", "1")
    train_columns = Columns(text_a="sentence", text_b=None, label="label", guid=None)
    test_columns = Columns(text_a="sentence", text_b=None, label=None)


@register("mrpc")
class MRPC(GlueTask):
    directory, submission_name = "MRPC", "MRPC.tsv"
    hub_config, hub_columns = "mrpc", ("sentence1", "sentence2")
    labels, metric_kind, main_metric = ("0", "1"), "acc_f1", "f1"
    train_columns = Columns(text_a="#1 String", text_b="#2 String", label="Quality", guid=None)
    test_columns = Columns(text_a="#1 String", text_b="#2 String", label=None)


@register("stsb", "sts-b")
class STSB(GlueTask):
    directory, submission_name = "STS-B", "STS-B.tsv"
    hub_config, hub_columns = "stsb", ("sentence1", "sentence2")
    head, labels, metric_kind, main_metric = "regression", None, "corr", "pearson"
    score_range = (0.0, 5.0)  # the gold similarity scale (Cer et al. 2017)
    train_columns = Columns(text_a="sentence1", text_b="sentence2", label="score")
    test_columns = Columns(text_a="sentence1", text_b="sentence2", label=None)


@register("qqp")
class QQP(GlueTask):
    directory, submission_name = "QQP", "QQP.tsv"
    hub_config, hub_columns = "qqp", ("question1", "question2")
    labels, metric_kind, main_metric = ("0", "1"), "acc_f1", "f1"
    train_columns = Columns(text_a="question1", text_b="question2", label="is_duplicate", guid="id")
    test_columns = Columns(text_a="question1", text_b="question2", label=None, guid="id")


@register("qnli")
class QNLI(GlueTask):
    directory, submission_name = "QNLI", "QNLI.tsv"
    hub_config, hub_columns = "qnli", ("question", "sentence")
    labels = ("entailment", "not_entailment")
    train_columns = Columns(text_a="question", text_b="sentence", label="label")
    test_columns = Columns(text_a="question", text_b="sentence", label=None)


@register("rte")
class RTE(GlueTask):
    directory, submission_name = "RTE", "RTE.tsv"
    hub_config, hub_columns = "rte", ("sentence1", "sentence2")
    labels = ("entailment", "not_entailment")
    train_columns = Columns(text_a="sentence1", text_b="sentence2", label="label")
    test_columns = Columns(text_a="sentence1", text_b="sentence2", label=None)


@register("wnli")
class WNLI(GlueTask):
    directory, submission_name = "WNLI", "WNLI.tsv"
    hub_config, hub_columns = "wnli", ("sentence1", "sentence2")
    labels = ("0", "1")
    train_columns = Columns(text_a="sentence1", text_b="sentence2", label="label")
    test_columns = Columns(text_a="sentence1", text_b="sentence2", label=None)


MNLI_LABELS = ("contradiction", "entailment", "neutral")
HUB_NLI_LABELS = ("entailment", "neutral", "contradiction")  # the Hub's label indices 0, 1, 2


@register("mnli")
class MNLI(GlueTask):
    """`dev` and `test` cover both the matched and the mismatched file: metrics report
    `accuracy` (matched, the main metric) and `accuracy_mm`; test predictions go to MNLI-m.tsv and
    MNLI-mm.tsv. `dev_matched`, `dev_mismatched`, `test_matched`, `test_mismatched` read one file;
    a mismatched one reports `accuracy_mm` only and predicts into MNLI-mm.tsv (MNLI-mm.dev.tsv for dev)."""

    directory, submission_name = "MNLI", "MNLI-m.tsv"
    hub_config, hub_columns = "mnli", ("premise", "hypothesis")
    hub_labels = HUB_NLI_LABELS
    mismatched_submission_name = "MNLI-mm.tsv"
    labels = MNLI_LABELS
    splits = ("train", "dev", "test", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
    train_columns = Columns(text_a="sentence1", text_b="sentence2", label="gold_label")
    test_columns = Columns(text_a="sentence1", text_b="sentence2", label=None)

    def read(self, split: str) -> list[PairExample]:
        if split in ("dev", "test") and not getattr(self.options, f"{split}_file"):
            return super().read(f"{split}_matched") + self.read(f"{split}_mismatched")
        examples = super().read(split)
        if split.endswith("_mismatched"):  # the mark that metrics and prediction files go by
            for e in examples:
                e.guid = f"mm:{e.guid}"
        if split == "dev_mismatched":
            # Its metrics hold accuracy_mm alone: fine-tuning with --eval-split dev_mismatched keeps
            # the best model by it (with "accuracy" the trainer found nothing and kept the last).
            self.main_metric = "accuracy_mm"
        return examples

    def metrics(self, examples, predictions) -> dict[str, float]:
        gold = self.gold(examples)
        is_mm = [is_mismatched(e) for e in examples]
        m = [(p, y) for p, y, mm in zip(predictions, gold, is_mm) if not mm]
        mm = [(p, y) for p, y, flag in zip(predictions, gold, is_mm) if flag]
        out = {}
        if m or not mm:
            out["accuracy"] = accuracy(*zip(*m)) if m else 0.0
        if mm:
            out["accuracy_mm"] = accuracy(*zip(*mm))
        return out

    def write_predictions(self, examples, predictions, path, probabilities=None) -> list[Path]:
        """The matched rows to `path`, the mismatched ones beside it (mismatched_path); a split of
        one half goes to `path` whole. Returns the files written."""
        path = Path(path)
        pairs = list(zip(examples, predictions))
        matched = [(e, p) for e, p in pairs if not is_mismatched(e)]
        mismatched = [(PairExample(e.guid[3:], e.text_a, e.text_b, e.label, e.source), p)
                      for e, p in pairs if is_mismatched(e)]

        def write(rows, target: Path) -> Path:
            return super(MNLI, self).write_predictions([e for e, _ in rows], [p for _, p in rows], target)

        if not matched or not mismatched:
            return [write(matched or mismatched, path)]
        return [write(matched, path), write(mismatched, mismatched_path(path))]


def mismatched_path(matched: Path) -> Path:
    """Where MNLI's mismatched predictions go when `matched` receives the matched ones: GLUE's name
    for the submission (MNLI-m.tsv -> MNLI-mm.tsv), the split kept for others (MNLI-m.dev.tsv ->
    MNLI-mm.dev.tsv), and `-mm` added to any other name (preds.tsv -> preds-mm.tsv)."""
    if matched.name.startswith("MNLI-m."):
        return matched.with_name("MNLI-mm." + matched.name[len("MNLI-m."):])
    return matched.with_name(f"{matched.stem}-mm{matched.suffix}")


@register("ax")
class AX(GlueTask):
    """GLUE's diagnostic set: unlabeled, predicted with a model fine-tuned on MNLI
    (`bertkit predict --task ax --model MNLI_RUN --data-dir glue_data --split test`)."""

    directory, submission_name = "diagnostic", "AX.tsv"
    hub_config, hub_columns = "ax", ("premise", "hypothesis")
    hub_labels = HUB_NLI_LABELS
    labels = MNLI_LABELS
    splits = ("test",)
    test_columns = Columns(text_a="sentence1", text_b="sentence2", label=None)
    train_columns = test_columns

    def split_path(self, split: str) -> Path:
        if split != "test":
            raise DataError("--task ax has only a test split (the diagnostic set); train on --task mnli")
        return Path(self.options.test_file) if self.options.test_file else self.task_dir() / "diagnostic.tsv"
