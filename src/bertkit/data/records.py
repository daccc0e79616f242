"""The on-disk format of pre-training records: a directory of Arrow IPC stream shards.

    R/manifest.json          format version, tokenizer, settings, shards with row counts + sha256
    R/tokenizer/             the tokenizer the ids refer to (so `bertkit inspect R` needs nothing else)
    R/shard-00000.arrow      Arrow IPC *stream* (what `datasets.Dataset.from_file` opens)
    R/shard-00000.json       the shard's sidecar: rows, sha256, settings fingerprint; written last,
                             so its presence marks the shard complete

Why a stream with fixed-size record batches: the stream is what Hugging Face `datasets` memory-maps,
and with every batch holding `BATCH_ROWS` rows, row i is in batch i // BATCH_ROWS, so after one
pass over the batch headers at open (zero-copy on a memory map) access by index is O(1).

Columns (docs/INTERFACES.md "Pre-training records"): input_ids list<int32>, token_type_ids
list<int8>, sequence_ids list<int8>, masked_positions list<int32>, masked_ids list<int32>,
document_ids list<int32>, nsp_label int8.

document_ids: the documents, numbered within the shard, whose text the row holds (NSP: A's, then
B's when B is random; packed: each piece's). With several epochs generated, the same text is in
several rows, so a held-out set drawn by row would repeat training text; `split_held_out` draws
whole documents instead. Shards written before the column existed, and rows converted from
TFRecord/HDF5, have none (an empty list) and are still read.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from bertkit.tasks.base import DataError

FORMAT_VERSION = 1
BATCH_ROWS = 1024
LIST_COLUMNS: dict[str, Any] = {
    "input_ids": np.int32,
    "token_type_ids": np.int8,
    "sequence_ids": np.int8,
    "masked_positions": np.int32,
    "masked_ids": np.int32,
    "document_ids": np.int32,
}
SCHEMA = pa.schema([(name, pa.list_(pa.from_numpy_dtype(dt))) for name, dt in LIST_COLUMNS.items()]
                   + [("nsp_label", pa.int8())])
SCHEMA_WITHOUT_DOCUMENTS = pa.schema([f for f in SCHEMA if f.name != "document_ids"])  # shards of before

Instance = dict[str, np.ndarray]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _record_batch(rows: Sequence[Instance]) -> pa.RecordBatch:
    arrays = []
    for name, dt in LIST_COLUMNS.items():
        parts = [np.asarray(r.get(name, ()), dtype=dt) for r in rows]
        lengths = np.fromiter((p.size for p in parts), dtype=np.int32, count=len(parts))
        offsets = np.zeros(len(parts) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=dt)
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(dt, copy=False))))
    arrays.append(pa.array(np.array([int(r["nsp_label"]) for r in rows], dtype=np.int8)))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def write_shard(path: str | Path, instances: Iterable[Instance], sidecar: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write instances to `path` (via `path.tmp`, renamed when complete), then the sidecar
    `path.with_suffix('.json')` with rows + sha256 + `sidecar` fields. Returns the sidecar dict."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rows = 0
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            buf: list[Instance] = []
            for inst in instances:
                buf.append(inst)
                if len(buf) == BATCH_ROWS:
                    writer.write_batch(_record_batch(buf))
                    rows += len(buf)
                    buf = []
            if buf:
                writer.write_batch(_record_batch(buf))
                rows += len(buf)
    except BaseException:
        tmp.unlink(missing_ok=True)  # bad input met mid-shard: no half-written file stays behind
        raise
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    info = {**(sidecar or {}), "name": path.name, "rows": rows, "sha256": digest, "bytes": path.stat().st_size}
    side = path.with_suffix(".json")
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(side_tmp, side)
    return info


def fingerprint_for(directory: Path, header: dict[str, Any], flag: str) -> str:
    """The settings fingerprint of records described by `header`; refuses a `directory` that
    already holds records made with another header, naming what differs."""
    def digest(h: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(h, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    fingerprint = digest(header)
    held = sorted(p.name for p in Path(directory).iterdir()) if Path(directory).is_dir() else []
    # Records (even of a run killed early) leave a manifest, shards or the saved tokenizer; a
    # directory of other files (the corpus's own, a model) would get the records among them.
    if held and not any(name == "manifest.json" or name == "tokenizer" or name.startswith("shard-") for name in held):
        raise ValueError(f"{flag} {directory} is not empty and holds no records (it holds {', '.join(held[:5])}"
                         f"{' ...' if len(held) > 5 else ''}); give a new or empty {flag}")
    old = Path(directory) / "manifest.json"
    if old.is_file():
        previous = json.loads(old.read_text(encoding="utf-8"))
        then = {k: previous.get(k) for k in header}
        if digest(then) != fingerprint:
            header = json.loads(json.dumps(header))  # compared as the manifest stores it (lists, not tuples)
            raise ValueError(f"{flag} {directory} holds records made with other {_differences(then, header)}; "
                             f"use a new {flag} (or delete it)")
    return fingerprint


def _differences(previous: dict[str, Any], header: dict[str, Any]) -> str:
    """What differs between an existing manifest and this run's header, for the error message."""
    def flat(settings: dict[str, Any]) -> dict[str, Any]:
        return {f"{k}.{sub}" if isinstance(v, dict) else k: (v[sub] if isinstance(v, dict) else v)
                for k, v in settings.items() for sub in (v if isinstance(v, dict) else [None])}

    settings_then, settings_now = flat(previous.get("settings") or {}), flat(header["settings"])
    changed = [f"{k} ({settings_then.get(k)!r}, now {settings_now[k]!r})" for k in settings_now
               if settings_then.get(k) != settings_now[k]]
    # Top-level keys that repeat a setting (max_seq_length) are named once, with their values above.
    changed += [{"vocab_hash": "vocabulary", "inputs": "input files"}.get(k, k) for k in header
                if k != "settings" and k not in settings_now and previous.get(k) != header[k]]
    return "settings: " + ", ".join(dict.fromkeys(changed)) if changed else "settings"


@contextlib.contextmanager
def new_record_directory(directory: str | Path) -> Iterator[Path]:
    """Creates `directory` for records; if the block fails before any shard there is complete and
    the directory did not exist before, removes it again, so that bad input leaves nothing half
    made (a directory with complete shards stays: rerunning resumes from them)."""
    directory = Path(directory)
    existed = directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield directory
    except BaseException:
        if not existed and not any(read_sidecar(p) for p in directory.glob("shard-*.arrow")):
            shutil.rmtree(directory, ignore_errors=True)
        raise


def read_sidecar(shard_path: str | Path) -> dict[str, Any] | None:
    """The sidecar of a complete shard, or None when the shard is missing or was cut short."""
    shard_path = Path(shard_path)
    side = shard_path.with_suffix(".json")
    if not side.is_file() or not shard_path.is_file():
        return None
    info = json.loads(side.read_text(encoding="utf-8"))
    if info.get("bytes") != shard_path.stat().st_size:
        return None
    return info


def write_manifest(directory: str | Path, header: dict[str, Any], expected_shards: int) -> dict[str, Any]:
    """Collect the sidecars present in `directory` into manifest.json. `complete` is true when all
    `expected_shards` are there (parts built on other machines with --shard-index may be copied in
    later and the command rerun, which then only rewrites this file)."""
    directory = Path(directory)
    shards = []
    missing = []
    for i in range(expected_shards):
        info = read_sidecar(directory / shard_name(i))
        if info is None:
            missing.append(shard_name(i))
        else:
            shards.append({k: info[k] for k in ("name", "rows", "sha256", "documents", "epoch_rows") if k in info})
    manifest = {**header, "format_version": FORMAT_VERSION, "expected_shards": expected_shards,
                "complete": not missing, "missing_shards": missing, "shards": shards,
                "num_records": sum(s["rows"] for s in shards)}
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / "manifest.json")
    return manifest


class _Shard:
    """One memory-mapped shard: record batches (zero-copy views) and their numpy columns."""

    def __init__(self, path: Path, rows: int):
        self.path = path
        self.rows = rows
        self._batches: list[pa.RecordBatch] | None = None
        self._cols: dict[int, dict[str, tuple[np.ndarray, np.ndarray] | np.ndarray]] = {}
        self.columns: list[str] = []  # the list columns the file has (set when opened)

    def _open(self) -> list[pa.RecordBatch]:
        if self._batches is None:
            try:
                reader = pa.ipc.open_stream(pa.memory_map(str(self.path), "r"))
                self._batches = list(reader)
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f"{self.path}: not a readable bertkit record shard ({err}); "
                                f"run `bertkit pretrain-data` again to rebuild it") from None
            if reader.schema not in (SCHEMA, SCHEMA_WITHOUT_DOCUMENTS):
                raise DataError(f"{self.path}: columns {reader.schema.names} differ from the record "
                                f"schema {SCHEMA.names}")
            self.columns = [name for name in LIST_COLUMNS if name in reader.schema.names]
        return self._batches

    def document_ids(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(offsets [rows+1], values) of the document_ids column over the whole shard, or None
        when the shard has no such column."""
        batches = self._open()
        if "document_ids" not in self.columns:
            return None
        column = pa.concat_arrays([b.column("document_ids") for b in batches]) if batches else pa.array([], pa.list_(pa.int32()))
        offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values = column.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
        return offsets - offsets[0], values

    def _columns(self, b: int) -> dict[str, Any]:
        cols = self._cols.get(b)
        if cols is None:
            batch = self._open()[b]
            cols = {}
            for name in self.columns:
                arr = batch.column(name)
                cols[name] = (arr.offsets.to_numpy(zero_copy_only=False), arr.values.to_numpy(zero_copy_only=False))
            cols["nsp_label"] = batch.column("nsp_label").to_numpy(zero_copy_only=False)
            self._cols[b] = cols
        return cols

    def row(self, i: int) -> Instance:
        b, r = divmod(i, BATCH_ROWS)
        cols = self._columns(b)
        out: Instance = {}
        for name in self.columns:
            offsets, values = cols[name]
            out[name] = np.array(values[offsets[r]:offsets[r + 1]])
        out["nsp_label"] = np.int8(cols["nsp_label"][r])
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps do not pickle; DataLoader workers reopen the file.
        return {"path": self.path, "rows": self.rows, "_batches": None, "_cols": {}, "columns": []}


class PretrainingRecords:
    """Map-style dataset over a bertkit record directory: `len`, `ds[i] -> dict of np arrays`,
    `manifest`. Shards are concatenated in manifest order."""

    def __init__(self, directory: str | Path, manifest: dict[str, Any]):
        self.directory = Path(directory)
        self.manifest = manifest
        self._shards = [_Shard(self.directory / s["name"], int(s["rows"])) for s in manifest["shards"]]
        self.shard_offsets = np.zeros(len(self._shards) + 1, dtype=np.int64)
        np.cumsum([s.rows for s in self._shards], out=self.shard_offsets[1:])

    def __len__(self) -> int:
        return int(self.shard_offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (shard number, row within shard)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records in {self.directory}")
        index %= len(self)
        s = int(np.searchsorted(self.shard_offsets, index, side="right")) - 1
        return s, index - int(self.shard_offsets[s])

    def record_index(self) -> np.ndarray:
        """[N, 2] int64 array of (shard, row) for every record, in dataset order, so that
        distributed readers can split by record (e.g. `record_index()[rank::world]`)."""
        shard = np.repeat(np.arange(len(self._shards)), [s.rows for s in self._shards])
        row = np.arange(len(self)) - self.shard_offsets[shard]
        return np.stack([shard, row], axis=1)

    def __getitem__(self, index: int) -> Instance:
        s, r = self.locate(int(index))
        return self._shards[s].row(r)

    def document_ids(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every record's documents as (offsets [N+1], values int64), numbered across the whole
        directory (shard number << 32 | document within the shard); None unless every record has
        at least one (shards of older bertkit versions have none)."""
        offsets_parts, value_parts = [np.zeros(1, dtype=np.int64)], []
        total = 0
        for s, shard in enumerate(self._shards):
            found = shard.document_ids()
            if found is None:
                return None
            offsets, values = found
            if offsets.size != shard.rows + 1 or (np.diff(offsets) == 0).any():
                return None
            offsets_parts.append(offsets[1:] + total)
            value_parts.append((np.int64(s) << 32) | values.astype(np.int64))
            total += int(offsets[-1])
        values = np.concatenate(value_parts) if value_parts else np.zeros(0, dtype=np.int64)
        return np.concatenate(offsets_parts), values

    def verify(self) -> None:
        """Recompute every shard's sha256; raise DataError naming the first corrupted shard."""
        verify(self.directory)


def _unfinished_run(directory: Path, where: str) -> DataError | None:
    """The error for a record directory whose writer was interrupted: shards (some complete) but
    no manifest.json yet, which the writer writes last; None when it does not look like one."""
    shards = sorted(directory.glob("shard-*.arrow")) + sorted(directory.glob("shard-*.arrow.tmp"))
    if not shards and not (directory / "tokenizer").is_dir():
        return None
    complete = sum(read_sidecar(p) is not None for p in shards)
    return DataError(f"{where}: an unfinished `bertkit pretrain-data` (or `convert-records`) run: {complete} "
                     f"complete shard(s) and no manifest.json, which is written last; rerun the same command "
                     f"with this --output-dir: it keeps the complete shards and builds the rest")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file() and directory.is_dir():
        unfinished = _unfinished_run(directory, str(directory))
        if unfinished is not None:
            raise unfinished
    if not path.is_file():
        raise DataError(f"{directory}: no manifest.json; not a bertkit record directory "
                        f"(make one with `bertkit pretrain-data`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r}, this bertkit reads "
                        f"{FORMAT_VERSION}; rebuild the records with `bertkit pretrain-data`")
    if not manifest.get("complete"):
        # Parts from other machines may have been copied in since the manifest was written.
        manifest = write_manifest(directory, {k: v for k, v in manifest.items()
                                              if k not in ("shards", "missing_shards", "complete",
                                                           "num_records", "expected_shards", "format_version")},
                                  int(manifest["expected_shards"]))
        if not manifest["complete"]:
            miss = manifest["missing_shards"]
            raise DataError(f"{directory}: {len(miss)} of {manifest['expected_shards']} shards are missing "
                            f"or incomplete ({', '.join(miss[:5])}{' ...' if len(miss) > 5 else ''}); copy in the "
                            f"parts built with --shard-index or rerun `bertkit pretrain-data` on this directory")
    return manifest


def verify(directory: str | Path) -> dict[str, Any]:
    """Check every shard's size, sha256 and row count against the manifest before training.
    Raises DataError naming the shard; returns the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for s in manifest["shards"]:
        path = directory / s["name"]
        if not path.is_file():
            raise DataError(f"{path}: shard listed in manifest.json is missing")
        digest = sha256_file(path)
        if digest != s["sha256"]:
            raise DataError(f"{path}: checksum mismatch (sha256 {digest[:16]}..., manifest says "
                            f"{s['sha256'][:16]}...); the shard is corrupted: delete it and its .json "
                            f"sidecar and rerun `bertkit pretrain-data` to rebuild it")
    return manifest


def open_pretraining_data(path: str | Path, flag: str = "--data", vocab: dict[str, int] | None = None) -> Any:
    """Open pre-training data: a bertkit record directory, or TFRecord / HDF5 / lddl Parquet files
    (via `bertkit.data.external`; Parquet only with `vocab`, its tokens being text). Returns a
    map-style dataset with `__len__`, `__getitem__` (one instance dict, see the module doc) and
    `manifest`. `flag` names the argument in errors."""
    p = Path(path)
    where = f"{flag} {path}".strip()
    if p.is_dir() and (p / "manifest.json").is_file():
        return PretrainingRecords(p, read_manifest(p))
    if p.is_dir():
        unfinished = _unfinished_run(p, where)
        if unfinished is not None:
            raise unfinished
    if not p.exists() and not glob.glob(str(path)):
        raise FileNotFoundError(f"{where}: no such file, directory or glob match")
    from bertkit.data.external import NeedsVocabulary, open_external

    try:
        dataset = open_external(str(path), vocab=vocab)
    except NeedsVocabulary:
        # Training straight from Parquet would re-read a row group per shuffled row and map text to
        # ids every epoch; converting once checks every token and gives O(1) random access.
        raise NeedsVocabulary(f"{where}: lddl Parquet pre-training data (tokens as text): convert it once with "
                              f"`bertkit convert-records {path} DIR --tokenizer VOCAB` (VOCAB: the vocab.txt it "
                              f"was made with) and give DIR") from None
    if dataset is None:
        raise DataError(f"{where}: unsupported format; expected a bertkit record directory "
                        f"(manifest.json), TFRecord files, HDF5 shards or lddl Parquet files")
    return dataset


def collate_pretraining(instances: Sequence[Instance], pad_id: int, max_predictions: int,
                        dynamic_masking: Any = None, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Instances -> `BertForPreTraining` kwargs (torch tensors), padded to the longest row:
    input_ids [B,T] (pad_id), token_type_ids [B,T], attention_mask [B,T] (= sequence_ids, 0 on
    padding: packed rows keep their documents apart), masked_positions [B,P] (-1 = none),
    masked_ids [B,P] (-100 = none), next_sentence_label [B] (-100 = no NSP). P is the most masked
    positions of any row in the batch (at most max_predictions): the model decodes all B*P slots,
    so a sparse strategy (target words only) does not pay for max_predictions slots per row.

    `dynamic_masking` (a `bertkit.data.masking.DynamicMasking`) masks rows here, for records
    written with `--masking dynamic`; stored masks are then ignored."""
    import torch

    b = len(instances)
    t = max(int(inst["input_ids"].size) for inst in instances)
    input_ids = np.full((b, t), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((b, t), dtype=np.int64)
    attention_mask = np.zeros((b, t), dtype=np.int64)
    masked_positions = np.full((b, max_predictions), -1, dtype=np.int64)
    masked_ids = np.full((b, max_predictions), -100, dtype=np.int64)
    nsp = np.empty(b, dtype=np.int64)
    for i, inst in enumerate(instances):
        ids, pos, orig = inst["input_ids"], inst["masked_positions"], inst["masked_ids"]
        if dynamic_masking is not None:
            ids, pos, orig = dynamic_masking(ids, rng)
        n = ids.size
        if pos.size > max_predictions:
            raise ValueError(f"record {i} of the batch has {pos.size} masked positions, more than "
                             f"max_predictions={max_predictions}; raise --max-predictions-per-seq to at least {pos.size}")
        input_ids[i, :n] = ids
        token_type_ids[i, :n] = inst["token_type_ids"]
        attention_mask[i, :n] = inst["sequence_ids"]
        masked_positions[i, :pos.size] = pos
        masked_ids[i, :pos.size] = orig
        label = int(inst["nsp_label"])
        nsp[i] = -100 if label < 0 else label
    width = max(1, int((masked_positions >= 0).sum(axis=1).max(initial=0)))
    masked_positions, masked_ids = masked_positions[:, :width], masked_ids[:, :width]
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "masked_positions": torch.from_numpy(np.ascontiguousarray(masked_positions)),
            "masked_ids": torch.from_numpy(np.ascontiguousarray(masked_ids)),
            "next_sentence_label": torch.from_numpy(nsp)}
