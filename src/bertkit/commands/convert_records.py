"""`bertkit convert-records SRC DST`: Google TFRecord / NVIDIA HDF5 / lddl Parquet pre-training data -> bertkit records.

    bertkit convert-records 'wiki/tf_examples.tfrecord-*' wiki-records --tokenizer bert-base-uncased
    bertkit convert-records hdf5_lower_case_1_seq_len_128/ records-128 --tokenizer vocab.txt
    bertkit convert-records lddl/pretrain/phase1/ records-128 --tokenizer vocab.txt   # --tokenizer required

SRC is a file, a directory or a quoted glob; its format is recognised from the bytes (see
bertkit.data.external). The records keep the instances exactly (same ids, masks, NSP labels), so
a run on them sees the data the original pipeline would. `--tokenizer` names the vocabulary the
ids refer to: it is saved beside the records (for `bertkit inspect`) and every id is checked to be
inside it. lddl's Parquet rows hold tokens as text, so for them it is required: each token is mapped
through it, and one outside it fails naming file and row. lddl data without masked_lm_* columns (its
default, dynamic masking) converts to records without masks, which `pretrain` masks at batch time. A rerun skips shards already complete with the same source and settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bertkit.data import records
from bertkit.data.external import NeedsVocabulary, open_external
from bertkit.tasks.base import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="TFRecord file(s) (plain or GZIP), HDF5 shard(s) or lddl Parquet files: a file, "
                              "directory or quoted glob")
    p.add_argument("dst", help="output record directory")
    p.add_argument("--tokenizer", "--vocab", dest="tokenizer", default=None,
                   help="vocab.txt, model directory or hub id the ids come from (saved with the records; "
                        "without it `bertkit inspect` needs --tokenizer and vocab checks are skipped)")
    p.add_argument("--records-per-shard", type=int, default=100_000,
                   help="instances per output shard (default 100000: ~40 MB at length 128)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the TFRecord CRC check of every record on open")
    p.add_argument("--workers", type=int, default=1,
                   help="processes converting shards side by side (default 1; lddl Parquet, whose tokens are "
                        "mapped from text, converts ~14,000 records/s per process)")


def _checked(dataset, lo: int, hi: int, vocab_size: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Instances lo..hi-1; with a vocabulary, ids beyond it fail here, naming the record, rather
    than as an index error deep inside the embedding lookup of a training run."""
    for i in range(lo, hi):
        inst = dataset[i]
        if vocab_size is not None:
            for key in ("input_ids", "masked_ids"):
                ids = inst[key]
                if ids.size and (int(ids.max()) >= vocab_size or int(ids.min()) < 0):
                    bad = int(ids[(ids >= vocab_size) | (ids < 0)][0])
                    raise DataError(f"{dataset.where(i)}: {key} holds id {bad}, outside the --tokenizer vocab of "
                                    f"{vocab_size} tokens; pass the vocabulary the data was made with")
        yield inst


# The dataset and vocabulary size of a worker process (set by _start_worker).
_worker: dict[str, Any] = {}


def _start_worker(dataset: Any, vocab_size: int | None) -> None:
    _worker.update(dataset=dataset, vocab_size=vocab_size)


def _write_part(path: Path, lo: int, hi: int, fingerprint: str) -> dict[str, Any]:
    """Records lo..hi-1 as the shard `path` (in a worker process)."""
    return records.write_shard(path, _checked(_worker["dataset"], lo, hi, _worker["vocab_size"]),
                               {"fingerprint": fingerprint, "source_records": [lo, hi]})


def convert(src: str, dst: str | Path, tokenizer_spec: str | None = None, records_per_shard: int = 100_000,
            verify: bool = True, log: Any = None, workers: int = 1) -> dict[str, Any]:
    """Write the instances of TFRecord/HDF5/lddl Parquet data at `src` as a bertkit record directory `dst`;
    returns its manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if records_per_shard < 1:
        raise ValueError(f"--records-per-shard must be >= 1, got {records_per_shard}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    src_path = Path(src)
    if src_path.is_dir() and (src_path / "manifest.json").is_file():
        raise ValueError(f"{src}: already a bertkit record directory; nothing to convert")
    tokenizer = None
    if tokenizer_spec is not None:
        from bertkit.tokenization import Tokenizer

        tokenizer = Tokenizer.from_pretrained(tokenizer_spec)
    try:
        dataset = open_external(src, verify=verify, vocab=tokenizer.vocab if tokenizer is not None else None)
    except NeedsVocabulary:
        raise DataError(f"{src}: lddl Parquet pre-training data holds its tokens as text; pass --tokenizer with "
                        f"the vocab.txt (or model) it was made with") from None
    if dataset is None:
        raise DataError(f"{src}: neither TFRecord (plain or GZIP), HDF5 nor lddl Parquet pre-training data")
    if len(dataset) == 0:
        raise DataError(f"{src}: holds no records")
    source = dataset.manifest
    header: dict[str, Any] = {
        "vocab_hash": None,
        "max_seq_length": source["max_seq_length"],
        "settings": {"converted_from": source["format"], "max_predictions": source["max_predictions"],
                     "records_per_shard": records_per_shard,
                     **({"masking": source["masking"]} if "masking" in source else {})},
        # Names and sizes, not contents: enough to refuse resuming onto other source files.
        "inputs": [{"name": Path(f).name, "bytes": Path(f).stat().st_size} for f in source["files"]],
    }
    vocab_size = None
    out = Path(dst)
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
        header["vocab_hash"] = tokenizer.vocab_hash
        header["tokenizer"] = {"vocab_hash": tokenizer.vocab_hash, "do_lower_case": tokenizer.do_lower_case,
                               "vocab_size": tokenizer.vocab_size, "path": "tokenizer"}
    fingerprint = records.fingerprint_for(out, header, "DST")
    with records.new_record_directory(out):  # bad input leaves no half-made directory
        if tokenizer is not None:
            tokenizer.save_pretrained(out / "tokenizer")
        n_shards = -(-len(dataset) // records_per_shard)
        start, built = time.perf_counter(), 0
        parts = []  # (shard path, first record, end): the shards not complete on disk yet
        for s in range(n_shards):
            path = out / records.shard_name(s)
            info = records.read_sidecar(path)
            if info is not None and info.get("fingerprint") == fingerprint:
                continue
            parts.append((path, s * records_per_shard, min(len(dataset), (s + 1) * records_per_shard)))
        for (_, lo, hi), info in zip(parts, _write_parts(parts, dataset, vocab_size, fingerprint, workers)):
            built += hi - lo
            log(f"{info['name']}: records {lo}..{hi - 1}")
        manifest = records.write_manifest(out, header, n_shards)
        seconds = time.perf_counter() - start
        rate = f", {built / seconds:.0f} records/s" if built and seconds > 0 else ""
        log(f"{out}: {manifest['num_records']} records from {len(source['files'])} {source['format']} "
            f"file(s) in {n_shards} shards ({built} converted{rate})")
        if tokenizer is None:
            log("no --tokenizer: the records carry no vocab_hash; `bertkit inspect` and `pretrain` "
                "cannot check that the ids match the model's vocabulary")
        return manifest


def _write_parts(parts: list[tuple[Path, int, int]], dataset: Any, vocab_size: int | None, fingerprint: str,
                 workers: int) -> Iterator[dict[str, Any]]:
    """Each part written as its shard, in order; with workers > 1 by that many processes, which
    inherit (fork) or unpickle the dataset: every reader reopens its files in a new process."""
    if workers == 1 or len(parts) < 2:
        _start_worker(dataset, vocab_size)
        yield from (_write_part(path, lo, hi, fingerprint) for path, lo, hi in parts)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(min(workers, len(parts)), mp_context=mp.get_context(method),
                             initializer=_start_worker, initargs=(dataset, vocab_size)) as pool:
        futures = [pool.submit(_write_part, path, lo, hi, fingerprint) for path, lo, hi in parts]
        try:
            for future in futures:
                yield future.result()  # a bad record stops the run with its DataError, naming it
        finally:
            for future in futures:
                future.cancel()


def run(args: argparse.Namespace) -> int:
    convert(args.src, args.dst, args.tokenizer, args.records_per_shard, args.verify, workers=args.workers)
    return 0
