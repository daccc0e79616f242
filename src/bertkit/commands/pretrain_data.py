"""`bertkit pretrain-data`: raw text -> sharded pre-training records (see bertkit.data.pretraining)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bertkit.commands import common
from bertkit.data.masking import MaskingConfig
from bertkit.data.pretraining import PretrainDataConfig, create_pretraining_data, default_max_predictions
from bertkit.tasks.base import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "--input_file", "--train_corpus", dest="input", nargs="+", required=True,
                   metavar="FILE",
                   help="text files or globs (one sentence per line, blank line between documents; .gz/.bz2 ok), "
                        "JSONL with --text-field, or Parquet (one document per row, column --text-field, default "
                        "text: the Hub's wikimedia/wikipedia; with --wikitext, Salesforce/wikitext's rows of lines)")
    p.add_argument("--tokenizer", "--vocab_file", "--bert_model", dest="tokenizer", required=True,
                   help="vocab.txt, model directory or hub id")
    common.add_casing_arguments(p, "the tokenizer's files")
    p.add_argument("--output-dir", "--output_dir", required=True, help="record directory to write")
    p.add_argument("--text-field", default=None,
                   help="read JSONL documents, taking the text from this field (Parquet: the column, default text)")
    p.add_argument("--parquet-rows", choices=("documents", "lines"), default="documents",
                   help="Parquet input: a row is a document (default: wikimedia/wikipedia), or a line of a text file "
                        "(lines: a sentence per row, an empty row between documents, as in bookcorpus)")
    p.add_argument("--split-sentences", action="store_true",
                   help="lines are paragraphs: split them with the rule-based sentence splitter")
    p.add_argument("--wikitext", action="store_true",
                   help="WikiText-2/103 files (wiki.*.tokens or .raw): one document per article (from each "
                        "' = Title = ' line), headings dropped, paragraphs split into sentences, "
                        "' @-@ ' joins undone, <unk> read as the tokenizer's unknown token")
    p.add_argument("--max-seq-length", "--max_seq_length", "--max_seq_len", dest="max_seq_length", type=int,
                   default=128)
    p.add_argument("--short-seq-prob", "--short_seq_prob", type=float, default=0.1)
    p.add_argument("--dupe-factor", "--dupe_factor", "--epochs-to-generate", "--epochs_to_generate", dest="dupe_factor",
                   type=int, default=1, help="epochs to generate, each with different pairings and masks; "
                                             "pretrain reads one of them per training epoch, in turn")
    p.add_argument("--no-nsp", action="store_true",
                   help="MLM only: rows packed from consecutive documents (sequence ids 1..k)")
    p.add_argument("--masking", choices=("static", "dynamic"), default="static",
                   help="static: store masks; dynamic: masks drawn at batch time by the trainer")
    p.add_argument("--masked-lm-prob", "--masked_lm_prob", type=float, default=None,
                   help="share of a row's tokens to predict (default 0.15); with --mass-mask, the fragment's share "
                        "of each segment (default 0.5)")
    p.add_argument("--max-predictions-per-seq", "--max_predictions_per_seq", type=int, default=None,
                   help="cap on masked tokens per row (default: max(20, round(max_seq_length x masked_lm_prob)): "
                        "20 at length 128, 77 at 512); a run warns when the cap holds rows below --masked-lm-prob")
    p.add_argument("--whole-word-mask", "--do_whole_word_mask", dest="whole_word_mask", nargs="?", const=True,
                   default=False, type=common.parse_bool,
                   help="mask whole words (Google's spelling --do_whole_word_mask=true also works)")
    p.add_argument("--span-mask", action="store_true",
                   help="SpanBERT spans of whole words: lengths drawn from Geometric(0.2) clipped at 10 words "
                        "(mean 4.46), then shortened to fit the row's budget of 15%%: measured mean 3.6 words "
                        "at --max-seq-length 128, 4.1 at 512")
    p.add_argument("--mass-mask", action="store_true",
                   help="MASS fragments: in each segment (sentence A, sentence B, each packed document) one "
                        "contiguous run of whole words covering --masked-lm-prob of its tokens (default 0.5), "
                        "each token replaced 80/10/10; --max-predictions-per-seq defaults to 64 at length 128")
    p.add_argument("--target-words", default=None, metavar="FILE",
                   help="one word/character per line; their occurrences are masked at --target-mask-prob")
    p.add_argument("--target-mask-prob", type=float, default=None,
                   help="probability that each target-word occurrence is masked (default 0.8; needs --target-words)")
    p.add_argument("--seed", "--random_seed", type=int, default=12345)
    p.add_argument("--workers", "--num_workers", dest="workers", type=int, default=1,
                   help="processes (same output as 1 worker)")
    # pregenerate_training_data.py's switch: records are always built in bounded memory (--chunk-docs).
    p.add_argument("--reduce_memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--num-shards", type=int, default=1, help="split the work over this many machines ...")
    p.add_argument("--shard-index", type=int, default=0, help="... and build this part")
    p.add_argument("--chunk-docs", type=int, default=10_000,
                   help="documents per shard; NSP random documents come from the same chunk")


def _read_target_words(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--target-words {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = file.read_bytes()[:err.start].count(b"\n") + 1
        raise DataError(f"--target-words {path}:{line}: invalid UTF-8 ({err.reason}); re-encode the file as "
                        f"UTF-8") from None
    words = [w.strip() for w in text.splitlines() if w.strip()]
    if not words:
        raise DataError(f"--target-words {path}: the file lists no words")
    return words


def check_length_fits_model(tokenizer: str, max_seq_length: int) -> None:
    """Rows longer than the model's position table cannot train it; found before hours of building
    records, not by `pretrain`. A bare vocab.txt may serve a model with a larger table: a warning."""
    from bertkit.modeling.checkpoints import read_config

    positions = None
    if Path(tokenizer).is_dir():
        try:
            positions = read_config(Path(tokenizer)).max_position_embeddings
        except FileNotFoundError:  # a tokenizer directory without a model config
            pass
    if positions is not None:
        if max_seq_length > positions:
            raise ValueError(f"--max-seq-length {max_seq_length}: the model in {tokenizer} has {positions} position "
                             f"embeddings, so it cannot train on longer rows; use at most {positions}")
    elif max_seq_length > 512:
        common.eprint(f"warning: --max-seq-length {max_seq_length}: BERT checkpoints have 512 position embeddings; "
                      f"these records train only a model built with more (pretrain --config FILE whose "
                      f"max_position_embeddings is at least {max_seq_length})")


def run(args: argparse.Namespace) -> int:
    check_length_fits_model(args.tokenizer, args.max_seq_length)
    if args.target_mask_prob is not None and not args.target_words:
        raise ValueError("--target-mask-prob applies to --target-words occurrences; give --target-words FILE too")
    if args.target_mask_prob is None:
        args.target_mask_prob = 0.8
    if args.span_mask and args.mass_mask:
        raise ValueError("--span-mask and --mass-mask cannot be combined; pick one strategy")
    if args.masked_lm_prob is None:
        args.masked_lm_prob = 0.5 if args.mass_mask else 0.15
    strategy = "mass" if args.mass_mask else "span" if args.span_mask else "uniform"
    # With --masking dynamic the masking flags are still recorded in the manifest: the trainer's
    # DynamicMasking reads them from there.
    max_predictions = args.max_predictions_per_seq
    if max_predictions is None:
        max_predictions = default_max_predictions(args.max_seq_length, args.masked_lm_prob)
    mask = MaskingConfig(masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=max_predictions,
                         whole_word_mask=args.whole_word_mask, strategy=strategy,
                         target_mask_prob=args.target_mask_prob if args.target_words else 0.0)
    config = PretrainDataConfig(max_seq_length=args.max_seq_length, short_seq_prob=args.short_seq_prob,
                                dupe_factor=args.dupe_factor, nsp=not args.no_nsp, masking=args.masking, mask=mask,
                                target_words=_read_target_words(args.target_words) if args.target_words else None,
                                seed=args.seed, chunk_docs=args.chunk_docs, text_field=args.text_field,
                                split_sentences=args.split_sentences, wikitext=args.wikitext,
                                parquet_rows=args.parquet_rows,
                                do_lower_case=args.do_lower_case)
    manifest = create_pretraining_data(args.input, args.tokenizer, args.output_dir, config, workers=args.workers,
                                       num_shards=args.num_shards, shard_index=args.shard_index)
    if not manifest["complete"]:
        print(f"part {args.shard_index}/{args.num_shards} done; {len(manifest['missing_shards'])} shards come from "
              f"the other parts: copy them into {args.output_dir} and rerun this command without --shard-index")
    return 0
