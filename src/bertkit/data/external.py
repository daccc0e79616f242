"""Pre-training data in other toolkits' formats: Google TFRecord, NVIDIA HDF5 and lddl Parquet.

Users arrive with shards written by google-research/bert `create_pretraining_data.py` (TFRecord
files of `tf.train.Example`), by NVIDIA DeepLearningExamples (HDF5 with one dataset per field) or
by NVIDIA's lddl (Parquet, tokens as text; see LDDLParquetDataset). `open_external(path)`
recognises each from the files' bytes, not from a flag, and
returns a map-style dataset whose items are bertkit instances (docs/INTERFACES.md, "Pre-training
records"):

    ds = open_external("wiki_shards/")          # a file, a directory or a glob
    ds.manifest    # {"format": "tfrecord", "max_seq_length": 128, "max_predictions": 20, ...}
    ds[0]          # {"input_ids": int32 [L], "token_type_ids": int8 [L], "sequence_ids": int8 [L],
                   #  "masked_positions": int32 [k], "masked_ids": int32 [k], "nsp_label": int8 []}
    ds.raw(0)      # the padded arrays exactly as stored (int64/float32 for TFRecord, int32 for HDF5)

Why no TensorFlow and no `protobuf`: neither is a dependency (and `protobuf` is not installed
here). Even with `protobuf`, decoding `tf.train.Example` needs classes generated from
TensorFlow's `example.proto`/`feature.proto`, which we would have to vendor and keep in step
with a protobuf runtime. The message shape is tiny and frozen since 2016 (Example -> Features ->
map<string, Feature{bytes_list | float_list | int64_list}>), so a ~60-line wire-format decoder
below is smaller than that dependency. It accepts packed and unpacked repeated fields and skips
unknown fields, as protobuf does.

TFRecord framing (tensorflow/core/lib/io/record_writer.cc), per record:
    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)
all little-endian; masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32). Opening a
file reads it once, builds the offset index and checks every CRC (vectorised over records with
numpy: 45-120 MB/s measured on our shared 2-core machine, 15-40x a Python byte loop), so a corrupt
shard fails at open, naming file and record, rather than hours into a run. GZIP-compressed files
(TFRecordOptions("GZIP")) are recognised by the gzip magic and held decompressed in memory, since a
gzip stream cannot be seeked.

HDF5 is read through h5py, 256 rows at a time (~100 us per instance in order; a random row costs
a band of gzip chunks, ~2 ms). h5py file handles must not cross a fork (DataLoader workers), so
each process opens its own handles lazily on first access. For shuffled training, convert once
with `bertkit convert-records` (memory-mapped Arrow, O(1) random access).
"""

from __future__ import annotations

import glob as globlib
import gzip
import io
import mmap
import os
import struct
from bisect import bisect_right
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bertkit.tasks.base import DataError

# ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ----------------------------------------


def _crc_tables() -> np.ndarray:
    """Slicing-by-4 tables [4, 256] uint32: row 0 is the byte-at-a-time table; row k advances a
    byte through k further zero bytes, so four bytes are folded in per step."""
    poly = 0x82F63B78
    t0 = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t0[i] = c
    tables = np.zeros((4, 256), dtype=np.uint32)
    tables[0] = t0
    for k in range(1, 4):
        prev = tables[k - 1]
        tables[k] = (prev >> np.uint32(8)) ^ t0[prev & np.uint32(0xFF)]
    return tables


_TABLES = _crc_tables()
_TABLE0 = [int(x) for x in _TABLES[0]]  # python ints: the scalar loop is faster without numpy scalars
_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes) -> int:
    """CRC32C of one byte string (pure Python; fine for the few-KB messages of a TFRecord)."""
    crc = 0xFFFFFFFF
    table = _TABLE0
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC as TFRecord stores it: rotated and offset so that CRCs of CRCs stay well mixed."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _mask(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    rotated = ((crc >> np.uint64(15)) | (crc << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rotated + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def crc32c_many(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC32C of many slices of one buffer at once.

    buf: uint8 [n]; starts, lengths: int64 [N] -> uint32 [N], crc of buf[starts[i]:starts[i]+lengths[i]].

    The CRC runs across a [N, T] byte matrix, one numpy step per 4-byte column for all N slices
    together (45-120 MB/s measured, against ~3 MB/s for a Python byte loop). Two facts let
    unequal lengths share a matrix: with a zero initial register, leading zero bytes leave the
    CRC unchanged, so each slice is right-aligned and the bytes before it zeroed; and the standard
    initial value 0xFFFFFFFF equals a zero register with the message's first four bytes inverted.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = starts + lengths
    out = np.zeros(len(starts), dtype=np.uint32)
    order = np.argsort(lengths, kind="stable")
    windows = np.lib.stride_tricks.sliding_window_view
    t0, t1, t2, t3 = _TABLES
    m8, s8, s16, s24 = np.uint32(0xFF), np.uint32(8), np.uint32(16), np.uint32(24)
    budget = 8 << 20  # bytes per matrix: keeps memory flat whatever the file size
    i = 0
    while i < len(order):
        # A group spans lengths within 25% (+64 bytes) of its shortest, so padding stays small.
        width = int(lengths[order[i]])
        limit = max(width * 5 // 4, width + 64)
        j = int(np.searchsorted(lengths[order], limit, side="right"))
        j = max(i + 1, min(j, i + max(1, budget // (limit + 4))))
        group = order[i:j]
        i = j
        t = (int(lengths[group].max()) + 3) // 4 * 4
        # The inversion needs four bytes to invert, and the window needs t bytes before the end.
        slow = (lengths[group] < 4) | (ends[group] < t)
        for rec in group[slow]:
            out[rec] = crc32c(buf[starts[rec]:ends[rec]].tobytes())
        group = group[~slow]
        if not group.size:
            continue
        mat = windows(buf, t)[ends[group] - t]  # [N, t] copy: each slice right-aligned
        pad = (t - lengths[group])[:, None]
        col = np.arange(t)[None, :]
        mat[col < pad] = 0
        mat[(col >= pad) & (col < pad + 4)] ^= 0xFF
        crc = np.zeros(len(group), dtype=np.uint32)
        for w in mat.view("<u4").T:  # [t/4] columns of N little-endian words
            c = crc ^ w
            crc = t3[c & m8] ^ t2[(c >> s8) & m8] ^ t1[(c >> s16) & m8] ^ t0[c >> s24]
        out[group] = crc ^ np.uint32(0xFFFFFFFF)
    return out


# ---- tf.train.Example wire-format decoding ---------------------------------------------------------



def locate(ends: list[int], i: int) -> tuple[int, int]:
    """(file index, record index within that file) of global record i, given cumulative record
    counts `ends`; negative i counts from the end, as for a list."""
    n = ends[-1] if ends else 0
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"record {i} out of range for {n} records")
    k = bisect_right(ends, i)
    return k, i - (ends[k - 1] if k else 0)

class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # tags and short lengths: one byte
        return buf[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for one message; length-delimited values come as
    (start, end) offsets into buf so that nested messages are not copied."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise _ProtoError(f"field {number} has wire type {wire}, which tf.train.Example never uses")
        if pos > end:
            raise _ProtoError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _packed_varints(raw: bytes) -> np.ndarray:
    """Packed varints -> int64 [n], vectorised: each byte's 7 payload bits are shifted into place
    and summed per varint (the bit ranges do not overlap, so a sum is an OR)."""
    b = np.frombuffer(raw, dtype=np.uint8)
    last = b < 0x80
    if last.all():  # every value < 128 (padding zeros, labels): one byte each
        return b.astype(np.int64)
    if not last[-1]:
        raise _ProtoError("packed int64 list ends inside a varint")
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    # Byte k of a varint carries bits 7k..7k+6: k is the distance to the varint's first byte.
    place = (np.arange(b.size) - np.repeat(starts, ends - starts + 1)).astype(np.uint64)
    if place.max() > 9:
        raise _ProtoError("varint longer than 10 bytes")
    parts = (b & 0x7F).astype(np.uint64) << (place * np.uint64(7))
    return np.add.reduceat(parts, starts).view(np.int64)


def _feature(buf: bytes, start: int, end: int) -> np.ndarray:
    """Feature{bytes_list=1 | float_list=2 | int64_list=3} -> int64 / float32 / object array."""
    kind, chunks = None, []
    for number, wire, value in _fields(buf, start, end):
        if number not in (1, 2, 3) or wire != 2:
            continue
        kind = number  # oneof: the last one present wins
        chunks = []
        for inner, iwire, item in _fields(buf, *value):
            if inner != 1:
                continue
            if number == 1 and iwire == 2:
                chunks.append(buf[item[0]:item[1]])
            elif number == 2 and iwire == 2:
                chunks.append(np.frombuffer(buf[item[0]:item[1]], dtype="<f4"))
            elif number == 2 and iwire == 5:
                chunks.append(np.frombuffer(item, dtype="<f4"))
            elif number == 3 and iwire == 2:
                chunks.append(_packed_varints(buf[item[0]:item[1]]))
            elif number == 3 and iwire == 0:
                chunks.append(np.array([item], dtype=np.uint64).view(np.int64))
            else:
                raise _ProtoError(f"list field {number} has wire type {iwire}")
    if kind == 1:
        return np.array(chunks, dtype=object)
    if kind == 2:
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if kind == 3:
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return np.zeros(0, dtype=np.float32)  # an empty Feature: TensorFlow parses it as no values


def parse_example(buf: bytes) -> dict[str, np.ndarray]:
    """Decode one serialized tf.train.Example -> {feature name: 1-D array}.

    int64_list -> int64 [n], float_list -> float32 [n], bytes_list -> object [n] of bytes.
    Raises ValueError when the bytes are not an Example."""
    out: dict[str, np.ndarray] = {}
    for number, wire, features in _fields(buf):
        if number != 1 or wire != 2:
            continue
        for fnum, fwire, entry in _fields(buf, *features):
            if fnum != 1 or fwire != 2:
                continue
            key, value = "", None
            for enum, ewire, item in _fields(buf, *entry):
                if enum == 1 and ewire == 2:
                    try:
                        key = buf[item[0]:item[1]].decode("utf-8")
                    except UnicodeDecodeError:
                        raise _ProtoError("feature name is not UTF-8") from None
                elif enum == 2 and ewire == 2:
                    value = item
            out[key] = _feature(buf, *value) if value is not None else np.zeros(0, np.float32)
    return out


# ---- unpadded instances ------------------------------------------------------------------------------


def make_instance(input_ids: np.ndarray, input_mask: np.ndarray | None, segment_ids: np.ndarray | None,
                  positions: np.ndarray | None, ids: np.ndarray | None, keep: np.ndarray | None,
                  nsp: int | None, where: str) -> dict[str, np.ndarray]:
    """Padded arrays of one stored instance -> the unpadded bertkit instance.

    input_ids, input_mask, segment_ids: [T]; positions, ids, keep (bool: a real prediction): [P].
    Returns input_ids int32 [L], token_type_ids int8 [L], sequence_ids int8 [L] (all 1),
    masked_positions int32 [k], masked_ids int32 [k], nsp_label int8 [] (-1 when absent)."""
    input_ids = np.asarray(input_ids).reshape(-1)
    if input_mask is not None:
        mask = np.asarray(input_mask).reshape(-1) != 0
        length = int(mask.sum())
        if mask.shape != input_ids.shape or not mask[:length].all():
            raise DataError(f"{where}: input_mask must be {input_ids.size} values, 1s then 0s "
                            f"(one unpadded sequence); got {np.asarray(input_mask).reshape(-1).tolist()}")
    else:
        nonzero = np.flatnonzero(input_ids)
        length = int(nonzero[-1]) + 1 if nonzero.size else 0
    types = np.zeros(length, np.int8) if segment_ids is None else np.asarray(segment_ids).reshape(-1)[:length]
    if positions is None or ids is None:
        pos = np.zeros(0, np.int32)
        lab = np.zeros(0, np.int32)
    else:
        positions, ids = np.asarray(positions).reshape(-1), np.asarray(ids).reshape(-1)
        if positions.shape != ids.shape or keep.shape != ids.shape:
            raise DataError(f"{where}: masked_lm_positions ({positions.size}) and masked_lm_ids "
                            f"({ids.size}) must have the same length")
        pos, lab = positions[keep].astype(np.int32), ids[keep].astype(np.int32)
        bad = (pos < 1) | (pos >= length)
        if bad.any():
            raise DataError(f"{where}: masked position {int(pos[bad][0])} is outside the sequence "
                            f"(expected 1..{length - 1}; [CLS] at 0 is never masked)")
    return {
        "input_ids": input_ids[:length].astype(np.int32),
        "token_type_ids": types.astype(np.int8),
        "sequence_ids": np.ones(length, np.int8),
        "masked_positions": pos,
        "masked_ids": lab,
        "nsp_label": np.array(-1 if nsp is None else nsp, dtype=np.int8),
    }


# ---- TFRecord ------------------------------------------------------------------------------------------


class _TFRecordFile:
    """One TFRecord file: offsets and lengths of its records' data, CRCs checked on open."""

    def __init__(self, path: Path, compressed: bool, verify: bool = True):
        self.path = path
        self.compressed = compressed
        self._memory: bytes | None = None
        self._fd: int | None = None
        self._pid: int | None = None
        if compressed:
            try:
                with gzip.open(path, "rb") as fh:
                    self._memory = fh.read()
            except (OSError, EOFError) as err:
                raise DataError(f"{path}: broken GZIP stream ({err})") from None
            self._index(np.frombuffer(self._memory, dtype=np.uint8), verify)
        elif path.stat().st_size == 0:
            self.offsets = self.lengths = np.zeros(0, np.int64)
        else:
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                self._index(np.frombuffer(mm, dtype=np.uint8), verify)
            finally:
                try:
                    mm.close()
                except BufferError:  # a traceback still holds a view; the GC closes it later
                    pass

    def _index(self, buf: np.ndarray, verify: bool) -> None:
        n = buf.size
        offsets, lengths = [], []
        raw = memoryview(buf)
        pos = 0
        while pos < n:
            if pos + 12 > n:
                raise DataError(f"{self.path}: record {len(offsets)} (byte {pos}): truncated header "
                                f"({n - pos} bytes, expected 12); the file is cut short")
            # The length is checked before it is trusted: a damaged length would misplace every
            # later record and the error would name the wrong one.
            (length,), (stored,) = struct.unpack_from("<Q", raw, pos), struct.unpack_from("<I", raw, pos + 8)
            if masked_crc32c(bytes(raw[pos:pos + 8])) != stored:
                raise DataError(f"{self.path}: record {len(offsets)} (byte {pos}): length CRC32C mismatch; "
                                f"the file is corrupt" + ("" if offsets else " or not a TFRecord file"))
            if pos + 12 + length + 4 > n:
                raise DataError(f"{self.path}: record {len(offsets)} (byte {pos}): {length}-byte record "
                                f"runs past the end of the file ({n} bytes); the file is cut short")
            offsets.append(pos + 12)
            lengths.append(length)
            pos += 16 + length
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if not verify or not offsets:
            return
        data_crc = _mask(crc32c_many(buf, self.offsets, self.lengths))
        ends = self.offsets + self.lengths
        stored = buf[ends[:, None] + np.arange(4)].copy().view("<u4").reshape(-1)
        self._check(data_crc, stored)

    def _check(self, computed: np.ndarray, stored: np.ndarray) -> None:
        bad = np.flatnonzero(computed != stored)
        if bad.size:
            i = int(bad[0])
            more = f" (and {bad.size - 1} more records)" if bad.size > 1 else ""
            raise DataError(f"{self.path}: record {i} (byte {int(self.offsets[i]) - 12}): data CRC32C "
                            f"mismatch, stored 0x{int(stored[i]):08x}, computed 0x{int(computed[i]):08x}"
                            f"{more}; the file is corrupt")

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, j: int) -> bytes:
        off, n = int(self.offsets[j]), int(self.lengths[j])
        if self._memory is not None:
            return self._memory[off:off + n]
        # pread does not move a shared file offset, and the fd is per process: safe in DataLoader
        # workers, forked or spawned.
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, n, off)
        if len(data) != n:
            raise DataError(f"{self.path}: record {j}: read {len(data)} of {n} bytes; the file "
                            f"changed after it was opened")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


class TFRecordDataset:
    """Records of google-research/bert `create_pretraining_data.py` in one or more TFRecord files.

    Features used: input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids,
    masked_lm_weights, next_sentence_labels. Without the masked_lm_* features (data for dynamic
    masking) the instances have empty masked arrays; without next_sentence_labels, nsp_label = -1.
    """

    def __init__(self, files: list[tuple[Path, bool]], verify: bool = True):
        self.files = [_TFRecordFile(path, compressed, verify) for path, compressed in files]
        self._ends = np.cumsum([len(f) for f in self.files]).tolist()
        first = self.raw(0) if len(self) else {}
        if first and "input_ids" not in first:
            raise DataError(f"{self.files[0].path}: record 0 has no input_ids feature; features are "
                            f"{', '.join(sorted(first))}. Expected the features of "
                            f"create_pretraining_data.py (input_ids, input_mask, segment_ids, ...)")
        self.manifest: dict[str, Any] = {
            "format": "tfrecord",
            "count": len(self),
            "max_seq_length": int(first["input_ids"].size) if first else 0,
            "max_predictions": int(first.get("masked_lm_positions", np.zeros(0)).size),
            "features": sorted(first),
            "compression": ["gzip" if f.compressed else None for f in self.files],
            "files": [str(f.path) for f in self.files],
            "vocab_hash": None,  # TFRecords do not say which vocabulary made them
        }

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, i: int) -> tuple[_TFRecordFile, int]:
        k, j = locate(self._ends, i)
        return self.files[k], j

    def where(self, i: int) -> str:
        """'FILE: record J': where record i of the dataset is stored, for error messages."""
        f, j = self._locate(i)
        return f"{f.path}: record {j}"

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """The stored features of record i, padded, as TensorFlow would parse them (int64 / float32)."""
        f, j = self._locate(i)
        try:
            return parse_example(f.record(j))
        except _ProtoError as err:
            raise DataError(f"{f.path}: record {j}: not a tf.train.Example ({err})") from None

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        f, j = self._locate(i)
        raw = self.raw(i)
        where = f"{f.path}: record {j}"
        if "input_ids" not in raw:
            raise DataError(f"{where}: no input_ids feature (features: {', '.join(sorted(raw))})")
        positions, ids = raw.get("masked_lm_positions"), raw.get("masked_lm_ids")
        keep = None
        if positions is not None and ids is not None:
            weights = raw.get("masked_lm_weights")
            # Google pads predictions with position 0, id 0 and weight 0; the weight is authoritative.
            keep = weights > 0 if weights is not None and weights.size == ids.size else ids != 0
        nsp = raw.get("next_sentence_labels")
        return make_instance(raw["input_ids"], raw.get("input_mask"), raw.get("segment_ids"),
                             positions, ids, keep, int(nsp[0]) if nsp is not None and nsp.size else None,
                             where)


# ---- HDF5 ------------------------------------------------------------------------------------------------

HDF5_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
             "next_sentence_labels")


class HDF5Dataset:
    """NVIDIA DeepLearningExamples BERT shards: one HDF5 file per shard with datasets input_ids,
    input_mask, segment_ids [N, T], masked_lm_positions, masked_lm_ids [N, P] (zero-padded past
    the real predictions), next_sentence_labels [N]."""

    BLOCK = 256  # rows read per h5py call

    def __init__(self, paths: list[Path]):
        import h5py

        self.paths = paths
        counts, seq, preds = [], None, None
        for path in paths:
            try:
                with h5py.File(path, "r") as f:
                    missing = [k for k in ("input_ids", "masked_lm_positions", "masked_lm_ids") if k not in f]
                    if missing:
                        raise DataError(f"{path}: HDF5 file lacks dataset(s) {', '.join(missing)}; found "
                                        f"{', '.join(sorted(f))}. Expected NVIDIA's BERT shard datasets "
                                        f"{', '.join(HDF5_KEYS)}")
                    n, t = f["input_ids"].shape
                    for key in HDF5_KEYS:
                        if key in f and f[key].shape[0] != n:
                            raise DataError(f"{path}: dataset {key} has {f[key].shape[0]} rows, "
                                            f"input_ids has {n}")
                    p = f["masked_lm_positions"].shape[1]
                    if (seq, preds) != (None, None) and (seq, preds) != (t, p):
                        raise DataError(f"{path}: shapes [N,{t}] / [N,{p}] differ from {paths[0]}'s "
                                        f"[N,{seq}] / [N,{preds}]; shards of one data set share them")
                    seq, preds = t, p
                    counts.append(n)
            except OSError as err:
                raise DataError(f"{path}: cannot read as HDF5 ({err})") from None
        self._ends = np.cumsum(counts).tolist()
        self._handles: dict[int, Any] = {}
        self._blocks: dict[int, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}
        self._pid = os.getpid()
        self.manifest: dict[str, Any] = {
            "format": "hdf5",
            "count": len(self),
            "max_seq_length": int(seq or 0),
            "max_predictions": int(preds or 0),
            "files": [str(p) for p in paths],
            "vocab_hash": None,
        }

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _block(self, k: int, b: int) -> dict[str, np.ndarray]:
        """Rows [b * BLOCK, (b + 1) * BLOCK) of file k, every dataset, kept until the next block.

        Reading a block at a time matters: one h5py row read costs ~70 us per dataset, a 256-row
        slice about the same. Random access is slow whatever we do (~1-30 ms: a row spans a band of
        gzip chunks that must be decompressed); train on `bertkit convert-records` output for that."""
        import h5py

        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._handles, self._blocks, self._pid = {}, {}, os.getpid()
        key = (k, b)
        if self._blocks.get(k, (None,))[0] != key:
            if k not in self._handles:
                # Dataset objects are kept open: each holds its own chunk cache (64 MiB here, so a
                # band of gzip chunks is decompressed once, not once per block).
                f = h5py.File(self.paths[k], "r", rdcc_nbytes=64 << 20, rdcc_nslots=4099)
                self._handles[k] = {name: f[name] for name in HDF5_KEYS if name in f}
            lo = b * self.BLOCK
            self._blocks[k] = (key, {name: d[lo:lo + self.BLOCK] for name, d in self._handles[k].items()})
        return self._blocks[k][1]

    def _locate(self, i: int) -> tuple[int, int]:
        return locate(self._ends, i)

    def where(self, i: int) -> str:
        """'FILE: row J': where instance i of the dataset is stored, for error messages."""
        k, j = self._locate(i)
        return f"{self.paths[k]}: row {j}"

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """Row i of every stored dataset, as stored (NVIDIA writes int32)."""
        k, j = self._locate(i)
        block = self._block(k, j // self.BLOCK)
        return {name: rows[j % self.BLOCK] for name, rows in block.items()}

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k, j = self._locate(i)
        raw = self.raw(i)
        ids = raw["masked_lm_ids"]
        nsp = raw.get("next_sentence_labels")
        # Padding predictions carry id 0 ([PAD]), which is never a masked word.
        return make_instance(raw["input_ids"], raw.get("input_mask"), raw.get("segment_ids"),
                             raw["masked_lm_positions"], ids, ids != 0,
                             None if nsp is None else int(nsp), f"{self.paths[k]}: row {j}")

    def close(self) -> None:
        """Close this process's HDF5 files (they reopen on the next access)."""
        if self._pid == os.getpid():
            for datasets in self._handles.values():
                next(iter(datasets.values())).file.close()
        self._handles, self._blocks = {}, {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_blocks"] = {}, {}
        return state


# ---- lddl Parquet -----------------------------------------------------------------------------------------

LDDL_COLUMNS = ("A", "B", "is_random_next")
LDDL_MASK_COLUMNS = ("masked_lm_positions", "masked_lm_labels")


_NPY_MAGIC = b"\x93NUMPY"
_npy_layouts: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def npy_array(data: bytes) -> np.ndarray:
    """np.load of one small np.save payload, without parsing its header every time: np.load spends
    half its ~50 us in ast.literal_eval of the header, and lddl's rows repeat a few dozen headers
    (one per count of masked positions). Header -> (dtype, shape, data offset) is parsed by np.load
    once and kept."""
    if data is None or data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not an .npy array (no \\x93NUMPY magic)")
    size_bytes = 2 if data[6] == 1 else 4  # format 1.0: uint16 header length; 2.0 and 3.0: uint32
    offset = 8 + size_bytes + int.from_bytes(data[8:8 + size_bytes], "little")
    header = data[:offset]
    layout = _npy_layouts.get(header)
    if layout is None:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype.hasobject or not array.flags.c_contiguous:
            return array
        if len(_npy_layouts) < 4096:
            _npy_layouts[header] = (array.dtype, array.shape, offset)
        return array
    dtype, shape, start = layout
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=start).reshape(shape)


class LDDLParquetDataset:
    """NVIDIA lddl BERT shards (`lddl.dask.bert.pretrain`, the data of DeepLearningExamples' newest
    run_pretraining.py): Parquet files, `*.parquet` or `*.parquet_K` for length bin K, one row per
    sentence pair. A and B are the WordPiece tokens of the two segments as text joined by spaces,
    is_random_next a bool, num_tokens len(A) + len(B) + 3. With static masking (`--masking`) there are
    also masked_lm_positions (np.save bytes of uint16 positions in [CLS] A [SEP] B [SEP]) and
    masked_lm_labels (the original tokens, as text); A and B then already hold the [MASK] and random
    replacements. Without them, the data is for dynamic masking.

    The tokens are text, so reading needs the vocabulary (token -> id) they were made with; a token
    outside it fails, naming file, row and token, as an id outside the vocabulary does for the other
    formats. Rows are read a row group at a time and kept until another group is needed: read in
    order (convert-records, inspect), each group is read once."""

    def __init__(self, paths: list[Path], vocab: dict[str, int]):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.paths, self.vocab = paths, vocab
        self._special = [vocab.get(t) for t in ("[CLS]", "[SEP]")]
        if None in self._special:
            raise DataError("the vocabulary has no [CLS] or [SEP] token; lddl's rows are read as "
                            "[CLS] A [SEP] B [SEP] with the BERT vocabulary they were made with")
        counts, group_ends, longest, predictions, static = [], [], 0, 0, None
        for path in paths:
            try:
                f = pq.ParquetFile(path)
                names = f.schema_arrow.names
                missing = [c for c in LDDL_COLUMNS if c not in names]
                if missing:
                    raise DataError(f"{path}: Parquet file lacks column(s) {', '.join(missing)}; found "
                                    f"{', '.join(names)}. Expected lddl's BERT pre-training columns "
                                    f"{', '.join(LDDL_COLUMNS)} (+ {', '.join(LDDL_MASK_COLUMNS)} with static masking)")
                masks = [c in names for c in LDDL_MASK_COLUMNS]
                if masks[0] != masks[1]:
                    raise DataError(f"{path}: has {LDDL_MASK_COLUMNS[masks[1]]} without "
                                    f"{LDDL_MASK_COLUMNS[masks[0]]}; static masking stores both")
                if static is not None and static != masks[0]:
                    raise DataError(f"{path}: {'has' if masks[0] else 'lacks'} masked_lm_positions, unlike "
                                    f"{paths[0]}; the files of one data set are all statically masked or none")
                static = masks[0]
                groups = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
                if f.metadata.num_rows:
                    # num_tokens when lddl wrote it; a row longer than its largest value fails as it is read.
                    if "num_tokens" in names:
                        longest = max(longest, int(pc.max(f.read(columns=["num_tokens"]).column(0)).as_py()))
                    else:
                        table = f.read(columns=["A", "B"])
                        words = [pc.list_value_length(pc.utf8_split_whitespace(table.column(c))) for c in "AB"]
                        longest = max(longest, int(pc.max(pc.add(words[0], words[1])).as_py()) + 3)
                    if static:
                        labels = f.read(columns=["masked_lm_labels"]).column(0)
                        most = pc.max(pc.list_value_length(pc.utf8_split_whitespace(labels))).as_py()
                        predictions = max(predictions, int(most or 0))
            except DataError:
                raise
            except Exception as err:  # pyarrow's ArrowInvalid, OSError: not a readable Parquet file
                raise DataError(f"{path}: cannot read as Parquet ({err})") from None
            counts.append(f.metadata.num_rows)
            group_ends.append(np.cumsum(groups).tolist())
        self.static = bool(static)
        self._ends = np.cumsum(counts).tolist()
        self._group_ends = group_ends
        self._group: tuple[tuple[int, int], dict[str, list]] | None = None
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()
        if not self.static:
            # Dynamic masking draws round(15% of the tokens) per row (bertkit.data.masking): room for them all.
            predictions = -(-longest * 15 // 100)
        self.manifest: dict[str, Any] = {
            "format": "lddl-parquet",
            "count": len(self),
            "max_seq_length": longest,
            "max_predictions": predictions,
            "masking": "static" if self.static else "dynamic",
            "files": [str(p) for p in paths],
            "vocab_hash": None,
        }

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def where(self, i: int) -> str:
        """'FILE: row J': where row i of the dataset is stored, for error messages."""
        k, j = locate(self._ends, i)
        return f"{self.paths[k]}: row {j}"

    def raw(self, i: int) -> dict[str, Any]:
        """Row i as stored: A, B (text), is_random_next, and with static masking masked_lm_positions
        (decoded from np.save bytes) and masked_lm_labels (text)."""
        import pyarrow.parquet as pq

        if self._pid != os.getpid():  # forked: reopen in this process
            self._files, self._group, self._pid = {}, None, os.getpid()
        k, j = locate(self._ends, i)
        g, row = locate(self._group_ends[k], j)
        if self._group is None or self._group[0] != (k, g):
            if k not in self._files:
                self._files[k] = pq.ParquetFile(self.paths[k])
            columns = [*LDDL_COLUMNS, *(LDDL_MASK_COLUMNS if self.static else ())]
            self._group = ((k, g), self._files[k].read_row_group(g, columns=columns).to_pydict())
        rows = self._group[1]
        out = {name: values[row] for name, values in rows.items()}
        if self.static:
            try:
                positions = npy_array(out["masked_lm_positions"])
            except (ValueError, TypeError, EOFError, OSError) as err:
                raise DataError(f"{self.where(i)}: masked_lm_positions is not an np.save array ({err})") from None
            if positions.ndim != 1 or positions.dtype.kind not in "iu":
                raise DataError(f"{self.where(i)}: masked_lm_positions must be a 1-D integer array, got "
                                f"{positions.dtype} of shape {positions.shape}")
            out["masked_lm_positions"] = positions
        return out

    def _ids(self, text: str | None, column: str, i: int) -> list[int]:
        if text is None:
            raise DataError(f"{self.where(i)}: {column} is null; expected WordPiece tokens joined by spaces")
        tokens = text.split()
        try:
            return [self.vocab[t] for t in tokens]
        except KeyError:
            bad = next(t for t in tokens if t not in self.vocab)
            raise DataError(f"{self.where(i)}: {column} holds token {bad!r}, which is not in the vocabulary; "
                            f"pass the vocabulary the data was made with (--tokenizer)") from None

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        raw = self.raw(i)
        a, b = self._ids(raw["A"], "A", i), self._ids(raw["B"], "B", i)
        if not a:
            raise DataError(f"{self.where(i)}: A is empty; every lddl pair has tokens in A")
        cls, sep = self._special
        ids = np.array([cls, *a, sep, *b, sep], dtype=np.int32)
        if ids.size > self.manifest["max_seq_length"]:
            raise DataError(f"{self.where(i)}: {ids.size} tokens with [CLS] and two [SEP], more than the "
                            f"num_tokens column's largest value, {self.manifest['max_seq_length']}")
        segments = np.zeros(ids.size, np.int8)
        segments[len(a) + 2:] = 1
        nsp = raw["is_random_next"]
        if nsp is None:
            raise DataError(f"{self.where(i)}: is_random_next is null; expected true or false")
        positions = labels = keep = None
        if self.static:
            positions = raw["masked_lm_positions"]
            labels = np.array(self._ids(raw["masked_lm_labels"], "masked_lm_labels", i), dtype=np.int32)
            if labels.size != positions.size:
                raise DataError(f"{self.where(i)}: {positions.size} masked_lm_positions but {labels.size} "
                                f"masked_lm_labels tokens; they pair up one to one")
            keep = np.ones(labels.size, bool)
        # Google's label convention, which lddl keeps: 1 = B is a random segment.
        return make_instance(ids, None, segments, positions, labels, keep, int(bool(nsp)), self.where(i))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_group"] = {}, None
        return state


# ---- detection -------------------------------------------------------------------------------------------

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_DATA_SUFFIXES = (".tfrecord", ".tfrecords", ".tfr", ".gz", ".hdf5", ".h5", ".parquet")


def sniff(path: Path) -> str | None:
    """'hdf5', 'tfrecord', 'tfrecord.gz', 'parquet' or None, from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if head.startswith(_HDF5_SIGNATURE):
            return "hdf5"
        if head.startswith(_PARQUET_MAGIC):
            return "parquet"
        # HDF5 allows a user block before the superblock, at 512, 1024, 2048, ... bytes.
        size, offset = os.fstat(fh.fileno()).st_size, 512
        while offset + 8 <= size:
            fh.seek(offset)
            if fh.read(8) == _HDF5_SIGNATURE:
                return "hdf5"
            offset *= 2
    kind = "tfrecord"
    if head.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(12)
        except (OSError, EOFError):
            return None
        kind = "tfrecord.gz"
    if len(head) == 12 and masked_crc32c(head[:8]) == struct.unpack("<I", head[8:])[0]:
        return kind
    if len(head) == 0 and path.suffix in (".tfrecord", ".tfrecords", ".tfr"):
        return kind  # an empty TFRecord file is valid: zero records
    return None


def _expand(path: str | Path) -> tuple[list[Path], bool]:
    """Files named by a path (file, directory or glob); the flag says whether they were named
    one by one (file, glob), so that every one must be data, or found in a directory."""
    p = Path(path)
    if p.is_dir():
        return sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith(".")), False
    if p.is_file():
        return [p], True
    if any(ch in str(path) for ch in "*?["):
        files = sorted(Path(m) for m in globlib.glob(str(path)) if Path(m).is_file())
        if not files:
            raise FileNotFoundError(f"{path}: the pattern matches no files")
        return files, True
    raise FileNotFoundError(f"{path}: no such file, directory or glob")


def is_lddl_parquet_name(path: Path) -> bool:
    """lddl's file names: *.parquet, or *.parquet_K for length bin K (lddl.utils reads a directory's
    files this way, which leaves out the _metadata / _common_metadata files Dask writes beside them)."""
    return path.suffix.startswith(".parquet")


def open_external(path: str | Path, verify: bool = True, vocab: dict[str, int] | None = None
                  ) -> TFRecordDataset | HDF5Dataset | LDDLParquetDataset | None:
    """Open TFRecord (plain or GZIP), NVIDIA HDF5 or lddl Parquet pre-training data at a file,
    directory or glob; None when the files are in none of these formats (so the caller can try others).

    The format comes from the bytes: the HDF5 signature, the Parquet magic, the gzip magic, or a
    TFRecord header whose length CRC checks out. verify=False skips the per-record data CRC check on
    open. lddl Parquet holds tokens as text: `vocab` (token -> id) reads it, and without one it is refused."""
    files, named = _expand(path)
    kinds: dict[Path, str] = {}
    for f in files:
        kind = sniff(f)
        if kind is None:
            if named and (len(files) > 1 or f.suffix.lower() in _DATA_SUFFIXES):
                raise DataError(f"{f}: neither TFRecord (plain or GZIP), HDF5 nor Parquet: the first record's "
                                f"length CRC does not match and there is no HDF5 or Parquet signature")
            continue
        if kind == "parquet" and not named and not is_lddl_parquet_name(f):
            continue  # Dask's _metadata files: the footers of the data files, not rows of their own
        kinds[f] = kind
    if not kinds:
        return None
    names = {"tfrecord": "TFRecord", "hdf5": "HDF5", "parquet": "Parquet"}
    families = {k.split(".")[0]: f for f, k in kinds.items()}
    if len(families) > 1:
        mixed = " and ".join(f"{name} ({families[k]})" for k, name in names.items() if k in families)
        raise DataError(f"{path}: mixes {mixed} files; give one format at a time")
    if "parquet" in families:
        if vocab is None:
            raise NeedsVocabulary(f"{path}: lddl Parquet pre-training data holds its tokens as text, not ids; "
                                  f"read it with the vocabulary it was made with (--tokenizer VOCAB)")
        return LDDLParquetDataset(list(kinds), vocab)
    if "hdf5" in families:
        return HDF5Dataset(list(kinds))
    return TFRecordDataset([(f, k.endswith(".gz")) for f, k in kinds.items()], verify=verify)


class NeedsVocabulary(DataError):
    """Data whose tokens are text (lddl Parquet), opened without the vocabulary that maps them to ids."""
