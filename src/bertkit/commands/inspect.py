"""`bertkit inspect R`: decode pre-training records back to tokens, with masks and labels.

A masked position prints as `[MASK](original)`; a position replaced by a random token as
`random(original)`; a position kept (the 10% "keep" case) as `token(=)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bertkit.data.records import open_pretraining_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("records", help="record directory (or TFRecord/HDF5 files, or lddl Parquet with --tokenizer)")
    p.add_argument("--n", type=int, default=5, help="records to show")
    p.add_argument("--start", type=int, default=0, help="first record to show")
    p.add_argument("--stats", action="store_true", help="print counts, length histogram and masking rates")
    p.add_argument("--max-stats-records", type=int, default=200_000, help="records scanned by --stats")
    p.add_argument("--tokenizer", default=None,
                   help="vocab/model to decode with (default: the tokenizer saved in the record directory)")


def _load_tokenizer(args: argparse.Namespace, dataset) -> object:
    from bertkit.tokenization import Tokenizer

    spec = args.tokenizer
    if spec is None:
        saved = Path(args.records) / dataset.manifest.get("tokenizer", {}).get("path", "tokenizer")
        if not saved.is_dir():
            raise ValueError(f"{args.records} has no saved tokenizer; pass --tokenizer VOCAB_OR_MODEL")
        spec = str(saved)
    tok = Tokenizer.from_pretrained(spec)
    want = dataset.manifest.get("vocab_hash")
    if want and want != tok.vocab_hash:
        raise ValueError(f"--tokenizer {spec}: vocab_hash {tok.vocab_hash} differs from the records' {want}; "
                         f"decode with the vocabulary the records were made with")
    return tok


def format_record(inst: dict[str, np.ndarray], tok) -> str:
    """Human-readable lines for one instance (segments, masks with originals, NSP label)."""
    ids = inst["input_ids"].tolist()
    tokens = tok.convert_ids_to_tokens(ids)
    for pos, orig in zip(inst["masked_positions"].tolist(), inst["masked_ids"].tolist()):
        original = tok.convert_ids_to_tokens(int(orig))
        tokens[pos] = f"{tokens[pos]}(=)" if ids[pos] == orig else f"{tokens[pos]}({original})"
    seq = inst["sequence_ids"]
    types = inst["token_type_ids"]
    lines = []
    if int(seq.max(initial=1)) > 1:
        for k in range(1, int(seq.max()) + 1):
            lines.append(f"  doc {k}: " + " ".join(t for t, s in zip(tokens, seq) if s == k))
    else:
        lines.append("  A: " + " ".join(t for t, ty in zip(tokens, types) if ty == 0))
        if types.any():
            lines.append("  B: " + " ".join(t for t, ty in zip(tokens, types) if ty == 1))
    label = int(inst["nsp_label"])
    nsp = {0: "0 (B follows A)", 1: "1 (B is random)", -1: "none"}.get(label, str(label))
    lines.append(f"  length {len(ids)}, masked {len(inst['masked_positions'])}, nsp_label {nsp}")
    return "\n".join(lines)


def record_stats(dataset, tok, limit: int) -> str:
    n = min(len(dataset), limit)
    lengths = np.zeros(n, dtype=np.int64)
    nsp = {}
    maskable = masked = as_mask = as_random = as_kept = 0
    special = np.array([tok.cls_id, tok.sep_id, tok.pad_id])
    for i in range(n):
        inst = dataset[i]
        ids = inst["input_ids"]
        lengths[i] = ids.size
        label = int(inst["nsp_label"])
        nsp[label] = nsp.get(label, 0) + 1
        pos, orig = inst["masked_positions"], inst["masked_ids"]
        maskable += int((~np.isin(ids, special)).sum())
        masked += pos.size
        now = ids[pos]
        as_mask += int((now == tok.mask_id).sum())
        as_kept += int((now == orig).sum())
        as_random += int(((now != tok.mask_id) & (now != orig)).sum())
    max_len = int(dataset.manifest.get("max_seq_length") or lengths.max(initial=1))
    edges = np.linspace(0, max_len, 9).astype(int)
    hist, _ = np.histogram(lengths, bins=edges)
    out = [f"records: {len(dataset)}" + (f" (stats over the first {n})" if n < len(dataset) else ""),
           f"tokens: {int(lengths.sum())}, mean length {lengths.mean() if n else 0:.1f}, max {lengths.max(initial=0)}",
           "nsp labels: " + ", ".join(f"{k}: {v}" for k, v in sorted(nsp.items())),
           "length histogram:"]
    for lo, hi, c in zip(edges[:-1], edges[1:], hist):
        out.append(f"  {lo:5d}-{hi:<5d} {c:8d} {'#' * int(40 * c / max(1, hist.max()))}")
    if masked:
        out.append(f"masking rate: {masked / max(1, maskable):.4f} of non-special tokens ({masked} predictions, "
                   f"{masked / n:.2f} per record)")
        out.append(f"replaced by [MASK] {as_mask / masked:.3f}, random {as_random / masked:.3f}, "
                   f"kept {as_kept / masked:.3f}")
    else:
        out.append("masking: none stored (dynamic masking at batch time)")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from bertkit.data.external import NeedsVocabulary
    from bertkit.tokenization import Tokenizer

    vocab = Tokenizer.from_pretrained(args.tokenizer).vocab if args.tokenizer else None
    try:
        dataset = open_pretraining_data(args.records, flag="", vocab=vocab)
    except NeedsVocabulary:
        raise ValueError(f"{args.records}: lddl Parquet holds tokens as text; pass --tokenizer with the "
                         f"vocab.txt (or model) it was made with") from None
    tok = _load_tokenizer(args, dataset)
    if len(dataset) and not 0 <= args.start < len(dataset):
        raise ValueError(f"--start {args.start}: the records hold {len(dataset)} rows (0..{len(dataset) - 1})")
    end = min(len(dataset), args.start + args.n)
    for i in range(args.start, end):
        print(f"record {i}:")
        try:
            print(format_record(dataset[i], tok))
        except ValueError as err:  # e.g. an id outside the vocabulary: say which record holds it
            where = dataset.where(i) if hasattr(dataset, "where") else f"{args.records}, record {i}"
            raise ValueError(f"{where}: {err}; were these records made with another vocabulary than "
                             f"--tokenizer?") from None
    if args.stats:
        print(record_stats(dataset, tok, args.max_stats_records))
    return 0
