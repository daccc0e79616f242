"""Named-entity recognition on CoNLL-format files: `--task conll2003` and `--task ner`.

Input: one token per line, space- (or tab-) separated columns, the tag in `--label-column`
(default: the last), a blank line between sentences, `-DOCSTART-` lines between documents:
    EU NNP B-NP B-ORG
    rejects VBZ B-VP O
Files in --data-dir: train.txt / valid.txt / test.txt (`--split dev` reads valid.txt), or the
original eng.train / eng.testa / eng.testb. `conll2003` uses the fixed CoNLL tag set
(O and B-/I- of PER, ORG, LOC, MISC); `ner` takes its tag set from the training file.
transformers' run_ner.py records (`tokens`, `ner_tags`: tag strings, or with `conll2003` the
indices of the `datasets` tag list) are read from JSON and from Parquet files, such as the Hub's
conll2003 (conll2003/train/0000.parquet, validation/, test/), which --data-dir finds, in it or in
conll2003/, when the text files are absent.

Tag schemes: IOB1, IOB2 and BIOES (also called IOBES: `S-X` a one-word entity, `E-X` the last
word of a longer one). IOB1 (the original eng.* files, where `I-X` opens an entity and `B-X`
appears only between two adjacent entities of one type) is detected per file by an `I-X` that
opens an entity and converted to IOB2; on IOB2 input the conversion changes nothing. The
training file's scheme, IOB2 or BIOES, is the task's: the model learns those tags, the other
splits are converted to it (losslessly, for well-formed sequences). Prediction files are in
IOB2 whatever the scheme, since conlleval reads no S- tag (bertkit.metrics.ner), and the
conlleval-style metrics score those same IOB2 tags.

Encoding: words are tokenized as given (pre-tokenized); a word's tag sits on its FIRST
sub-token, all other positions get -100 (never scored). A sentence longer than
max_seq_length - 2 sub-tokens is split into windows at word boundaries rather than truncated:
each window holds as many whole words as fit, and the next window starts early enough to repeat
up to `--window-overlap` sub-tokens (at most half a window) of the previous one as left context. A word that lies in
several windows is labelled (and predicted) in exactly one: the window where it has the most
context on its nearer side, min(sub-tokens to its left, sub-tokens to its right), the earlier
window on ties (the "max context" rule of BERT's SQuAD code). Every word is therefore scored
exactly once. A single word longer than the whole window (max_seq_length - 2 sub-tokens) keeps
only its first max_seq_length - 2 sub-tokens; its tag is on the first, so scoring is unchanged.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bertkit.metrics.ner import bioes_to_iob2, ner_scores
from bertkit.tasks.base import (HUB_SPLITS, DataError, Task, TaskOptions, example_records, file_lines, files_label,
                                find_hub_split, is_parquet, load_json_or_lines, open_for_writing, pad_sequences,
                                padded_inputs, raw_input_fields, read_data_text, read_parquet_rows, register)
from bertkit.tasks.swag import plain_backend, special_ids

log = logging.getLogger(__name__)

CONLL2003_TYPES = ("PER", "ORG", "LOC", "MISC")
# The order of Hugging Face's `conll2003` dataset, so that label ids match models trained there
# (and the indices of its JSON exports read as the tags they are).
CONLL2003_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TAG_RE = re.compile(r"^(?:O|[BIES]-\S+)$")
SCHEME_PREFIXES = {"IOB2": "BI", "BIOES": "BIES"}
IGNORE = -100  # label of positions the loss and the metric skip
COLUMN_SEPARATOR = re.compile(r"[ \t]+")  # CoNLL files separate columns by spaces (or tabs)


@dataclass
class NerExample:
    guid: str  # "<split>-<n>"
    words: list[str]
    tags: list[str]  # one per word, in the task's scheme (IOB2 or BIOES)
    source: str  # "file:line" of the sentence's first token
    doc_start: bool = False  # first sentence after a -DOCSTART- line


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Make every entity start with B-: an `I-X` not preceded by `B-X`/`I-X` becomes `B-X`.
    IOB1 `I-PER I-PER B-PER O I-LOC` -> IOB2 `B-PER I-PER B-PER O B-LOC`."""
    out: list[str] = []
    previous_type = None
    for tag in tags:
        if tag == "O":
            previous_type = None
            out.append(tag)
            continue
        prefix, entity_type = tag[0], tag[2:]
        if prefix == "I" and previous_type != entity_type:
            tag = "B-" + entity_type
        previous_type = entity_type
        out.append(tag)
    return out


def tag_scheme(tags: Sequence[str]) -> str:
    """"BIOES" where any tag is an E-/S- tag, else "IOB2" (after IOB1 input is converted)."""
    return "BIOES" if any(tag[:2] in ("E-", "S-") for tag in tags) else "IOB2"


def iob2_to_bioes(tags: Sequence[str]) -> list[str]:
    """`B-X` alone -> `S-X`; the last `I-X` of an entity -> `E-X`.
    IOB2 `B-PER I-PER B-LOC O` -> BIOES `B-PER E-PER S-LOC O`."""
    out = []
    for i, tag in enumerate(tags):
        continues = i + 1 < len(tags) and tags[i + 1] in ("I-" + tag[2:], "E-" + tag[2:])  # E-: already BIOES
        if tag.startswith("B-") and not continues:
            tag = "S-" + tag[2:]
        elif tag.startswith("I-") and not continues:
            tag = "E-" + tag[2:]
        out.append(tag)
    return out


def plan_windows(word_lengths: Sequence[int], budget: int, overlap: int) -> list[tuple[int, int, list[int]]]:
    """Split a sentence of words with the given sub-token counts (each <= budget) into windows of
    at most `budget` sub-tokens. Returns (first_word, end_word, scored_words) per window, where
    scored_words are the words this window labels; each word is scored in exactly one window
    (see the module docstring for the rule)."""
    n = len(word_lengths)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + word_lengths[end] <= budget:
            used += word_lengths[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            break
        # Step back from `end` over at most `overlap` sub-tokens, but always move forward.
        next_start, repeated = end, 0
        while next_start - 1 > start and repeated + word_lengths[next_start - 1] <= overlap:
            next_start -= 1
            repeated += word_lengths[next_start]
        start = next_start

    best: dict[int, tuple[int, int]] = {}  # word -> (context score, window index)
    for k, (first, end) in enumerate(spans):
        total = sum(word_lengths[first:end])
        left = 0
        for w in range(first, end):
            score = min(left, total - left - word_lengths[w])
            if w not in best or score > best[w][0]:
                best[w] = (score, k)
            left += word_lengths[w]
    scored: list[list[int]] = [[] for _ in spans]
    for w in range(n):
        scored[best[w][1]].append(w)
    return [(first, end, scored[k]) for k, (first, end) in enumerate(spans)]


@register("ner")
class NerTask(Task):
    """Token classification on CoNLL-format files; tag set from the training file."""

    head = "token_classification"
    main_metric = "f1"  # entity-level micro F1, conlleval-compatible (see bertkit.metrics.ner)
    prediction_suffix = ".txt"  # CoNLL text for conlleval, not JSON
    file_names = {"train": ("train.txt", "eng.train"), "dev": ("valid.txt", "dev.txt", "eng.testa"),
                  "test": ("test.txt", "eng.testb")}
    fixed_types: tuple[str, ...] | None = None  # entity types a file may use; None = any

    def __init__(self, options: TaskOptions):
        super().__init__(options)
        self.converted_files: list[str] = []  # files read as IOB1 and converted to IOB2
        self.train_scheme: str | None = None  # "IOB2" or "BIOES", once the training file was read

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--label-column", type=int, default=-1,
                            help="column holding the NER tag (0-based; negative counts from the end; default -1)")
        parser.add_argument("--window-overlap", type=int, default=32,
                            help="sub-tokens repeated as context when a long sentence is split into windows")

    # ---- reading --------------------------------------------------------------------------------
    def split_files(self, split: str) -> list[Path]:
        """The split's file: an explicit --*-file, else the CoNLL text file in --data-dir, else the
        Parquet files of the Hub's conll2003 there (in it or in conll2003/)."""
        if split not in self.splits:
            raise ValueError(f"--split {split!r} is not one of {', '.join(self.splits)}")
        explicit = {"train": self.options.train_file, "dev": self.options.dev_file,
                    "test": self.options.test_file}[split]
        if explicit:
            return [Path(explicit)]
        if not self.options.data_dir:
            raise ValueError(f"task {self.name}: give --data-dir or --{split}-file")
        data_dir = Path(self.options.data_dir)
        tried = [data_dir / name for name in self.file_names[split]]
        for path in tried:
            if path.is_file():
                return [path]
        hub_files = find_hub_split(data_dir, split, ("conll2003",))
        if hub_files:
            return hub_files
        raise FileNotFoundError(f"task {self.name}: no {split} file; looked for {', '.join(map(str, tried))} and "
                                f"the Hub's {HUB_SPLITS[split]} Parquet files (there or in conll2003/); pass "
                                f"--{split}-file")

    def read(self, split: str) -> list[NerExample]:
        paths = self.split_files(split)
        if is_parquet(paths[0]):
            rows = read_parquet_rows(paths, required=("tokens", "ner_tags"))
            return self.read_records(rows, files_label(paths), split)
        path, = paths
        label_column = int(self.options.get("label_column", -1))
        examples: list[NerExample] = []
        words: list[str] = []
        tags: list[str] = []
        first_line = 0
        n_columns = None  # set by the first token line; every token line must match it
        doc_start = False
        is_iob1 = False

        def flush() -> None:
            nonlocal words, tags, doc_start
            if words:
                examples.append(NerExample(f"{split}-{len(examples)}", words, tags, f"{path}:{first_line}", doc_start))
                doc_start = False
            words, tags = [], []

        text = read_data_text(path)
        if text.lstrip().startswith(("{", "[")):
            return self.read_json(path, text, split)
        lines = file_lines(text)
        for line_no, line in enumerate(lines, 1):
            columns = COLUMN_SEPARATOR.split(line.strip(" \t"))  # not str.split(): NBSP is text
            columns = [] if columns == [""] else columns
            if not columns:
                flush()
                continue
            if columns[0] == "-DOCSTART-":
                flush()
                doc_start = True
                continue
            if n_columns is None:
                n_columns, columns_line = len(columns), line_no
                if not -n_columns <= label_column < n_columns:
                    raise DataError(f"{path}:{line_no}: --label-column {label_column} does not exist in a "
                                    f"line of {n_columns} columns")
            elif len(columns) != n_columns:
                raise DataError(f"{path}:{line_no}: {len(columns)} columns, expected {n_columns} as on line "
                                f"{columns_line} (word ... tag, separated by spaces): {line!r}")
            tag = columns[label_column]
            self.check_tag(tag, f"{path}:{line_no}", f"is --label-column {label_column} the tag column?")
            if tag.startswith("I-") and (not tags or tags[-1][2:] != tag[2:]):
                is_iob1 = True
            if not words:
                first_line = line_no
            words.append(columns[0])
            tags.append(tag)
        flush()
        return self.finish_reading(path, split, examples, is_iob1)

    def check_tag(self, tag: str, where: str, hint: str) -> None:
        if not TAG_RE.match(tag):
            raise DataError(f"{where}: tag {tag!r} is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE "
                            f"(IOB1, IOB2 or BIOES expected; {hint})")
        if self.fixed_types is not None and tag != "O" and tag[2:] not in self.fixed_types:
            raise DataError(f"{where}: entity type {tag[2:]!r} is not a CoNLL-2003 type "
                            f"({', '.join(self.fixed_types)}); use --task ner for other tag sets")

    def read_json(self, path: Path, text: str, split: str) -> list[NerExample]:
        """transformers' run_ner.py data: one record per sentence (see read_records) as JSON lines, a
        list, or under "data"."""
        records = example_records(load_json_or_lines(text, path), "tokens")
        if records is None:
            raise DataError(f"{path}: JSON, but not one record per sentence with 'tokens' and 'ner_tags' (nor "
                            f"CoNLL columns)")
        return self.read_records([(f"{path}: sentence record {n}", r) for n, r in enumerate(records, 1)], str(path),
                                 split)

    def read_records(self, records: Sequence[tuple[str, Any]], path: str, split: str) -> list[NerExample]:
        """Sentence records (where, record) with `tokens` and `ner_tags` (tag strings; or the indices
        of the `datasets` conll2003 tag list with --task conll2003), from JSON or Parquet rows."""
        examples: list[NerExample] = []
        is_iob1 = False
        for where, record in records:
            words = record.get("tokens") if isinstance(record, dict) else None
            tags = record.get("ner_tags") if isinstance(record, dict) else None
            if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) or not words:
                raise DataError(f"{where}: needs 'tokens' and 'ner_tags', lists of one tag per token, got "
                                f"{str(record)[:80]}")
            if all(isinstance(t, int) for t in tags):
                if self.fixed_types is None:
                    raise DataError(f"{where}: 'ner_tags' are numbers; --task ner needs the tag strings "
                                    f"(--task conll2003 reads the indices of the datasets conll2003 tag list)")
                if not all(0 <= t < len(CONLL2003_TAGS) for t in tags):
                    raise DataError(f"{where}: tag index out of 0..{len(CONLL2003_TAGS) - 1}: {tags}")
                tags = [CONLL2003_TAGS[t] for t in tags]
            for position, tag in enumerate(tags):
                self.check_tag(str(tag), where, "'ner_tags' holds tag strings")
                if tag.startswith("I-") and (position == 0 or tags[position - 1][2:] != tag[2:]):
                    is_iob1 = True
            examples.append(NerExample(f"{split}-{len(examples)}", [str(w) for w in words], list(tags), where))
        return self.finish_reading(path, split, examples, is_iob1)

    def finish_reading(self, path: Path | str, split: str, examples: list[NerExample],
                       is_iob1: bool) -> list[NerExample]:
        """One scheme for a file's tags (IOB1 opened as IOB2), then the task's training scheme."""
        if not examples:
            raise DataError(f"{path}: no sentences found (expected one token per line, blank lines between sentences)")
        file_scheme = tag_scheme([tag for ex in examples for tag in ex.tags])
        if is_iob1 and file_scheme == "IOB2":  # in BIOES an opening I- is a malformed tag, not IOB1
            for ex in examples:
                ex.tags = iob1_to_iob2(ex.tags)
            self.converted_files.append(str(path))
            log.info("%s: IOB1 tags (an I- tag opens an entity); converted to IOB2", path)
        if split == "train":
            self.train_scheme = file_scheme
        scheme = self.scheme()
        if file_scheme != scheme:
            convert = iob2_to_bioes if scheme == "BIOES" else bioes_to_iob2
            for ex in examples:
                ex.tags = convert(ex.tags)
            log.info("%s: %s tags converted to the training scheme, %s", path, file_scheme, scheme)
        return examples

    def scheme(self) -> str:
        """The task's tag scheme: that of the saved label set, else that of the training file (IOB2,
        CoNLL-2003's own, where there is neither)."""
        if self._labels is not None:
            return tag_scheme(self._labels)
        if self.train_scheme is None:
            try:
                self.split_files("train")
            except (FileNotFoundError, ValueError):
                return "IOB2"
            self.read("train")
        return self.train_scheme

    def label_names(self) -> list[str] | None:
        if self._labels is None:
            self._labels = self.infer_labels(self.read("train"))
        return self._labels

    def infer_labels(self, train: list[NerExample]) -> list[str]:
        """O first, then B-/I- (BIOES: B-/I-/E-/S-) of each entity type seen in training, types sorted."""
        types = sorted({t[2:] for ex in train for t in ex.tags if t != "O"})
        return ["O"] + [f"{p}-{t}" for t in types for p in SCHEME_PREFIXES[self.scheme()]]

    # ---- features -------------------------------------------------------------------------------
    def encode(self, examples: list[NerExample], tokenizer: Any, max_seq_length: int) -> list[dict[str, Any]]:
        """One feature per window (one per sentence unless it is too long). Feature keys:
        input_ids, token_type_ids (all 0), labels (tag id on each scored word's first sub-token,
        -100 elsewhere), word_ids (word index at those same positions, -1 elsewhere),
        example_index."""
        labels = self.label_names()
        label_to_id = {tag: i for i, tag in enumerate(labels)}
        budget = max_seq_length - 2
        overlap = int(self.options.get("window_overlap", 32))
        if budget < 1:
            raise ValueError(f"--max-seq-length {max_seq_length} leaves no room for words next to [CLS]/[SEP]")
        if overlap < 0:
            raise ValueError(f"--window-overlap must be >= 0, got {overlap}")
        # More than half a window of overlap would make windows advance by a word or two and
        # multiply the features; half a window still gives every word >= budget/4 context.
        overlap = min(overlap, budget // 2)
        backend = plain_backend(tokenizer)
        cls_id, sep_id, unk_id = special_ids(tokenizer)
        encodings = backend.encode_batch([ex.words for ex in examples], is_pretokenized=True,
                                         add_special_tokens=False)
        features: list[dict[str, Any]] = []
        for index, (ex, enc) in enumerate(zip(examples, encodings)):
            pieces: list[list[int]] = [[] for _ in ex.words]
            for token_id, word in zip(enc.ids, enc.word_ids):
                pieces[word].append(token_id)
            # A word the normalizer erases (e.g. a lone control character) still needs a position.
            pieces = [p[:budget] if p else [unk_id] for p in pieces]
            tag_ids = []
            for w, tag in enumerate(ex.tags):
                if tag not in label_to_id:
                    raise DataError(f"{ex.source} (example {ex.guid}, word {w} {ex.words[w]!r}): tag {tag!r} is "
                                    f"not in the label set {labels}")
                tag_ids.append(label_to_id[tag])
            for first, end, scored in plan_windows([len(p) for p in pieces], budget, overlap):
                scored_set = set(scored)
                input_ids, label_row, word_row = [cls_id], [IGNORE], [-1]
                for w in range(first, end):
                    keep = w in scored_set
                    input_ids += pieces[w]
                    label_row += [tag_ids[w] if keep else IGNORE] + [IGNORE] * (len(pieces[w]) - 1)
                    word_row += [w if keep else -1] + [-1] * (len(pieces[w]) - 1)
                input_ids.append(sep_id)
                label_row.append(IGNORE)
                word_row.append(-1)
                features.append({"input_ids": input_ids, "token_type_ids": [0] * len(input_ids),
                                 "labels": label_row, "word_ids": word_row, "example_index": index})
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """-> input_ids, token_type_ids, attention_mask, labels: [B, T], labels padded with -100."""
        batch = padded_inputs(features)
        batch["labels"] = pad_sequences([f["labels"] for f in features], pad_value=IGNORE)
        return batch

    # ---- evaluation -----------------------------------------------------------------------------
    def gather_outputs(self, batch: dict[str, torch.Tensor], outputs: Any) -> list[np.ndarray]:
        """Per feature: its token logits [T_i, C] without the batch padding."""
        logits = outputs.logits.detach().float().cpu().numpy()
        lengths = batch["attention_mask"].gt(0).sum(-1).tolist()
        return [row[:n] for row, n in zip(logits, lengths)]

    def postprocess(self, examples: list[NerExample], features: list[dict[str, Any]],
                    outputs: list[np.ndarray]) -> list[list[str]]:
        """One predicted tag per word of each example, read at the word's first sub-token in the
        window that scores it."""
        labels = self.label_names()
        predictions: list[list[str | None]] = [[None] * len(ex.words) for ex in examples]
        for feature, logits in zip(features, outputs):
            row = predictions[feature["example_index"]]
            for position, word in enumerate(feature["word_ids"]):
                if word >= 0:
                    row[word] = labels[int(logits[position].argmax())]
        for ex, row in zip(examples, predictions):
            if None in row:
                raise RuntimeError(f"example {ex.guid}: words {[i for i, t in enumerate(row) if t is None]} got no "
                                   f"prediction; were features and outputs passed for all examples?")
        return predictions  # type: ignore[return-value]

    def placeholder_predictions(self, examples: list[NerExample]) -> list[list[str]]:
        return [["O"] * len(ex.words) for ex in examples]

    raw_input = "a sentence (words split at whitespace), or JSON {\"tokens\": [...], \"id\": ...}"

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[NerExample]:
        labels = self.label_names() or ["O"]
        filler = "O" if "O" in labels else labels[0]  # a label to encode with; predictions ignore it
        examples = []
        for where, line in lines:
            fields = raw_input_fields(where, line, ()) if line.lstrip().startswith("{") else {"text": line}
            words = fields["text"].split() if isinstance(fields.get("text"), str) else fields.get("tokens")
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise DataError(f"{where}: expected a sentence, or JSON with \"tokens\": a list of words")
            examples.append(NerExample(str(fields.get("id", first_index + len(examples))), words, [filler] * len(words), where))
        return examples

    def raw_records(self, examples, outputs, predictions) -> list[dict[str, Any]]:
        """Words, their IOB2 tags, and the entities read from them as conlleval reads them
        (start, end: word indices, end exclusive). A predicted I-X that opens an entity (after O or
        another type) is written B-X: conlleval reads it so, and the tags then agree with the entities."""
        from seqeval.metrics.sequence_labeling import get_entities

        records = []
        for example, tags in zip(examples, predictions):
            tags = iob1_to_iob2(bioes_to_iob2(tags))
            entities = [{"text": " ".join(example.words[start:end + 1]), "type": kind, "start": start, "end": end + 1}
                        for kind, start, end in get_entities(tags)]
            records.append({"id": example.guid, "tokens": example.words, "tags": tags, "entities": entities})
        return records

    def metrics(self, examples: list[NerExample], predictions: list[list[str]]) -> dict[str, float]:
        return ner_scores([ex.tags for ex in examples], predictions, scheme=self.scheme())

    def write_predictions(self, examples: list[NerExample], predictions: list[list[str]], path: str | Path) -> Path:
        """CoNLL format read by conlleval: `word gold predicted` per line, a blank line after each
        sentence, `-DOCSTART- O O` where the input had document boundaries; tags in IOB2 (BIOES
        ones converted: conlleval would read `S-PER S-PER` as one entity)."""
        path = Path(path)
        with open_for_writing(path) as out:
            for ex, tags in zip(examples, predictions):
                if ex.doc_start:
                    out.write("-DOCSTART- O O\n\n")
                for word, gold, pred in zip(ex.words, bioes_to_iob2(ex.tags), bioes_to_iob2(tags)):
                    out.write(f"{word} {gold} {pred}\n")
                out.write("\n")
        return path


@register("conll2003")
class Conll2003Task(NerTask):
    """CoNLL-2003 English NER with the fixed tag set (O, B-/I- of PER ORG LOC MISC)."""

    fixed_types = CONLL2003_TYPES

    def label_names(self) -> list[str] | None:
        if self._labels is not None:
            return self._labels
        if self.scheme() == "BIOES":
            return ["O"] + [f"{p}-{t}" for t in CONLL2003_TYPES for p in "BIES"]
        return list(CONLL2003_TAGS)
