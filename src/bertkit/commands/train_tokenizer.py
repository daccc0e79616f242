"""`bertkit train-tokenizer`: learn a BERT WordPiece vocabulary from raw text.

    bertkit train-tokenizer --input 'corpus/*.txt.gz' --vocab-size 30522 --output-dir my-vocab
    bertkit train-tokenizer --input zh.txt --vocab-size 21128 --chinese --output-dir zh-vocab

Input files are plain text, one sentence or paragraph per line (blank lines are skipped); globs
are expanded and `.gz`/`.bz2` files are read decompressed. Parquet files (the Hub's text corpora)
give the lines of their `text` column (`--text-field` names another). `--wikitext` reads WikiText-2/103
files as `pretrain-data --wikitext` does. The output directory gets vocab.txt,
tokenizer.json, tokenizer_config.json and special_tokens_map.json, loadable by
`Tokenizer.from_pretrained`, `bertkit pretrain-data --tokenizer` and transformers' AutoTokenizer.
"""

from __future__ import annotations

import argparse
import bz2
import glob
import gzip
import re
import sys
from pathlib import Path
from typing import IO, Iterator

from bertkit.tasks.base import DataError
from bertkit.tokenization import train_wordpiece

# Lines go to the Rust trainer in batches: one Python->Rust call per line costs ~4x more.
BATCH_LINES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE",
                        help="text files or globs (quote globs); .gz and .bz2 are decompressed; Parquet files "
                             "give the lines of their text column")
    parser.add_argument("--text-field", default=None,
                        help="Parquet input: the column holding the text (default text)")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="tokens in the vocabulary, specials included (BERT: 30522 English, 21128 Chinese)")
    parser.add_argument("--output-dir", required=True, help="directory to write the tokenizer files to")
    casing = parser.add_mutually_exclusive_group()
    casing.add_argument("--lowercase", dest="lowercase", action="store_true", default=True,
                        help="lowercase and strip accents (an uncased vocab; the default)")
    casing.add_argument("--cased", dest="lowercase", action="store_false",
                        help="keep case and accents (a cased vocab)")
    parser.add_argument("--min-frequency", type=int, default=2,
                        help="a pair of pieces is merged only if it occurs this often (default 2)")
    parser.add_argument("--chinese", action="store_true",
                        help="keep every character of the corpus in the vocab (no 1,000-character "
                             "alphabet limit); CJK characters are always split one per token")
    parser.add_argument("--wikitext", action="store_true",
                        help="WikiText-2/103 files: read them as `pretrain-data --wikitext` does (headings dropped, "
                             "' @-@ ' joins undone, <unk> left out), so that the vocab is learned from the text "
                             "it will tokenize")
    parser.add_argument("--unused", type=int, default=0, metavar="N",
                        help="reserve [unused0..N-1] right after [PAD] (99 reproduces BERT's ids: [UNK]=100)")


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Globs and plain paths -> existing files, in the order given (each glob sorted)."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise FileNotFoundError(f"--input {match!r} is not a file")
            files.append(path)
    return files


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def batched(lines: Iterator[str], stats: dict[str, int]) -> Iterator[list[str]]:
    """Lines in batches of BATCH_LINES; counts lines and characters into `stats`."""
    batch: list[str] = []
    for line in lines:
        stats["lines"] += 1
        stats["chars"] += len(line)
        batch.append(line)
        if len(batch) == BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def _file_lines(path: Path, text_field: str | None) -> Iterator[str]:
    """One file's lines: of a text file (decoded, a bad byte naming its line), or of the text
    column of a Parquet file."""
    from bertkit.data.pretraining import parquet_texts
    from bertkit.tasks.base import is_parquet

    if is_parquet(path):
        for _, text in parquet_texts(path, text_field):
            yield from text.split("\n")
        return
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{line_no}: not UTF-8 ({err.reason} at byte {err.start}); "
                                f"re-encode the file as UTF-8") from None


def _text_lines(files: list[Path], stats: dict[str, int], text_field: str | None = None) -> Iterator[str]:
    """The non-blank lines of every file, stripped; lines with WikiText markers are counted."""
    for path in files:
        for line in map(str.strip, _file_lines(path, text_field)):
            if not line:
                continue
            if _WIKITEXT_MARKERS.search(line):
                stats["wikitext_lines"] = stats.get("wikitext_lines", 0) + 1
            yield line


def iter_line_batches(files: list[Path], stats: dict[str, int], text_field: str | None = None) -> Iterator[list[str]]:
    """Non-blank lines of every file, in batches; counts lines and characters into `stats`."""
    return batched(_text_lines(files, stats, text_field), stats)


# WikiText's tokenized files mark out-of-vocabulary words as "<unk>" and split "1,000" as
# "1 @,@ 000": learned as text, they give vocab entries ("unk", "@") that `pretrain-data
# --wikitext` never produces (it reads <unk> as [UNK] and undoes the splits).
_WIKITEXT_MARKERS = re.compile(r"<unk>| @[-.,]@ ")


def iter_wikitext_batches(files: list[Path], stats: dict[str, int]) -> Iterator[list[str]]:
    """Sentences of WikiText files as `pretrain-data --wikitext` reads them, in batches; "<unk>"
    is left out (an unknown word has no pieces to learn)."""
    from bertkit.data.pretraining import iter_wikitext_documents

    return batched((s for document in iter_wikitext_documents(files, unk_token="") for s in document), stats)


def run(args: argparse.Namespace) -> int:
    if args.unused < 0:
        raise ValueError(f"--unused must be >= 0, got {args.unused}")
    output = Path(args.output_dir)
    # As `convert` does: a model directory given here had its vocab.txt replaced, and its weights
    # then read the text through another vocabulary.
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output-dir {output} {'is not empty' if output.is_dir() else 'is a file'}; "
                         f"pass a new directory")
    files = expand_inputs(args.input)
    stats = {"lines": 0, "chars": 0}

    def batches() -> Iterator[list[str]]:
        """The corpus, once more (train_wordpiece reads it twice); `stats` counts the last reading."""
        stats.clear()
        stats.update(lines=0, chars=0)
        if args.wikitext:
            return iter_wikitext_batches(files, stats)
        return iter_line_batches(files, stats, args.text_field)

    tokenizer = train_wordpiece(batches, args.vocab_size,
                                do_lower_case=args.lowercase, min_frequency=args.min_frequency,
                                limit_alphabet=None if args.chinese else 1000, num_unused=args.unused)
    if stats["lines"] == 0:
        raise DataError(f"--input {' '.join(args.input)}: no non-blank lines to learn a vocabulary from")
    if not args.wikitext and stats.get("wikitext_lines", 0) > 0.001 * stats["lines"]:
        print(f"warning: {stats['wikitext_lines']:,} of {stats['lines']:,} lines hold WikiText markers (<unk>, "
              f"' @-@ '): learned as text they put entries such as 'unk' into the vocab that `pretrain-data "
              f"--wikitext` never produces; rerun with --wikitext", file=sys.stderr)
    out = tokenizer.save_pretrained(args.output_dir)
    note = ""
    if tokenizer.vocab_size < args.vocab_size:
        note = (f" (fewer than --vocab-size {args.vocab_size}: the corpus has no more pairs occurring "
                f"--min-frequency {args.min_frequency} times)")
    elif tokenizer.vocab_size > args.vocab_size:
        note = f" (more than --vocab-size {args.vocab_size}: the corpus alphabet alone is that large)"
    print(f"{len(files)} file(s), {stats['lines']:,} lines, {stats['chars']:,} characters -> "
          f"{tokenizer.vocab_size:,} tokens{note}, {'uncased' if tokenizer.do_lower_case else 'cased'}, "
          f"vocab_hash {tokenizer.vocab_hash}; wrote {out}/vocab.txt, tokenizer.json, "
          f"tokenizer_config.json", file=sys.stderr)
    return 0
