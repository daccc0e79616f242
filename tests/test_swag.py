"""Multiple choice: SWAG CSV reader (files written in the exact rowanz/swagaf layout, since no SWAG
file is available offline), generic JSONL reader, pair encoding, [B,C,T] batches, and a tiny
training run whose loss falls."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bertkit.tasks import DataError, TaskOptions, get_task_class
from bertkit.tasks.swag import encode_pair, truncate_longest_first

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
          "ending0", "ending1", "ending2", "ending3", "label"]
# Rows as in swagaf data/train.csv (the first, unnamed column is the pandas index).
ROWS = [
    ["0", "anetv_jkn6uvmqwh4", "3416", "Members of the procession walk down the street holding small horn brass "
     "instruments. A drum line", "Members of the procession walk down the street holding small horn brass instruments.",
     "A drum line", "gen", "passes by walking down the street playing their instruments.",
     "has heard approaching them.", "arrives and they're outside dancing and asleep.", "turns the lead singer watches "
     "the performance.", "0"],
    ["1", "anetv_jkn6uvmqwh4", "3417", "A drum line passes by walking down the street playing their instruments. "
     "Members of the procession", "A drum line passes by walking down the street playing their instruments.",
     "Members of the procession", "gold", "are playing ping pong and celebrating one left each in quick.",
     "wait slowly towards the cadets.", "continues to play as well along the crowd along with the band being "
     "interviewed.", "continue to play marching, interspersed.", "3"],
]


def write_swag(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_task(name: str, **kwargs):
    extra = kwargs.pop("extra", {})
    return get_task_class(name)(TaskOptions(**kwargs, extra=extra))


@pytest.fixture(scope="module")
def tokenizer():
    if not (MINILM / "tokenizer.json").is_file():
        pytest.skip(f"{MINILM}/tokenizer.json is absent")
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(MINILM)


# ---- SWAG reader -------------------------------------------------------------------------------------
def test_swag_reader_swagaf_layout(tmp_path):
    write_swag(tmp_path / "train.csv", ROWS)
    write_swag(tmp_path / "val.csv", ROWS[:1])
    write_swag(tmp_path / "test.csv", [r[:-1] for r in ROWS], HEADER[:-1])  # test.csv has no label column
    task = make_task("swag", data_dir=str(tmp_path))
    train = task.read("train")
    assert len(train) == 2
    ex = train[1]
    assert ex.guid == "anetv_jkn6uvmqwh4/3417"
    assert ex.context == ROWS[1][4]
    assert ex.choices[3] == "Members of the procession continue to play marching, interspersed."
    assert ex.label == 3 and ex.source == f"{tmp_path / 'train.csv'}:3"
    assert len(task.read("dev")) == 1  # --split dev reads val.csv
    assert [e.label for e in task.read("test")] == [None, None]
    assert task.head == "multiple_choice" and task.main_metric == "accuracy"


def test_swag_multiline_quoted_field_reports_physical_line(tmp_path):
    row = list(ROWS[0])
    row[4] = "A sentence\nthat spans two lines."
    bad = list(ROWS[1])
    bad[-1] = "4"
    path = write_swag(tmp_path / "train.csv", [row, bad])
    with pytest.raises(DataError) as err:
        make_task("swag", data_dir=str(tmp_path)).read("train")
    # header = line 1, row 0 = lines 2-3, the bad row starts on line 4.
    assert f"{path}:4: column 'label' = 4 is out of range; expected 0..3" in str(err.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[:-1] + ["x"], "column 'label' = 'x' is not an integer"),
    (lambda r: r[:-1] + ["-1"], "column 'label' = -1 is out of range"),
    (lambda r: r + ["extra"], "wrong number of columns"),
    (lambda r: r[:5], "wrong number of columns"),
    (lambda r: r[:10] + [" "] + r[11:], "column ending3 is empty"),  # was read as the choice "sent2 "
    (lambda r: r[:-1] + [""], "no label; every train row needs one"),  # was left out of the loss silently
])
def test_swag_bad_rows(tmp_path, mutate, message):
    path = write_swag(tmp_path / "train.csv", [ROWS[0], mutate(list(ROWS[1]))])
    with pytest.raises(DataError) as err:
        make_task("swag", train_file=str(path)).read("train")
    assert f"{path}:3: " in str(err.value) and message in str(err.value)


def test_swag_bad_header_and_missing_file(tmp_path):
    write_swag(tmp_path / "train.csv", [r[:5] for r in ROWS], HEADER[:5])
    with pytest.raises(DataError, match=r"train.csv:1: header lacks column\(s\) sent2, ending0"):
        make_task("swag", data_dir=str(tmp_path)).read("train")
    with pytest.raises(FileNotFoundError, match="val.csv"):
        make_task("swag", data_dir=str(tmp_path)).read("dev")


# ---- generic JSONL -----------------------------------------------------------------------------------
def test_multiple_choice_jsonl_with_custom_fields(tmp_path):
    rows = [{"qid": "a", "question": "2 + 2 =", "options": ["3", "4", "5"], "answer": 1},
            {"qid": "b", "question": "sky colour", "options": ["blue", "green", "red"], "answer": 0}]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    task = make_task("multiple-choice", data_dir=str(tmp_path), extra={
        "context_field": "question", "choices_field": "options", "label_field": "answer", "id_field": "qid"})
    examples = task.read("dev")
    assert [(e.guid, e.context, e.choices, e.label) for e in examples] == [
        ("a", "2 + 2 =", ["3", "4", "5"], 1), ("b", "sky colour", ["blue", "green", "red"], 0)]
    assert task.metrics(examples, [1, 2]) == {"accuracy": 0.5, "n": 2.0}
    out = task.write_predictions(examples, [1, 2], tmp_path / "pred.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": "a", "prediction": 1, "label": 1}, {"id": "b", "prediction": 2, "label": 0}]
    # .csv: swagaf's csv_predict.py layout (pandas' to_csv(columns=["pred"]) of the argmax per row)
    assert task.write_predictions(examples, [1, 2], tmp_path / "pred.csv").read_text() == ",pred\n0,1\n1,2\n"


@pytest.mark.parametrize("second, message", [
    ({"context": "c", "choices": ["x", "y"], "label": 2}, "field 'label' = 2 is out of range; expected 0..1"),
    ({"context": "c", "choices": ["x", "y", "z"], "label": 0}, "3 choices, but the first example has 2"),
    ({"context": "c", "choices": "x y", "label": 0}, "field 'choices' (--choices-field) must be a list"),
    ({"text": "c", "choices": ["x", "y"], "label": 0}, "field 'context' (--context-field) must be a string"),
    ("not json", "not a JSON object"),
    # Left out of the loss (-100) without a word; a dev file of such rows scored as {}.
    ({"context": "c", "choices": ["x", "y"]}, "no label; every train row needs one"),
])
def test_multiple_choice_bad_lines(tmp_path, second, message):
    path = tmp_path / "train.jsonl"
    first = {"context": "c", "choices": ["x", "y"], "label": 1}
    path.write_text(json.dumps(first) + "\n" + (second if isinstance(second, str) else json.dumps(second)) + "\n")
    with pytest.raises(DataError) as err:
        make_task("multiple-choice", data_dir=str(tmp_path)).read("train")
    assert f"{path}:2: " in str(err.value) and message in str(err.value)


# ---- encoding ----------------------------------------------------------------------------------------
def test_truncate_longest_first():
    a, b, cut = truncate_longest_first(list(range(10)), list(range(3)), 8)
    assert (len(a), len(b), cut) == (5, 3, True)
    a, b, cut = truncate_longest_first(list(range(6)), list(range(6)), 8)
    assert (len(a), len(b), cut) == (4, 4, True)
    assert truncate_longest_first([1], [2], 8) == ([1], [2], False)
    assert encode_pair([5, 6], [7], 16, 101, 102) == ([101, 5, 6, 102, 7, 102], [0, 0, 0, 0, 1, 1], False)


def test_encode_and_collate_shapes(tmp_path, tokenizer):
    write_swag(tmp_path / "train.csv", ROWS)
    task = make_task("swag", data_dir=str(tmp_path))
    examples = task.read("train")
    features = task.encode(examples, tokenizer, 128)
    f = features[1]
    assert len(f["input_ids"]) == 4 and f["labels"] == 3 and f["example_index"] == 1
    context = tokenizer.backend.encode(ROWS[1][4], add_special_tokens=False).ids
    for row, types, choice in zip(f["input_ids"], f["token_type_ids"], examples[1].choices):
        choice_ids = tokenizer.backend.encode(choice, add_special_tokens=False).ids
        assert row == [tokenizer.cls_id, *context, tokenizer.sep_id, *choice_ids, tokenizer.sep_id]
        assert types == [0] * (len(context) + 2) + [1] * (len(choice_ids) + 1)
    batch = task.collate(features)
    T = max(task.feature_length(f) for f in features)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key].shape == (2, 4, T), key
    assert batch["labels"].tolist() == [0, 3]
    assert batch["attention_mask"].sum(-1).tolist() == [[len(r) for r in f["input_ids"]] for f in features]
    assert task.truncated == 0
    short = task.encode(examples, tokenizer, 16)
    assert all(len(r) <= 16 for f in short for r in f["input_ids"]) and task.truncated == 8


# ---- a tiny training run ---------------------------------------------------------------------------------
def test_tiny_multiple_choice_training_loss_falls(tmp_path, tokenizer):
    """A learnable toy in SWAG layout: the right ending repeats the context's colour, drawn from
    four colours that wrong endings never use. If labels and choices were misaligned anywhere
    between read, encode, collate and the [B,C] logits, the loss could not fall."""
    from bertkit.config import TrainConfig, preset
    from bertkit.training.trainer import evaluate, train

    colours = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
    rows = []
    for i in range(48):
        colour = colours[i % 4]
        label = (i * 7) % 4
        endings = [colours[4 + (i + k) % 4] for k in range(4)]
        endings[label] = colour
        rows.append([str(i), f"vid{i}", str(i), "", f"the ball is {colour} .", "so the ball looks", "gold",
                     *[f"{e} ." for e in endings], str(label)])
    write_swag(tmp_path / "train.csv", rows)
    task = make_task("swag", data_dir=str(tmp_path))
    examples = task.read("train")
    features = task.encode(examples, tokenizer, 32)
    torch.manual_seed(0)
    model = task.build_model(preset("tiny", vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0))

    def mean_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**task.collate(features)).loss)

    before = mean_loss()
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=60, lr=1e-3, batch_size=16,
                         eval_every="none", progress=False, device="cpu", log_every=10)
    train(task, model, features, None, config)
    after = mean_loss()
    metrics, predictions = evaluate(task, model, examples, features, 64, torch.device("cpu"))
    print(f"\nswag toy: loss {before:.3f} -> {after:.3f}, train accuracy {metrics['accuracy']:.3f}")
    assert before == pytest.approx(1.386, abs=0.1)  # ln 4: an untrained model guesses
    assert after < 0.1 * before
    assert metrics["accuracy"] == 1.0 and len(predictions) == len(examples)
    assert sorted({e.label for e in examples}) == [0, 1, 2, 3]  # every position is sometimes right


def test_finetune_command_on_real_swag_rows_of_uneven_choice_lengths(tmp_path, tokenizer, capsys):
    """Real SWAG endings tokenize to different lengths; the trainer's data fingerprint made a ragged
    array of them and `finetune --task swag` crashed before its first step."""
    from bertkit.cli import main

    write_swag(tmp_path / "train.csv", ROWS * 4)
    write_swag(tmp_path / "val.csv", ROWS)
    features = make_task("swag", data_dir=str(tmp_path)).encode(make_task("swag", data_dir=str(tmp_path))
                                                                  .read("train"), tokenizer, 64)
    assert len({len(row) for row in features[0]["input_ids"]}) > 1  # the choices differ in length
    out = tmp_path / "run"
    assert main(["finetune", "--task", "swag", "--model", str(MINILM), "--data-dir", str(tmp_path), "--output-dir",
                 str(out), "--max-steps", "2", "--batch-size", "4", "--max-seq-length", "64", "--device", "cpu",
                 "--no-progress"]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["dev"]["accuracy"] <= 1.0


# ---- the Hub's Parquet files (swag "regular", generic multiple choice) --------------------------------
HUB_SWAG_COLUMNS = HEADER[1:]  # the CSV's columns without pandas' unnamed index


def write_hub_swag(path: Path, rows: list[list[str]], test: bool = False,
                   columns: list[str] = HUB_SWAG_COLUMNS) -> Path:
    """swagaf CSV rows as the Hub's swag "regular" Parquet files hold them: every column text but
    `label`, a ClassLabel (int64), which is -1 in the unlabelled test split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [dict(zip(HEADER[1:], row[1:]), label=-1 if test else int(row[-1])) for row in rows]
    schema = pa.schema([(c, pa.int64() if c == "label" else pa.string()) for c in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def test_hub_swag_parquet_reads_as_the_swagaf_csv(tmp_path):
    """The Hub's layout (regular/SPLIT-00000-of-00001.parquet, test labels -1) gives, from
    --data-dir and from --train-file, the examples of the swagaf CSV files: guid, context, choices,
    label; the rows name FILE: row N."""
    csv_dir, hub_dir = tmp_path / "swagaf", tmp_path / "allenai-swag"
    csv_dir.mkdir()
    write_swag(csv_dir / "train.csv", ROWS * 3)
    write_swag(csv_dir / "val.csv", ROWS[::-1])
    write_swag(csv_dir / "test.csv", [r[:-1] for r in ROWS], HEADER[:-1])
    train = write_hub_swag(hub_dir / "regular" / "train-00000-of-00001.parquet", ROWS * 3)
    write_hub_swag(hub_dir / "regular" / "validation-00000-of-00001.parquet", ROWS[::-1])
    test = write_hub_swag(hub_dir / "regular" / "test-00000-of-00001.parquet", ROWS, test=True)

    def fields(examples):
        return [(e.guid, e.context, e.choices, e.label) for e in examples]

    for split in ("train", "dev", "test"):
        assert fields(make_task("swag", data_dir=str(hub_dir)).read(split)) == \
            fields(make_task("swag", data_dir=str(csv_dir)).read(split)), split
    assert fields(make_task("swag", train_file=str(train)).read("train")) == \
        fields(make_task("swag", data_dir=str(csv_dir)).read("train"))
    examples = make_task("swag", data_dir=str(hub_dir)).read("test")
    assert [e.label for e in examples] == [None, None]
    assert [e.source for e in examples] == [f"{test}: row 0", f"{test}: row 1"]


@pytest.mark.parametrize("change, message", [
    (lambda r: dict(r, label=4), "column 'label' = 4 is out of range; expected 0..3"),
    (lambda r: dict(r, ending2=None), "column ending2 = None; expected text"),
    (lambda r: dict(r, ending3=" "), "column ending3 is empty"),
    (lambda r: dict(r, label=-1), "no label; every train row needs one"),  # -1: the Hub's unlabelled row
])
def test_hub_swag_bad_rows_name_file_and_row(tmp_path, change, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = write_hub_swag(tmp_path / "good.parquet", ROWS)
    rows = pq.read_table(good).to_pylist()
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([rows[0], change(rows[1])], schema=pq.read_schema(good)), path)
    with pytest.raises(DataError) as err:
        make_task("swag", train_file=str(path)).read("train")
    assert f"{path}: row 1: " in str(err.value) and message in str(err.value)


def test_hub_swag_missing_column_and_missing_split(tmp_path):
    columns = [c for c in HUB_SWAG_COLUMNS if c != "ending3"]
    path = write_hub_swag(tmp_path / "regular" / "train-00000-of-00001.parquet",
                          [r[:10] + r[11:] for r in ROWS], columns=columns)
    with pytest.raises(DataError, match=rf"{path}: no column 'ending3'; expected the columns video-id, fold-ind, "
                                        r"sent1, sent2, ending0, ending1, ending2, ending3 \(the file has video-id"):
        make_task("swag", data_dir=str(tmp_path)).read("train")
    with pytest.raises(FileNotFoundError, match=r"val.csv and the Hub's validation Parquet files \(in .*, regular/\)"):
        make_task("swag", data_dir=str(tmp_path)).read("dev")


def test_multiple_choice_parquet_reads_as_its_jsonl(tmp_path):
    """--task multiple-choice reads Parquet rows with the fields of its JSON lines (custom names too):
    a Hub dataset's two train shards from --data-dir, in order, and a --test-file whose label -1
    (the Hub's unlabelled row) is no label, as null is in JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"qid": "a", "question": "2 + 2 =", "options": ["3", "4", "5"], "answer": 1},
            {"qid": "b", "question": "sky colour", "options": ["blue", "green", "red"], "answer": 0},
            {"qid": "c", "question": "grass colour", "options": ["blue", "green", "red"], "answer": -1}]
    fields = {"context_field": "question", "choices_field": "options", "label_field": "answer", "id_field": "qid"}

    def read(split: str, **files):
        examples = make_task("multiple-choice", **files, extra=fields).read(split)
        return [(e.guid, e.context, e.choices, e.label) for e in examples]

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(dict(r, answer=None if r["answer"] < 0 else r["answer"]))
                                                 + "\n" for r in rows))
    hub = tmp_path / "hub"
    hub.mkdir()
    first, second = hub / "train-00000-of-00002.parquet", hub / "train-00001-of-00002.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:1]), first)
    pq.write_table(pa.Table.from_pylist(rows[1:2]), second)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    assert read("train", data_dir=str(hub)) == read("train", train_file=str(tmp_path / "train.jsonl"))
    assert [e.source for e in make_task("multiple-choice", data_dir=str(hub), extra=fields).read("train")] == [
        f"{first}: row 0", f"{second}: row 0"]
    from_parquet = read("test", test_file=str(tmp_path / "test.parquet"))
    assert from_parquet == read("test", test_file=str(tmp_path / "test.jsonl"))
    assert [label for *_, label in from_parquet] == [1, 0, None]

    with pytest.raises(DataError, match=r"test\.parquet: row 2: no label; every train row needs one"):
        read("train", train_file=str(tmp_path / "test.parquet"))
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": 0}]), tmp_path / "no_options.parquet")
    with pytest.raises(DataError, match=r"no_options\.parquet: no column 'options'"):
        read("dev", dev_file=str(tmp_path / "no_options.parquet"))


def test_finetune_from_a_hub_swag_folder(tmp_path, tokenizer):
    """`bertkit finetune --task swag --data-dir` on a downloaded swag folder (regular/) trains and scores."""
    from bertkit.cli import main

    write_hub_swag(tmp_path / "swag" / "regular" / "train-00000-of-00001.parquet", ROWS * 4)
    write_hub_swag(tmp_path / "swag" / "regular" / "validation-00000-of-00001.parquet", ROWS)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "swag", "--model", str(MINILM), "--data-dir", str(tmp_path / "swag"),
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4", "--max-seq-length", "64",
                 "--device", "cpu", "--no-progress"]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["dev"]["accuracy"] <= 1.0
