"""Corpus -> BERT pre-training instances -> record shards (`bertkit pretrain-data`).

Instance creation follows google-research/bert `create_pretraining_data.py`: per document, a
target length (max_seq_length - 3, or with probability `short_seq_prob` a random length in
[2, that]), segments A/B cut at a random sentence boundary, B replaced 50% of the time by text from
another document (NSP label 1) with the unused sentences put back, and `truncate_seq_pair`
removing tokens from the longer side at a random end.

Input: text files with one sentence per line and a blank (or whitespace-only) line between
documents, WikiText-2/103 files (`--wikitext`: one document per article), or JSONL with one document per line in `--text-field` (split into sentences by newlines
and the rule-based splitter of `bertkit.data.wikipedia`). Files may be .gz or .bz2. Invalid UTF-8 is
an error naming the file and line (a silent replacement would put U+FFFD into the vocabulary's
[UNK] counts without anyone noticing).

Streaming, and how it differs from the reference: the reference holds the whole corpus in memory
and draws the NSP random document from all of it. Here documents are read in chunks (`chunk_docs`
documents, default 10,000, or 64 MB of text) and the random document comes from the same chunk,
so peak memory depends on the chunk size, not the corpus size. Each chunk becomes one shard and
its randomness depends only on (seed, epoch, chunk index), so `--workers N` and
`--num-shards/--shard-index` parts give byte-identical shards. Instances are shuffled within a
chunk (the reference shuffles globally; training samplers shuffle across shards anyway).

`--no-nsp` makes MLM-only rows packed to `max_seq_length` from consecutive documents: each
document piece is `[CLS] ... [SEP]` with its own sequence id 1..k (`sequence_ids`), so attention
stays within a document (docs/INTERFACES.md "attention_mask values"). Long documents are split
across rows; a piece is never shorter than 16 tokens unless its document ends.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from bertkit.data import records
from bertkit.data.masking import MaskingConfig, TargetWords, VocabInfo, mask_row, word_spans
from bertkit.tasks.base import DataError

MASKING_MODES = ("static", "dynamic")
PARQUET_ROWS = ("documents", "lines")
MIN_PACKED_PIECE = 16  # shorter document pieces waste a [CLS]/[SEP] pair on little text


@dataclass
class PretrainDataConfig:
    """Settings of `bertkit pretrain-data`; all of them go into the manifest."""

    max_seq_length: int = 128  # tokens per row including [CLS]/[SEP]
    short_seq_prob: float = 0.1  # probability of a shorter random target length (NSP mode)
    dupe_factor: int = 1  # epochs generated, each with different pairings and masks
    nsp: bool = True  # False: MLM-only rows packed from consecutive documents
    masking: str = "static"  # static: masks stored; dynamic: masks drawn at batch time
    mask: MaskingConfig = field(default_factory=MaskingConfig)
    target_words: list[str] | None = None  # words whose occurrences are masked at mask.target_mask_prob
    seed: int = 12345  # the reference's default random_seed
    chunk_docs: int = 10_000  # documents per chunk (= per shard); bounds memory
    chunk_bytes: int = 64 << 20  # ... or this much text, whichever comes first
    text_field: str | None = None  # JSONL input: the field holding a document's text
    parquet_rows: str = "documents"  # Parquet input: a row is a document, or a line of a text file ("lines")
    split_sentences: bool = False  # text input: lines are paragraphs, split them into sentences
    wikitext: bool = False  # WikiText-2/103 files: articles at " = Title = " lines (see iter_wikitext_documents)
    do_lower_case: bool | None = None  # tokenizer casing; None: as the tokenizer's files say

    def __post_init__(self) -> None:
        if self.max_seq_length < 5:
            raise ValueError(f"--max-seq-length must be >= 5 ([CLS] A [SEP] B [SEP]), got {self.max_seq_length}")
        if self.max_seq_length > 32767:
            raise ValueError(f"--max-seq-length {self.max_seq_length} is too long for int16 positions")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"--short-seq-prob must be in [0, 1], got {self.short_seq_prob}")
        if self.dupe_factor < 1:
            raise ValueError(f"--dupe-factor must be >= 1, got {self.dupe_factor}")
        if self.masking not in MASKING_MODES:
            raise ValueError(f"--masking {self.masking!r} is not one of {', '.join(MASKING_MODES)}")
        if self.chunk_docs < 1 or self.chunk_bytes < 1:
            raise ValueError("--chunk-docs must be >= 1")
        if self.nsp and self.chunk_docs < 2:
            raise ValueError("--chunk-docs must be >= 2 with NSP: the random next sentence comes from another "
                             "document of the same chunk")
        if self.parquet_rows not in PARQUET_ROWS:
            raise ValueError(f"--parquet-rows {self.parquet_rows!r} is not one of {', '.join(PARQUET_ROWS)}")
        if self.wikitext and self.text_field is not None:
            raise ValueError("--wikitext and --text-field cannot be combined: --wikitext reads WikiText's lines, from "
                             "text files or from the 'text' column of the Hub's Salesforce/wikitext Parquet files")
        if self.mask.masked_lm_prob == 0 and (self.target_words is None or self.mask.target_mask_prob == 0):
            raise ValueError("--masked-lm-prob 0 masks nothing (no --target-words to mask either): the records "
                             "would have no MLM targets; use e.g. the default 0.15")
        if self.target_words is not None and self.mask.strategy != "uniform":
            raise ValueError(f"--target-words and --{self.mask.strategy}-mask cannot be combined; pick one strategy")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainDataConfig":
        data = dict(data)
        data["mask"] = MaskingConfig(**data["mask"])
        data.setdefault("wikitext", False)  # manifests written before the flag existed
        data.setdefault("parquet_rows", "documents")
        return cls(**data)


# ---- reading the corpus -------------------------------------------------------------------------
def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files and globs -> sorted existing files (each pattern must match something). A value that is
    no file and holds commas is a list, as create_pretraining_data.py's --input_file=a.txt,b.txt."""
    listed: list[str] = []
    for given in patterns:
        listed += [given] if "," not in given or Path(given).exists() else [p for p in given.split(",") if p]
    out: list[Path] = []
    for pattern in listed:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FileNotFoundError(f"--input {pattern}: no such file (or the glob matched nothing)")
        out.extend(Path(m) for m in matches)
    return out


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


# Leading bytes of binary formats people hand to pretrain-data by mistake: pre-training data in
# another format, or bertkit's own shards. (HDF5 and TFRecord are recognised by external.sniff.)
_BINARY_MAGIC = ((b"PK\x03\x04", "a zip archive, e.g. NumPy .npz"), (b"\xff\xff\xff\xff", "Arrow data, e.g. a bertkit "
                 "record shard"), (b"ARROW1", "an Arrow file"), (b"\x93NUMPY", "a NumPy .npy array"))


def binary_kind(path: Path) -> str | None:
    """What a binary file is, from its first bytes ("HDF5 pre-training data", ...); None for text."""
    from bertkit.data.external import sniff

    if path.suffix not in (".gz", ".bz2"):
        kind = sniff(path)
        if kind:
            return f"{'HDF5' if kind == 'hdf5' else 'TFRecord'} pre-training data"
    with _open_binary(path) as f:
        try:
            head = f.read(4096)
        except (OSError, EOFError):
            return None
    for magic, kind in _BINARY_MAGIC:
        if head.startswith(magic):
            return kind
    return "binary data (NUL bytes)" if b"\x00" in head else None


def _not_text_error(path: Path, lineno: int, kind: str) -> DataError:
    if "pre-training data" in kind:
        fix = f"convert it with `bertkit convert-records {path} OUT_DIR`, then pass OUT_DIR to `bertkit pretrain`"
    elif "record shard" in kind:
        fix = "a bertkit record directory goes to `bertkit pretrain --data DIR` as it is"
    else:
        fix = "give the text files the data was made from"
    return DataError(f"{path}:{lineno}: not a text file ({kind}); --input takes text, one sentence per line: {fix}")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without the newline); invalid UTF-8 or binary content (a NUL
    byte, or a known binary format's leading bytes) -> DataError naming file:line."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if b"\x00" in raw:  # valid UTF-8, but no text file holds NUL bytes
                raise _not_text_error(path, lineno, binary_kind(path) or "binary data (NUL bytes)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                kind = binary_kind(path)
                if kind:
                    raise _not_text_error(path, lineno, kind) from None
                raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {err.start} of the line "
                                f"({raw[max(0, err.start - 10):err.start + 10]!r}); re-encode the file as "
                                f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            yield lineno, line.rstrip("\r\n")


PARQUET_TEXT_COLUMN = "text"  # the column of the Hub's text corpora (wikimedia/wikipedia, Salesforce/wikitext, ...)


def parquet_texts(path: Path, column: str | None) -> Iterator[tuple[int, str]]:
    """(row number from 0, text) of one column of a Parquet file, a record batch at a time (a Hub
    Wikipedia shard is ~0.5 GB: its rows are never all in memory). A null cell is empty text."""
    import pyarrow.parquet as pq

    column = column or PARQUET_TEXT_COLUMN
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow's ArrowInvalid, OSError
        raise DataError(f"{path}: cannot read as Parquet ({err})") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise DataError(f"{path}: no column {column!r} (--text-field; the file's columns: {', '.join(names)})")
    row = 0
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}: row {row}: column {column!r} holds {type(value).__name__}, not text "
                                f"(--text-field names the text column)")
            yield row, value or ""
            row += 1


def iter_documents(paths: Sequence[Path], text_field: str | None = None, split: bool = False,
                   parquet_rows: str = "documents") -> Iterator[list[str]]:
    """Documents (lists of non-empty sentences) from text, JSONL or Parquet files, streamed.
    `split` runs the rule-based sentence splitter over each line of text input (paragraph-per-line
    corpora, where otherwise every document is one "sentence" and NSP always picks a random B;
    WikiText has its own reader, iter_wikitext_documents). A JSONL object or a Parquet row is one
    document (column `text_field`, "text" by default for Parquet), its lines split into sentences;
    with parquet_rows="lines" a Parquet row is a line of a text file instead (bookcorpus: a sentence
    per row), an empty row ending a document."""
    from bertkit.data.sentences import split_sentences
    from bertkit.tasks.base import is_parquet

    def document(text: str) -> list[str]:
        return [s for para in text.split("\n") for s in split_sentences(para)]

    if any(is_parquet(path) for path in paths):
        if not all(is_parquet(path) for path in paths):
            kinds = sorted({"Parquet" if is_parquet(path) else "text" for path in paths})
            raise DataError(f"--input mixes {' and '.join(kinds)} files ({', '.join(map(str, paths[:3]))}, ...); "
                            f"give one kind per run")
        if parquet_rows == "lines":
            yield from text_documents((line for path in paths for _, row in parquet_texts(path, text_field)
                                       for line in row.split("\n")), split)
            return
        for path in paths:
            for _, text in parquet_texts(path, text_field):
                sentences = document(text)
                if sentences:
                    yield sentences
        return
    if text_field is not None:
        for path in paths:
            for lineno, line in read_lines(path):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}); expected one object "
                                    f"per line with a {text_field!r} field") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise DataError(f"{path}:{lineno}: expected an object with a string field {text_field!r} "
                                    f"(--text-field)")
                sentences = document(obj[text_field])
                if sentences:
                    yield sentences
        return
    for path in paths:  # a file's end also ends its last document
        yield from text_documents((line for _, line in read_lines(path)), split)


def text_documents(lines: Iterable[str], split: bool) -> Iterator[list[str]]:
    """Documents of lines of text: a sentence per line (or, with `split`, sentences split from each
    line), a blank line between documents."""
    from bertkit.data.sentences import split_sentences

    doc: list[str] = []
    for line in lines:
        text = line.strip()
        if text:
            doc.extend(split_sentences(text) if split else [text])
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


_WIKITEXT_HEADING = re.compile(r"^(=+) (.*) \1$")  # "= Title =" (an article), "= = Section = =", ...
_WIKITEXT_JOINER = re.compile(r" @([-.,])@(?: |$)")  # the tokenized files split "1,000" as "1 @,@ 000"


def _with_neighbours(lines: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """(line before, line, line after) for each line; "" beyond the ends."""
    previous, current = "", None
    for following in lines:
        if current is not None:
            yield previous, current, following
            previous = current
        current = following
    if current is not None:
        yield previous, current, ""


def iter_wikitext_documents(paths: Sequence[Path], unk_token: str = "[UNK]") -> Iterator[list[str]]:
    """Articles of WikiText-2/103 files (`wiki.*.tokens` or `wiki.*.raw`) as documents of sentences.

    WikiText has one paragraph per line and blank lines around every heading, so the blank-line
    rule of plain text makes each paragraph a document and each heading a one-line document:
    on WikiText-2 train that gave 11,669 "documents" and NSP labels two-thirds random, since a
    one-sentence document always takes a random B. Here an article runs from its ` = Title = `
    line to the next; heading lines (`= = Section = =`, any level) are dropped; paragraphs are
    split into sentences; ` @-@ `, ` @,@ `, ` @.@ ` are joined back (`1 @,@ 000` -> `1,000`,
    otherwise [@, ",", @] tokens); and the tokenized files' `<unk>` becomes `unk_token`, which the
    WordPiece tokenizer reads as its unknown token instead of the three pieces of "<unk>".

    A heading is a `= ... =` line with a blank line on both sides: table legends wrapped over
    lines (` = Goals ; A = ` between two text lines) look like headings but are not."""
    from bertkit.data.sentences import split_sentences

    from bertkit.tasks.base import is_parquet

    for path in paths:
        doc: list[str] = []
        # The Hub's Salesforce/wikitext: one row per line of the file, newline included.
        lines = (text for _, text in parquet_texts(path, None)) if is_parquet(path) else (
            line for _, line in read_lines(path))
        for before, text, after in _with_neighbours(line.strip() for line in lines):
            if not text:
                continue
            heading = _WIKITEXT_HEADING.match(text) if not before and not after else None
            if heading:
                is_title = len(heading.group(1)) == 1 and not heading.group(2).startswith("= ")
                if is_title and doc:
                    yield doc
                    doc = []
                continue
            text = _WIKITEXT_JOINER.sub(lambda m: m.group(1), text).replace("<unk>", unk_token)
            doc.extend(split_sentences(text))
        if doc:
            yield doc


class DocumentShape:
    """Counts, while the documents stream past, what NSP will make of them: a document of one
    sentence always takes its segment B from another document (label "random")."""

    def __init__(self) -> None:
        self.documents = self.single_sentence = self.wikitext_headings = 0

    def count(self, documents: Iterable[list[str]]) -> Iterator[list[str]]:
        for doc in documents:
            self.documents += 1
            if len(doc) == 1:
                self.single_sentence += 1
                self.wikitext_headings += bool(_WIKITEXT_HEADING.match(doc[0]))
            yield doc

    def nsp_warning(self, config: PretrainDataConfig, parquet: bool = False) -> str | None:
        """A warning when most documents have one sentence and NSP is on, with the likely fix."""
        if not config.nsp or self.documents < 20 or self.single_sentence * 2 <= self.documents:
            return None
        msg = (f"warning: {self.single_sentence:,} of {self.documents:,} documents have a single sentence; "
               f"their next sentence always comes from another document, so most NSP labels will be "
               f"'random'.")
        if self.wikitext_headings:
            return msg + (f" {self.wikitext_headings:,} of them are WikiText headings ('= = ... = ='): "
                          f"read the files with --wikitext")
        if parquet and config.parquet_rows == "documents":
            return msg + (" If each Parquet row is a sentence of a running text (as in bookcorpus), add "
                          "--parquet-rows lines; an empty row then ends a document")
        if not config.split_sentences and config.text_field is None:
            return msg + (" If each line is a paragraph, add --split-sentences; documents must be "
                          "separated by blank lines")
        return msg


def iter_chunks(documents: Iterable[list[str]], chunk_docs: int, chunk_bytes: int) -> Iterator[list[list[str]]]:
    """Documents in chunks of `chunk_docs` documents or `chunk_bytes` of text, never of a single
    document: NSP takes its random B from another document of the same chunk, and a lone document
    has none (its random B would be its own text). A document that alone reaches `chunk_bytes` takes
    the next one with it; a last chunk of a single document joins the one before."""
    chunk: list[list[str]] = []
    full: list[list[str]] | None = None  # a full chunk, held until more than one document follows
    size = 0
    for doc in documents:
        chunk.append(doc)
        size += sum(len(s) for s in doc)
        if full is not None and len(chunk) > 1:
            yield full
            full = None
        if (len(chunk) >= chunk_docs or size >= chunk_bytes) and (len(chunk) > 1 or chunk_docs == 1):
            if full is not None:
                yield full
            full, chunk, size = chunk, [], 0
    if full is not None:
        if len(chunk) == 1:
            full, chunk = full + chunk, []
        yield full
    if chunk:
        yield chunk


# ---- instances ----------------------------------------------------------------------------------
@dataclass
class _Context:
    """Everything a chunk needs besides its documents; rebuilt in every worker process."""

    config: PretrainDataConfig
    backend: Any  # tokenizers.Tokenizer
    cls_id: int
    sep_id: int
    vocab: VocabInfo
    targets: TargetWords | None
    spelled: dict[int, np.ndarray] = field(default_factory=dict)  # see literal_specials


BUILDER_VERSION = 2  # see the record header in create_pretraining_data

# Special tokens that corpus text can spell out. [UNK] is not among them: --wikitext reads "<unk>"
# as the unknown token's text, and "[UNK]" read as [UNK] means what it says anyway.
LITERAL_SPECIALS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]")


def literal_specials(backend: Any) -> dict[int, np.ndarray]:
    """id of [CLS]/[SEP]/[MASK]/[PAD] -> the word pieces of that text read as ordinary text.

    The tokenizer keeps "[MASK]" in text as the [MASK] token (what `predict` wants); in a corpus,
    e.g. text about BERT, that made row inputs [MASK] with no label, extra [SEP]s inside a segment,
    [CLS]/[PAD] mid-row, none of them ever masked. google-research/bert reads the text as text:
    "[", "sep", "]" (uncased), and so does pretrain-data (tokenize_documents)."""
    plain = type(backend).from_str(backend.to_str())
    plain.encode_special_tokens = True  # specials in the text are split like any other text
    out = {}
    for token in LITERAL_SPECIALS:
        token_id = backend.token_to_id(token)
        if token_id is not None:
            out[int(token_id)] = np.asarray(plain.encode(token, add_special_tokens=False).ids, dtype=np.int32)
    return out


def make_context(tokenizer: Any, config: PretrainDataConfig) -> _Context:
    targets = None
    if config.target_words is not None:
        pieces: set[tuple[int, ...]] = set()
        for word in config.target_words:
            if len(word.split()) != 1:
                raise DataError(f"--target-words: {word!r} is not a single word (phrases are not matched)")
            ids = tuple(tokenizer.backend.encode(word, add_special_tokens=False).ids)
            if ids:
                pieces.add(ids)
        if not pieces:
            raise DataError("--target-words: the list is empty after tokenization")
        targets = TargetWords(pieces)
    return _Context(config, tokenizer.backend, tokenizer.cls_id, tokenizer.sep_id,
                    VocabInfo.from_vocab(tokenizer.vocab), targets, literal_specials(tokenizer.backend))


def unmatchable_target_words(words: Sequence[str], ctx: _Context) -> list[str]:
    """Listed words whose pieces form more than one word ("don't" -> don ' t): TargetWords
    matches single words, so these never match."""
    never = []
    for word in words:
        ids = np.asarray(ctx.backend.encode(word, add_special_tokens=False).ids, dtype=np.int32)
        if ids.size and len(word_spans(ids, ctx.vocab)) > 1:
            never.append(word)
    return never


def _spell_out(ids: np.ndarray, spelled: dict[int, np.ndarray], is_spelled: np.ndarray) -> np.ndarray:
    """`ids` with each special token that came from the text replaced by its text's word pieces."""
    if not is_spelled[ids].any():
        return ids
    parts, start = [], 0
    for p in np.flatnonzero(is_spelled[ids]):
        parts += [ids[start:p], spelled[int(ids[p])]]
        start = p + 1
    parts.append(ids[start:])
    return np.concatenate(parts).astype(np.int32, copy=False)


def tokenize_documents(documents: list[list[str]], backend: Any, spelled: dict[int, np.ndarray] | None = None
                       ) -> list[list[np.ndarray]]:
    """Documents of sentences -> documents of int32 id arrays; empty sentences/documents dropped.
    `spelled` (from `literal_specials`): special tokens written in the text become the word
    pieces of their text, as google-research/bert tokenizes them."""
    flat = [s for doc in documents for s in doc]
    ids: list[np.ndarray] = []
    is_spelled = np.zeros(max([backend.get_vocab_size(), *(spelled or {})]) + 1, dtype=bool)
    is_spelled[list(spelled or {})] = True
    # Encodings carry tokens, offsets and masks besides ids (~60 bytes a token in Rust memory):
    # encoding a whole chunk at once cost ~250 MB on WikiText; batches of 2048 keep only the ids.
    for b in range(0, len(flat), 2048):
        batch = [np.asarray(e.ids, dtype=np.int32) for e in backend.encode_batch(flat[b:b + 2048], add_special_tokens=False)]
        if spelled and batch and is_spelled[np.concatenate(batch)].any():  # rare: one test per batch
            batch = [_spell_out(x, spelled, is_spelled) for x in batch]
        ids.extend(batch)
    out: list[list[np.ndarray]] = []
    k = 0
    for doc in documents:
        segs = [x for x in ids[k:k + len(doc)] if x.size]
        k += len(doc)
        if segs:
            out.append(segs)
    return out


def truncate_seq_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Trim the longer of A/B one token at a time (ties: B) from a random end until they fit.

    Same removal counts as the reference's loop, computed in closed form so that a 10,000-token
    line costs no 10,000 Python iterations; the front/back split is a binomial draw."""
    la, lb = a.size, b.size
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    na = nb = 0
    if la > lb:
        na = min(la - lb, excess)
    elif lb > la:
        nb = min(lb - la, excess)
    rest = excess - na - nb
    nb += (rest + 1) // 2  # equal lengths: the reference removes from B first, then alternates
    na += rest // 2
    fa = int(rng.binomial(na, 0.5))
    fb = int(rng.binomial(nb, 0.5))
    return a[fa:la - (na - fa)], b[fb:lb - (nb - fb)]


def _nsp_instances(docs: list[list[np.ndarray]], ctx: _Context, rng: np.random.Generator) -> list[dict[str, Any]]:
    cfg = ctx.config
    max_tokens = cfg.max_seq_length - 3
    out: list[dict[str, Any]] = []
    for d, document in enumerate(docs):
        target = max_tokens
        if rng.random() < cfg.short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        chunk: list[np.ndarray] = []
        length = 0
        i = 0
        while i < len(document):
            chunk.append(document[i])
            length += document[i].size
            if i == len(document) - 1 or length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = np.concatenate(chunk[:a_end])
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_random = 1
                    b_target = target - a.size
                    other = d
                    if len(docs) > 1:
                        for _ in range(10):  # the reference's 10 tries to avoid the same document
                            other = int(rng.integers(0, len(docs)))
                            if other != d:
                                break
                    rdoc = docs[other]
                    parts: list[np.ndarray] = []
                    got = 0
                    for j in range(int(rng.integers(0, len(rdoc))), len(rdoc)):
                        parts.append(rdoc[j])
                        got += rdoc[j].size
                        if got >= b_target:
                            break
                    b = np.concatenate(parts)
                    i -= len(chunk) - a_end  # put the unused sentences back
                else:
                    is_random = 0
                    b = np.concatenate(chunk[a_end:])
                a, b = truncate_seq_pair(a, b, max_tokens, rng)
                ids = np.concatenate([[ctx.cls_id], a, [ctx.sep_id], b, [ctx.sep_id]]).astype(np.int32)
                types = np.zeros(ids.size, dtype=np.int8)
                types[a.size + 2:] = 1
                documents = [d, other] if is_random else [d]
                out.append({"input_ids": ids, "token_type_ids": types,
                            "sequence_ids": np.ones(ids.size, dtype=np.int8), "nsp_label": np.int8(is_random),
                            "document_ids": np.array(documents, dtype=np.int32)})
                chunk, length = [], 0
            i += 1
    return out


def _packed_instances(docs: list[list[np.ndarray]], ctx: _Context, rng: np.random.Generator) -> list[dict[str, Any]]:
    max_len = ctx.config.max_seq_length
    out: list[dict[str, Any]] = []
    pieces: list[np.ndarray] = []
    piece_documents: list[int] = []
    used = 0

    def flush() -> None:
        nonlocal pieces, piece_documents, used
        if pieces:
            ids = np.concatenate([np.concatenate([[ctx.cls_id], p, [ctx.sep_id]]) for p in pieces]).astype(np.int32)
            seq = np.concatenate([np.full(p.size + 2, k + 1, dtype=np.int8) for k, p in enumerate(pieces)])
            out.append({"input_ids": ids, "token_type_ids": np.zeros(ids.size, dtype=np.int8),
                        "sequence_ids": seq, "nsp_label": np.int8(-1),
                        "document_ids": np.array(piece_documents, dtype=np.int32)})
        pieces, piece_documents, used = [], [], 0

    # A different document order per epoch gives different row compositions.
    for d in rng.permutation(len(docs)):
        tokens = np.concatenate(docs[d])
        p = 0
        while p < tokens.size:
            room = max_len - used - 2
            left = tokens.size - p
            if room < 1 or (left > room and room < MIN_PACKED_PIECE) or len(pieces) >= 127:
                flush()  # sequence ids are int8: at most 127 documents per row
                continue
            take = min(room, left)
            pieces.append(tokens[p:p + take])
            piece_documents.append(int(d))
            used += take + 2
            p += take
    flush()
    return out


def _mask(inst: dict[str, Any], ctx: _Context, rng: np.random.Generator) -> dict[str, Any]:
    ids = inst["input_ids"]
    if ctx.config.masking == "dynamic":
        inst["masked_positions"] = np.zeros(0, dtype=np.int32)
        inst["masked_ids"] = np.zeros(0, dtype=np.int32)
        return inst
    tw = ctx.targets(ids, word_spans(ids, ctx.vocab)) if ctx.targets is not None else None
    inst["input_ids"], inst["masked_positions"], inst["masked_ids"] = mask_row(ids, rng, ctx.config.mask, ctx.vocab, tw)
    return inst


def chunk_instances(chunk_index: int, tokenized: list[list[np.ndarray]], ctx: _Context, epoch: int
                    ) -> list[dict[str, Any]]:
    """All instances of one chunk for one epoch, masked and shuffled. Depends only on
    (seed, epoch, chunk_index) and the chunk's documents."""
    rng = np.random.default_rng([ctx.config.seed, epoch, chunk_index])
    make = _nsp_instances if ctx.config.nsp else _packed_instances
    instances = [_mask(inst, ctx, rng) for inst in make(tokenized, ctx, rng)]
    order = rng.permutation(len(instances))
    return [instances[i] for i in order]


def _count_instance(stats: dict[str, int], inst: dict[str, Any], ctx: _Context) -> None:
    """Add one instance to the shard's counts (see `shard_stats` for what they are)."""
    cfg = ctx.config
    ids = inst["input_ids"]
    stats["rows"] += 1
    if cfg.nsp and int(inst["nsp_label"]) == 1:
        stats["random_rows"] += 1
        docs = inst["document_ids"]
        stats["random_same_document"] += int(docs.size == 2 and docs[0] == docs[1])
    if cfg.masking == "dynamic":
        return
    n_pred = int(inst["masked_positions"].size)
    stats["predictions"] += n_pred
    stats["maskable_tokens"] += int(ids.size - np.count_nonzero((ids == ctx.cls_id) | (ids == ctx.sep_id)))
    stats["rows_without_predictions"] += n_pred == 0
    cap = cfg.mask.max_predictions_per_seq
    # At the cap and wanting more: the row's 15% (plus target words) is above the cap.
    wanted_more = ctx.targets is not None or round(ids.size * cfg.mask.masked_lm_prob) > cap
    stats["rows_at_cap"] += n_pred >= cap and wanted_more


def shard_stats(tokenized: list[list[np.ndarray]], config: PretrainDataConfig) -> dict[str, int]:
    """Counts behind pretrain-data's warnings, kept in the shard's sidecar: corpus tokens, and
    sentences (lines) too long for one row, whose excess NSP mode cuts off; the per-row counts
    (`_count_instance`) are added while the rows are generated."""
    max_tokens = config.max_seq_length - 3
    sizes = np.array([x.size for doc in tokenized for x in doc], dtype=np.int64)
    long = sizes[sizes > max_tokens] if config.nsp else sizes[:0]  # packed rows split long documents
    return {"tokens": int(sizes.sum()), "long_sentences": int(long.size), "longest_sentence": int(sizes.max(initial=0)),
            "tokens_cut": int((long - max_tokens).sum()), "rows": 0, "random_rows": 0, "random_same_document": 0,
            "predictions": 0, "maskable_tokens": 0, "rows_without_predictions": 0, "rows_at_cap": 0}


def build_shard(chunk_index: int, documents: list[list[str]], ctx: _Context, out_dir: Path,
                fingerprint: str) -> dict[str, Any]:
    """Tokenize one chunk once, generate `dupe_factor` epochs from it, write its shard."""
    tokenized = tokenize_documents(documents, ctx.backend, ctx.spelled)
    epoch_rows: list[int] = []
    stats = shard_stats(tokenized, ctx.config)

    def generate() -> Iterator[dict[str, Any]]:
        for epoch in range(ctx.config.dupe_factor):
            instances = chunk_instances(chunk_index, tokenized, ctx, epoch)
            epoch_rows.append(len(instances))
            for inst in instances:
                _count_instance(stats, inst, ctx)
            yield from instances

    info = records.write_shard(out_dir / records.shard_name(chunk_index), generate(),
                               {"fingerprint": fingerprint, "chunk": chunk_index, "documents": len(tokenized),
                                "epoch_rows": epoch_rows, "stats": stats})
    return info  # the sidecar dict is built after generation, so epoch_rows and stats are filled in


def default_max_predictions(max_seq_length: int, masked_lm_prob: float) -> int:
    """--max-predictions-per-seq when not given: room for `masked_lm_prob` of a full row, and never
    below the reference's 20 (20 at length 128, 77 at 512; Google's README gives 76 for 512). A
    fixed 20 at length 512 masked 4.9% of the tokens instead of 15%."""
    return max(20, round(max_seq_length * masked_lm_prob))


def _share(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,} ({part / max(1, whole):.2%})"


def corpus_warnings(config: PretrainDataConfig, stats: dict[str, int], documents: int) -> list[str]:
    """Warnings about records that would train badly, from the summed shard counts."""
    out: list[str] = []
    mask = config.mask
    cap = mask.max_predictions_per_seq
    if config.nsp and stats.get("random_rows") and stats["random_same_document"] > 0.01 * stats["random_rows"]:
        why = "the corpus is a single document" if documents == 1 else "some chunks hold a single document"
        out.append(f"warning: {_share(stats['random_same_document'], stats['random_rows'])} NSP rows labelled "
                   f"'random next sentence' take segment B from their own document ({why}), so their label "
                   f"is wrong; separate documents with blank lines, or use --no-nsp")
    if stats.get("tokens") and stats["tokens_cut"] > 0.01 * stats["tokens"]:
        lines = f"{stats['long_sentences']:,} line{' is' if stats['long_sentences'] == 1 else 's are'}"
        out.append(f"warning: {lines} (sentences) longer than --max-seq-length "
                   f"{config.max_seq_length} (the longest has {stats['longest_sentence']:,} tokens): "
                   f"{_share(stats['tokens_cut'], stats['tokens'])} tokens of the corpus are cut off by "
                   f"truncation and never used; put one sentence per line (--split-sentences for paragraphs), "
                   f"or use --no-nsp, which splits long documents over rows")
    rows = stats.get("rows", 0)
    if config.masking == "static" and rows:
        rate = stats["predictions"] / max(1, stats["maskable_tokens"])
        if stats["rows_at_cap"] > 0.05 * rows:
            suggest = max(default_max_predictions(config.max_seq_length, mask.masked_lm_prob), 2 * cap)
            out.append(f"warning: {_share(stats['rows_at_cap'], rows)} rows hit --max-predictions-per-seq {cap} "
                       f"and got fewer masks than they should: {rate:.1%} of tokens are masked, "
                       f"--masked-lm-prob is {mask.masked_lm_prob:g}{' plus --target-words' if config.target_words else ''}; "
                       f"raise --max-predictions-per-seq (e.g. to {suggest})")
        if stats["rows_without_predictions"] > 0.01 * rows:
            out.append(f"warning: {_share(stats['rows_without_predictions'], rows)} rows have no masked token "
                       f"(masking rate {rate:.2%} of tokens): pretrain learns only NSP from them, and a held-out "
                       f"set without masks has no MLM loss to measure; raise --masked-lm-prob "
                       f"(now {mask.masked_lm_prob:g}) or list more --target-words")
    elif config.masking == "dynamic" and cap < round(config.max_seq_length * mask.masked_lm_prob):
        out.append(f"warning: --max-predictions-per-seq {cap} is below --masked-lm-prob {mask.masked_lm_prob:g} x "
                   f"--max-seq-length {config.max_seq_length} = {round(config.max_seq_length * mask.masked_lm_prob)}: "
                   f"full rows will be masked at {cap / config.max_seq_length:.1%}, not {mask.masked_lm_prob:.0%}; "
                   f"raise --max-predictions-per-seq")
    return out


# ---- worker processes ---------------------------------------------------------------------------
_WORKER_CTX: _Context | None = None


def _worker_init(tokenizer_spec: str, config: dict[str, Any]) -> None:
    global _WORKER_CTX
    # Workers split the corpus between them; the Rust thread pool inside each would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # A forked worker inherits the command's SIGTERM handler (unwind like Ctrl-C); a pool worker that
    # unwound would leave its task unanswered, so a worker ends at once on SIGTERM, as by default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _WORKER_CTX is None:  # spawn start method: nothing inherited, rebuild from the spec
        worker_config = PretrainDataConfig.from_dict(config)
        _WORKER_CTX = make_context(load_tokenizer(tokenizer_spec, worker_config.do_lower_case), worker_config)


def _worker_main(conn: Any, tokenizer_spec: str, config: dict[str, Any]) -> None:
    """A shard builder: (chunk, documents, out_dir, fingerprint) in, ("built", shard info) or
    ("failed", exception, traceback text) out, until None or the main process is gone."""
    # Ctrl-C at a terminal reaches the whole process group: the main process decides, and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_init(tokenizer_spec, config)
    assert _WORKER_CTX is not None
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        chunk_index, documents, out_dir, fingerprint = task
        try:
            reply: tuple = ("built", build_shard(chunk_index, documents, _WORKER_CTX, Path(out_dir), fingerprint))
        except Exception as err:
            reply = ("failed", err, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # an exception that does not pickle: its text still reaches the user
            conn.send(("failed", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}"), reply[2]))


class WorkerDied(RuntimeError):
    pass


class _ShardBuilders:
    """Worker processes that build shards, each fed through its own pipe.

    Replaces multiprocessing.Pool, which replaced a worker killed mid-chunk (by the out-of-memory
    killer, or a signal) and never its task, so the build waited for that chunk for ever; and
    whose terminate() could hang on a queue lock held by a killed worker. Here a worker that
    dies is reported with its chunk, and stopping the workers takes no shared lock."""

    def __init__(self, context: Any, workers: int, tokenizer_spec: str, config: PretrainDataConfig):
        self.processes: list[Any] = []
        self.connections: list[Any] = []
        self.chunk_of: dict[int, int] = {}  # worker -> the chunk it is building
        for _ in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(theirs, tokenizer_spec, config.to_dict()),
                                      daemon=True)
            self.processes.append(process)
            self.connections.append(ours)
            process.start()
            theirs.close()

    @property
    def idle(self) -> list[int]:
        return [w for w in range(len(self.processes)) if w not in self.chunk_of]

    @property
    def busy(self) -> bool:
        return bool(self.chunk_of)

    def send(self, task: tuple) -> None:
        worker = self.idle[0]
        try:
            self.connections[worker].send(task)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._died(worker, task[0])
        self.chunk_of[worker] = task[0]

    def next_result(self) -> dict[str, Any]:
        """The shard info of the next chunk finished; a worker's exception is raised here."""
        from multiprocessing.connection import wait

        by_handle = {}
        for w in range(len(self.processes)):
            by_handle[self.processes[w].sentinel] = w
            if w in self.chunk_of:
                by_handle[self.connections[w]] = w
        # A reply first: a worker's sentinel (an int) is ready only when it has exited.
        handle = min(wait(list(by_handle)), key=lambda h: isinstance(h, int))
        worker = by_handle[handle]
        chunk = self.chunk_of.get(worker)
        if isinstance(handle, int) or chunk is None:
            self._died(worker, chunk)
        try:
            reply = self.connections[worker].recv()
        except (EOFError, ConnectionResetError):
            self._died(worker, chunk)
        del self.chunk_of[worker]
        if reply[0] == "failed":
            raise reply[1] from WorkerFailure(reply[2])
        return reply[1]

    def _died(self, worker: int, chunk: int | None) -> None:
        process = self.processes[worker]
        process.join(timeout=5)
        code = process.exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}")
        where = f" while building chunk {chunk}" if chunk is not None else ""
        raise WorkerDied(f"pretrain-data worker {process.pid} {how}{where} (SIGKILL is what the out-of-memory "
                         f"killer sends: fewer --workers or a smaller --chunk-docs need less memory); the shards "
                         f"already built are kept, and rerunning the command builds the rest") from None

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except OSError:
                pass
        for process in self.processes:
            process.join()

    def kill(self) -> list[int]:
        """Stop every worker at once; returns the chunks that were being built."""
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
        for process in self.processes:
            process.join()
        return list(self.chunk_of.values())


class WorkerFailure(Exception):
    """The traceback of an exception raised in a worker process (the cause of the one re-raised)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def load_tokenizer(spec: str, do_lower_case: bool | None = None) -> Any:
    """`--tokenizer`: a vocab.txt, a model/tokenizer directory or a hub id."""
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(spec, do_lower_case=do_lower_case)


def dynamic_masking_for(manifest: dict[str, Any], tokenizer: Any, seed: int | None = None) -> Any:
    """A `DynamicMasking` with the masking settings recorded in a record manifest (for records
    made with `--masking dynamic`; the trainer calls it through `collate_pretraining`)."""
    from bertkit.data.masking import DynamicMasking

    config = PretrainDataConfig.from_dict(manifest["settings"])
    ctx = make_context(tokenizer, config)
    return DynamicMasking(config.mask, ctx.vocab, ctx.targets, seed=seed)


def peak_rss_mib() -> float:
    """Peak resident memory of this process and of its finished children, MiB (Linux ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def create_pretraining_data(inputs: Sequence[str], tokenizer_spec: str, output_dir: str | Path,
                            config: PretrainDataConfig, workers: int = 1, num_shards: int = 1,
                            shard_index: int = 0, log: Any = None) -> dict[str, Any]:
    """Write record shards for `inputs` into `output_dir`; returns the manifest.

    With num_shards > 1 only chunks with `chunk % num_shards == shard_index` are built (the other
    parts come from other machines; copy their shard files in and rerun to complete the manifest).
    Complete shards made with the same settings are skipped, so an interrupted run resumes."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    paths = expand_inputs(inputs)
    tokenizer = load_tokenizer(tokenizer_spec, config.do_lower_case)
    ctx = make_context(tokenizer, config)
    if config.target_words is not None:
        never = unmatchable_target_words(config.target_words, ctx)
        if never:
            log(f"warning: --target-words: {len(never)} of {len(config.target_words)} entries tokenize into "
                f"several words ({', '.join(repr(w) for w in never[:10])}{' ...' if len(never) > 10 else ''}) "
                f"and can never match an occurrence, which is always one word")
    out_dir = Path(output_dir)
    with records.new_record_directory(out_dir):  # bad input leaves no half-made directory
        header = {
            "tokenizer": {"vocab_hash": tokenizer.vocab_hash, "do_lower_case": tokenizer.do_lower_case,
                          "vocab_size": tokenizer.vocab_size, "path": "tokenizer"},
            "vocab_hash": tokenizer.vocab_hash,
            "max_seq_length": config.max_seq_length,
            "settings": config.to_dict(),
            # Names and sizes, not contents: enough to refuse resuming onto a different corpus.
            "inputs": [{"name": p.name, "bytes": p.stat().st_size} for p in paths],
            # Raised when the same settings would make other rows, so that an interrupted build is
            # not completed with shards of another version (2: special tokens spelled in the text
            # are read as text).
            "builder": BUILDER_VERSION,
        }
        fingerprint = records.fingerprint_for(out_dir, header, "--output-dir")
        tokenizer.save_pretrained(out_dir / "tokenizer")

        def done(chunk: int) -> bool:
            info = records.read_sidecar(out_dir / records.shard_name(chunk))
            return info is not None and info.get("fingerprint") == fingerprint

        n_chunks = built = skipped = 0

        def log_shard(info: dict[str, Any]) -> None:
            log(f"{info['name']}: {info['rows']} records from {info['documents']} documents")

        def chunks_to_build():
            """(index, documents) of this part's chunks that are not complete on disk yet."""
            nonlocal n_chunks, skipped
            for c, docs in enumerate(chunks):
                n_chunks += 1
                if c % num_shards != shard_index:
                    continue
                if done(c):
                    skipped += 1
                    continue
                yield c, docs

        if config.wikitext:
            documents = iter_wikitext_documents(paths, tokenizer.convert_ids_to_tokens(tokenizer.unk_id))
        else:
            documents = iter_documents(paths, config.text_field, config.split_sentences, config.parquet_rows)
        shape = DocumentShape()
        chunks = iter_chunks(shape.count(documents), config.chunk_docs, config.chunk_bytes)
        if workers == 1:
            for c, docs in chunks_to_build():
                log_shard(build_shard(c, docs, ctx, out_dir, fingerprint))
                built += 1
        else:
            # fork where there is one: workers inherit the loaded tokenizer instead of importing torch
            # and reloading it (seconds per worker). `tokenizers` turns its thread pool off in a
            # forked child, which is what we want with one process per core anyway.
            global _WORKER_CTX
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            _WORKER_CTX = ctx if method == "fork" else None
            try:
                builders = _ShardBuilders(mp.get_context(method), workers, tokenizer_spec, config)
            finally:
                _WORKER_CTX = None
            try:
                for c, docs in chunks_to_build():
                    # The next chunk is read while the workers build: one in hand, one per worker.
                    while not builders.idle:
                        log_shard(builders.next_result())
                    builders.send((c, docs, str(out_dir), fingerprint))
                    built += 1
                while builders.busy:
                    log_shard(builders.next_result())
                builders.close()
            except BaseException:
                # An error, Ctrl-C or SIGTERM: no chunk in flight is waited for, and the files its
                # worker had begun are removed, as a single process removes them when interrupted.
                for chunk in builders.kill():
                    shard = out_dir / records.shard_name(chunk)
                    for unfinished in (shard.with_name(shard.name + ".tmp"), shard.with_suffix(".json.tmp")):
                        unfinished.unlink(missing_ok=True)
                raise
        if n_chunks == 0:
            raise DataError(f"--input {' '.join(map(str, paths))}: no documents found (the files are empty "
                            f"or contain only blank lines)")
        manifest = records.write_manifest(out_dir, header, n_chunks)
        from bertkit.tasks.base import is_parquet

        warning = shape.nsp_warning(config, parquet=any(is_parquet(path) for path in paths))
        if warning:
            log(warning)
        stats: dict[str, int] = {}
        for shard in manifest["shards"]:
            for key, value in ((records.read_sidecar(out_dir / shard["name"]) or {}).get("stats") or {}).items():
                stats[key] = max(stats.get(key, 0), value) if key == "longest_sentence" else stats.get(key, 0) + value
        for warning in corpus_warnings(config, stats, shape.documents or len(manifest["shards"])):
            log(warning)
        rate = (f"; {stats['predictions'] / max(1, stats['maskable_tokens']):.2%} of tokens masked"
                if config.masking == "static" and stats.get("rows") else "")
        log(f"{out_dir}: {manifest['num_records']} records in {len(manifest['shards'])}/{n_chunks} shards "
            f"({built} built, {skipped} already complete){rate}; peak RSS {peak_rss_mib():.0f} MiB")
        return manifest
