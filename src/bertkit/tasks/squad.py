"""SQuAD v1.1 and v2.0 extractive question answering (`--task squad`).

Data: the official JSON files, `train-v1.1.json`/`dev-v1.1.json` or `train-v2.0.json`/`dev-v2.0.json`
in --data-dir, or --train-file/--dev-file/--test-file. Version 2 (unanswerable questions) is
detected from the data: a "v2..." version string or any `is_impossible` field. One record per
question (transformers' run_qa.py JSON, or the Parquet files of the Hub's rajpurkar/squad and
squad_v2: id, title, context, question, answers = {text, answer_start}) is read too; a question
without answers makes it v2 data. Without the JSON files, --data-dir may be a downloaded Hub
dataset: its SPLIT-0000x-of-N.parquet files, in the folder itself or in plain_text/ or squad_v2/.

`--article-split K` trains and evaluates from the dev file alone (the train files are ~30-40 MB and
often unavailable offline): split "train" is the first K articles of the dev file, "dev" the rest.
Articles, not questions, are split so that no context paragraph is seen in both parts.

Encoding follows the original BERT recipe: `[CLS] question [SEP] context-window [SEP]`, the
question cut to --max-query-length tokens, the context cut into windows that start --doc-stride
tokens apart (stride = step between window starts, as in google-research/bert's run_squad.py, not
the overlap of Hugging Face's `stride`). The label of a window is the token span of the first gold
answer, or [CLS] (index 0) when the answer is not wholly inside the window or there is none.

Post-processing scores every span (start <= end, at most --max-answer-length tokens, both inside
the context, the start in the window that gives it the most context) by start + end logit, keeps
the --n-best-size best, and cuts the answer out of the original context through the tokenizer's
character offsets. For v2 the null score is the smallest [CLS] start + end logit over an example's
windows; the answer is "" when null - best span > --null-score-diff-threshold, and that difference
is written to null_odds.json (the official script's --na-prob-file).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bertkit.metrics.squad import squad_v1_evaluate, squad_v2_evaluate
from bertkit.tasks.base import (HUB_SPLITS, DataError, Task, example_records, files_label, find_hub_split,
                                is_parquet, load_json_or_lines, padded_inputs, raw_input_fields, read_data_text,
                                read_parquet_rows, register, text_field, write_files_together)

log = logging.getLogger(__name__)


@dataclass
class SquadExample:
    """One question. `answer_starts[i]` is the character index of `answers[i]` in `context`, or -1
    when the file's answer_start does not point at the text (only tolerated for whitespace slips)."""

    qid: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)  # gold texts; [] when unanswerable or unlabeled
    answer_starts: list[int] = field(default_factory=list)
    is_impossible: bool | None = None  # None for v1.1 data, where the field does not exist
    title: str = ""
    source: str = ""  # "file:question id", for error messages and the CLI's feature cache key


@dataclass
class SquadPrediction:
    """One example's answer. `null_odds` (v2 only) = null score - best span score; `nbest` holds
    dicts with text, probability, start_logit, end_logit, best first."""

    text: str
    null_odds: float | None = None
    nbest: list[dict[str, Any]] = field(default_factory=list)


def _whitespace_slip(context: str, start: int, text: str) -> bool:
    """Whether `text` is at `start` once whitespace is ignored: runs of spaces differ, or the start
    is off by up to 3 whitespace characters (the kind of slip left by re-spaced contexts)."""
    want = " ".join(text.split())
    for shift in range(-3, 4):
        at = start + shift
        if not want or not 0 <= at <= len(context) or context[min(at, start):max(at, start)].strip():
            continue
        if " ".join(context[at:at + 2 * len(text)].split()).startswith(want):
            return True
    return False


# The columns of a question record (run_qa.py's JSON, the Hub's Parquet); "title" may be absent.
QUESTION_COLUMNS = ("id", "context", "question", "answers")
# Key of a nested question that holds its record's place ("FILE: row N"); not a SQuAD field.
WHERE = "bertkit_where"


def nest_question_records(records: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """transformers' run_qa.py layout (the `datasets` SQuAD columns: one record per question, `id`,
    `title`, `context`, `question`, `answers` = {"text": [...], "answer_start": [...]}), given as
    (where, record) pairs -> the official nesting: an article per run of one title, a paragraph per
    run of one context. A question with no answer makes the data SQuAD 2.0 (its is_impossible).
    Each question keeps its record's place under WHERE, so that later errors name it."""
    for where, record in records:
        answers = record.get("answers") if isinstance(record, dict) else None
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
                or not isinstance(answers.get("answer_start"), list) or len(answers["text"]) != len(answers["answer_start"]):
            raise DataError(f"{where}: 'answers' must be {{\"text\": [...], \"answer_start\": "
                            f"[...]}} with one start per text, got {str(answers)[:80]}")
        for key in ("id", "context", "question"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: needs a string {key!r}")
    is_v2 = any(not record["answers"]["text"] for _, record in records)
    articles: list[dict[str, Any]] = []
    for where, record in records:
        title = str(record.get("title") or "")
        if not articles or articles[-1]["title"] != title:
            articles.append({"title": title, "paragraphs": []})
        paragraphs = articles[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != record["context"]:
            paragraphs.append({"context": record["context"], "qas": []})
        qa = {"id": record["id"], "question": record["question"], WHERE: where,
              "answers": [{"text": t, "answer_start": s}
                          for t, s in zip(record["answers"]["text"], record["answers"]["answer_start"])]}
        if is_v2:
            qa["is_impossible"] = not qa["answers"]
        paragraphs[-1]["qas"].append(qa)
    return {"version": "v2.0" if is_v2 else "v1.1", "data": articles}


def load_squad_data(paths: Sequence[Path]) -> dict[str, Any]:
    """A split's data in the official nesting, from one JSON file (official, or run_qa.py's records)
    or from Parquet files of question records (the Hub's shards, concatenated in order)."""
    if is_parquet(paths[0]):
        return nest_question_records(read_parquet_rows(paths, required=QUESTION_COLUMNS))
    path, = paths  # JSON: one file (an explicit --*-file or the official name in --data-dir)
    try:
        text = read_data_text(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"SQuAD file {path} does not exist; pass --data-dir or --train-file/--dev-file") from None
    data = load_json_or_lines(text, path)
    records = example_records(data, "question")
    if records is not None:
        return nest_question_records([(f"{path}: question record {n}", r) for n, r in enumerate(records, 1)])
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected an object with a 'data' list of articles (the official SQuAD layout), "
                        f"or one record per question as transformers' run_qa.py reads them")
    return data


def parse_squad_files(paths: Sequence[Path], articles: slice = slice(None),
                      drop_unaligned: bool = False) -> tuple[list[SquadExample], int]:
    """Read a split's SQuAD files (load_squad_data) -> (examples, number of answers with a
    whitespace-only answer_start slip). `articles` picks a range of the articles. With
    `drop_unaligned` (training), a question none of whose answers is aligned is left out; otherwise
    it is kept for scoring by text."""
    data = load_squad_data(paths)
    path = files_label(paths)
    version = str(data.get("version", ""))
    is_v2 = version.lstrip("v").startswith("2") or any(
        "is_impossible" in qa for article in data["data"] for p in article.get("paragraphs", ())
        for qa in p.get("qas", ()))

    examples: list[SquadExample] = []
    seen: set[str] = set()
    slips = 0
    for a_index, article in list(enumerate(data["data"]))[articles]:
        title = str(article.get("title", ""))
        paragraphs = article.get("paragraphs")
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}: article {a_index} ({title!r}) has no 'paragraphs' list")
        for p_index, paragraph in enumerate(paragraphs):
            context = paragraph.get("context")
            if not isinstance(context, str) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{path}: article {a_index} paragraph {p_index} needs a 'context' string "
                                f"and a 'qas' list")
            for qa in paragraph["qas"]:
                qid = qa.get("id")
                where = f"{qa.get(WHERE, path)}: question id {qid!r}"
                if not isinstance(qid, str) or not isinstance(qa.get("question"), str):
                    raise DataError(f"{path}: article {a_index} paragraph {p_index}: a question lacks a "
                                    f"string 'id' or 'question' ({str(qa)[:80]})")
                if qid in seen:
                    raise DataError(f"{where} appears twice; ids must be unique")
                seen.add(qid)
                impossible = bool(qa.get("is_impossible", False)) if is_v2 else None
                answers, starts = [], []
                for answer in qa.get("answers", []):
                    text, start = answer.get("text"), answer.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int):
                        raise DataError(f"{where}: each answer needs 'text' (string) and 'answer_start' "
                                        f"(int), got {answer}")
                    span = context[start:start + len(text)] if 0 <= start <= len(context) else ""
                    if span != text:
                        if not _whitespace_slip(context, start, text):
                            raise DataError(f"{where}: answer_start {start} does not point at the answer "
                                            f"{text!r} in the context (found {span!r})")
                        slips += 1
                        start = -1
                    answers.append(text)
                    starts.append(start)
                if impossible and answers:
                    raise DataError(f"{where}: is_impossible is true but the question has answers")
                if drop_unaligned and answers and all(s < 0 for s in starts):
                    continue
                examples.append(SquadExample(qid, qa["question"], context, answers, starts, impossible, title,
                                             qa.get(WHERE) or f"{path}:{qid}"))
    return examples, slips


@register("squad")
class SquadTask(Task):
    head = "question_answering"
    main_metric = "f1"
    splits = ("train", "dev", "test")
    default_max_seq_length = 384  # the BERT paper's SQuAD setting; contexts average ~160 tokens
    submission_name = "predictions.json"  # what `bertkit predict --output DIR/` writes (+ nbest, null odds)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from bertkit.commands.common import parse_bool

        g = parser.add_argument_group("SQuAD")
        # The underscore spellings are run_squad.py's (Google's and pytorch-pretrained-bert's), same meaning.
        g.add_argument("--doc-stride", "--doc_stride", dest="doc_stride", type=int, default=128,
                       help="tokens between the starts of consecutive context windows (default 128)")
        g.add_argument("--max-query-length", "--max_query_length", dest="max_query_length", type=int, default=64,
                       help="question tokens kept; longer questions are cut (default 64)")
        g.add_argument("--n-best-size", "--n_best_size", dest="n_best_size", type=int, default=20,
                       help="start and end candidates per window, and answers in nbest_predictions.json")
        g.add_argument("--max-answer-length", "--max_answer_length", dest="max_answer_length", type=int, default=30,
                       help="longest answer in tokens (default 30)")
        g.add_argument("--null-score-diff-threshold", "--null_score_diff_threshold", dest="null_score_diff_threshold",
                       type=float, default=0.0,
                       help="v2: answer '' when null score - best span score exceeds this (default 0.0)")
        # run_squad.py switches that bertkit does not need: v2 is read from the data (is_impossible).
        g.add_argument("--version_2_with_negative", nargs="?", const=True, default=False, type=parse_bool,
                       help=argparse.SUPPRESS)
        g.add_argument("--verbose_logging", nargs="?", const=True, default=False, type=parse_bool,
                       help=argparse.SUPPRESS)
        g.add_argument("--article-split", type=int, default=None, metavar="K",
                       help="use the dev file only: split 'train' = its first K articles, 'dev' = the rest")

    def __init__(self, options):
        super().__init__(options)
        for name, minimum in (("doc_stride", 1), ("max_query_length", 1), ("n_best_size", 1),
                              ("max_answer_length", 1), ("article_split", 1)):
            value = self.options.get(name)
            if value is not None and value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
        self.slipped_answers = 0  # answers whose answer_start is off by whitespace (kept for scoring)
        self.train_version: str | None = None  # "1.1" or "2.0": the SQuAD version the model trains on

    def _opt(self, name: str, default: Any) -> Any:
        value = self.options.get(name)
        return default if value is None else value

    # ---- data -----------------------------------------------------------------------------------
    def _find_files(self, split: str) -> list[Path]:
        """The split's file: an explicit --*-file, else the official JSON in --data-dir, else the
        Parquet shards of a downloaded Hub dataset there (rajpurkar/squad keeps them in plain_text/,
        squad_v2 in squad_v2/)."""
        explicit = {"train": self.options.train_file, "dev": self.options.dev_file,
                    "test": self.options.test_file}[split]
        if explicit:
            return [Path(explicit)]
        if not self.options.data_dir:
            raise ValueError(f"SQuAD split {split!r}: give --data-dir or --{split}-file")
        data_dir = Path(self.options.data_dir)
        found = [p for p in (data_dir / f"{split}-v1.1.json", data_dir / f"{split}-v2.0.json") if p.is_file()]
        if len(found) > 1:
            raise ValueError(f"{data_dir} holds both {found[0].name} and {found[1].name}; pick one with "
                             f"--{split}-file")
        if found:
            return found
        hub_files = find_hub_split(data_dir, split, ("plain_text", "squad_v2"))
        if not hub_files:
            raise FileNotFoundError(f"no {split}-v1.1.json or {split}-v2.0.json in --data-dir {data_dir}, nor the "
                                    f"Hub's {HUB_SPLITS[split]}-*.parquet (there or in plain_text/, squad_v2/); pass "
                                    f"--{split}-file (or --article-split K to train from the dev file)")
        return hub_files

    def read(self, split: str) -> list[SquadExample]:
        if split not in self.splits:
            raise ValueError(f"SQuAD has no split {split!r}; valid: {', '.join(self.splits)}")
        k = self.options.get("article_split")
        articles = slice(None)
        path_split = split
        if k is not None and split in ("train", "dev"):
            path_split, articles = "dev", (slice(0, k) if split == "train" else slice(k, None))
        paths = self._find_files(path_split)
        examples, slips = parse_squad_files(paths, articles, drop_unaligned=(split == "train"))
        path = files_label(paths)
        if slips:
            log.warning("%s: %d answers have an answer_start off by whitespace; they are not used as "
                        "training spans (still scored by text)", path, slips)
        self.slipped_answers += slips
        if not examples:
            raise DataError(f"{path}: split {split!r} has no questions"
                            + (f" (--article-split {k} leaves no articles for it)" if k is not None else ""))
        version = "2.0" if examples[0].is_impossible is not None else "1.1"
        if split == "train":
            self.train_version = version
        elif version == "2.0" and self.train_version == "1.1":
            # Scored as v2 (HasAns/NoAns) while the model never saw a question without an answer:
            # a v1.1 dev file and a v2.0 one are easily swapped, and both numbers look like results.
            unanswerable = sum(1 for e in examples if e.is_impossible)
            log.warning("%s is SQuAD v2.0 data (%d of %d questions have no answer) but the model is trained on "
                        "v1.1 data, where every question has one: its no-answer predictions are untrained",
                        path, unanswerable, len(examples))
        return examples

    def state_dict(self) -> dict[str, Any]:
        """The SQuAD version of the training data, so that evaluate can say when it differs."""
        return {"train_version": self.train_version} if self.train_version else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_version = state.get("train_version")

    def label_names(self) -> None:
        return None

    def model_config_updates(self) -> dict[str, Any]:
        return {"num_labels": 2}  # start and end logits

    # ---- encoding -------------------------------------------------------------------------------
    def encode(self, examples: list[SquadExample], tokenizer, max_seq_length: int) -> list[dict[str, Any]]:
        """Examples -> one feature per context window. A feature holds input_ids/token_type_ids
        ([CLS] q [SEP] window [SEP]), start_positions/end_positions (token indices; 0 = [CLS]),
        example_index, context_start (index of the window's first token), char_offsets
        ([n_window_tokens][2] character spans in the context) and max_context ([n_window_tokens]
        bools: is this the window where the token has the most context on both sides)."""
        backend = _plain_backend(tokenizer)
        cls_id, sep_id = _special_id(tokenizer, backend, "cls_id", "[CLS]"), _special_id(tokenizer, backend, "sep_id", "[SEP]")
        doc_stride = int(self._opt("doc_stride", 128))
        max_query = int(self._opt("max_query_length", 64))
        if doc_stride >= max_seq_length:
            # A window holds less than max_seq_length context tokens (the question and 3 special
            # tokens share it), and a stride is cut to the window: windows would only abut, and an
            # answer across their edge could be found in neither.
            raise ValueError(f"--doc-stride {doc_stride} is not below --max-seq-length {max_seq_length}, so context "
                             f"windows would not overlap; use a smaller --doc-stride (128 for 384, 48 for 128)")

        # Leading whitespace in a few questions would only add nothing-tokens; contexts are shared
        # by ~5 questions each, so each distinct context is tokenized once.
        q_encodings = backend.encode_batch([e.question.lstrip() for e in examples], add_special_tokens=False)
        contexts = list(dict.fromkeys(e.context for e in examples))
        # Encoding.ids/.offsets build a new Python list on every access, so read them once.
        c_encodings = {c: (enc.ids, enc.offsets)
                       for c, enc in zip(contexts, backend.encode_batch(contexts, add_special_tokens=False))}

        features: list[dict[str, Any]] = []
        for index, (example, q_enc) in enumerate(zip(examples, q_encodings)):
            q_ids = q_enc.ids[:max_query]
            c_ids, c_offsets = c_encodings[example.context]
            room = max_seq_length - len(q_ids) - 3  # [CLS] q [SEP] window [SEP]
            if room < 1:
                raise ValueError(f"--max-seq-length {max_seq_length} leaves no room for context after a "
                                 f"{len(q_ids)}-token question (question id {example.qid}); raise it or "
                                 f"lower --max-query-length")
            windows = _windows(len(c_ids), room, doc_stride)
            best_window = _best_window_per_token(windows, len(c_ids))
            answer_span = _answer_tokens(example, c_offsets)
            for w, (w_start, w_len) in enumerate(windows):
                context_start = len(q_ids) + 2
                start_pos = end_pos = 0
                if answer_span is not None and w_start <= answer_span[0] and answer_span[1] < w_start + w_len:
                    start_pos = context_start + answer_span[0] - w_start
                    end_pos = context_start + answer_span[1] - w_start
                features.append({
                    "input_ids": [cls_id, *q_ids, sep_id, *c_ids[w_start:w_start + w_len], sep_id],
                    "token_type_ids": [0] * context_start + [1] * (w_len + 1),
                    "start_positions": start_pos,
                    "end_positions": end_pos,
                    "example_index": index,
                    "context_start": context_start,
                    "char_offsets": c_offsets[w_start:w_start + w_len],
                    "max_context": (best_window[w_start:w_start + w_len] == w).tolist(),
                })
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = padded_inputs(features)
        batch["start_positions"] = torch.tensor([f["start_positions"] for f in features], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f["end_positions"] for f in features], dtype=torch.long)
        return batch

    # ---- evaluation -----------------------------------------------------------------------------
    def gather_outputs(self, batch: dict[str, torch.Tensor], outputs: Any) -> list[np.ndarray]:
        """One float32 array [2, T_i] (start and end logits, padding cut off) per feature."""
        lengths = batch["attention_mask"].ne(0).sum(-1).tolist()
        both = torch.stack([outputs.start_logits, outputs.end_logits], dim=1).detach().float().cpu().numpy()  # [B,2,T]
        return [both[i, :, :n] for i, n in enumerate(lengths)]

    def postprocess(self, examples: list[SquadExample], features: list[dict[str, Any]],
                    outputs: list[np.ndarray]) -> list[SquadPrediction]:
        """Per-feature logits ([2, T_i] each, as gather_outputs makes them) -> one SquadPrediction
        per example, in example order."""
        if len(features) != len(outputs):
            raise ValueError(f"postprocess got {len(outputs)} outputs for {len(features)} features")
        n_best = int(self._opt("n_best_size", 20))
        max_answer = int(self._opt("max_answer_length", 30))
        threshold = float(self._opt("null_score_diff_threshold", 0.0))
        by_example: dict[int, list[int]] = {}
        for i, f in enumerate(features):
            by_example.setdefault(f["example_index"], []).append(i)

        predictions = []
        for index, example in enumerate(examples):
            candidates: list[tuple[float, float, float, int, int]] = []  # score, start, end logit, char span
            null_score = float("inf")
            for i in by_example.get(index, []):
                f, logits = features[i], outputs[i]
                start_logits, end_logits = logits[0], logits[1]
                null_score = min(null_score, float(start_logits[0] + end_logits[0]))
                c0, n_ctx = f["context_start"], len(f["char_offsets"])
                # Candidates: the n_best highest start and end logits among context tokens. The original
                # scripts (and run_qa.py) take the n_best of all positions, then drop non-context ones; a
                # superset here, and measured alike: 0 of 1,500 v1.1 dev answers differed (MiniLM at F1 31).
                starts = c0 + np.argsort(-start_logits[c0:c0 + n_ctx], kind="stable")[:n_best]
                ends = c0 + np.argsort(-end_logits[c0:c0 + n_ctx], kind="stable")[:n_best]
                for s in starts.tolist():
                    if not f["max_context"][s - c0]:
                        continue
                    for e in ends.tolist():
                        if e < s or e - s + 1 > max_answer:
                            continue
                        sl, el = float(start_logits[s]), float(end_logits[e])
                        candidates.append((sl + el, sl, el, f["char_offsets"][s - c0][0], f["char_offsets"][e - c0][1]))
            predictions.append(self._choose(example, candidates, null_score, n_best, threshold))
        return predictions

    def _choose(self, example: SquadExample, candidates: list[tuple[float, float, float, int, int]],
                null_score: float, n_best: int, threshold: float) -> SquadPrediction:
        candidates.sort(key=lambda c: -c[0])
        nbest: list[dict[str, Any]] = []
        seen: set[str] = set()
        for score, sl, el, c_start, c_end in candidates:
            text = example.context[c_start:c_end]
            if text in seen:  # several windows can propose the same span
                continue
            seen.add(text)
            nbest.append({"text": text, "score": score, "start_logit": sl, "end_logit": el})
            if len(nbest) == n_best:
                break
        best_span = nbest[0] if nbest else None
        is_v2 = example.is_impossible is not None
        if is_v2 and null_score != float("inf"):
            nbest.append({"text": "", "score": null_score, "start_logit": None, "end_logit": None})
            nbest.sort(key=lambda c: -c["score"])
        if not nbest:  # no window (or no valid span): the original script's "empty" fallback
            nbest.append({"text": "", "score": 0.0, "start_logit": None, "end_logit": None})
        scores = np.array([c["score"] for c in nbest], dtype=np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        for c, p in zip(nbest, probs.tolist()):
            c["probability"] = p
        if not is_v2:
            return SquadPrediction(best_span["text"] if best_span else "", None, nbest)
        if best_span is None:
            # No valid span anywhere: "no answer" wins at any threshold (json writes Infinity,
            # which the official script's json.load reads).
            return SquadPrediction("", float("inf"), nbest)
        odds = null_score - best_span["score"]
        return SquadPrediction("" if odds > threshold else best_span["text"], odds, nbest)

    raw_input = "JSON {\"question\": ..., \"context\": ..., \"id\": ...}, or question<TAB>context"

    def raw_examples(self, lines: Sequence[tuple[str, str]], first_index: int = 0) -> list[SquadExample]:
        # A model trained on SQuAD 2.0 may answer "no answer"; one trained on 1.1 always answers.
        impossible = False if self.train_version == "2.0" else None
        examples = []
        for where, line in lines:
            fields = raw_input_fields(where, line, ("question", "context"))
            question, context = text_field(fields, where, "question"), text_field(fields, where, "context")
            examples.append(SquadExample(str(fields.get("id", first_index + len(examples))), question, context,
                                         is_impossible=impossible, source=where))
        return examples

    def raw_records(self, examples, outputs, predictions) -> list[dict[str, Any]]:
        """The answer ("" = no answer, for a SQuAD 2.0 model), its probability among the n-best
        spans, and (2.0) the null odds: null score minus the best span's."""
        records = []
        for example, prediction in zip(examples, predictions):
            best = next((c for c in prediction.nbest if c["text"] == prediction.text), None)
            record = {"id": example.qid, "question": example.question, "answer": prediction.text,
                      "probability": round(best["probability"], 6) if best else None}
            if prediction.null_odds is not None:
                record["null_odds"] = prediction.null_odds
            records.append(record)
        return records

    def placeholder_predictions(self, examples: list[SquadExample]) -> list[SquadPrediction]:
        return [SquadPrediction("", null_odds=0.0) for _ in examples]

    def metrics(self, examples: list[SquadExample], predictions: list[SquadPrediction]) -> dict[str, float]:
        """exact_match and f1 (percent); for v2 also HasAns_/NoAns_ breakdown and best-threshold
        numbers, computed as evaluate-v2.0.py would from predictions.json and null_odds.json."""
        if len(examples) != len(predictions):
            raise ValueError(f"metrics got {len(predictions)} predictions for {len(examples)} examples")
        golds = {e.qid: e.answers for e in examples}
        texts = {e.qid: p.text for e, p in zip(examples, predictions)}
        if any(e.is_impossible is not None for e in examples):
            odds = {e.qid: p.null_odds if p.null_odds is not None else 0.0 for e, p in zip(examples, predictions)}
            # The script's cut-off must be the one the predictions were made with: at its default
            # (1.0) a question with odds in (1, threshold] would count as "no answer" although
            # predictions.json answers it (evaluate-v2.0.py ... --na-prob-thresh THRESHOLD agrees).
            threshold = float(self._opt("null_score_diff_threshold", 0.0))
            return squad_v2_evaluate(golds, texts, odds, na_prob_thresh=threshold)
        unlabeled = [e.qid for e in examples if not e.answers]
        if unlabeled:
            raise DataError(f"question id {unlabeled[0]!r} (and {len(unlabeled) - 1} more) has no gold "
                            f"answer; v1.1 metrics need labeled data")
        return squad_v1_evaluate(golds, texts)

    def write_predictions(self, examples: list[SquadExample], predictions: list[SquadPrediction],
                          path: str | Path) -> Path:
        """Write predictions.json (id -> text) at `path` (or into it, if it is a directory), plus
        nbest_predictions.json and, for v2, null_odds.json next to it, named after it
        (companion_path). Returns predictions.json."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "predictions.json"

        def as_json(obj: Any) -> str:
            return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"

        pairs = list(zip(examples, predictions))
        files = {path: as_json({e.qid: p.text for e, p in pairs}),
                 companion_path(path, "nbest_predictions"): as_json({e.qid: p.nbest for e, p in pairs})}
        if any(e.is_impossible is not None for e in examples):
            files[companion_path(path, "null_odds")] = as_json({e.qid: p.null_odds for e, p in pairs})
        write_files_together(files)
        return path


def companion_path(predictions: Path, kind: str) -> Path:
    """The n-best or null-odds file that belongs to a predictions file, so that two runs into one
    folder (`--split dev` beside `--split test`) never share one: predictions.json ->
    null_odds.json, predictions.dev.json -> null_odds.dev.json, any other name gets the kind
    inserted (mine.json -> mine.null_odds.json)."""
    name = predictions.name
    if name.startswith("predictions."):
        return predictions.with_name(kind + name[len("predictions"):])
    return predictions.with_name(f"{predictions.stem}.{kind}{predictions.suffix}")


# ---- helpers ------------------------------------------------------------------------------------
def _plain_backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a bertkit Tokenizer (or a bare one), copied without the
    truncation/padding that tokenizer.json files often carry (all-MiniLM-L6-v2 pads and cuts to
    128), which would silently cut contexts; the caller's tokenizer is not modified."""
    from tokenizers import Tokenizer as RustTokenizer

    backend = getattr(tokenizer, "backend", tokenizer)
    if not isinstance(backend, RustTokenizer):
        raise TypeError(f"SQuAD encoding needs a bertkit Tokenizer or tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    if backend.truncation is None and backend.padding is None:
        return backend
    plain = RustTokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _special_id(tokenizer, backend, attribute: str, token: str) -> int:
    value = getattr(tokenizer, attribute, None)
    if value is None:
        value = backend.token_to_id(token)
    if value is None:
        raise ValueError(f"the tokenizer has no {token} token, which SQuAD inputs need")
    return int(value)


def _windows(n_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each context window: `room` tokens at most, starts `stride` apart, the
    last one reaching the end. An empty context still gets one (empty) window."""
    windows, start = [], 0
    while True:
        length = min(n_tokens - start, room)
        windows.append((start, length))
        if start + length >= n_tokens:
            return windows
        start += min(length, stride)


def _best_window_per_token(windows: list[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """[n_tokens] index of the window where each context token has the most context: the best
    min(left, right) + 0.01 * length, first window on ties (google-research/bert's rule, so that a
    token near a window edge is predicted from the window where it sits more centrally)."""
    token = np.arange(n_tokens)
    scores = np.full((len(windows), n_tokens), -1.0)  # [W, N]; -1 = token not in that window
    for w, (start, length) in enumerate(windows):
        inside = (token >= start) & (token < start + length)
        score = np.minimum(token - start, start + length - 1 - token) + 0.01 * length
        scores[w] = np.where(inside, score, -1.0)
    return scores.argmax(0) if n_tokens else np.zeros(0, dtype=np.int64)


def _answer_tokens(example: SquadExample, offsets: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """Context-token span (first, last) of a gold answer, or None. Among the aligned answers the
    first one whose tokens cut out exactly its text is used, else the first aligned one: dev
    questions carry ~3 answers and the first sometimes starts inside a word piece ("8" of "20–18")
    where another ("eight") would be reproducible (training files hold one answer per question)."""
    if example.is_impossible or not example.answers:
        return None
    fallback = None
    for text, start in zip(example.answers, example.answer_starts):
        if start < 0:
            continue
        end = start + len(text)
        # Tokens overlapping [start, end): an answer may begin or end inside a word piece.
        covering = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
        if not covering:
            continue
        span = covering[0], covering[-1]
        if offsets[span[0]][0] == start and offsets[span[1]][1] == end:
            return span
        fallback = fallback or span
    return fallback
