"""SemEval-2014 Task 4 aspect-term sentiment classification (ATSC): `--task atsc`.

Each example is one aspect term in a sentence; the model reads the pair
`[CLS] sentence [SEP] aspect [SEP]` and predicts its polarity: negative, neutral, positive
(plus conflict with --keep-conflict; by default conflict terms are dropped, as in the
literature, leaving 3 classes).

Two input formats, chosen by --format (auto: XML when the XML files are present):
- xml: the official files, `<sentence id><text>..</text><aspectTerms><aspectTerm term polarity
  from to/>`. Sentences without aspect terms are skipped; a file with none at all is an error.
  --domain restaurants: Restaurants_Train_v2.xml / Restaurants_Test_Gold.xml;
  --domain laptops: Laptop_Train_v2.xml / Laptops_Test_Gold.xml.
- seg: ABSA-PyTorch's `.xml.seg`, 3 lines per instance: the tokenized sentence with the aspect
  replaced by `$T$`, the aspect, the polarity (1 / 0 / -1). Files <Domain>_Train.xml.seg and
  <Domain>_Test_Gold.xml.seg. Conflict was already dropped from them.
Files are looked up in --data-dir and in its xml/ and seg/ subdirectories.

Splits: train, test, and dev = test by default (SemEval-2014 has no dev set), or with
--dev-fraction F a held-out F of the training *sentences* (all aspects of one sentence stay on one
side, so the dev sentences are unseen), chosen by --dev-seed; train then excludes them.

Metrics: accuracy and macro-F1 over the classes (both reported; papers quote both).
The main metric (best checkpoint) is accuracy: it is what ABSA work selects models by, and on a
dev slice of a few hundred aspects macro-F1 is dominated by the small neutral class and noisier.

The .seg text is Penn-Treebank tokenized; its escapes (-LRB-, ``, "do n't") are undone on reading,
since WordPiece would otherwise see other pieces than in the XML's text.

Why the two formats differ on the training files (test files agree exactly, 1,120 and 638):
the .seg training files were made from an earlier release of the training XML than the v2 files
here. Restaurants: XML v2 has 3,693 terms, 3,602 after dropping 91 conflict; .seg has 3,608.
Laptops: 2,358 -> 2,313 after 45 conflict; .seg has 2,328. The .seg files carry terms cut by one
character or with trailing punctuation (the v1 offset errors fixed in v2, e.g. "tempura dis"),
exact duplicate instances (3 in restaurants, 16 in laptops) and a few labels v2 changed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import f1_score

from bertkit.tasks.base import (DataError, Task, TaskOptions, class_probabilities, open_for_writing, raw_input_fields,
                                read_data_text, register, text_field)
from bertkit.tasks.swag import encode_pair, plain_backend, special_ids

POLARITIES = ["negative", "neutral", "positive"]
SEG_POLARITY = {"-1": "negative", "0": "neutral", "1": "positive"}
# The .seg text is Penn-Treebank tokenized. WordPiece splits punctuation itself, so most of it
# (", ." or "it 's") gives the same pieces as the raw text, but these do not: "-LRB-" becomes
# "- l ##rb -" and "do n't" becomes "do n ' t" where "don't" is "don ' t".
PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
               "``": '"', "''": '"'}
PTB_ESCAPE = re.compile("|".join(re.escape(k) for k in PTB_ESCAPES))
SPLIT_NEGATION = re.compile(r"(?<=\w) (n't)\b", re.IGNORECASE)


def undo_ptb_escapes(text: str) -> str:
    """PTB tokens back to the characters of the raw text (brackets, quotes, "n't" joined to its
    verb), so that a .seg sentence gives the same WordPiece ids as the XML's."""
    return SPLIT_NEGATION.sub(r"\1", PTB_ESCAPE.sub(lambda m: PTB_ESCAPES[m.group(0)], text))
XML_FILES = {"restaurants": {"train": ("Restaurants_Train_v2.xml", "Restaurants_Train.xml"),
                             "test": ("Restaurants_Test_Gold.xml",)},
             "laptops": {"train": ("Laptop_Train_v2.xml", "Laptops_Train_v2.xml", "Laptops_Train.xml"),
                         "test": ("Laptops_Test_Gold.xml",)}}
SEG_FILES = {"restaurants": {"train": ("Restaurants_Train.xml.seg",), "test": ("Restaurants_Test_Gold.xml.seg",)},
             "laptops": {"train": ("Laptops_Train.xml.seg",), "test": ("Laptops_Test_Gold.xml.seg",)}}


@dataclass
class AspectExample:
    guid: str  # "<sentence id>:<n-th term>" (xml) or "<file stem>:<line>" (seg)
    sentence: str
    aspect: str
    polarity: str | None  # one of the label names; None when unlabelled
    span: tuple[int, int] | None  # character offsets of the aspect in `sentence`
    sentence_key: str  # identifies the sentence, so dev slices keep its aspects together
    source: str  # "file: sentence id=.." or "file:line", for error messages


@register("atsc")
class AspectSentimentTask(Task):
    head = "sequence_classification"
    main_metric = "accuracy"

    def __init__(self, options: TaskOptions):
        super().__init__(options)
        self._keep_conflict = bool(options.get("keep_conflict", False))
        self._labels = POLARITIES + ["conflict"] if self._keep_conflict else list(POLARITIES)
        self._noted_conflict: set[Path] = set()  # files whose dropped 'conflict' count was printed

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--domain", choices=("restaurants", "laptops"), default="restaurants",
                            help="which SemEval-2014 files to read from --data-dir")
        parser.add_argument("--format", dest="absa_format", choices=("auto", "xml", "seg"), default="auto",
                            help="official XML or ABSA-PyTorch .xml.seg (auto: XML when present)")
        parser.add_argument("--keep-conflict", action="store_true",
                            help="keep 'conflict' aspects as a 4th class (dropped by default)")
        parser.add_argument("--dev-fraction", type=float, default=0.0,
                            help="hold out this fraction of training sentences as dev (0: dev = test)")
        parser.add_argument("--dev-seed", type=int, default=42, help="seed of the held-out dev slice")

    # ---- files ----------------------------------------------------------------------------------
    def _file(self, split: str) -> Path:
        explicit = {"train": self.options.train_file, "test": self.options.test_file}[split]
        if explicit:
            return Path(explicit)
        if not self.options.data_dir:
            raise ValueError(f"task {self.name}: give --data-dir or --{split}-file")
        domain = self.options.get("domain", "restaurants")
        if domain not in XML_FILES:
            raise ValueError(f"--domain {domain!r} is not one of {', '.join(XML_FILES)}")
        fmt = self.options.get("absa_format", "auto")
        tables = {"auto": (XML_FILES, SEG_FILES), "xml": (XML_FILES,), "seg": (SEG_FILES,)}[fmt]
        root = Path(self.options.data_dir)
        tried = []
        for table in tables:
            for directory in (root, root / "xml", root / "seg"):
                for name in table[domain][split]:
                    tried.append(directory / name)
                    if tried[-1].is_file():
                        return tried[-1]
        raise FileNotFoundError(f"task atsc: no {domain} {split} file; looked for "
                                f"{', '.join(map(str, tried))} (set --domain/--format or --{split}-file)")

    # ---- reading --------------------------------------------------------------------------------
    def read(self, split: str) -> list[AspectExample]:
        examples = self._read_split(split)
        unlabelled = next((ex for ex in examples if ex.polarity is None), None)
        if split in ("train", "dev") and unlabelled is not None:
            # The official unlabelled test file (Phase A) as dev scored as {}: no best model was kept,
            # and the run still ended well.
            raise DataError(f"{unlabelled.source}: aspect {unlabelled.aspect!r} has no polarity; every {split} term "
                            f"needs one (give the gold file)")
        return examples

    def _read_split(self, split: str) -> list[AspectExample]:
        if split not in self.splits:
            raise ValueError(f"--split {split!r} is not one of {', '.join(self.splits)}")
        if split == "dev" and self.options.dev_file:
            return self._read_kept(Path(self.options.dev_file))
        fraction = float(self.options.get("dev_fraction", 0.0))
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"--dev-fraction must be in [0, 1), got {fraction}")
        if split == "dev" and fraction == 0.0:
            # ABSA-PyTorch's practice; the best checkpoint is then chosen on the test set, and its
            # test score is optimistic. Said where it happens, not only in this docstring.
            print("note: SemEval-2014 has no dev set, so dev is the test set here (checkpoints are chosen on "
                  "it); --dev-fraction 0.1 holds out training sentences instead, for an unbiased test score",
                  file=sys.stderr)
        if split == "test" or (split == "dev" and fraction == 0.0):
            return self._read_kept(self._file("test"))
        train = self._read_kept(self._file("train"))
        if fraction == 0.0:
            return train
        keys = sorted({ex.sentence_key for ex in train})
        random.Random(int(self.options.get("dev_seed", 42))).shuffle(keys)
        held_out = set(keys[: max(1, round(fraction * len(keys)))])
        return [ex for ex in train if (ex.sentence_key in held_out) == (split == "dev")]

    def _read_kept(self, path: Path) -> list[AspectExample]:
        """The file's aspect terms, 'conflict' ones dropped unless --keep-conflict: the practice of
        the papers that report on SemEval-2014 (restaurants train: 91 of 3,693), said with its count
        so that the totals match theirs visibly."""
        examples = self.read_file(path)
        if self._keep_conflict:
            return examples
        kept = [ex for ex in examples if ex.polarity != "conflict"]
        if len(kept) < len(examples) and path not in self._noted_conflict:
            self._noted_conflict.add(path)
            print(f"note: {path}: dropped {len(examples) - len(kept)} of {len(examples)} aspect terms labelled "
                  f"'conflict' (as the papers do; --keep-conflict keeps them as a 4th class)", file=sys.stderr)
        return kept

    def read_file(self, path: Path) -> list[AspectExample]:
        """All aspect terms of one file (conflict included), XML or .seg by its content."""
        with open(path, "rb") as handle:
            is_xml = handle.read(64).lstrip().startswith(b"<")
        return self.read_xml(path) if is_xml else self.read_seg(path)

    def read_xml(self, path: Path) -> list[AspectExample]:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as err:
            line, column = err.position
            raise DataError(f"{path}:{line}: not well-formed XML (column {column}): {err}") from None
        valid = POLARITIES + ["conflict"]
        examples: list[AspectExample] = []
        for n_sentence, sentence in enumerate(root.iter("sentence")):
            sid = sentence.get("id", f"#{n_sentence}")
            text_node = sentence.find("text")
            if text_node is None or text_node.text is None:
                raise DataError(f"{path}: sentence id={sid}: no <text>")
            text = text_node.text
            for k, term in enumerate(sentence.iter("aspectTerm")):
                # "file: ..." so that the part before the last colon is the file (cache keys use it).
                where = f"{path}: sentence id={sid}, aspectTerm {k}"
                aspect, polarity = term.get("term"), term.get("polarity")
                if not aspect:
                    raise DataError(f"{where}: missing 'term' attribute")
                if polarity is not None and polarity not in valid:
                    raise DataError(f"{where}: polarity {polarity!r} is not one of {', '.join(valid)}")
                span = None
                if term.get("from") is not None and term.get("to") is not None:
                    try:
                        span = (int(term.get("from")), int(term.get("to")))
                    except ValueError:
                        raise DataError(f"{where}: from/to {term.get('from')!r}/{term.get('to')!r} are not "
                                        f"integers") from None
                examples.append(AspectExample(f"{sid}:{k}", text, aspect, polarity, span, f"{path.name}/{sid}", where))
        if not examples:
            raise DataError(f"{path}: no <aspectTerm> in any <sentence>; expected SemEval-2014 Task 4 "
                            f"aspect-term XML (sentences/sentence/aspectTerms/aspectTerm)")
        return examples

    def read_seg(self, path: Path) -> list[AspectExample]:
        lines = read_data_text(path).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise DataError(f"{path}: empty; expected 3 lines per instance (sentence with $T$, aspect, polarity)")
        if len(lines) % 3:
            start = len(lines) - len(lines) % 3 + 1
            raise DataError(f"{path}:{start}: incomplete instance at the end ({len(lines) % 3} of 3 lines: "
                            f"sentence with $T$, aspect, polarity)")
        examples: list[AspectExample] = []
        for i in range(0, len(lines), 3):
            template, aspect, polarity = lines[i].strip(), lines[i + 1].strip(), lines[i + 2].strip()
            line = i + 1
            if template.count("$T$") != 1:
                raise DataError(f"{path}:{line}: expected exactly one $T$ marking the aspect, found "
                                f"{template.count('$T$')}: {template[:80]!r}")
            if not aspect:
                raise DataError(f"{path}:{line + 1}: empty aspect line")
            if polarity not in SEG_POLARITY:
                raise DataError(f"{path}:{line + 2}: polarity {polarity!r} is not 1, 0 or -1")
            left, right = (undo_ptb_escapes(part) for part in template.split("$T$"))
            aspect = undo_ptb_escapes(aspect)
            sentence = left + aspect + right
            examples.append(AspectExample(f"{path.stem}:{line}", sentence, aspect, SEG_POLARITY[polarity],
                                          (len(left), len(left) + len(aspect)), f"{path.name}/{sentence}",
                                          f"{path}:{line}"))
        return examples

    # ---- features -------------------------------------------------------------------------------
    def encode(self, examples: list[AspectExample], tokenizer: Any, max_seq_length: int) -> list[dict[str, Any]]:
        """`[CLS] sentence [SEP] aspect [SEP]` (longest-first truncation), labels = polarity index
        (-100 when unlabelled)."""
        label_to_id = {name: i for i, name in enumerate(self.label_names())}
        backend = plain_backend(tokenizer)
        cls_id, sep_id, _ = special_ids(tokenizer)
        sentences = backend.encode_batch([ex.sentence for ex in examples], add_special_tokens=False)
        aspects = backend.encode_batch([ex.aspect for ex in examples], add_special_tokens=False)
        features = []
        for i, (ex, s, a) in enumerate(zip(examples, sentences, aspects)):
            if ex.polarity is not None and ex.polarity not in label_to_id:
                hint = ("this model was trained without the conflict class; evaluate without --keep-conflict"
                        if self._keep_conflict else "--keep-conflict adds 'conflict'")
                raise DataError(f"{ex.source}: polarity {ex.polarity!r} is not in the label set "
                                f"{self.label_names()} ({hint})")
            input_ids, token_type_ids, _ = encode_pair(list(s.ids), list(a.ids), max_seq_length, cls_id, sep_id)
            features.append({"input_ids": input_ids, "token_type_ids": token_type_ids,
                             "labels": -100 if ex.polarity is None else label_to_id[ex.polarity],
                             "example_index": i})
        return features

    # ---- evaluation -----------------------------------------------------------------------------
    def metrics(self, examples: list[AspectExample], predictions: list[int]) -> dict[str, float]:
        names = self.label_names()
        pairs = [(names.index(ex.polarity), int(p)) for ex, p in zip(examples, predictions) if ex.polarity is not None]
        if not pairs:
            return {}
        gold, pred = np.array(pairs).T
        per_class = f1_score(gold, pred, labels=list(range(len(names))), average=None, zero_division=0)
        # Macro over the classes present in gold or predictions (sklearn's default): a class absent
        # from both (conflict in .xml.seg data) would add an F1 of 0 to the mean (1.0 -> 0.75).
        present = sorted(set(gold.tolist()) | set(pred.tolist()))
        out = {"accuracy": float((gold == pred).mean()), "macro_f1": float(per_class[present].mean())}
        out.update({f"f1_{name}": float(v) for name, v in zip(names, per_class)})
        return out

    raw_input = "sentence<TAB>aspect term, or JSON {\"sentence\": ..., \"aspect\": ..., \"id\": ...}"

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[AspectExample]:
        examples = []
        for where, line in lines:
            fields = raw_input_fields(where, line, ("sentence", "aspect"))
            sentence = text_field(fields, where, "sentence", "text")
            aspect = text_field(fields, where, "aspect", "term")
            start = sentence.find(aspect)
            span = (start, start + len(aspect)) if start >= 0 else None
            guid = str(fields.get("id", first_index + len(examples)))
            examples.append(AspectExample(guid, sentence, aspect, None, span, guid, where))
        return examples

    def raw_records(self, examples, outputs, predictions) -> list[dict[str, Any]]:
        names = self.label_names()
        return [{"id": ex.guid, "sentence": ex.sentence, "aspect": ex.aspect, "prediction": names[int(pred)],
                 "probabilities": class_probabilities(out, names)}
                for ex, out, pred in zip(examples, outputs, predictions)]

    def write_predictions(self, examples: list[AspectExample], predictions: list[int], path: str | Path) -> Path:
        """`.xml`: the official submission (see write_xml); `.tsv`: id, aspect, prediction, gold
        (tab-separated, with a header); otherwise JSON lines with the same fields plus the sentence
        and the aspect's character span."""
        path = Path(path)
        names = self.label_names()
        if path.suffix == ".xml":
            return self.write_xml(examples, [names[int(p)] for p in predictions], path)
        with open_for_writing(path) as out:
            if path.suffix == ".tsv":
                out.write("id\taspect\tprediction\tgold\n")
                for ex, p in zip(examples, predictions):
                    out.write(f"{ex.guid}\t{ex.aspect}\t{names[int(p)]}\t{ex.polarity or ''}\n")
            else:
                for ex, p in zip(examples, predictions):
                    out.write(json.dumps({"id": ex.guid, "aspect": ex.aspect, "prediction": names[int(p)],
                                          "gold": ex.polarity, "sentence": ex.sentence,
                                          "span": list(ex.span) if ex.span else None}) + "\n")
        return path

    def write_xml(self, examples: list[AspectExample], polarities: list[str], path: Path) -> Path:
        """SemEval-2014's submission format: the XML file the examples were read from, each
        <aspectTerm>'s polarity set to its prediction. Terms with no prediction (dropped 'conflict'
        ones, or outside a --dev-fraction split) lose the attribute, and so do the aspect categories
        (subtask 4), so that no gold label passes for a prediction; a note counts the terms."""
        files = {ex.source.rsplit(": sentence id=", 1)[0] for ex in examples}
        if len(files) != 1 or not next(iter(files)).endswith(".xml"):
            raise ValueError(f"{path}: .xml predictions are written into the SemEval XML file the examples were read "
                             f"from; these come from {', '.join(sorted(files)) or 'no file'} (use .tsv or .jsonl)")
        source = Path(next(iter(files)))
        tree = ET.parse(source)
        predicted = dict(zip((ex.guid for ex in examples), polarities))
        unpredicted = 0
        for n_sentence, sentence in enumerate(tree.getroot().iter("sentence")):
            sid = sentence.get("id", f"#{n_sentence}")  # the guids of read_xml
            for k, term in enumerate(sentence.iter("aspectTerm")):
                polarity = predicted.get(f"{sid}:{k}")
                if polarity is None:
                    term.attrib.pop("polarity", None)
                    unpredicted += 1
                else:
                    term.set("polarity", polarity)
            for category in sentence.iter("aspectCategory"):  # subtask 4's gold, not predicted here
                category.attrib.pop("polarity", None)
        if unpredicted:
            print(f"note: {path}: {unpredicted} aspect terms of {source.name} have no prediction ('conflict' "
                  f"terms, dropped unless --keep-conflict, or terms outside the split) and are written without a "
                  f"polarity", file=sys.stderr)
        with open_for_writing(path) as out:
            out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
            out.write(ET.tostring(tree.getroot(), encoding="unicode"))
            out.write("\n")
        return path
