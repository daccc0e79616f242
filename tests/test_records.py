"""Record shards: round trip, O(1) random access across batches and shards, checksums, incomplete
directories, and the batch collate for BertForPreTraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bertkit.data import records
from bertkit.data.records import (BATCH_ROWS, collate_pretraining, open_pretraining_data, verify, write_manifest,
                                  write_shard)
from bertkit.tasks.base import DataError

HEADER = {"vocab_hash": "abc", "max_seq_length": 64}


def random_instances(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(8, 64))
        k = int(rng.integers(0, 6))
        out.append({
            "input_ids": rng.integers(0, 30000, length).astype(np.int32),
            "token_type_ids": (np.arange(length) > length // 2).astype(np.int8),
            "sequence_ids": np.ones(length, dtype=np.int8),
            "masked_positions": np.sort(rng.choice(np.arange(1, length), k, replace=False)).astype(np.int32),
            "masked_ids": rng.integers(0, 30000, k).astype(np.int32),
            "document_ids": rng.integers(0, 50, int(rng.integers(1, 3))).astype(np.int32),
            "nsp_label": np.int8(rng.integers(-1, 2)),
        })
    return out


@pytest.fixture()
def two_shards(tmp_path: Path):
    a = random_instances(BATCH_ROWS * 2 + 17, 0)  # spans three record batches
    b = random_instances(300, 1)
    write_shard(tmp_path / records.shard_name(0), a, {"documents": 5})
    write_shard(tmp_path / records.shard_name(1), b)
    write_manifest(tmp_path, HEADER, 2)
    return tmp_path, a + b


def test_round_trip_random_access(two_shards):
    directory, expected = two_shards
    ds = open_pretraining_data(directory)
    assert len(ds) == len(expected) == ds.manifest["num_records"]
    assert ds.manifest["vocab_hash"] == "abc" and ds.manifest["max_seq_length"] == 64
    rng = np.random.default_rng(2)
    for i in list(rng.integers(0, len(ds), 200)) + [0, BATCH_ROWS - 1, BATCH_ROWS, len(ds) - 1, -1]:
        got, want = ds[int(i)], expected[int(i)]
        for key in records.LIST_COLUMNS:
            assert got[key].dtype == records.LIST_COLUMNS[key] and np.array_equal(got[key], want[key]), key
        assert int(got["nsp_label"]) == int(want["nsp_label"])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_record_index_splits_by_record(two_shards):
    directory, expected = two_shards
    ds = open_pretraining_data(directory)
    index = ds.record_index()
    assert index.shape == (len(ds), 2)
    assert tuple(index[BATCH_ROWS * 2 + 17]) == (1, 0) and tuple(index[-1]) == (1, 299)
    # Two ranks taking every other record cover everything exactly once.
    ranks = [index[r::2] for r in range(2)]
    assert sum(len(x) for x in ranks) == len(ds)
    assert ds.locate(BATCH_ROWS * 2 + 20) == (1, 3)


def test_shard_is_an_arrow_stream(two_shards):
    """The format Hugging Face datasets memory-maps: an Arrow IPC stream with the documented schema."""
    directory, expected = two_shards
    with pa.memory_map(str(directory / "shard-00001.arrow")) as source:
        table = pa.ipc.open_stream(source).read_all()
    assert table.schema == records.SCHEMA and table.num_rows == 300
    assert table.column("input_ids")[0].as_py() == expected[BATCH_ROWS * 2 + 17]["input_ids"].tolist()


def test_shards_without_document_ids_are_still_read(tmp_path):
    """Shards written before the document_ids column existed: read as before, and no document ids
    for the held-out split (which then draws by row)."""
    rows = random_instances(50, 3)
    legacy = records.SCHEMA_WITHOUT_DOCUMENTS
    batch = records._record_batch(rows)
    with pa.OSFile(str(tmp_path / "shard-00000.arrow"), "wb") as sink, pa.ipc.new_stream(sink, legacy) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays([batch.column(f.name) for f in legacy], schema=legacy))
    path = tmp_path / "shard-00000.arrow"
    sidecar = {"name": path.name, "rows": 50, "sha256": records.sha256_file(path), "bytes": path.stat().st_size}
    (tmp_path / "shard-00000.json").write_text(json.dumps(sidecar))
    write_manifest(tmp_path, HEADER, 1)
    ds = open_pretraining_data(tmp_path)
    assert np.array_equal(ds[7]["input_ids"], rows[7]["input_ids"]) and "document_ids" not in ds[7]
    assert ds.document_ids() is None


def test_document_ids_are_numbered_across_shards(two_shards):
    directory, expected = two_shards
    offsets, values = open_pretraining_data(directory).document_ids()
    assert offsets.size == len(expected) + 1
    first_of_second_shard = BATCH_ROWS * 2 + 17
    assert values[offsets[first_of_second_shard]] == (1 << 32) | int(expected[first_of_second_shard]["document_ids"][0])
    assert np.array_equal(values[offsets[3]:offsets[4]], expected[3]["document_ids"])


def test_checksum_detects_corruption(two_shards):
    directory, _ = two_shards
    verify(directory)
    shard = directory / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-00001\.arrow: checksum mismatch"):
        verify(directory)
    with pytest.raises(DataError, match="checksum mismatch"):
        open_pretraining_data(directory).verify()


def test_unfinished_shard_is_not_counted(tmp_path):
    write_shard(tmp_path / records.shard_name(0), random_instances(10, 3))
    # A run killed mid-shard leaves a .tmp file and no sidecar.
    (tmp_path / "shard-00001.arrow.tmp").write_bytes(b"partial")
    manifest = write_manifest(tmp_path, HEADER, 2)
    assert not manifest["complete"] and manifest["missing_shards"] == ["shard-00001.arrow"]
    with pytest.raises(DataError, match=r"1 of 2 shards are missing.*shard-00001\.arrow"):
        open_pretraining_data(tmp_path)
    # A truncated shard whose size no longer matches its sidecar is also incomplete.
    write_shard(tmp_path / records.shard_name(1), random_instances(10, 4))
    assert len(open_pretraining_data(tmp_path)) == 20
    shard = tmp_path / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert records.read_sidecar(shard) is None


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_pretraining_data(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DataError, match="format_version 99"):
        open_pretraining_data(tmp_path)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(DataError, match="unsupported format"):
        open_pretraining_data(other)


def test_collate_pretraining_shapes_and_padding():
    rows = random_instances(4, 5)
    rows[1]["nsp_label"] = np.int8(-1)
    rows[2]["sequence_ids"] = np.concatenate([np.ones(3, np.int8), np.full(rows[2]["input_ids"].size - 3, 2, np.int8)])
    batch = collate_pretraining(rows, pad_id=0, max_predictions=8)
    t = max(r["input_ids"].size for r in rows)
    widest = max(r["masked_positions"].size for r in rows)  # slots: the fullest row's count, not max_predictions
    assert batch["input_ids"].shape == (4, t) and batch["masked_positions"].shape == (4, widest) and widest < 8
    for i, r in enumerate(rows):
        n, k = r["input_ids"].size, r["masked_positions"].size
        assert batch["input_ids"][i, :n].tolist() == r["input_ids"].tolist() and (batch["input_ids"][i, n:] == 0).all()
        assert batch["attention_mask"][i, :n].tolist() == r["sequence_ids"].tolist()
        assert (batch["attention_mask"][i, n:] == 0).all()
        assert batch["masked_positions"][i, :k].tolist() == r["masked_positions"].tolist()
        assert (batch["masked_positions"][i, k:] == -1).all() and (batch["masked_ids"][i, k:] == -100).all()
    assert batch["next_sentence_label"][1] == -100
    with pytest.raises(ValueError, match="max-predictions-per-seq"):
        collate_pretraining(rows, pad_id=0, max_predictions=2)
