"""Google TFRecord and NVIDIA HDF5 pre-training data (bertkit.data.external) and convert-records,
checked against the arrays the fixtures were written from (shared/data/pretraining_formats)."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import shutil
import struct
import unicodedata
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from bertkit.data.external import (HDF5Dataset, TFRecordDataset, crc32c, crc32c_many, masked_crc32c,
                                   open_external, parse_example)
from bertkit.tasks.base import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"
FORMATS = SHARED / "data" / "pretraining_formats"
TFRECORD = FORMATS / "google_create_pretraining_data_format.tfrecord"
HDF5 = FORMATS / "nvidia_hdf5_format.hdf5"
VOCAB = SHARED / "models" / "bert-base-uncased" / "vocab.txt"
SAMPLE_TEXT = SHARED / "data" / "bert_sample_text" / "sample_text.txt"
N = 28  # instances in the fixtures (README.md)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    if not (FORMATS / "expected.npz").is_file():
        pytest.skip(f"{FORMATS}/expected.npz is absent")
    with np.load(FORMATS / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def vocab() -> list[str]:
    if not VOCAB.is_file():
        pytest.skip(f"{VOCAB} is absent")
    return VOCAB.read_text(encoding="utf-8").splitlines()


def _open(path: Path):
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return open_external(path)


# ---- raw arrays and instances vs expected.npz --------------------------------------------------------


def test_crc32c_known_values_and_vectorised_agrees():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720 B.4)
    assert crc32c(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 B.4, 32 bytes of zeros
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, 5000, dtype=np.uint8)
    starts = rng.integers(0, 4000, 400)
    lengths = np.minimum(rng.integers(0, 1500, 400), 5000 - starts)
    lengths[:5] = [0, 1, 2, 3, 4]  # below the 4-byte inversion trick: the scalar path
    got = crc32c_many(buf, starts, lengths)
    want = [crc32c(buf[s:s + n].tobytes()) for s, n in zip(starts, lengths)]
    assert got.tolist() == want


def test_tfrecord_raw_equals_expected(expected):
    ds = _open(TFRECORD)
    assert isinstance(ds, TFRecordDataset)
    assert len(ds) == N
    m = ds.manifest
    assert (m["format"], m["count"], m["max_seq_length"], m["max_predictions"]) == ("tfrecord", N, 128, 20)
    assert m["files"] == [str(TFRECORD)]
    for i in range(N):
        raw = ds.raw(i)
        assert set(raw) == set(expected)
        for key, want in expected.items():
            got = raw[key]
            # tf.train.Example holds int64 and float lists; the label is a list of one.
            assert got.dtype == (np.float32 if key == "masked_lm_weights" else np.int64), key
            np.testing.assert_array_equal(got, np.atleast_1d(want[i]), err_msg=f"record {i} {key}")


def test_hdf5_raw_equals_expected(expected):
    ds = _open(HDF5)
    assert isinstance(ds, HDF5Dataset)
    assert len(ds) == N
    m = ds.manifest
    assert (m["format"], m["count"], m["max_seq_length"], m["max_predictions"]) == ("hdf5", N, 128, 20)
    for i in range(N):
        raw = ds.raw(i)
        assert set(raw) == set(expected) - {"masked_lm_weights"}  # NVIDIA stores no weights
        for key in raw:
            assert raw[key].dtype == np.int32, key
            np.testing.assert_array_equal(raw[key], expected[key][i], err_msg=f"row {i} {key}")
    assert ds[-1]["input_ids"].tolist() == ds[N - 1]["input_ids"].tolist()
    with pytest.raises(IndexError):
        ds[N]


@pytest.mark.parametrize("path", [TFRECORD, HDF5], ids=["tfrecord", "hdf5"])
def test_instances_are_the_unpadded_form(path, expected):
    ds = _open(path)
    for i in range(N):
        inst = ds[i]
        assert set(inst) == {"input_ids", "token_type_ids", "sequence_ids", "masked_positions",
                             "masked_ids", "nsp_label"}
        length = int(expected["input_mask"][i].sum())
        assert expected["input_mask"][i][:length].all()  # the mask is a prefix of ones
        real = expected["masked_lm_weights"][i] > 0
        assert inst["input_ids"].dtype == np.int32 and inst["input_ids"].shape == (length,)
        np.testing.assert_array_equal(inst["input_ids"], expected["input_ids"][i][:length])
        assert inst["input_ids"][0] == 101 and inst["input_ids"][-1] == 102  # [CLS] ... [SEP]
        assert inst["token_type_ids"].dtype == np.int8
        np.testing.assert_array_equal(inst["token_type_ids"], expected["segment_ids"][i][:length])
        assert inst["sequence_ids"].dtype == np.int8 and (inst["sequence_ids"] == 1).all()
        assert inst["sequence_ids"].shape == (length,)
        assert inst["masked_positions"].dtype == np.int32 and inst["masked_ids"].dtype == np.int32
        np.testing.assert_array_equal(inst["masked_positions"], expected["masked_lm_positions"][i][real])
        np.testing.assert_array_equal(inst["masked_ids"], expected["masked_lm_ids"][i][real])
        # weight > 0 (Google) and id != 0 (NVIDIA) pick the same predictions.
        np.testing.assert_array_equal(real, expected["masked_lm_ids"][i] != 0)
        assert 0 < inst["masked_positions"].size <= 20
        assert inst["nsp_label"].dtype == np.int8
        assert int(inst["nsp_label"]) == int(expected["next_sentence_labels"][i])


def test_both_readers_give_identical_instances():
    tf, h5 = _open(TFRECORD), _open(HDF5)
    for i in range(N):
        a, b = tf[i], h5[i]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"instance {i} {key}")
            assert a[key].dtype == b[key].dtype


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    return re.findall(r"[a-z0-9]+", text)


def test_decoded_instances_show_masks_and_real_words(vocab):
    ds = _open(TFRECORD)
    if not SAMPLE_TEXT.is_file():
        pytest.skip(f"{SAMPLE_TEXT} is absent")
    corpus_words = set(_words(SAMPLE_TEXT.read_text(encoding="utf-8")))
    special = {"[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"}
    masked_total = as_mask = content_total = 0
    in_corpus = words_total = 0
    for i in range(len(ds)):
        inst = ds[i]
        tokens = [vocab[t] for t in inst["input_ids"]]
        originals = [vocab[t] for t in inst["masked_ids"]]
        assert not special & set(originals), f"instance {i}: a special token was a prediction target"
        masked_total += len(originals)
        as_mask += sum(tokens[p] == "[MASK]" for p in inst["masked_positions"])
        # [MASK] appears only where a prediction is made.
        assert {p for p, t in enumerate(tokens) if t == "[MASK]"} <= set(inst["masked_positions"].tolist())
        content_total += sum(t not in ("[CLS]", "[SEP]") for t in tokens)
        restored = list(tokens)
        for p, t in zip(inst["masked_positions"], originals):
            restored[p] = t
        text = " ".join(restored).replace(" ##", "")
        for word in _words(text.replace("[CLS]", " ").replace("[SEP]", " ")):
            words_total += 1
            in_corpus += word in corpus_words
    # create_pretraining_data masks ~15% of tokens, 80% of them replaced by [MASK].
    assert 0.10 < masked_total / content_total < 0.20, masked_total / content_total
    assert 0.6 < as_mask / masked_total < 0.95, as_mask / masked_total
    # With the original tokens put back, the text is the sample corpus again.
    assert words_total > 500 and in_corpus / words_total > 0.97, (in_corpus, words_total)


# ---- corruption, compression, directories and globs -------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    shutil.copyfile(src, dst)
    dst.chmod(0o644)  # the shared originals are read-only
    return dst


def test_flipped_byte_fails_crc_naming_file_and_record(tmp_path):
    good = open_external(_copy(TFRECORD, tmp_path / "good.tfrecord"))
    offset = int(good.files[0].offsets[5]) + 40  # inside record 5's data
    data = bytearray(TFRECORD.read_bytes())
    data[offset] ^= 0x01
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.tfrecord: record 5 .*data CRC32C mismatch"):
        open_external(bad)
    # Without verification the index still opens; the damage is then the caller's risk.
    assert len(open_external(bad, verify=False)) == N

    data = bytearray(TFRECORD.read_bytes())
    data[int(good.files[0].offsets[3]) - 12] ^= 0x01  # record 3's length field
    (tmp_path / "badlen.tfrecord").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"badlen\.tfrecord: record 3 .*(length CRC|runs past)"):
        open_external(tmp_path / "badlen.tfrecord")

    (tmp_path / "cut.tfrecord").write_bytes(TFRECORD.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"cut\.tfrecord: record {N - 1} .*cut short"):
        open_external(tmp_path / "cut.tfrecord")


def test_gzip_tfrecord_reads_identically(tmp_path):
    plain = _open(TFRECORD)
    packed = tmp_path / "shard.tfrecord.gz"
    packed.write_bytes(gzip.compress(TFRECORD.read_bytes()))
    for path in (packed, tmp_path / "no_suffix"):
        if path != packed:
            shutil.copyfile(packed, path)  # detection reads the magic, not the name
        ds = open_external(path)
        assert isinstance(ds, TFRecordDataset) and ds.manifest["compression"] == ["gzip"]
        assert len(ds) == N
        for i in range(N):
            a, b = plain.raw(i), ds.raw(i)
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    broken = tmp_path / "broken.tfrecord.gz"
    broken.write_bytes(packed.read_bytes()[:-300])
    with pytest.raises(DataError, match=r"broken\.tfrecord\.gz"):
        open_external(broken)


def test_directories_and_globs(tmp_path):
    tf_dir = tmp_path / "tf"
    tf_dir.mkdir()
    _copy(TFRECORD, tf_dir / "part-0.tfrecord")
    (tf_dir / "part-1.tfrecord.gz").write_bytes(gzip.compress(TFRECORD.read_bytes()))
    (tf_dir / "README.txt").write_text("not data\n")  # a directory may hold notes beside its shards
    first = _open(TFRECORD)
    for spec in (tf_dir, str(tf_dir / "part-*")):
        ds = open_external(spec)
        assert isinstance(ds, TFRecordDataset) and len(ds) == 2 * N, spec
        assert ds.manifest["count"] == 2 * N and len(ds.manifest["files"]) == 2
        for i in (0, 13, N - 1):
            np.testing.assert_array_equal(ds[N + i]["input_ids"], first[i]["input_ids"])
    with pytest.raises(DataError, match=r"README\.txt: neither TFRecord"):
        open_external(str(tf_dir / "*"))  # files named explicitly must all be data

    h5_dir = tmp_path / "h5"
    h5_dir.mkdir()
    for k in range(3):
        _copy(HDF5, h5_dir / f"shard_{k}.hdf5")
    for spec in (h5_dir, str(h5_dir / "shard_*.hdf5")):
        ds = open_external(spec)
        assert isinstance(ds, HDF5Dataset) and len(ds) == 3 * N
        np.testing.assert_array_equal(ds[2 * N + 5]["masked_ids"], first[5]["masked_ids"])

    _copy(HDF5, tf_dir / "stray.h5")
    with pytest.raises(DataError, match="mixes TFRecord .* and HDF5"):
        open_external(tf_dir)
    with pytest.raises(FileNotFoundError, match="matches no files"):
        open_external(str(tmp_path / "nothing-*.tfrecord"))
    with pytest.raises(FileNotFoundError):
        open_external(tmp_path / "missing.tfrecord")
    (tmp_path / "notes.txt").write_text("plain text\n")
    assert open_external(tmp_path / "notes.txt") is None  # not ours: the caller tries other formats
    (tmp_path / "fake.tfrecord").write_text("plain text in a .tfrecord file\n")
    with pytest.raises(DataError, match=r"fake\.tfrecord: neither TFRecord"):
        open_external(tmp_path / "fake.tfrecord")


def test_hdf5_without_expected_datasets_names_them(tmp_path):
    import h5py

    path = tmp_path / "other.hdf5"
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.zeros((2, 8), np.int32)
        f["labels"] = np.zeros(2, np.int32)
    with pytest.raises(DataError, match=r"other\.hdf5: HDF5 file lacks dataset\(s\) masked_lm_positions"):
        open_external(path)


def test_hdf5_rows_across_read_blocks_and_bad_masks(tmp_path, expected):
    import h5py

    if not HDF5.is_file():
        pytest.skip(f"{HDF5} is absent")
    reps = 600 // N + 1  # > 2 read blocks of HDF5Dataset.BLOCK rows
    path = tmp_path / "tiled.h5"
    with h5py.File(HDF5, "r") as src, h5py.File(path, "w") as dst:
        for key in src:
            dst.create_dataset(key, data=np.concatenate([src[key][:]] * reps), compression="gzip")
    ds = open_external(path)
    assert len(ds) == reps * N and HDF5Dataset.BLOCK < 600
    for i in (0, 255, 256, 257, 511, 512, 599, 3, 300):  # forwards, then back into old blocks
        np.testing.assert_array_equal(ds.raw(i)["input_ids"], expected["input_ids"][i % N], err_msg=str(i))
    ds.close()

    with h5py.File(path, "r+") as f:
        mask = f["input_mask"][300]
        mask[2] = 0  # a hole: not one unpadded sequence
        f["input_mask"][300] = mask
    with pytest.raises(DataError, match=r"tiled\.h5: row 300: input_mask must be 128 values, 1s then 0s"):
        open_external(path)[300]


# ---- the Example decoder on shapes the fixture does not use -------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_example_decoder_unpacked_fields_and_negative_ints():
    # Writers other than TensorFlow may emit unpacked repeated fields (one tag per value).
    ints = b"".join(_varint(1 << 3 | 0) + _varint(v) for v in (5, -1, 300))
    floats = b"".join(_varint(1 << 3 | 5) + struct.pack("<f", v) for v in (0.5, -2.0))
    feats = {"ids": _ld(3, ints), "w": _ld(2, floats),
             "packed": _ld(3, _ld(1, b"".join(_varint(v) for v in (1, 128, 2**40, -7)))),
             "text": _ld(1, _ld(1, b"abc") + _ld(1, b"")), "empty": b""}
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in feats.items())
    example = _ld(1, entries) + _varint(7 << 3 | 0) + _varint(9)  # plus an unknown field, skipped
    out = parse_example(example)
    assert out["ids"].tolist() == [5, -1, 300] and out["ids"].dtype == np.int64
    assert out["w"].tolist() == [0.5, -2.0] and out["w"].dtype == np.float32
    assert out["packed"].tolist() == [1, 128, 2**40, -7]
    assert out["text"].tolist() == [b"abc", b""]
    assert out["empty"].size == 0
    with pytest.raises(ValueError, match="varint"):
        parse_example(example[:-1] + b"\xff")


def test_tfrecord_framing_of_a_written_file(tmp_path):
    """Records framed here (length, masked CRCs) read back: the reader follows the format, not
    the fixture's bytes."""
    def frame(data: bytes) -> bytes:
        head = struct.pack("<Q", len(data))
        return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))

    ex = lambda ids: _ld(1, _ld(1, _ld(1, b"input_ids") + _ld(2, _ld(3, _ld(1, b"".join(map(_varint, ids)))))))
    path = tmp_path / "written.tfrecord"
    path.write_bytes(frame(ex([101, 7, 102, 0])) + frame(b"") + frame(ex([101, 102])))
    ds = open_external(path)
    assert len(ds) == 3 and ds.raw(1) == {}
    assert ds[0]["input_ids"].tolist() == [101, 7, 102]  # no input_mask: unpadded at the last nonzero id
    assert ds[2]["masked_positions"].size == 0 and int(ds[2]["nsp_label"]) == -1
    with pytest.raises(DataError, match=r"written\.tfrecord: record 1: no input_ids"):
        ds[1]


# ---- processes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [TFRECORD, HDF5], ids=["tfrecord", "hdf5"])
def test_datasets_survive_pickling_and_worker_processes(path):
    import torch

    ds = _open(path)
    before = [ds[i]["input_ids"] for i in range(N)]  # opens handles in this process first
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[3]["input_ids"], before[3])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list,
                                         multiprocessing_context="fork")
    got = [inst["input_ids"] for batch in loader for inst in batch]
    assert len(got) == N
    for a, b in zip(got, before):
        np.testing.assert_array_equal(a, b)


# ---- through the records layer and the CLI ---------------------------------------------------------------


def _records_module():
    try:
        from bertkit.data import records
    except ImportError as err:
        pytest.skip(f"bertkit.data.records is not available ({err})")
    return records


@pytest.mark.parametrize("path", [TFRECORD, HDF5], ids=["tfrecord", "hdf5"])
def test_open_pretraining_data_reads_external_formats(path):
    records = _records_module()
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    ds = records.open_pretraining_data(path)
    assert len(ds) == N and ds.manifest["max_seq_length"] == 128
    np.testing.assert_array_equal(ds[7]["masked_ids"], open_external(path)[7]["masked_ids"])


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from bertkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_inspect_decodes_external_files(vocab):
    try:
        import bertkit.commands.inspect  # noqa: F401
    except ImportError as err:
        pytest.skip(f"`bertkit inspect` is not available yet ({err})")
    if not TFRECORD.is_file():
        pytest.skip(f"{TFRECORD} is absent")
    for path in (TFRECORD, HDF5):
        code, out, err = _cli(["inspect", str(path), "--n", "2", "--stats", "--tokenizer", str(VOCAB)])
        assert code == 0, err
        assert "record 1:" in out and "[CLS]" in out and "[MASK](" in out
        assert f"records: {N}" in out


@pytest.mark.parametrize("path", [TFRECORD, HDF5], ids=["tfrecord", "hdf5"])
def test_convert_records_round_trip(path, tmp_path, vocab):
    records = _records_module()
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    out = tmp_path / "converted"
    code, _, err = _cli(["convert-records", str(path), str(out), "--tokenizer", str(VOCAB),
                         "--records-per-shard", "10"])
    assert code == 0, err
    converted = records.open_pretraining_data(out)
    source = open_external(path)
    assert len(converted) == N
    assert len(converted.manifest["shards"]) == 3  # 10 + 10 + 8
    assert converted.manifest["max_seq_length"] == 128
    from bertkit.tokenization import Tokenizer

    assert converted.manifest["vocab_hash"] == Tokenizer.from_pretrained(str(VOCAB)).vocab_hash
    records.verify(out)
    for i in range(N):
        a, b = source[i], converted[i]
        for key in a:
            np.testing.assert_array_equal(np.asarray(b[key]), a[key], err_msg=f"instance {i} {key}")
            assert np.asarray(b[key]).dtype == a[key].dtype, key
    # Rerunning finds every shard complete and rewrites nothing.
    mtimes = [p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.arrow"))]
    code, _, err = _cli(["convert-records", str(path), str(out), "--tokenizer", str(VOCAB),
                         "--records-per-shard", "10"])
    assert code == 0, err
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.arrow"))] == mtimes
    # The converted directory pre-trains, static masks and re-drawn ones (a KeyError before).
    for masking in ("static", "dynamic"):
        run = tmp_path / f"run-{masking}"
        code, _, err = _cli(["pretrain", "--data", str(out), "--config", "tiny", "--output-dir", str(run),
                             "--max-steps", "2", "--batch-size", "4", "--eval-fraction", "0.25", "--masking",
                             masking, "--device", "cpu", "--no-progress"])
        assert code == 0, err
        assert json.loads((run / "metrics.json").read_text())["eval"]["masked_tokens"] > 0


def test_convert_records_rejects_ids_outside_the_vocab(tmp_path):
    _records_module()
    if not TFRECORD.is_file():
        pytest.skip(f"{TFRECORD} is absent")
    small = tmp_path / "vocab.txt"
    small.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    code, _, err = _cli(["convert-records", str(TFRECORD), str(tmp_path / "out"), "--tokenizer", str(small)])
    assert code == 1
    assert "record 0" in err and "vocab" in err


def test_inspect_with_a_smaller_vocabulary_names_the_record(capsys):
    from bertkit.cli import main

    fixture = TFRECORD.parents[2] / "models" / "tf-bert-fixture"  # a 1,024-token vocabulary
    if not fixture.is_dir():
        pytest.skip(f"{fixture} is missing")
    assert main(["inspect", str(TFRECORD), "--tokenizer", str(fixture), "--n", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{TFRECORD}: record 0: token id" in err and "outside the vocabulary (0..1023)" in err


# ---- lddl Parquet ------------------------------------------------------------------------------------------


def _write_lddl(directory: Path, expected: dict[str, np.ndarray], vocab: list[str], static: bool) -> Path:
    """The fixture's 28 instances in lddl's layout (lddl.dask.bert.pretrain `_save_parquet`): A and B as
    space-joined WordPiece text, is_random_next, num_tokens (uint16), and with static masking
    masked_lm_positions (np.save bytes of uint16) and masked_lm_labels (text). Two length bins, small
    row groups, and the _common_metadata file Dask writes beside them (not data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(N):
        length = int(expected["input_mask"][i].sum())
        ids = expected["input_ids"][i, :length].copy()
        keep = expected["masked_lm_weights"][i] > 0
        positions, originals = expected["masked_lm_positions"][i][keep], expected["masked_lm_ids"][i][keep]
        if not static:
            ids[positions] = originals
        tokens = [vocab[t] for t in ids]
        len_a = int((expected["segment_ids"][i, :length] == 0).sum()) - 2
        row = {"A": " ".join(tokens[1:1 + len_a]), "B": " ".join(tokens[2 + len_a:length - 1]),
               "is_random_next": bool(expected["next_sentence_labels"][i]), "num_tokens": length}
        if static:
            buffer = io.BytesIO()
            np.save(buffer, positions.astype(np.uint16))
            row.update(masked_lm_positions=buffer.getvalue(), masked_lm_labels=" ".join(vocab[t] for t in originals))
        rows.append(row)
    schema = {"A": pa.string(), "B": pa.string(), "is_random_next": pa.bool_(), "num_tokens": pa.uint16()}
    if static:
        schema.update(masked_lm_positions=pa.binary(), masked_lm_labels=pa.string())
    schema = pa.schema(schema)
    directory.mkdir(parents=True)
    for bin_id, part in enumerate((rows[:13], rows[13:])):
        table = pa.Table.from_pylist(part, schema=schema)
        pq.write_table(table, directory / f"part.0.parquet_{bin_id}", row_group_size=4)
    pq.write_metadata(schema, directory / "_common_metadata")
    return directory


@pytest.fixture(scope="module")
def tfrecord_instances():
    ds = _open(TFRECORD)
    return [ds[i] for i in range(N)]


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_lddl_parquet_converts_to_the_same_instances(static, tmp_path, expected, vocab, tfrecord_instances):
    from bertkit.data.external import LDDLParquetDataset
    from bertkit.tokenization import Tokenizer

    source = _write_lddl(tmp_path / "lddl", expected, vocab, static)
    ds = open_external(source, vocab=Tokenizer.from_pretrained(str(VOCAB)).vocab)
    assert isinstance(ds, LDDLParquetDataset) and len(ds) == N
    assert [Path(f).name for f in ds.manifest["files"]] == ["part.0.parquet_0", "part.0.parquet_1"]
    assert ds.manifest["max_seq_length"] == int(expected["input_mask"].sum(1).max())
    most = int((expected["masked_lm_weights"] > 0).sum(1).max())
    assert ds.manifest["max_predictions"] == (most if static else -(-ds.manifest["max_seq_length"] * 15 // 100))
    out = tmp_path / "records"
    code, _, err = _cli(["convert-records", str(source), str(out), "--tokenizer", str(VOCAB),
                         "--records-per-shard", "10"])
    assert code == 0, err
    records = _records_module()
    converted = records.open_pretraining_data(out)
    assert converted.manifest["settings"]["masking"] == ("static" if static else "dynamic")
    for i, want in enumerate(tfrecord_instances):
        got = converted[i]
        ids = want["input_ids"].copy()
        if not static:  # the text holds the original tokens and no masks are stored
            ids[want["masked_positions"]] = want["masked_ids"]
        np.testing.assert_array_equal(got["input_ids"], ids, err_msg=f"row {i}")
        for key in ("token_type_ids", "sequence_ids", "nsp_label"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"row {i} {key}")
        for key in ("masked_positions", "masked_ids"):
            np.testing.assert_array_equal(got[key], want[key] if static else want[key][:0], err_msg=f"row {i} {key}")
    code, out_text, err = _cli(["inspect", str(source), "--tokenizer", str(VOCAB), "--n", "1", "--stats"])
    assert code == 0, err
    assert f"records: {N}" in out_text and ("[MASK](" in out_text) == static
    if not static:
        # Records without masks pre-train with masks drawn at batch time, as lddl's loader does.
        run = tmp_path / "run"
        code, _, err = _cli(["pretrain", "--data", str(out), "--config", "tiny", "--output-dir", str(run),
                             "--max-steps", "2", "--batch-size", "4", "--eval-fraction", "0.25",
                             "--device", "cpu", "--no-progress"])
        assert code == 0, err
        assert json.loads((run / "bertkit.json").read_text())["masking"] == "dynamic"
        assert json.loads((run / "metrics.json").read_text())["eval"]["masked_tokens"] > 0


def test_lddl_parquet_is_refused_without_its_vocabulary(tmp_path, expected, vocab):
    source = _write_lddl(tmp_path / "lddl", expected, vocab, static=True)
    code, _, err = _cli(["convert-records", str(source), str(tmp_path / "out"), "--records-per-shard", "10"])
    assert code == 1 and "lddl Parquet" in err and "--tokenizer" in err
    assert not (tmp_path / "out").exists()
    code, _, err = _cli(["inspect", str(source)])
    assert code == 1 and "--tokenizer" in err
    # Training reads converted records; the refusal gives the command that converts them.
    code, _, err = _cli(["pretrain", "--data", str(source), "--config", "tiny", "--output-dir",
                         str(tmp_path / "run"), "--max-steps", "1", "--device", "cpu"])
    assert code == 1 and f"bertkit convert-records {source} DIR --tokenizer VOCAB" in err


def test_lddl_parquet_bad_rows_name_file_row_and_field(tmp_path, expected, vocab):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bertkit.tokenization import Tokenizer

    token_ids = Tokenizer.from_pretrained(str(VOCAB)).vocab
    source = _write_lddl(tmp_path / "lddl", expected, vocab, static=True)
    first = source / "part.0.parquet_0"
    table = pq.read_table(first)

    def rewrite(name: str, column: str, values: list) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        changed = table.set_column(table.schema.get_field_index(column), column,
                                   pa.array(values, type=table.schema.field(column).type))
        pq.write_table(changed, directory / first.name)
        return directory

    a = table.column("A").to_pylist()
    bad = rewrite("oov", "A", a[:3] + [a[3] + " qwertyuiopzz"] + a[4:])
    ds = open_external(bad, vocab=token_ids)
    with pytest.raises(DataError, match=r"part\.0\.parquet_0: row 3: A holds token 'qwertyuiopzz'"):
        ds[3]
    labels = table.column("masked_lm_labels").to_pylist()
    short = rewrite("labels", "masked_lm_labels", [labels[0].rsplit(" ", 1)[0]] + labels[1:])
    with pytest.raises(DataError, match="row 0: .* masked_lm_positions but .* masked_lm_labels"):
        open_external(short, vocab=token_ids)[0]
    lost = tmp_path / "no-b"
    lost.mkdir()
    pq.write_table(table.drop_columns(["B"]), lost / first.name)
    with pytest.raises(DataError, match=r"lacks column\(s\) B; found A, is_random_next"):
        open_external(lost, vocab=token_ids)
    half = tmp_path / "half"
    half.mkdir()
    pq.write_table(table.drop_columns(["masked_lm_labels"]), half / first.name)
    with pytest.raises(DataError, match="has masked_lm_positions without masked_lm_labels"):
        open_external(half, vocab=token_ids)


def test_convert_records_workers_write_the_same_shards(tmp_path, expected, vocab):
    """--workers 2: shards converted side by side are those of one process, byte for byte; a bad
    record in a worker stops the run naming it, and nothing is left behind."""
    _records_module()
    source = _write_lddl(tmp_path / "lddl", expected, vocab, static=True)
    for workers in ("1", "2"):
        code, _, err = _cli(["convert-records", str(source), str(tmp_path / f"w{workers}"), "--tokenizer", str(VOCAB),
                             "--records-per-shard", "6", "--workers", workers])
        assert code == 0, err
    one, two = sorted((tmp_path / "w1").glob("shard-*.arrow")), sorted((tmp_path / "w2").glob("shard-*.arrow"))
    assert len(one) == 5 and [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    small = tmp_path / "vocab.txt"
    small.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]) + "\n")
    code, _, err = _cli(["convert-records", str(TFRECORD), str(tmp_path / "bad"), "--tokenizer", str(small),
                         "--records-per-shard", "10", "--workers", "2"])
    assert code == 1 and "record 0" in err and "vocab" in err
    assert not (tmp_path / "bad").exists()
