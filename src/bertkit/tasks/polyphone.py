"""Chinese polyphone disambiguation: pick the reading (pinyin + tone) of one marked character.

Data formats
------------
g2pM / CPP / g2pL layout: `DIR/{train,dev,test}.sent` with the target character wrapped in
U+2581 markers, and line i of `DIR/<split>.lb` holding its reading:

    train.sent:  她挽起袖子，找了一块▁抹▁布，麻利的行动起来。
    train.lb:    ma1

JSONL (`bertkit polyphone-convert` translates both ways), one object per line:

    {"text": "她挽起袖子，找了一块抹布，麻利的行动起来。", "position": 10, "label": "ma1"}

`position` counts characters (Python str indices) of `text`; "label" may be missing for
unlabelled data; "id" is optional.

Labels keep the dataset's spelling; ü is written "u:" (CPP: `lu:4`, `nu:e4`). Readings from a
user dictionary are normalised to that spelling (`lv4`, `lü4` -> `lu:4`).

Model inputs
------------
The head (`BertForPolyphone`) reads the encoder vector at `target_positions` [B] and scores all C
readings; `candidate_mask` [B, C] (bool) keeps only the readings the character can have, so a
character never takes another character's reading. Candidates come from the training split,
optionally extended by `--polyphone-dict FILE` (lines `char<TAB>reading1 reading2 ...`).

Evaluation
----------
A gold reading the model cannot produce (never seen for that character in train/dictionary, or
absent from the label set) is counted as wrong and reported in `metrics()["unpredictable"]`; its
feature label is -100 so it does not distort the evaluation loss. `metrics()` stays flat
(floats only, so the trainer can log it); the per-character breakdown is `per_char_accuracy()`
and is written by `write_predictions` to `<stem>.per_char.tsv`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bertkit.tasks.base import (DataError, Task, class_probabilities, open_for_writing, pad_sequences,
                                raw_input_fields, read_data_text, register)

MARK = "\u2581"  # ▁, wraps the target character in *.sent files
READING_RE = re.compile(r"[a-z]+(?::[a-z]*)?[1-5]")  # pinyin letters (ü as "u:") + tone 1-5


@dataclass
class PolyphoneExample:
    """One sentence with one target character."""

    id: str  # "<file>:<line>" or the JSONL "id"
    text: str  # the sentence without markers
    position: int  # index of the target character in `text`
    label: str | None  # gold reading such as "le5"; None when unlabelled

    @property
    def char(self) -> str:
        return self.text[self.position]

    def marked_text(self) -> str:
        """The sentence with the target wrapped in ▁ markers (the .sent form)."""
        return self.text[: self.position] + MARK + self.char + MARK + self.text[self.position + 1:]


# ---- pinyin spelling ----------------------------------------------------------------------------

def normalize_reading(reading: str) -> str:
    """One spelling for a reading: lower case, ü/v/u: written "u:" as in the CPP/g2pM labels.

    `pypinyin` writes lü4 as "lv4" (TONE3 style) and users write "lü4"; the datasets write "lu:4".
    Only ü-capable initials (n, l, and j/q/x/y where "u" already means ü) carry the colon in the
    datasets, and only n/l are ambiguous, so only "v"/"ü" are rewritten."""
    reading = reading.strip().lower().replace("ü", "u:").replace("v", "u:")
    return reading.replace("u::", "u:")


def check_reading(reading: str, where: str) -> str:
    if not READING_RE.fullmatch(reading):
        raise DataError(f"{where}: reading {reading!r} is not pinyin with a tone digit 1-5 "
                        f"(expected e.g. 'le5', 'lu:4')")
    return reading


# ---- readers and writers (shared with the converter and the benchmark) --------------------------

def parse_marked(line: str, where: str) -> tuple[str, int]:
    """'...▁X▁...' -> (text without markers, index of X). Exactly one marked character."""
    count = line.count(MARK)
    if count != 2:
        what = "no marked character" if count == 0 else f"{count} '▁' markers"
        raise DataError(f"{where}: {what}; expected exactly one character wrapped as ▁X▁ "
                        f"(U+2581 on both sides)")
    first = line.index(MARK)
    second = line.index(MARK, first + 1)
    if second != first + 2:
        raise DataError(f"{where}: {second - first - 1} characters between the ▁ markers "
                        f"({line[first + 1:second]!r}); expected exactly one")
    return line[:first] + line[first + 1] + line[second + 1:], first


def _read_lines(path: Path) -> list[str]:
    lines = read_data_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line.rstrip("\r") for line in lines]


def read_sent_lb(prefix: str | Path) -> list[PolyphoneExample]:
    """Read `<prefix>.sent` and `<prefix>.lb` (the .lb may be absent: unlabelled examples)."""
    prefix = Path(prefix)
    sent_path, lb_path = Path(f"{prefix}.sent"), Path(f"{prefix}.lb")
    if not sent_path.is_file():
        raise FileNotFoundError(f"{sent_path} not found (expected <prefix>.sent with <prefix>.lb)")
    sents = _read_lines(sent_path)
    labels: list[str | None] = [None] * len(sents)
    if lb_path.is_file():
        lbs = _read_lines(lb_path)
        if len(lbs) != len(sents):
            line = min(len(lbs), len(sents)) + 1
            longer, shorter = (sent_path, lb_path) if len(sents) > len(lbs) else (lb_path, sent_path)
            raise DataError(f"{sent_path} has {len(sents)} lines but {lb_path} has {len(lbs)}: "
                            f"line {line} of {longer} has no counterpart in {shorter}")
        labels = [check_reading(lb.strip(), f"{lb_path}:{i + 1}") for i, lb in enumerate(lbs)]
    examples = []
    for i, (sent, label) in enumerate(zip(sents, labels)):
        where = f"{sent_path}:{i + 1}"
        text, position = parse_marked(sent, where)
        examples.append(PolyphoneExample(id=f"{sent_path.name}:{i + 1}", text=text,
                                         position=position, label=label))
    return examples


def read_jsonl(path: str | Path) -> list[PolyphoneExample]:
    path = Path(path)
    examples = []
    for i, line in enumerate(_read_lines(path)):
        where = f"{path}:{i + 1}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f"{where}: expected an object with a string 'text', 'position' and 'label'")
        text, position, label = obj["text"], obj.get("position"), obj.get("label")
        if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < len(text):
            raise DataError(f"{where}: 'position' must be a character index in 0..{len(text) - 1}, "
                            f"got {position!r}")
        if MARK in text:
            raise DataError(f"{where}: 'text' contains the marker character ▁ (U+2581); give the plain "
                            f"sentence and the index in 'position'")
        if label is not None:
            if not isinstance(label, str):
                raise DataError(f"{where}: 'label' must be a string such as 'le5', got {label!r}")
            label = check_reading(label.strip(), where)
        examples.append(PolyphoneExample(id=str(obj.get("id", f"{path.name}:{i + 1}")), text=text,
                                         position=position, label=label))
    return examples


def read_examples(source: str | Path) -> list[PolyphoneExample]:
    """A `.jsonl` file or a `.sent`/`.lb` prefix (a path to either file also works)."""
    source = Path(source)
    if source.suffix == ".jsonl":
        if not source.is_file():
            raise FileNotFoundError(f"{source} not found")
        return read_jsonl(source)
    if source.suffix in (".sent", ".lb"):
        source = source.with_suffix("")
    return read_sent_lb(source)


def write_sent_lb(examples: Sequence[PolyphoneExample], prefix: str | Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    if prefix.suffix in (".sent", ".lb"):
        prefix = prefix.with_suffix("")
    sent_path, lb_path = Path(f"{prefix}.sent"), Path(f"{prefix}.lb")
    for ex in examples:
        if MARK in ex.text:
            raise DataError(f"example {ex.id}: text contains ▁ (U+2581), which would make the .sent "
                            f"line ambiguous")
        if ex.label is None:
            raise DataError(f"example {ex.id}: no label; a .lb file needs one reading per line")
    sent_path.parent.mkdir(parents=True, exist_ok=True)
    sent_path.write_text("".join(ex.marked_text() + "\n" for ex in examples), encoding="utf-8")
    lb_path.write_text("".join(f"{ex.label}\n" for ex in examples), encoding="utf-8")
    return sent_path, lb_path


def write_jsonl(examples: Sequence[PolyphoneExample], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            obj: dict[str, Any] = {"text": ex.text, "position": ex.position}
            if ex.label is not None:
                obj["label"] = ex.label
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


def read_polyphone_dict(path: str | Path) -> dict[str, tuple[list[str], int]]:
    """`char<TAB>reading1 reading2 ...` per line -> {char: (readings, line number)}.
    Blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--polyphone-dict {path} not found")
    entries: dict[str, tuple[list[str], int]] = {}
    for i, line in enumerate(_read_lines(path)):
        where = f"{path}:{i + 1}"
        if not line.strip() or line.startswith("#"):
            continue
        char, sep, rest = line.partition("\t")
        char = char.strip()
        if not sep or len(char) != 1 or not rest.split():
            raise DataError(f"{where}: expected 'char<TAB>reading1 reading2 ...' with one character, "
                            f"got {line!r}")
        if char in entries:
            raise DataError(f"{where}: {char!r} is listed again (first at line {entries[char][1]}); "
                            f"merge the readings into one line")
        readings = [check_reading(normalize_reading(r), where) for r in rest.split()]
        entries[char] = (readings, i + 1)
    return entries


def majority_readings(examples: Sequence[PolyphoneExample]) -> dict[str, str]:
    """Most frequent reading of each character (ties: the alphabetically first, for determinism)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for ex in examples:
        if ex.label is not None:
            counts[ex.char][ex.label] += 1
    return {c: min(cnt, key=lambda r: (-cnt[r], r)) for c, cnt in counts.items()}


# ---- the task -----------------------------------------------------------------------------------

@register("polyphone")
class PolyphoneTask(Task):
    head = "polyphone"
    main_metric = "accuracy"
    prediction_suffix = ".lb"  # one reading per line, as the data's .lb label files

    def __init__(self, options):
        super().__init__(options)
        self._candidates: dict[str, set[str]] | None = None  # char -> readings it may take
        self._train_counts: Counter | None = None  # reading -> count in train (class weights)
        self.unk_targets = 0  # targets the vocab maps to [UNK] in the last encode()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("polyphone")
        group.add_argument("--polyphone-dict", default=None, metavar="FILE",
                           help="extra candidate readings, lines 'char<TAB>reading1 reading2 ...'")
        group.add_argument("--no-logit-mask", action="store_true",
                           help="score all readings instead of only the character's candidates")
        group.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                           help="'balanced': loss weight of each reading ~ 1 / its train frequency")
        group.add_argument("--test-set", default=None, metavar="NAME_OR_FILE",
                           help="what read('test') reads: a split name in --data-dir, a directory "
                                "with test.sent/.lb, a .sent/.lb prefix or a .jsonl file")

    # ---- data -----------------------------------------------------------------------------------
    def _source(self, split: str) -> Path:
        opts = self.options
        explicit = {"train": opts.train_file, "dev": opts.dev_file, "test": opts.test_file}.get(split)
        if split == "test" and opts.get("test_set"):
            explicit = opts.get("test_set")
        if explicit:
            path = Path(explicit)
            if path.is_dir():
                return path / "test" if split == "test" else path / split
            if (path.suffix in (".jsonl", ".sent", ".lb") or Path(f"{path}.sent").is_file()
                    or opts.data_dir is None):
                return path
            return Path(opts.data_dir) / str(explicit)  # a split name such as "dev"
        if opts.data_dir is None:
            raise ValueError(f"polyphone: no data for split {split!r}; give --data-dir DIR (with "
                             f"{split}.sent/.lb or {split}.jsonl) or --{split}-file")
        base = Path(opts.data_dir)
        return base / f"{split}.jsonl" if (base / f"{split}.jsonl").is_file() else base / split

    def read(self, split: str) -> list[PolyphoneExample]:
        if split not in self.splits:
            raise ValueError(f"polyphone: unknown split {split!r}; valid: {', '.join(self.splits)}")
        source = self._source(split)
        examples = read_examples(source)
        unlabelled = next((ex for ex in examples if ex.label is None), None)
        if split in ("train", "dev") and unlabelled is not None:
            # Found here, not at the first evaluation after training had begun.
            raise DataError(f"polyphone {split} data {source}: example {unlabelled.id} has no label; the {split} "
                            f"split is {'trained on' if split == 'train' else 'scored'}, so it needs its readings "
                            f"(a .lb file beside the .sent, or a 'label' in each .jsonl line)")
        return examples

    def _ensure_vocab(self) -> None:
        """Build the label set and candidate readings from train (+ dictionary) once."""
        if self._candidates is not None:
            return
        train = self.read("train")
        candidates: dict[str, set[str]] = defaultdict(set)
        where: dict[tuple[str, str], str] = {}
        for ex in train:
            if ex.label is None:
                raise DataError(f"train example {ex.id} has no label")
            candidates[ex.char].add(ex.label)
            where.setdefault((ex.char, ex.label), ex.id)
        dict_path = self.options.get("polyphone_dict")
        if dict_path:
            for char, (readings, line) in read_polyphone_dict(dict_path).items():
                # A dictionary that lists a character claims to know all its readings; a training
                # label outside that list means the data and the dictionary disagree.
                missing = sorted(candidates.get(char, set()) - set(readings))
                if missing:
                    raise DataError(f"{dict_path}:{line}: {char!r} lists {' '.join(readings)} but train "
                                    f"example {where[(char, missing[0])]} reads it {missing[0]!r}; "
                                    f"add the reading to the dictionary or fix the label")
                candidates[char].update(readings)
        self._candidates = dict(candidates)
        self._train_counts = Counter(ex.label for ex in train)
        if self._labels is None:
            self._labels = sorted(set().union(*self._candidates.values()))

    def state_dict(self) -> dict[str, Any]:
        """Each character's candidate readings and the training label counts (for class weights)."""
        self._ensure_vocab()
        return {"candidates": {c: sorted(r) for c, r in sorted(self._candidates.items())},
                "train_counts": dict(self._train_counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "candidates" in state:
            self._candidates = {c: set(r) for c, r in state["candidates"].items()}
            self._train_counts = Counter(state.get("train_counts", {}))

    def label_names(self) -> list[str]:
        self._ensure_vocab()
        return list(self._labels or [])

    def candidates(self, char: str) -> set[str]:
        """Readings `char` may take (empty for a character never seen in train or dictionary)."""
        self._ensure_vocab()
        return self._candidates.get(char, set())

    @property
    def use_logit_mask(self) -> bool:
        return not self.options.get("no_logit_mask", False)

    def class_weights(self) -> torch.Tensor | None:
        """[C] float weights for the loss, or None. 'balanced': w_c ∝ 1 / n_c, scaled so the mean
        weight over training examples is 1 (as sklearn's 'balanced'); readings with no training
        example (dictionary only) get the largest weight."""
        if self.options.get("class_weights", "none") in (None, "none"):
            return None
        labels = self.label_names()
        counts = np.array([self._train_counts.get(label, 0) for label in labels], dtype=np.float64)
        present = counts > 0
        weights = np.zeros_like(counts)
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
        weights[~present] = weights[present].max()
        return torch.tensor(weights, dtype=torch.float)

    # ---- features -------------------------------------------------------------------------------
    def encode(self, examples: list[PolyphoneExample], tokenizer, max_seq_length: int) -> list[dict[str, Any]]:
        """Each feature: `input_ids`/`token_type_ids` ([CLS] text [SEP], cut to a window around the
        target when longer than max_seq_length), `target_position` (index of the target's token),
        `candidates` (label indices the character may take), `labels` (-100 when unpredictable),
        `example_index`."""
        if max_seq_length < 3:
            raise ValueError(f"--max-seq-length {max_seq_length} leaves no room for the sentence")
        labels = self.label_names()
        index = {label: i for i, label in enumerate(labels)}
        cls_id, sep_id, unk_id = (_special_id(tokenizer, t) for t in ("[CLS]", "[SEP]", "[UNK]"))
        encodings = tokenizer.encode_batch([ex.text for ex in examples])
        budget = max_seq_length - 2
        features = []
        self.unk_targets = 0
        for i, (ex, enc) in enumerate(zip(examples, encodings)):
            # Each Encoding attribute access copies the whole list out of Rust: read each once.
            all_ids, all_offsets = enc.ids, enc.offsets
            content = [t for t, special in enumerate(enc.special_tokens_mask) if not special]
            ids = [all_ids[t] for t in content]
            offsets = [all_offsets[t] for t in content]
            hits = [k for k, (start, end) in enumerate(offsets) if start <= ex.position < end]
            if not hits:
                raise DataError(f"example {ex.id}: the tokenizer dropped the target character "
                                f"{ex.char!r} at {ex.position} (no token covers it)")
            target = hits[0]
            start, end = offsets[target]
            if (start, end) != (ex.position, ex.position + 1):
                raise DataError(f"example {ex.id}: the target {ex.char!r} is merged into the token "
                                f"{ex.text[start:end]!r}; BERT splits Chinese characters one per token, "
                                f"so the vocabulary or normaliser does not fit this data")
            if ids[target] == unk_id:
                self.unk_targets += 1  # still usable: the candidate mask carries the identity
            # Keep the target inside the window: centre it, then shift the window into range.
            lo = max(0, min(target - budget // 2, len(ids) - budget))
            ids = ids[lo: lo + budget]
            cands = sorted(index[r] for r in self.candidates(ex.char) if r in index)
            label = -100
            if ex.label is not None and ex.label in index:
                predictable = not self.use_logit_mask or not cands or index[ex.label] in cands
                label = index[ex.label] if predictable else -100
            features.append({
                "input_ids": [cls_id] + ids + [sep_id],
                "token_type_ids": [0] * (len(ids) + 2),
                "target_position": target - lo + 1,  # +1 for [CLS]
                "candidates": cands,
                "labels": label,
                "example_index": i,
            })
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """-> input_ids/token_type_ids/attention_mask [B,T], target_positions [B], labels [B],
        candidate_mask [B,C] bool (unless --no-logit-mask), class_weights [C] (when set)."""
        batch = {
            "input_ids": pad_sequences([f["input_ids"] for f in features]),
            "token_type_ids": pad_sequences([f["token_type_ids"] for f in features]),
            "attention_mask": pad_sequences([[1] * len(f["input_ids"]) for f in features]),
            "target_positions": torch.tensor([f["target_position"] for f in features], dtype=torch.long),
            "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
        }
        if self.use_logit_mask:
            batch["candidate_mask"] = self.candidate_mask(features)
        weights = self.class_weights()
        if weights is not None:
            batch["class_weights"] = weights
        return batch

    def candidate_mask(self, features: Sequence[dict[str, Any]]) -> torch.Tensor:
        """[B, C] bool, True where the reading is a candidate of the feature's character. A
        character with no known candidates gets an all-True row: nothing is known to exclude, and
        an all-False row would turn the softmax into a uniform guess."""
        mask = torch.zeros(len(features), len(self.label_names()), dtype=torch.bool)
        for row, f in enumerate(features):
            if f["candidates"]:
                mask[row, f["candidates"]] = True
            else:
                mask[row] = True
        return mask

    def feature_length(self, feature: dict[str, Any]) -> int:
        return len(feature["input_ids"])

    # ---- evaluation -----------------------------------------------------------------------------
    def postprocess(self, examples, features, outputs) -> list[int]:
        """Argmax over the candidates (the head already masks them; masking again keeps the rule
        even for logits from elsewhere, e.g. an unmasked export) -> one label index per example."""
        logits = np.stack(outputs).astype(np.float64)  # [N, C]
        if self.use_logit_mask:
            logits = np.where(self.candidate_mask(features).numpy(), logits, -np.inf)
        predictions = [0] * len(examples)
        for f, row in zip(features, logits.argmax(-1)):
            predictions[f["example_index"]] = int(row)
        return predictions

    raw_input = "a sentence with the character to read wrapped as ▁X▁ (the .sent form), or JSON {\"text\", \"position\"}"

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[PolyphoneExample]:
        examples = []
        for where, line in lines:
            if line.lstrip().startswith("{"):
                fields = raw_input_fields(where, line, ())
                text, position = fields.get("text"), fields.get("position")
                if not isinstance(text, str) or MARK in text or not isinstance(position, int) \
                        or isinstance(position, bool):
                    raise DataError(f"{where}: expected JSON with the plain sentence as 'text' and the index of "
                                    f"the character to read as 'position'")
                if not 0 <= position < len(text):
                    raise DataError(f"{where}: 'position' {position} is outside the text (0..{len(text) - 1})")
            else:
                (text, position), fields = parse_marked(line.strip(), where), {}
            examples.append(PolyphoneExample(str(fields.get("id", first_index + len(examples))), text, position, None))
        return examples

    def raw_records(self, examples, outputs, predictions) -> list[dict[str, Any]]:
        """The predicted reading, and the probabilities of the character's candidate readings (of
        all readings for a character never seen in training or the dictionary)."""
        labels = self.label_names()
        records = []
        for ex, output, prediction in zip(examples, outputs, predictions):
            known = sorted(r for r in self.candidates(ex.char) if r in labels)
            allowed = known or labels
            logits = np.asarray(output, dtype=np.float64)
            probabilities = class_probabilities([logits[labels.index(r)] for r in allowed], allowed)
            record = {"id": ex.id, "text": ex.text, "position": ex.position, "char": ex.char,
                      "prediction": labels[prediction], "probabilities": probabilities}
            if not known:  # nothing to restrict the answer to: any reading of the model may win
                record["warning"] = (f"{ex.char!r} was never seen in training or the dictionary: the reading is "
                                     f"chosen among all {len(labels)} the model knows, and is often wrong")
            records.append(record)
        return records

    def _outcomes(self, examples, predictions) -> list[tuple[PolyphoneExample, str, bool]]:
        labels = self.label_names()
        return [(ex, labels[p], labels[p] == ex.label) for ex, p in zip(examples, predictions)
                if ex.label is not None]

    def metrics(self, examples: list[PolyphoneExample], predictions: list[int]) -> dict[str, float]:
        """accuracy over labelled examples; n_examples; unpredictable (gold reading not among the
        character's candidates or not in the label set: always counted wrong); unseen_chars
        (examples whose character has no candidates)."""
        outcomes = self._outcomes(examples, predictions)
        if not outcomes:
            raise DataError("polyphone: no labelled examples to score")
        labels = set(self.label_names())
        unpredictable = sum(1 for ex, _, _ in outcomes
                            if ex.label not in labels or (self.candidates(ex.char) and ex.label not in self.candidates(ex.char)))
        return {
            "accuracy": sum(ok for _, _, ok in outcomes) / len(outcomes),
            "n_examples": float(len(outcomes)),
            "unpredictable": float(unpredictable),
            "unseen_chars": float(sum(1 for ex, _, _ in outcomes if not self.candidates(ex.char))),
        }

    def per_char_accuracy(self, examples, predictions) -> dict[str, dict[str, float]]:
        """{char: {"n": count, "correct": count, "accuracy": fraction}} over labelled examples."""
        table: dict[str, dict[str, float]] = {}
        for ex, _, ok in self._outcomes(examples, predictions):
            row = table.setdefault(ex.char, {"n": 0, "correct": 0, "accuracy": 0.0})
            row["n"] += 1
            row["correct"] += int(ok)
        for row in table.values():
            row["accuracy"] = row["correct"] / row["n"]
        return table

    def write_predictions(self, examples, predictions, path) -> Path:
        """`path`: one predicted reading per line (the .lb format). Beside it: `<stem>.tsv` with
        id, marked sentence, char, gold, pred; `<stem>.per_char.tsv` with per-character accuracy
        (labelled examples only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = self.label_names()
        unseen = sorted({ex.char for ex in examples if not self.candidates(ex.char)})
        if unseen:
            # No candidate list to mask with: those readings come from all of the model's labels.
            n = sum(1 for ex in examples if not self.candidates(ex.char))
            print(f"warning: {n} of {len(examples)} examples ask for characters never seen in training or the "
                  f"dictionary ({''.join(unseen[:20])}{' ...' if len(unseen) > 20 else ''}); their readings are "
                  f"not restricted to the character's own and are often wrong", file=sys.stderr)
        with open_for_writing(path) as f:
            f.writelines(labels[p] + "\n" for p in predictions)
        stem = path.with_suffix("") if path.suffix != ".tsv" else path.with_suffix(".details")
        with open_for_writing(f"{stem}.tsv") as f:
            f.write("id\tsentence\tchar\tgold\tpred\n")
            for ex, p in zip(examples, predictions):
                f.write(f"{ex.id}\t{ex.marked_text()}\t{ex.char}\t{ex.label or ''}\t{labels[p]}\n")
        if any(ex.label is not None for ex in examples):
            with open_for_writing(f"{stem}.per_char.tsv") as f:
                f.write("char\tn\tcorrect\taccuracy\n")
                for char, row in sorted(self.per_char_accuracy(examples, predictions).items()):
                    f.write(f"{char}\t{row['n']}\t{row['correct']}\t{row['accuracy']:.4f}\n")
        return path


def _special_id(tokenizer, token: str) -> int:
    """Id of a special token from a bertkit Tokenizer or a raw `tokenizers` tokenizer."""
    attr = {"[CLS]": "cls_id", "[SEP]": "sep_id", "[UNK]": "unk_id"}[token]
    value = getattr(tokenizer, attr, None)
    if value is None:
        value = tokenizer.token_to_id(token)
    if value is None:
        raise ValueError(f"the tokenizer's vocabulary has no {token} token")
    return int(value)
