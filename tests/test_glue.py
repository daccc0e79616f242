"""GLUE: every reader on the real files with exact counts, the MNLI/QQP/QNLI readers on files in the
exact GLUE layout, metrics against scikit-learn/scipy and hand-computed values, bad input, custom
CSV/TSV/JSONL data, prediction files, and short real fine-tuning runs of all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.metrics.glue import f1_binary, glue_metrics, macro_f1, matthews_corrcoef
from bertkit.tasks import DataError, TaskOptions, get_task_class
from bertkit.tasks.classification import PairExample

COUNTS = {  # (task, folder): train, dev, test — the published GLUE sizes (shared/data/README.md)
    ("cola", "CoLA"): (8551, 1043, 1063), ("sst2", "SST-2"): (67349, 872, 1821),
    ("mrpc", "MRPC"): (3668, 408, 1725), ("stsb", "STS-B"): (5749, 1500, 1379),
    ("rte", "RTE"): (2490, 277, 3000), ("wnli", "WNLI"): (635, 71, 146),
}


def glue_task(name: str, data_dir, **kwargs):
    return get_task_class(name)(TaskOptions(data_dir=str(data_dir), **kwargs))


@pytest.mark.parametrize("name,folder", list(COUNTS))
def test_readers_parse_every_split_with_exact_counts(shared_dir: Path, name: str, folder: str) -> None:
    task = glue_task(name, shared_dir / "data" / "glue" / folder)
    counts = tuple(len(task.read(split)) for split in ("train", "dev", "test"))
    assert counts == COUNTS[(name, folder)]


def test_reader_details_on_real_files(shared_dir: Path) -> None:
    glue = shared_dir / "data" / "glue"
    mrpc = glue_task("mrpc", glue)  # the GLUE root works too: the task finds its folder
    first = mrpc.read("train")[0]
    assert not first.text_a.startswith("\ufeff") and first.label in ("0", "1")
    assert mrpc.read("test")[0].guid == "0" and mrpc.read("test")[0].label is None
    cola_dev = glue_task("cola", glue).read("dev")  # no header, no trailing newline
    assert cola_dev[0].text_a == "The sailors rode the breeze clear of the rocks." and cola_dev[0].label == "1"
    assert len(cola_dev) == 1043 and [e.label for e in cola_dev].count("1") == 721
    stsb = glue_task("stsb", glue).read("dev")
    assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in stsb)
    qnli = glue_task("qnli", glue).read("dev")
    assert len(qnli) == 5463 and sum(e.label == "entailment" for e in qnli) == 2702
    assert len(glue_task("ax", glue).read("test")) == 1104
    with pytest.raises(DataError, match="only a test split"):
        glue_task("ax", glue).read("train")


def write(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")


def write_mnli(root: Path) -> None:
    """MNLI/ in the GLUE layout: train 1 row, dev_matched 2, dev_mismatched 1, test_matched 1,
    test_mismatched 2."""
    mnli = root / "MNLI"
    write(mnli / "train.tsv", [MNLI_HEADER + "\tlabel1\tgold_label",
                               "0\t31193\t31193n\tgovernment\t( ( x ) )\t( y )\t(ROOT x)\t(ROOT y)\t"
                               "Conceptually cream skimming has two basic dimensions.\t"
                               "Product and geography are what make cream skimming work.\tneutral\tneutral"])
    dev_header = MNLI_HEADER + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
    write(mnli / "dev_matched.tsv", [dev_header, "0\t1\t1n\tfiction\tp\tp\tp\tp\tThe new rights are nice.\t"
                                                 "Everyone loves them.\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral",
                                     "1\t2\t2e\tfiction\tp\tp\tp\tp\tA man eats.\tSomeone eats.\t"
                                     "entailment\tentailment\tentailment\tentailment\tentailment\tentailment"])
    write(mnli / "dev_mismatched.tsv", [dev_header, "0\t3\t3c\tletters\tp\tp\tp\tp\tIt rains.\tIt is dry.\t"
                                                    "contradiction\tcontradiction\tcontradiction\tcontradiction\t"
                                                    "contradiction\tcontradiction"])
    write(mnli / "test_matched.tsv", [MNLI_HEADER, "0\t1\t1\tfiction\tp\tp\tp\tp\tA.\tB."])
    write(mnli / "test_mismatched.tsv", [MNLI_HEADER, "0\t2\t2\tletters\tp\tp\tp\tp\tC.\tD.",
                                         "1\t3\t3\tletters\tp\tp\tp\tp\tE.\tF."])


def test_mnli_qqp_qnli_readers_on_files_in_the_glue_layout(tmp_path: Path) -> None:
    """MNLI/QQP/QNLI train files are not available offline: these follow the GLUE layout exactly."""
    write_mnli(tmp_path)
    task = glue_task("mnli", tmp_path)
    assert [e.label for e in task.read("train")] == ["neutral"]
    dev = task.read("dev")
    assert len(dev) == 3 and dev[2].guid == "mm:0" and dev[2].label == "contradiction"
    # matched accuracy is the main metric; mismatched reported beside it
    labels = task.label_names()
    metrics = task.metrics(dev, [labels.index("neutral"), labels.index("contradiction"), labels.index("contradiction")])
    assert metrics == {"accuracy": 0.5, "accuracy_mm": 1.0}
    test = task.read("test")
    written = task.write_predictions(test, [0, 1, 2], tmp_path / "out" / "MNLI-m.tsv")
    assert [p.name for p in written] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    assert (tmp_path / "out" / "MNLI-m.tsv").read_text() == "index\tprediction\n0\tcontradiction\n"
    assert (tmp_path / "out" / "MNLI-mm.tsv").read_text() == "index\tprediction\n0\tentailment\n1\tneutral\n"

    qqp = tmp_path / "QQP"
    write(qqp / "train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                              "133273\t213221\t213222\tHow is the life of a math student?\t"
                              "Which level of prepration is enough for the exam jlpt5?\t0"])
    write(qqp / "test.tsv", ["id\tquestion1\tquestion2", "0\tWhy am I mentally very lonely?\tHow can I stop?"])
    train = glue_task("qqp", tmp_path).read("train")
    assert train[0].label == "0" and train[0].text_b.startswith("Which level")
    assert glue_task("qqp", tmp_path).read("test")[0].guid == "0"

    write(tmp_path / "QNLI" / "train.tsv", ["index\tquestion\tsentence\tlabel",
                                            "0\tWhen did it happen?\tIt happened in 1990.\tentailment"])
    assert glue_task("qnli", tmp_path).read("train")[0].label == "entailment"


def test_metrics_match_sklearn_and_scipy() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    assert matthews_corrcoef(p, y) == pytest.approx(sklearn_metrics.matthews_corrcoef(y, p), abs=1e-12)
    assert f1_binary(p, y) == pytest.approx(sklearn_metrics.f1_score(y, p), abs=1e-12)
    y3, p3 = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    assert macro_f1(p3, y3, 3) == pytest.approx(sklearn_metrics.f1_score(y3, p3, average="macro"), abs=1e-12)
    x, z = rng.normal(size=200), rng.normal(size=200)
    corr = glue_metrics("corr", x, z)
    assert corr["pearson"] == pytest.approx(pearsonr(x, z)[0]) and corr["spearman"] == pytest.approx(spearmanr(x, z)[0])


def test_metrics_on_hand_computed_cases() -> None:
    # tp=2 fp=1 fn=1 tn=1: precision 2/3, recall 2/3 -> F1 2/3; MCC = (2*1-1*1)/sqrt(3*3*2*2) = 1/6
    pred, gold = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    assert f1_binary(pred, gold) == pytest.approx(2 / 3)
    assert matthews_corrcoef(pred, gold) == pytest.approx(1 / 6)
    assert glue_metrics("acc_f1", pred, gold) == pytest.approx({"accuracy": 0.6, "f1": 2 / 3, "acc_and_f1": (0.6 + 2 / 3) / 2})
    assert matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0  # undefined -> 0, as GLUE's scorer reports
    assert glue_metrics("corr", [1.0, 2.0, 3.0], [2.0, 4.0, 7.0])["spearman"] == pytest.approx(1.0)


def test_bad_input_names_file_and_line(tmp_path: Path) -> None:
    header = "index\tsentence1\tsentence2\tlabel"
    write(tmp_path / "RTE" / "train.tsv", [header, "0\tA.\tB.\tentailment", "1\tC.\tD."])
    with pytest.raises(DataError, match=r"RTE/train.tsv:3: expected at least 4 .*found 3"):
        glue_task("rte", tmp_path).read("train")
    write(tmp_path / "RTE" / "train.tsv", [header, "0\tA.\tB.\tentailment", "1\tC.\tD.\tmaybe"])
    with pytest.raises(DataError, match=r"train.tsv:3: label 'maybe' is not in the label set .*entailment"):
        glue_task("rte", tmp_path).read("train")
    (tmp_path / "RTE" / "dev.tsv").write_text("")
    with pytest.raises(DataError, match=r"dev.tsv: empty file"):
        glue_task("rte", tmp_path).read("dev")
    with pytest.raises(DataError, match=r"test.tsv: split file not found \(files there: dev.tsv, train.tsv\)"):
        glue_task("rte", tmp_path).read("test")
    with pytest.raises(DataError, match=r"the directory .*nowhere does not exist \(check --data-dir\)"):
        glue_task("rte", tmp_path / "nowhere").read("train")
    stsb_header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write(tmp_path / "STS-B" / "train.tsv", [stsb_header, "0\tmain\tf\t2012\t1\ts\ts\tA.\tB.\t3.8",
                                             "1\tmain\tf\t2012\t2\ts\ts\tC.\tD.\tfour"])
    with pytest.raises(DataError, match=r"STS-B/train.tsv:3: score 'four' is not a number"):
        glue_task("stsb", tmp_path).read("train")


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    """A Latin-1 or UTF-16 export raised UnicodeDecodeError ("'utf-8' codec can't decode byte 0xe9
    in position 31"), naming neither the file nor the line."""
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\nbad caf\xe9 film\t0\n")
    with pytest.raises(DataError, match=r"SST-2/train.tsv:3: not UTF-8 \(byte 0xe9 .*re-encode the file as UTF-8"):
        glue_task("sst2", tmp_path).read("train")
    (tmp_path / "SST-2" / "train.tsv").write_bytes("sentence\tlabel\ngood film\t1\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"SST-2/train.tsv: the file is UTF-16 .*re-encode it as UTF-8"):
        glue_task("sst2", tmp_path).read("train")
    (tmp_path / "train.csv").write_bytes(b"review,stars\nfine,pos\ncaf\xe9,neg\n")
    task = get_task_class("classification")(TaskOptions(train_file=str(tmp_path / "train.csv"),
                                                        extra={"text_column": "review", "label_column": "stars"}))
    with pytest.raises(DataError, match=r"train.csv:3: not UTF-8"):
        task.read("train")


def test_only_newlines_end_a_tsv_row(tmp_path: Path) -> None:
    write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "one\u2028line\x85still\t1", "next\t0"])
    rows = glue_task("sst2", tmp_path).read("train")
    assert [(r.text_a, r.label) for r in rows] == [("one\u2028line\x85still", "1"), ("next", "0")]


def test_bad_data_fails_before_a_run_directory_exists(shared_dir: Path, tmp_path: Path) -> None:
    write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good film\t1", "bad film\t7"])
    write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "fine\t1"])
    out = tmp_path / "run"
    code = main(["finetune", "--task", "sst2", "--model", str(shared_dir / "models" / "all-MiniLM-L6-v2"),
                 "--data-dir", str(tmp_path / "SST-2"), "--output-dir", str(out), "--device", "cpu"])
    assert code == 1 and not out.exists()


def test_a_custom_dev_file_without_labels_fails_before_training(tiny_model_dir: Path, tmp_path: Path,
                                                                capsys) -> None:
    """A dev file lacking the --label-column was read as unlabelled: fine-tuning trained, then failed
    at its first evaluation ("this split has no labels"), naming no file, with the run begun."""
    write(tmp_path / "train.csv", ["review,stars", "great,pos", "awful,neg"])
    write(tmp_path / "dev.csv", ["review,score", "fine,pos"])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--train-file", str(tmp_path / "train.csv"),
                 "--dev-file", str(tmp_path / "dev.csv"), "--text-column", "review", "--label-column", "stars",
                 "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "1", "--device", "cpu",
                 "--no-progress"]) == 1
    assert "dev.csv:2: no column 'stars' (--label-column; every dev row needs a label" in capsys.readouterr().err
    assert not out.exists()


def test_custom_classification_csv_tsv_jsonl(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", ["review,stars,id", '"Great, loved it",pos,a1', "Awful,neg,a2", "Meh,neu,a3"])
    write(tmp_path / "dev.jsonl", [json.dumps({"review": "Nice", "stars": "pos", "id": "b1"})])
    task = get_task_class("classification")(TaskOptions(
        train_file=str(tmp_path / "train.csv"), dev_file=str(tmp_path / "dev.jsonl"),
        extra={"text_column": "review", "label_column": "stars", "id_column": "id"}))
    train = task.read("train")
    assert train[0].text_a == "Great, loved it" and task.label_names() == ["neg", "neu", "pos"]
    assert task.read("dev")[0].guid == "b1"
    path = task.write_predictions(train, [2, 0, 1], tmp_path / "pred.jsonl",
                                  probabilities=[np.array([0.1, 0.2, 0.7])] * 3)
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"id": "a1", "prediction": "pos", "probabilities": {"neg": 0.1, "neu": 0.2, "pos": 0.7}}
    tsv = task.write_predictions(train, [2, 0, 1], tmp_path / "pred.tsv", probabilities=[np.array([0.1, 0.2, 0.7])] * 3)
    assert tsv.read_text().splitlines()[:2] == ["id\tprediction\tp_neg\tp_neu\tp_pos", "a1\tpos\t0.1\t0.2\t0.7"]
    write(tmp_path / "bad.tsv", ["text\tlabel", "only one column"])
    bad = get_task_class("classification")(TaskOptions(train_file=str(tmp_path / "bad.tsv")))
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 2 columns"):
        bad.read("train")
    write(tmp_path / "empty.csv", ["text,label", "fine,pos", "ok,", "bad,neg"])
    empty = get_task_class("classification")(TaskOptions(train_file=str(tmp_path / "empty.csv")))
    with pytest.raises(DataError, match=r"empty.csv:3: empty 'label'"):
        empty.read("train")
    write(tmp_path / "reg.tsv", ["text\tlabel", "a\t0.5", "b\thigh"])
    reg = get_task_class("regression")(TaskOptions(train_file=str(tmp_path / "reg.tsv")))
    with pytest.raises(DataError, match=r"reg.tsv:3: label='high' is not a number"):
        reg.read("train")


def test_custom_tsv_quotes_are_text_not_csv_quoting(shared_dir: Path) -> None:
    """GLUE-style TSV: a field that opens with '"' is text. CSV quoting read RTE test.tsv as
    2,985 rows (lines joined up to the next quote), every later id off."""
    rte = shared_dir / "data" / "glue" / "RTE"
    task = get_task_class("classification")(TaskOptions(
        train_file=str(rte / "train.tsv"), test_file=str(rte / "test.tsv"),
        extra={"text_column": "sentence1", "text_pair_column": "sentence2", "id_column": "index"}))
    test = task.read("test")
    assert len(test) == 3000 and [e.guid for e in test] == [str(i) for i in range(3000)]
    glue = glue_task("rte", rte).read("test")
    assert [(e.text_a, e.text_b) for e in test] == [(e.text_a, e.text_b) for e in glue]


def test_evaluate_refuses_a_checkpoint_that_was_not_fine_tuned(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """all-MiniLM-L6-v2 has no classifier: its 'RTE accuracy' would come from a random head."""
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--task", "rte", "--model", str(shared_dir / "models" / "all-MiniLM-L6-v2"),
                 "--data-dir", str(shared_dir / "data" / "glue" / "RTE"), "--output", str(out),
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no weights for the task head (classifier.weight, classifier.bias)" in err and not out.exists()


def test_dev_predictions_never_take_the_test_submission_name(shared_dir: Path) -> None:
    from bertkit.commands.predict import prediction_file_name

    sst2 = glue_task("sst2", shared_dir / "data" / "glue" / "SST-2")
    assert prediction_file_name(sst2, "test") == "SST-2.tsv"
    assert prediction_file_name(sst2, "dev") == "SST-2.dev.tsv"
    assert prediction_file_name(glue_task("rte", shared_dir / "data" / "glue" / "RTE"), "test") == "RTE.tsv"
    from bertkit.tasks.conll import Conll2003Task
    from bertkit.tasks.polyphone import PolyphoneTask

    assert prediction_file_name(Conll2003Task(TaskOptions()), "test") == "conll2003_test_predictions.txt"
    assert prediction_file_name(PolyphoneTask(TaskOptions()), "test") == "polyphone_test_predictions.lb"


@pytest.fixture
def tiny_mnli_model(tmp_path: Path, shared_dir: Path) -> Path:
    """A tiny random 3-way classifier (MNLI's labels) with the real uncased vocab: the predict and
    evaluate commands run end to end on it in about a second."""
    import torch

    from bertkit.config import preset
    from bertkit.modeling.heads import BertForSequenceClassification
    from bertkit.tokenization import Tokenizer

    torch.manual_seed(0)
    model = BertForSequenceClassification(preset("tiny", vocab_size=30522, num_labels=3))
    model.init_weights()
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / "bert-base-uncased" / "vocab.txt",
                                          do_lower_case=True)
    model.save_pretrained(tmp_path / "mnli-model", tokenizer=tokenizer)
    return tmp_path / "mnli-model"


def test_mnli_halves_and_dev_predictions_never_overwrite_the_test_submission(tiny_mnli_model: Path,
                                                                            tmp_path: Path) -> None:
    """test_mismatched went to MNLI-m.tsv (replacing the 1 matched row by the 2 mismatched ones), and
    --split dev replaced both test files by dev predictions (2 and 1 rows)."""
    from bertkit.commands.predict import prediction_file_name

    write_mnli(tmp_path / "glue")
    sub = tmp_path / "sub"
    base = ["predict", "--task", "mnli", "--model", str(tiny_mnli_model), "--data-dir", str(tmp_path / "glue"),
            "--device", "cpu", "--output", f"{sub}/"]
    assert main([*base, "--split", "test"]) == 0
    test_files = {name: (sub / name).read_text() for name in ("MNLI-m.tsv", "MNLI-mm.tsv")}
    assert [len(text.splitlines()) for text in test_files.values()] == [1 + 1, 1 + 2]
    assert main([*base, "--split", "test_mismatched"]) == 0  # the same model: the same 2 rows
    assert {name: (sub / name).read_text() for name in test_files} == test_files
    assert main([*base, "--split", "dev"]) == 0
    assert {name: (sub / name).read_text() for name in test_files} == test_files
    assert [len((sub / name).read_text().splitlines()) for name in ("MNLI-m.dev.tsv", "MNLI-mm.dev.tsv")] == [3, 2]
    assert sorted(p.name for p in sub.iterdir()) == ["MNLI-m.dev.tsv", "MNLI-m.tsv", "MNLI-mm.dev.tsv", "MNLI-mm.tsv"]
    task = glue_task("mnli", tmp_path / "glue")
    assert [prediction_file_name(task, split) for split in ("test", "test_matched", "test_mismatched")] == \
        ["MNLI-m.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]
    assert [prediction_file_name(task, split) for split in ("dev", "dev_matched", "dev_mismatched")] == \
        ["MNLI-m.dev.tsv", "MNLI-m.dev.tsv", "MNLI-mm.dev.tsv"]

    # A one-half dev split reports under its own key: the 1 mismatched row, never as `accuracy`.
    labels = task.label_names()
    dev_mm = task.read("dev_mismatched")
    assert task.metrics(dev_mm, [labels.index("contradiction")]) == {"accuracy_mm": 1.0}
    assert task.main_metric == "accuracy_mm"  # what fine-tuning with --eval-split dev_mismatched keeps the best by
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--task", "mnli", "--model", str(tiny_mnli_model), "--data-dir", str(tmp_path / "glue"),
                 "--device", "cpu", "--split", "dev_mismatched", "--output", str(out)]) == 0
    assert list(json.loads(out.read_text())["dev_mismatched"]) == ["accuracy_mm", "loss"]


def test_output_without_suffix_is_a_directory_for_every_task(tiny_mnli_model: Path, tmp_path: Path) -> None:
    """`--output newsub` (no /, not existing) was a file named newsub for GLUE, a folder for SQuAD."""
    write_mnli(tmp_path / "glue")
    base = ["predict", "--task", "mnli", "--model", str(tiny_mnli_model), "--data-dir", str(tmp_path / "glue"),
            "--device", "cpu", "--split", "test"]
    assert main([*base, "--output", str(tmp_path / "newsub")]) == 0
    assert sorted(p.name for p in (tmp_path / "newsub").iterdir()) == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    assert main([*base, "--split", "test_matched", "--output", str(tmp_path / "mine.tsv")]) == 0  # a suffix: the file
    assert (tmp_path / "mine.tsv").read_text().splitlines()[0] == "index\tprediction"


def test_an_interrupted_predict_keeps_the_earlier_file_whole(tiny_mnli_model: Path, tmp_path: Path,
                                                             monkeypatch, capsys) -> None:
    """Prediction files were written in place: Ctrl-C (or a failure) mid-file left the earlier
    submission cut short under its own name. A file where --output needs a folder failed with a
    traceback, after the whole split was predicted."""
    from bertkit.tasks.classification import SentencePairTask

    write_mnli(tmp_path / "glue")
    base = ["predict", "--task", "mnli", "--model", str(tiny_mnli_model), "--data-dir", str(tmp_path / "glue"),
            "--device", "cpu", "--split", "test_mismatched"]
    preds = tmp_path / "preds.tsv"
    assert main([*base, "--output", str(preds)]) == 0
    earlier = preds.read_text()
    assert len(earlier.splitlines()) == 1 + 2
    real_label = SentencePairTask.prediction_label
    written = []

    def interrupted_after_one_row(self, prediction):
        if written:
            raise KeyboardInterrupt
        written.append(prediction)
        return real_label(self, prediction)

    monkeypatch.setattr(SentencePairTask, "prediction_label", interrupted_after_one_row)
    assert main([*base, "--output", str(preds)]) == 130
    assert preds.read_text() == earlier
    assert not list(tmp_path.glob("*.tmp"))

    def terminated_after_one_row(self, prediction):  # `kill PID`: SIGTERM left preds.tsv.tmp behind
        if written:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_label(self, prediction)

    monkeypatch.setattr(SentencePairTask, "prediction_label", terminated_after_one_row)
    assert main([*base, "--output", str(preds)]) == 128 + signal.SIGTERM
    assert preds.read_text() == earlier
    assert not list(tmp_path.glob("*.tmp"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only while a command runs
    monkeypatch.undo()

    (tmp_path / "sub").write_text("not a folder\n")
    capsys.readouterr()
    for output in (f"{tmp_path / 'sub'}/", str(tmp_path / "sub" / "preds.tsv")):
        assert main([*base, "--output", output]) == 1
        err = capsys.readouterr().err
        assert f"{tmp_path / 'sub'} is a file, but the predictions need a directory there" in err
        assert "Traceback" not in err


def test_a_damaged_run_file_is_named(tiny_mnli_model: Path, tmp_path: Path, capsys) -> None:
    """A cut-short metrics.json or bertkit.json gave "Expecting ',' delimiter: line 2 column 1
    (char 16)", naming no file; metrics.json only after the whole split was evaluated."""
    write_mnli(tmp_path / "glue")
    damaged = tmp_path / "metrics.json"
    damaged.write_text('{"dev": {"accuracy": 0.5},\n')
    base = ["--task", "mnli", "--model", str(tiny_mnli_model), "--data-dir", str(tmp_path / "glue"), "--device", "cpu"]
    assert main(["evaluate", *base, "--output", str(damaged)]) == 1
    assert f"{damaged}:2: not valid JSON (Expecting property name" in capsys.readouterr().err
    assert damaged.read_text() == '{"dev": {"accuracy": 0.5},\n'
    (tiny_mnli_model / "bertkit.json").write_text('{"task": "mnli"\n')
    assert main(["predict", *base, "--split", "test", "--output", f"{tmp_path}/sub/"]) == 1
    assert f"{tiny_mnli_model / 'bertkit.json'}:2: not valid JSON" in capsys.readouterr().err


def test_stsb_predictions_are_clipped_to_the_score_range(tmp_path: Path) -> None:
    """An MSE head predicts a little outside [0, 5]: the file held 5.371 and -0.205."""
    stsb = glue_task("stsb", tmp_path)
    raw = [5.371, -0.205, 2.5, 4.999]
    examples = [PairExample(str(i), "a", "b", None) for i in range(len(raw))]
    clipped = stsb.postprocess(examples, [], [np.array([v], dtype=np.float32) for v in raw])
    assert clipped == pytest.approx([5.0, 0.0, 2.5, 4.999])
    path = stsb.write_predictions(examples, raw, tmp_path / "STS-B.tsv")
    assert path.read_text().splitlines() == ["index\tprediction", "0\t5.000", "1\t0.000", "2\t2.500", "3\t4.999"]
    # Custom regression has no known range: its values stay as predicted.
    custom = get_task_class("regression")(TaskOptions())
    assert custom.postprocess(examples, [], [np.array([v], dtype=np.float32) for v in raw])[0] == pytest.approx(5.371)


def test_correlation_of_a_constant_series_is_zero_not_nan(tmp_path: Path) -> None:
    """scipy returns NaN for a constant series; a NaN first eval was kept as best forever
    (is_better(0.8, nan) is False) and metrics.json held a bare NaN."""
    from bertkit.metrics.glue import pearson, spearman
    from bertkit.training.trainer import is_better

    gold = [1.0, 2.0, 3.0, 4.0]
    assert is_better(0.8, glue_metrics("corr", [2.5] * 4, gold)["pearson"], True)
    assert (pearson([2.5] * 4, gold), spearman([2.5] * 4, gold), pearson(gold, [3.0] * 4)) == (0.0, 0.0, 0.0)
    assert glue_metrics("corr", [2.5] * 4, gold) == {"pearson": 0.0, "spearman": 0.0, "corr": 0.0}
    nan = float("nan")  # a diverged model's value: worse than any number, in either direction
    assert is_better(0.8, nan, True) and is_better(3.0, nan, False) and is_better(0.1, None, True)
    assert not is_better(nan, 0.1, True) and not is_better(nan, 3.0, False)

    from bertkit.commands.common import write_metrics_atomic

    def strict(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    write_metrics_atomic(tmp_path / "metrics.json", {"dev": {"pearson": float("nan"), "loss": float("inf")},
                                                     "history": [{"eval": {"average": float("nan")}}]})
    assert json.loads((tmp_path / "metrics.json").read_text(), parse_constant=strict) == \
        {"dev": {"pearson": None, "loss": None}, "history": [{"eval": {"average": None}}]}


def minilm_finetune(shared_dir: Path, tmp_path: Path, task: str, folder: str, train_rows: int, *extra: str) -> dict:
    """Fine-tune the real all-MiniLM-L6-v2 on the first `train_rows` rows of a real GLUE train file."""
    data = tmp_path / folder
    lines = (shared_dir / "data" / "glue" / folder / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    write(data / "train.tsv", lines[: train_rows + 1])
    (data / "dev.tsv").write_text((shared_dir / "data" / "glue" / folder / "dev.tsv").read_text(encoding="utf-8"))
    out = tmp_path / f"run-{task}"
    assert main(["finetune", "--task", task, "--model", str(shared_dir / "models" / "all-MiniLM-L6-v2"),
                 "--data-dir", str(data), "--output-dir", str(out), "--device", "cpu", "--no-progress",
                 "--batch-size", "32", "--seed", "1", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["dev"] | {"_out": str(out)}


@pytest.mark.slow
def test_sst2_learns_with_real_minilm_and_predicts_the_submission_file(shared_dir: Path, tmp_path: Path) -> None:
    metrics = minilm_finetune(shared_dir, tmp_path, "sst2", "SST-2", 1600, "--epochs", "1", "--lr", "1e-4",
                              "--max-seq-length", "64", "--group-by-length")
    majority = 444 / 872
    assert metrics["accuracy"] > majority + 0.2, metrics  # well above the majority class (0.509)
    out = Path(metrics["_out"])
    assert main(["evaluate", "--model", str(out), "--data-dir", str(shared_dir / "data" / "glue" / "SST-2"),
                 "--device", "cpu"]) == 0
    evaluated = json.loads((out / "metrics.json").read_text())["dev"]
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert main(["predict", "--model", str(out), "--data-dir", str(shared_dir / "data" / "glue" / "SST-2"),
                 "--split", "test", "--output", str(tmp_path / "submission") + "/", "--device", "cpu"]) == 0
    rows = (tmp_path / "submission" / "SST-2.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1822
    assert {r.split("\t")[1] for r in rows[1:]} <= {"0", "1"} and rows[1].startswith("0\t")


@pytest.mark.slow
def test_stsb_regression_learns(shared_dir: Path, tmp_path: Path) -> None:
    # Scored once, at the end (step 100 of 2 x 50): evaluating the 1,500 dev pairs after epoch 1 too, and
    # the checkpoint and best model saved with it, added ~15% to the test and are not what it checks.
    metrics = minilm_finetune(shared_dir, tmp_path, "stsb", "STS-B", 1600, "--epochs", "2", "--lr", "1e-4",
                              "--max-seq-length", "64", "--eval-every", "100")
    assert metrics["pearson"] > 0.5 and metrics["spearman"] > 0.5, metrics
    config = json.loads((Path(metrics["_out"]) / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["num_labels"] == 1


def test_seed_script_flags_are_accepted(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """The google-research / pytorch-pretrained-bert command line runs unchanged, with their meaning."""
    data = tmp_path / "RTE"
    lines = (shared_dir / "data" / "glue" / "RTE" / "train.tsv").read_text().splitlines()
    write(data / "train.tsv", lines[:33])
    write(data / "dev.tsv", lines[:1] + lines[33:49])
    out = tmp_path / "seed"
    model = str(shared_dir / "models" / "all-MiniLM-L6-v2")
    argv = ["finetune", "--task_name", "RTE", "--do_train", "--do_eval", "--do_lower_case",
            "--data_dir", str(data), "--bert_model", model,
            "--max_seq_length", "64", "--train_batch_size", "16", "--eval_batch_size", "8",
            "--learning_rate", "2e-5", "--num_train_epochs", "2.0", "--warmup_proportion", "0.1",
            "--gradient_accumulation_steps", "2", "--seed", "3", "--output_dir", str(out), "--no_cuda",
            "--local_rank", "-1", "--no-progress"]
    assert main(argv) == 0
    info = json.loads((out / "bertkit.json").read_text())
    train = info["train"]
    # --train_batch_size is a whole optimizer step's examples, as those scripts read it (they divide it by
    # --gradient_accumulation_steps): micro-batches of 8, two per step, 32 rows in 2 steps (not 1 of 32).
    assert (info["task"], train["batch_size"], train["lr"], train["grad_accum"], train["warmup_ratio"],
            train["device"], info["max_seq_length"]) == ("rte", 8, 2e-5, 2, 0.1, "cpu", 64)
    # --do_train --do_eval: train, then score the final model once (not each epoch, keeping the best).
    metrics = json.loads((out / "metrics.json").read_text())
    assert train["eval_every"] == "end" and [r["step"] for r in metrics["history"]] == [4]
    assert metrics["best_step"] == 4 and "accuracy" in metrics["dev"]
    capsys.readouterr()
    # --do_eval alone evaluates the given model, in --eval_batch_size batches (it used to crash).
    assert main(["finetune", "--task_name", "RTE", "--do_eval", "--data_dir", str(data), "--bert_model", str(out),
                 "--output_dir", str(out), "--eval_batch_size", "8", "--no_cuda"]) == 0
    assert json.loads((out / "metrics.json").read_text())["dev"]["accuracy"] == metrics["dev"]["accuracy"]
    # --do_predict alone (as run_classifier.py's): the test split's submission file, into --output_dir.
    write(data / "test.tsv", (shared_dir / "data" / "glue" / "RTE" / "test.tsv").read_text().splitlines()[:6])
    assert main(["finetune", "--task_name", "RTE", "--do_predict", "--data_dir", str(data), "--bert_model", str(out),
                 "--output_dir", str(out), "--no_cuda"]) == 0
    submission = [row.split("\t") for row in (out / "RTE.tsv").read_text().splitlines()]
    assert submission[0] == ["index", "prediction"] and len(submission) == 6
    # ... and run_classifier.py's own test_results.tsv: each example's class probabilities, no header.
    probabilities = [[float(p) for p in row.split("\t")] for row in (out / "test_results.tsv").read_text().splitlines()]
    labels = ["entailment", "not_entailment"]
    assert len(probabilities) == 5 and all(len(row) == 2 and abs(sum(row) - 1) < 1e-6 for row in probabilities)
    assert [labels[row.index(max(row))] for row in probabilities] == [label for _, label in submission[1:]]
    # --do_train alone scores nothing, so a data directory without dev.tsv is fine.
    (data / "dev.tsv").unlink()
    alone = [a for a in argv if a != "--do_eval"]
    alone[alone.index(str(out))] = str(tmp_path / "train-only")
    assert main(alone) == 0
    assert json.loads((tmp_path / "train-only" / "bertkit.json").read_text())["train"]["eval_every"] == "none"
    capsys.readouterr()
    assert main(argv[:argv.index("16")] + ["15"] + argv[argv.index("16") + 1:] + ["--overwrite-output-dir"]) == 1
    assert re.search(r"--train_batch_size 15 .* must be a positive multiple of 2", capsys.readouterr().err)
    assert main(argv + ["--batch-size", "8", "--overwrite-output-dir"]) == 1
    assert re.search("--batch-size 8 .* and --train_batch_size 16 .* are both given", capsys.readouterr().err)


def test_nvidia_run_glue_command_runs(shared_dir: Path, nvidia_checkpoint: dict, tmp_path: Path, capsys) -> None:
    """NVIDIA DeepLearningExamples' scripts/run_glue.sh command ("train eval"), flag for flag, on MiniLM
    saved as NVIDIA saves a model (checkpoint, config and vocab apart) and a slice of MRPC: its
    --max_steps -1.0 default trains the epochs, --train_batch_size is split over the accumulation
    steps, --do_eval scores the final model once. Its --do_predict (the dev labels as a JSON of its own)
    is refused with the bertkit command that writes predictions."""
    data = tmp_path / "MRPC"
    for split, rows in (("train", 17), ("dev", 9)):
        write(data / f"{split}.tsv", (shared_dir / "data" / "glue" / "MRPC" / f"{split}.tsv").read_text().splitlines()[:rows])
    out = tmp_path / "results"
    argv = ["finetune", "--task_name", "mrpc", "--do_train", "--train_batch_size=16", "--do_eval", "--eval_batch_size=16",
            "--gradient_accumulation_steps=2", "--do_lower_case", "--data_dir", str(data), "--bert_model",
            "bert-large-uncased", "--seed", "2", "--init_checkpoint", str(nvidia_checkpoint["checkpoint"]),
            "--warmup_proportion", "0.1", "--max_seq_length", "128", "--learning_rate", "2.4e-5", "--num_train_epochs",
            "2", "--max_steps", "-1.0", f"--vocab_file={nvidia_checkpoint['vocab']}",
            f"--config_file={nvidia_checkpoint['config']}", "--output_dir", str(out), "--no_cuda", "--disable-progress-bar"]
    assert main(argv) == 0
    info = json.loads((out / "bertkit.json").read_text())
    train = info["train"]
    assert (info["task"], train["batch_size"], train["grad_accum"], train["warmup_ratio"], train["stop_at_step"],
            train["max_steps"], train["eval_every"]) == ("mrpc", 8, 2, 0.1, 0, 0, "end")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and [r["step"] for r in metrics["history"]] == [2] and "f1" in metrics["dev"]
    capsys.readouterr()
    assert main([*argv, "--do_predict", "--overwrite-output-dir"]) == 1
    assert f"run `bertkit predict --task mrpc --model {out} --data-dir {data} --split dev" in capsys.readouterr().err


def test_google_run_classifier_readme_command_runs(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """google-research/bert's README command for MRPC, flag for flag, on a TF checkpoint (a tiny one,
    with a vocab.txt beside it as in Google's downloads) and a slice of the real MRPC files."""
    fixture = shared_dir / "models" / "tf-bert-fixture"
    if not (fixture / "bert_model.ckpt.index").is_file():
        pytest.skip(f"{fixture} is absent")
    bert_dir = tmp_path / "uncased_L-2_H-64_A-2"
    bert_dir.mkdir()
    for item in fixture.glob("bert_*"):
        (bert_dir / item.name).write_bytes(item.read_bytes())
    vocab = (shared_dir / "models" / "bert-base-uncased" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (bert_dir / "vocab.txt").write_text("\n".join(vocab[:1024]) + "\n", encoding="utf-8")  # the fixture's 1,024 rows
    data = tmp_path / "MRPC"
    for split, rows in (("train", 49), ("dev", 17)):
        write(data / f"{split}.tsv", (shared_dir / "data" / "glue" / "MRPC" / f"{split}.tsv").read_text().splitlines()[:rows])
    out = tmp_path / "mrpc_output"
    argv = ["finetune", "--task_name=MRPC", "--do_train=true", "--do_eval=true", f"--data_dir={data}",
            f"--vocab_file={bert_dir}/vocab.txt", f"--bert_config_file={bert_dir}/bert_config.json",
            f"--init_checkpoint={bert_dir}/bert_model.ckpt", "--max_seq_length=128", "--train_batch_size=32",
            "--learning_rate=2e-5", "--num_train_epochs=3.0", f"--output_dir={out}/", "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in metrics["history"]] == [6] and "f1" in metrics["dev"]  # 48 pairs x 3 epochs / 32
    # A vocabulary or config elsewhere that is not the checkpoint's would be ignored: refused instead.
    other = tmp_path / "other_vocab.txt"
    other.write_text("\n".join(vocab[:1024][::-1]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main([a if not a.startswith("--vocab_file=") else f"--vocab_file={other}" for a in argv]) == 1
    assert f"--vocab_file {other}: bertkit reads the vocab.txt beside the checkpoint" in capsys.readouterr().err


def test_transformers_run_glue_readme_command_runs_with_a_data_dir(shared_dir: Path, tmp_path: Path) -> None:
    """transformers' run_glue.py README command (its Trainer's flags), plus the --data_dir it does not need
    (it downloads GLUE from the hub): micro-batches of --per_device_train_batch_size, one evaluation after
    training (its --do_eval with the default eval_strategy "no"), --bf16 as --precision bf16."""
    data = tmp_path / "RTE"
    lines = (shared_dir / "data" / "glue" / "RTE" / "train.tsv").read_text().splitlines()
    write(data / "train.tsv", lines[:17])
    write(data / "dev.tsv", lines[:1] + lines[17:25])
    out = tmp_path / "rte"
    assert main(["finetune", "--model_name_or_path", str(shared_dir / "models" / "all-MiniLM-L6-v2"),
                 "--task_name", "rte", "--do_train", "--do_eval", "--max_seq_length", "128",
                 "--per_device_train_batch_size", "8", "--learning_rate", "2e-5", "--num_train_epochs", "3",
                 "--output_dir", f"{out}/", "--data_dir", str(data), "--bf16", "--weight_decay", "0",
                 "--warmup_ratio", "0.1", "--logging_steps", "2", "--save_total_limit", "1", "--no_cuda",
                 "--no-progress"]) == 0
    train = json.loads((out / "bertkit.json").read_text())["train"]
    assert (train["batch_size"], train["grad_accum"], train["precision"], train["weight_decay"], train["warmup_ratio"],
            train["log_every"], train["keep_checkpoints"], train["eval_every"]) == (8, 1, "bf16", 0.0, 0.1, 2, 1, "end")
    assert [r["step"] for r in json.loads((out / "metrics.json").read_text())["history"]] == [6]  # 16 rows x 3 / 8
    # --do_predict (of the model just trained) also writes run_glue.py's predict_results_rte.txt.
    write(data / "test.tsv", (shared_dir / "data" / "glue" / "RTE" / "test.tsv").read_text().splitlines()[:6])
    assert main(["finetune", "--model_name_or_path", str(out), "--task_name", "rte", "--do_predict",
                 "--output_dir", str(out), "--data_dir", str(data), "--no_cuda"]) == 0
    submission = (out / "RTE.tsv").read_text().splitlines()
    assert (out / "predict_results_rte.txt").read_text().splitlines() == submission and len(submission) == 6
    assert not (out / "test_results.tsv").exists()


def test_trainer_eval_strategy_keeps_the_last_model_unless_told_to_load_the_best(shared_dir: Path,
                                                                                  tmp_path: Path) -> None:
    """run_glue.py with --eval_strategy epoch evaluates every epoch and ends with the last model;
    --load_best_model_at_end (with --metric_for_best_model eval_NAME) keeps the best, as bertkit does."""
    from bertkit.modeling.heads import BertForSequenceClassification

    data = tmp_path / "RTE"
    lines = (shared_dir / "data" / "glue" / "RTE" / "train.tsv").read_text().splitlines()
    write(data / "train.tsv", lines[:17])
    write(data / "dev.tsv", lines[:1] + lines[17:25])
    common = ["finetune", "--model_name_or_path", str(shared_dir / "models" / "all-MiniLM-L6-v2"), "--task_name", "rte",
              "--do_train", "--do_eval", "--per_device_train_batch_size", "8", "--learning_rate", "1e-4",
              "--num_train_epochs", "3", "--data_dir", str(data), "--eval_strategy", "epoch", "--no_cuda", "--no-progress"]
    last, best = tmp_path / "last", tmp_path / "best"
    assert main([*common, "--output_dir", str(last)]) == 0
    metrics = json.loads((last / "metrics.json").read_text())
    assert [r["step"] for r in metrics["history"]] == [2, 4, 6]
    assert metrics["dev"] == metrics["history"][-1]["eval"]  # the last model's scores, whichever epoch was best
    kept = BertForSequenceClassification.from_pretrained(last).state_dict()
    final = BertForSequenceClassification.from_pretrained(last / "checkpoints" / "step-6").state_dict()
    assert all(torch.equal(kept[k], final[k]) for k in kept) and not (last / "best").exists()
    assert json.loads((last / "bertkit.json").read_text())["train"]["keep_best"] is False

    assert main([*common, "--output_dir", str(best), "--load_best_model_at_end", "--metric_for_best_model",
                 "eval_loss"]) == 0
    train = json.loads((best / "bertkit.json").read_text())["train"]
    assert train["keep_best"] is True and train["best_metric"] == "loss"
    metrics = json.loads((best / "metrics.json").read_text())
    lowest = min(metrics["history"], key=lambda r: r["eval"]["loss"])
    assert metrics["best_step"] == lowest["step"] and metrics["dev"] == lowest["eval"]


def test_script_prediction_files_split_mnli_and_format_scores(tmp_path: Path) -> None:
    """run_classifier.py predicts MNLI's matched test set only; run_glue.py writes its halves apart
    (predict_results_mnli.txt, predict_results_mnli-mm.txt) and a score to 3 decimals."""
    from bertkit.commands.predict import write_script_file
    from bertkit.tasks.classification import PairExample

    mnli = get_task_class("mnli")(TaskOptions())
    examples = [PairExample(g, "a", "b", None, "t") for g in ("0", "1", "mm:0")]
    probabilities = [np.array([0.5, 0.25, 0.25]), np.array([0.1, 0.7, 0.2]), np.array([0.2, 0.2, 0.6])]
    written = write_script_file("run_classifier", mnli, examples, [0, 1, 2], probabilities, tmp_path)
    assert written == [tmp_path / "test_results.tsv"]
    assert written[0].read_text() == "0.5\t0.25\t0.25\n0.1\t0.7\t0.2\n"
    written = write_script_file("run_glue", mnli, examples, [0, 1, 2], probabilities, tmp_path)
    assert [p.name for p in written] == ["predict_results_mnli.txt", "predict_results_mnli-mm.txt"]
    names = mnli.label_names()
    assert written[0].read_text() == f"index\tprediction\n0\t{names[0]}\n1\t{names[1]}\n"
    assert written[1].read_text() == f"index\tprediction\n0\t{names[2]}\n"
    stsb = get_task_class("stsb")(TaskOptions())
    assert write_script_file("run_classifier", stsb, examples[:1], [3.14159], None, tmp_path) == []
    [scores] = write_script_file("run_glue", stsb, examples[:2], [3.14159, 0.5], None, tmp_path)
    assert scores.read_text() == "index\tprediction\n0\t3.142\n1\t0.500\n"


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluation_batch_flag_takes_the_finetune_spelling(command) -> None:
    from bertkit.cli import build_parser

    argv = [command, "--model", "run", "--output", "out/", "--eval-batch-size", "7"]
    parser, _ = build_parser(argv)
    assert parser.parse_args(argv).batch_size == 7


def test_google_run_classifier_spellings_parse() -> None:
    """`--do_train=true` (google-research/bert's README) was refused: "ignored explicit argument"."""
    from bertkit.cli import build_parser

    argv = ["finetune", "--task_name", "RTE", "--bert_model", "m", "--output_dir", "o", "--do_train=true",
            "--do_eval=false", "--do_lower_case=False"]
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    assert (args.do_train, args.do_eval, args.do_lower_case) == (True, False, False)
    # absl's negation, the checkpoint cadence and the TPU switch of run_classifier.py / run_squad.py.
    argv = ["finetune", "--task_name=RTE", "--bert_model=m", "--output_dir=o", "--nodo_lower_case",
            "--save_checkpoints_steps=1000", "--use_tpu=False"]
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    assert (args.do_lower_case, args.save_every, args.use_tpu) == (False, 1000, False)
    from bertkit.commands.common import train_config_from_args

    with pytest.raises(ValueError, match="--use_tpu: bertkit trains on GPUs"):
        train_config_from_args(parser.parse_args([*argv, "--use_tpu=True"]))
    argv = ["evaluate", "--model", "run", "--no-cuda", "--local_rank", "0"]
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    assert args.no_cuda and args.local_rank == 0


# ---- the Hugging Face Hub's nyu-mll/glue Parquet files -------------------------------------------------

# Class indices as nyu-mll/glue's dataset card lists them (the `datasets` ClassLabel names).
HUB_LABEL_INDEX = {"cola": ("0", "1"), "sst2": ("0", "1"), "mrpc": ("0", "1"), "rte": ("entailment", "not_entailment"),
                   "wnli": ("0", "1"), "mnli": ("entailment", "neutral", "contradiction")}
HUB_TEXT_COLUMNS = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
                    "stsb": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2"),
                    "wnli": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis")}


def write_hub_split(folder: Path, hub_split: str, examples: list, config: str, layout: str = "main",
                    shards: int = 1) -> None:
    """`examples` as the rows of one nyu-mll/glue split: text columns, label (class index, -1 when
    unlabelled; STS-B's score), idx; in the repository's layout (SPLIT-0000k-of-0000n.parquet) or that
    of refs/convert/parquet (SPLIT/0000.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = HUB_TEXT_COLUMNS[config]
    rows = []
    for e in examples:
        label = -1 if e.label is None else (e.label if config == "stsb" else HUB_LABEL_INDEX[config].index(e.label))
        rows.append({a: e.text_a, **({b: e.text_b} if b else {}), "label": label, "idx": int(e.guid.removeprefix("mm:"))})
    table = pa.Table.from_pylist(rows)
    if layout == "refs/convert":
        (folder / hub_split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / hub_split / "0000.parquet")
        return
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(rows) // shards)
    for k in range(shards):
        pq.write_table(table.slice(k * step, step), folder / f"{hub_split}-{k:05d}-of-{shards:05d}.parquet")


@pytest.mark.parametrize("name,folder", list(COUNTS))
def test_hub_parquet_files_read_as_the_glue_tsv_files(shared_dir: Path, tmp_path: Path, name: str, folder: str) -> None:
    """The real GLUE files rewritten in nyu-mll/glue's schema and layouts read back example for example."""
    tsv = glue_task(name, shared_dir / "data" / "glue" / folder)
    hub = tmp_path / "glue"
    splits = {"train": "train", "dev": "validation", "test": "test"}
    for split, hub_split in splits.items():
        layout = "refs/convert" if split == "dev" else "main"
        write_hub_split(hub / name, hub_split, tsv.read(split), name, layout, shards=2 if split == "train" else 1)
    from_hub = glue_task(name, hub)  # the snapshot's root: the task finds its config folder
    for split in splits:
        want, got = tsv.read(split), from_hub.read(split)
        assert len(got) == len(want) == COUNTS[(name, folder)][list(splits).index(split)]
        for w, g in zip(want, got):
            assert (g.guid, g.text_a, g.text_b, g.label) == (w.guid, w.text_a, w.text_b, w.label), g.source
        assert got[0].source.endswith(": row 0") and ".parquet" in got[0].source
    assert from_hub.label_names() == tsv.label_names()


def test_hub_mnli_label_indices_halves_and_submission_files(tmp_path: Path) -> None:
    write_mnli(tmp_path)
    tsv = glue_task("mnli", tmp_path)
    hub = tmp_path / "hub" / "mnli"
    for split in ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"):
        write_hub_split(hub, split.replace("dev", "validation"), tsv.read(split), "mnli")
    import pyarrow.parquet as pq

    # The label column holds the Hub's indices: 0 entailment, 1 neutral, 2 contradiction.
    assert pq.read_table(hub / "validation_matched-00000-of-00001.parquet").column("label").to_pylist() == [1, 0]
    task = glue_task("mnli", tmp_path / "hub")
    dev = task.read("dev")
    assert [(e.guid, e.label) for e in dev] == [("0", "neutral"), ("1", "entailment"), ("mm:0", "contradiction")]
    test = task.read("test")
    assert [e.guid for e in test] == ["0", "mm:0", "mm:1"] and all(e.label is None for e in test)
    written = task.write_predictions(test, [0, 1, 2], tmp_path / "out" / "MNLI-m.tsv")
    assert [p.name for p in written] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    assert (tmp_path / "out" / "MNLI-mm.tsv").read_text() == "index\tprediction\n0\tentailment\n1\tneutral\n"
    # A folder with the TSV files keeps reading them.
    assert glue_task("mnli", tmp_path).read("dev")[0].source.endswith("dev_matched.tsv:2")


def test_hub_parquet_bad_rows_name_file_and_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sst2 = tmp_path / "sst2"
    sst2.mkdir()
    pq.write_table(pa.table({"sentence": ["good", "bad"], "label": [1, 2], "idx": [0, 1]}),
                   sst2 / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"train-00000-of-00001\.parquet: row 1: label 2 is not a class index 0\.\.1"):
        glue_task("sst2", tmp_path).read("train")
    pq.write_table(pa.table({"sentence": ["good", None], "label": [1, 0], "idx": [0, 1]}),
                   sst2 / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"row 1: 'sentence' is null"):  # not trained on as the text "None"
        glue_task("sst2", tmp_path).read("train")
    pq.write_table(pa.table({"sentence": ["good"], "label": [-1], "idx": [0]}), sst2 / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"row 0: label -1 .* every train row needs a label"):
        glue_task("sst2", tmp_path).read("train")
    pq.write_table(pa.table({"text": ["good"], "label": [1]}), sst2 / "validation-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"validation-00000-of-00001\.parquet: row 0: no column 'sentence'"):
        glue_task("sst2", tmp_path).read("dev")
    with pytest.raises(DataError, match=r"test\.tsv: split file not found \(files there: none\); nor the Hub's "
                                         r"nyu-mll/glue Parquet files of test in .*/sst2 or "):
        glue_task("sst2", tmp_path).read("test")


def test_finetune_and_predict_from_hub_files_equal_the_tsv_run(shared_dir: Path, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    source = shared_dir / "data" / "glue" / "SST-2"
    tsv_dir = tmp_path / "SST-2"
    lines = (source / "train.tsv").read_text(encoding="utf-8").splitlines()
    write(tsv_dir / "train.tsv", lines[:65])
    write(tsv_dir / "dev.tsv", (source / "dev.tsv").read_text(encoding="utf-8").splitlines()[:41])
    write(tsv_dir / "test.tsv", (source / "test.tsv").read_text(encoding="utf-8").splitlines()[:31])
    tsv = glue_task("sst2", tsv_dir)
    hub = tmp_path / "glue"
    for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        write_hub_split(hub / "sst2", hub_split, tsv.read(split), "sst2")
    runs = {}
    for name, data_dir in (("tsv", tsv_dir), ("hub", hub)):
        out = tmp_path / f"run-{name}"
        assert main(["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(data_dir),
                     "--output-dir", str(out), "--max-steps", "4", "--batch-size", "16", "--device", "cpu",
                     "--no-progress", "--seed", "3"]) == 0
        assert main(["predict", "--model", str(out), "--data-dir", str(data_dir), "--split", "test",
                     "--output", str(tmp_path / f"submission-{name}") + "/", "--device", "cpu"]) == 0
        runs[name] = (json.loads((out / "metrics.json").read_text())["dev"],
                      (tmp_path / f"submission-{name}" / "SST-2.tsv").read_text())
    assert runs["hub"] == runs["tsv"]
    assert runs["hub"][1].count("\n") == 31


def test_custom_classification_reads_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"review": ["great", "awful", "fine"], "stars": [2, 0, 1], "id": ["a", "b", "c"]}),
                   tmp_path / "train.parquet")
    task = get_task_class("classification")(TaskOptions(
        train_file=str(tmp_path / "train.parquet"),
        extra={"text_column": "review", "label_column": "stars", "id_column": "id"}))
    train = task.read("train")
    assert [(e.guid, e.text_a, e.label) for e in train] == [("a", "great", "2"), ("b", "awful", "0"), ("c", "fine", "1")]
    assert train[1].source == f"{tmp_path / 'train.parquet'}: row 1" and task.label_names() == ["0", "1", "2"]
    pq.write_table(pa.table({"text": ["x", "y"], "labels": [["a", "b"], []]}), tmp_path / "multi.parquet")
    multi = get_task_class("multilabel")(TaskOptions(train_file=str(tmp_path / "multi.parquet"),
                                                     extra={"label_column": "labels"}))
    assert [e.label for e in multi.read("train")] == [("a", "b"), ()]
    pq.write_table(pa.table({"review": ["x", "y"], "stars": [1, None]}), tmp_path / "dev-null.parquet")
    with pytest.raises(DataError, match=r"dev-null\.parquet: row 1: 'stars' is null \(every dev row needs a label\)"):
        get_task_class("classification")(TaskOptions(dev_file=str(tmp_path / "dev-null.parquet"), extra={
            "text_column": "review", "label_column": "stars"})).read("dev")
    pq.write_table(pa.table({"review": [None], "stars": [1]}), tmp_path / "dev-null.parquet")
    with pytest.raises(DataError, match=r"row 0: 'review' is null"):
        get_task_class("classification")(TaskOptions(dev_file=str(tmp_path / "dev-null.parquet"), extra={
            "text_column": "review", "label_column": "stars"})).read("dev")
    pq.write_table(pa.table({"review": ["x"], "stars": [1]}), tmp_path / "dev.parquet")
    missing = get_task_class("classification")(TaskOptions(dev_file=str(tmp_path / "dev.parquet")))
    with pytest.raises(DataError, match=r"dev\.parquet: row 0: no column 'text'"):
        missing.read("dev")
