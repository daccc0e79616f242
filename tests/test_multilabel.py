"""`--task multilabel`: any number of labels per text from the user's CSV/TSV/JSONL, BCE training
(transformers' multi-label BertForSequenceClassification), micro/macro F1 and exact match, and
prediction files with each label's probability. Real data: the entity types each CoNLL-2003
sentence mentions (PER, LOC, ORG, MISC; none for about a fifth of the sentences)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.metrics.glue import multilabel_scores
from bertkit.tasks import TaskOptions, get_task_class
from bertkit.tasks.base import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_scores_on_hand_cases_and_against_sklearn() -> None:
    # 3 texts x labels A, B, C: tp 3, fp 1, fn 2 -> micro P 3/4, R 3/5, F1 6/9. Per label (C, never
    # predicted nor gold, is left out): A tp 1 fp 1 fn 1 -> 1/2; B tp 2 fn 1 -> 4/5; macro 0.65.
    predicted = [[1, 1, 0], [1, 0, 0], [0, 1, 0]]
    gold = [[0, 1, 0], [1, 1, 0], [1, 1, 0]]
    scores = multilabel_scores(predicted, gold)
    assert scores["micro_precision"] == pytest.approx(3 / 4) and scores["micro_recall"] == pytest.approx(3 / 5)
    assert scores["micro_f1"] == pytest.approx(6 / 9)
    assert scores["macro_f1"] == pytest.approx((1 / 2 + 4 / 5) / 2)
    assert scores["exact_match"] == pytest.approx(0.0)
    assert multilabel_scores([[0, 0]], [[0, 0]])["exact_match"] == 1.0  # no label, none predicted
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, (300, 5)), rng.integers(0, 2, (300, 5))
    scores = multilabel_scores(p, y)
    assert scores["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, p, average="micro"), abs=1e-12)
    assert scores["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, p, average="macro"), abs=1e-12)
    assert scores["exact_match"] == pytest.approx(sklearn_metrics.accuracy_score(y, p), abs=1e-12)


def test_labels_from_csv_cells_tsv_separator_and_jsonl_lists(tmp_path: Path) -> None:
    csv_task = get_task_class("multilabel")(TaskOptions(train_file=str(write(
        tmp_path / "train.csv", 'text,label\n"Paris, in France",LOC\nMr Smith of IBM,"PER, ORG"\nnothing here,\n'))))
    examples = csv_task.read("train")
    assert [e.label for e in examples] == [("LOC",), ("PER", "ORG"), ()]
    assert csv_task.label_names() == ["LOC", "ORG", "PER"]
    assert csv_task.label_index(examples[1]) == [0.0, 1.0, 1.0] and csv_task.label_index(examples[2]) == [0.0] * 3
    assert csv_task.model_config_updates()["problem_type"] == "multi_label_classification"

    tsv_task = get_task_class("multi-label")(TaskOptions(
        train_file=str(write(tmp_path / "train.tsv", "text\tlabel\na, b\tx|y\nc\ty\n")), extra={"label_separator": "|"}))
    assert [e.label for e in tsv_task.read("train")] == [("x", "y"), ("y",)]

    jsonl_task = get_task_class("multilabel")(TaskOptions(
        train_file=str(write(tmp_path / "train.jsonl", '{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": []}\n')),
        dev_file=str(write(tmp_path / "dev.jsonl", '{"text": "c", "label": ["x"]}\n{"text": "d", "label": ["z"]}\n'))))
    jsonl_task.read("train")
    dev = jsonl_task.read("dev")
    with pytest.raises(DataError, match=r"dev.jsonl:2: label 'z' is not in the label set of the training file \(x, y\)"):
        jsonl_task.gold(dev)

    twice = get_task_class("multilabel")(TaskOptions(train_file=str(write(tmp_path / "twice.csv", "text,label\na,\"x,x\"\n"))))
    with pytest.raises(DataError, match=r"twice.csv:2: a label is given twice"):
        twice.read("train")
    unlabelled = get_task_class("multilabel")(TaskOptions(train_file=str(write(tmp_path / "none.csv", "text,label\na,\nb,\n"))))
    with pytest.raises(DataError, match="no row has a label"):
        unlabelled.read("train")
    number = get_task_class("multilabel")(TaskOptions(train_file=str(write(tmp_path / "n.jsonl", '{"text": "a", "label": 3}\n'))))
    with pytest.raises(DataError, match=r"n.jsonl:1: label=3: expected a list of labels"):
        number.read("train")


@pytest.fixture(scope="module")
def entity_types(shared_dir: Path, tmp_path_factory) -> Path:
    """JSONL files: each CoNLL-2003 sentence with the sorted set of entity types it mentions."""
    conll = get_task_class("conll2003")(TaskOptions(data_dir=str(shared_dir / "data" / "conll2003")))
    root = tmp_path_factory.mktemp("entity-types")
    for split, count in (("train", 2000), ("dev", 300)):
        rows = [{"id": e.guid, "text": " ".join(e.words), "labels": sorted({t[2:] for t in e.tags if t != "O"})}
                for e in conll.read(split) if not e.doc_start][:count]
        write(root / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow
def test_learns_the_entity_types_of_conll_sentences_and_predicts_them(entity_types: Path, tiny_model_dir: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = ["--train-file", str(entity_types / "train.jsonl"), "--dev-file", str(entity_types / "dev.jsonl"),
            "--label-column", "labels", "--id-column", "id"]
    # A random tiny BERT (2 layers, H=128), 5 epochs of 63 steps: it must learn from the words. Over six
    # draws of the random model and training seed, dev micro-F1 was 0.66-0.72; after 3 epochs it was
    # 0.45-0.68, too close to the bar for a test.
    assert main(["finetune", "--task", "multilabel", "--model", str(tiny_model_dir), *data, "--output-dir", str(out),
                 "--batch-size", "32", "--lr", "1e-3", "--epochs", "5", "--max-seq-length", "48", "--device", "cpu",
                 "--seed", "1", "--no-progress"]) == 0
    dev = json.loads((out / "metrics.json").read_text())["dev"]
    gold = [json.loads(line)["labels"] for line in (entity_types / "dev.jsonl").read_text().splitlines()]
    share = sum(map(len, gold)) / (4 * len(gold))  # predicting every label: precision = this share, recall 1
    every_label_f1 = 2 * share / (share + 1)
    print(f"entity types, tiny BERT: dev {dev} (every label predicted: micro F1 {every_label_f1:.3f})")
    assert dev["micro_f1"] > max(0.6, every_label_f1 + 0.1), dev
    assert 0.0 < dev["loss"] < 0.5  # BCE per (text, label): ln 2 = 0.69 for a model that knows nothing

    info = json.loads((out / "bertkit.json").read_text())
    assert info["labels"] == ["LOC", "MISC", "ORG", "PER"] and info["main_metric"] == "micro_f1"
    assert main(["evaluate", "--task", "multilabel", "--model", str(out), *data, "--device", "cpu"]) == 0
    assert json.loads((out / "metrics.json").read_text())["dev"]["micro_f1"] == pytest.approx(dev["micro_f1"], abs=1e-12)

    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", "--task", "multilabel", "--model", str(out), *data, "--split", "dev",
                 "--output", str(predictions), "--device", "cpu"]) == 0
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    first_id = json.loads((entity_types / "dev.jsonl").read_text().splitlines()[0])["id"]
    assert len(records) == 300 and records[0]["id"] == first_id  # --id-column, in file order
    for record in records:  # a label is predicted exactly where its probability exceeds 0.5
        assert sorted(record["prediction"]) == sorted(k for k, p in record["probabilities"].items() if p > 0.5)
    exact = np.mean([sorted(r["prediction"]) == g for r, g in zip(records, gold)])
    assert exact == pytest.approx(dev["exact_match"], abs=1e-12)
    table = tmp_path / "predictions.tsv"
    assert main(["predict", "--task", "multilabel", "--model", str(out), *data, "--split", "dev",
                 "--output", str(table), "--device", "cpu"]) == 0
    rows = table.read_text().splitlines()
    assert rows[0] == "id\tprediction\tp_LOC\tp_MISC\tp_ORG\tp_PER"
    assert rows[1].split("\t")[1] == ",".join(records[0]["prediction"])

    # transformers reads the run as its multi-label classifier: same logits, BCE as the loss.
    transformers = pytest.importorskip("transformers")
    from bertkit.modeling.heads import BertForSequenceClassification
    from bertkit.tokenization import Tokenizer

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.problem_type == "multi_label_classification"
    ours = BertForSequenceClassification.from_pretrained(out).eval()
    batch = Tokenizer.from_pretrained(out)(["EU rejects German call to boycott British lamb .", "Peter Blackburn"])
    with torch.no_grad():
        assert torch.allclose(hf(**batch).logits, ours(**batch).logits, atol=1e-5)
