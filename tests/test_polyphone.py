"""Polyphone task on the real g2pL and CPP files: counts, target alignment, candidate masking,
class weights, the converter, bad input, and a short CPU training run."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bertkit.tasks.base import DataError, TaskOptions
from bertkit.tasks.polyphone import (PolyphoneExample, PolyphoneTask, majority_readings, normalize_reading,
                                     read_examples, read_polyphone_dict, write_sent_lb)

SHARED = Path(__file__).resolve().parents[2] / "shared"
G2PL = SHARED / "data" / "polyphone" / "g2pL"
CPP = SHARED / "data" / "polyphone" / "cpp"
VOCAB_DIR = SHARED / "models" / "bert-base-chinese"

needs_data = pytest.mark.skipif(not (G2PL / "train.sent").is_file() or not (CPP / "test.sent").is_file(),
                                reason=f"polyphone data not found under {G2PL.parent}")
needs_vocab = pytest.mark.skipif(not (VOCAB_DIR / "vocab.txt").is_file(),
                                 reason=f"{VOCAB_DIR}/vocab.txt not found")


def make_task(data_dir: Path | None = G2PL, **extra) -> PolyphoneTask:
    return PolyphoneTask(TaskOptions(data_dir=None if data_dir is None else str(data_dir), extra=extra))


@pytest.fixture(scope="module")
def tokenizer():
    if not (VOCAB_DIR / "vocab.txt").is_file():
        pytest.skip(f"{VOCAB_DIR}/vocab.txt not found")
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(str(VOCAB_DIR))


@pytest.fixture(scope="module")
def task() -> PolyphoneTask:
    if not (G2PL / "train.sent").is_file():
        pytest.skip(f"{G2PL} not found")
    return make_task()


@pytest.fixture(scope="module")
def splits(task) -> dict[str, list[PolyphoneExample]]:
    if not (CPP / "test.sent").is_file():
        pytest.skip(f"{CPP} not found")
    return {"g2pL/train": task.read("train"), "g2pL/dev": task.read("dev"), "g2pL/test": task.read("test"),
            "cpp/dev": read_examples(CPP / "dev"), "cpp/test": read_examples(CPP / "test")}


@pytest.fixture(scope="module")
def encoded(task, splits, tokenizer) -> dict[str, tuple[list[dict], int]]:
    """Features of every example of every split (encoded once: ~77k sentences) and the number
    of targets that became [UNK]."""
    out = {}
    for name, examples in splits.items():
        features = task.encode(examples, tokenizer, 128)
        out[name] = (features, task.unk_targets)
    return out


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- reading the real files ----------------------------------------------------------------------

@needs_data
def test_counts_match_the_published_sizes(task, splits):
    sizes = {name: len(examples) for name, examples in splits.items()}
    assert sizes == {"g2pL/train": 34200, "g2pL/dev": 11400, "g2pL/test": 11400,
                     "cpp/dev": 9893, "cpp/test": 10254}
    # shared/data/README.md: 225, 222 and 225 distinct labels; 114 characters.
    assert [len({ex.label for ex in splits[f"g2pL/{s}"]}) for s in ("train", "dev", "test")] == [225, 222, 225]
    assert len({ex.char for ex in splits["g2pL/train"]}) == 114
    assert len(task.label_names()) == 225
    first = splits["g2pL/train"][0]
    assert (first.text[:12], first.char, first.label) == ("她挽起袖子，找了一块抹布", "抹", "ma1")


@needs_data
def test_test_set_option_selects_split_dir_prefix_or_jsonl(tmp_path, splits):
    assert len(make_task(test_set="dev").read("test")) == 11400
    assert len(make_task(test_set=str(CPP / "test")).read("test")) == 10254
    assert len(make_task(test_set=str(CPP)).read("test")) == 10254
    jsonl = tmp_path / "few.jsonl"
    write(jsonl, "".join(json.dumps({"text": ex.text, "position": ex.position, "label": ex.label},
                                    ensure_ascii=False) + "\n" for ex in splits["cpp/test"][:7]))
    assert [ex.label for ex in make_task(test_set=str(jsonl)).read("test")] == \
           [ex.label for ex in splits["cpp/test"][:7]]


@needs_data
@needs_vocab
def test_target_position_points_at_the_marked_character_in_every_example(splits, encoded, tokenizer):
    vocab = tokenizer.vocab
    for name, examples in splits.items():
        features, unk_targets = encoded[name]
        assert len(features) == len(examples)
        unk = 0
        for ex, f in zip(examples, features):
            token_id = f["input_ids"][f["target_position"]]
            if ex.char in vocab:
                assert token_id == vocab[ex.char], (name, ex.id)
            else:  # a rare character: the position is still right, the id is [UNK]
                assert token_id == tokenizer.unk_id, (name, ex.id)
                unk += 1
        assert unk_targets == unk
        if name.startswith("g2pL"):
            assert unk == 0  # all 114 g2pL characters are in the bert-base-chinese vocab


@needs_data
@needs_vocab
def test_truncation_keeps_the_target_inside_the_window(task, splits, tokenizer):
    examples = splits["g2pL/test"][:300]
    features = task.encode(examples, tokenizer, 12)
    vocab = tokenizer.vocab
    for ex, f in zip(examples, features):
        assert len(f["input_ids"]) <= 12
        assert f["input_ids"][0] == tokenizer.cls_id and f["input_ids"][-1] == tokenizer.sep_id
        assert f["input_ids"][f["target_position"]] == vocab[ex.char]


# ---- candidate masking ---------------------------------------------------------------------------

@needs_data
@needs_vocab
def test_a_random_model_never_predicts_a_reading_the_character_cannot_have(task, splits, tokenizer):
    from bertkit.config import preset

    torch.manual_seed(0)
    model = task.build_model(preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    rng = random.Random(0)
    examples = rng.sample(splits["g2pL/test"], 400) + rng.sample(splits["cpp/test"], 400)
    features = task.encode(examples, tokenizer, 128)
    labels = task.label_names()
    with torch.no_grad():
        logits = torch.cat([model(**task.collate(features[i:i + 200])).logits
                            for i in range(0, len(features), 200)])
    assert logits.shape == (len(examples), len(labels))
    for ex, f, row in zip(examples, features, logits):
        allowed = task.candidates(ex.char)
        if allowed:  # characters unseen in g2pL train (CPP) have no constraint
            assert labels[int(row.argmax())] in allowed, ex.id
            assert set(torch.nonzero(row > -1e3).flatten().tolist()) == set(f["candidates"])
    predictions = task.postprocess(examples, features, list(logits.numpy()))
    assert all(labels[p] in task.candidates(ex.char) for ex, p in zip(examples, predictions)
               if task.candidates(ex.char))
    # Without the mask the random head picks readings of other characters: the mask matters.
    open_task = make_task(no_logit_mask=True)
    batch = open_task.collate(open_task.encode(examples[:400], tokenizer, 128))
    assert "candidate_mask" not in batch
    with torch.no_grad():
        unmasked = model(**batch).logits.argmax(-1)
    assert sum(labels[int(p)] not in task.candidates(ex.char) for ex, p in zip(examples, unmasked)) > 100


@needs_data
@needs_vocab
def test_unpredictable_gold_readings_are_counted_and_ignored_by_the_loss(task, splits, encoded):
    cpp = splits["cpp/test"]
    features = encoded["cpp/test"][0]
    labels = task.label_names()
    # CPP test has readings g2pL train never saw (for example 率 lu:4): such features carry -100.
    lost = [ex for ex, f in zip(cpp, features) if f["labels"] == -100]
    assert lost and all(ex.label not in labels or (task.candidates(ex.char)
                                                   and ex.label not in task.candidates(ex.char))
                        for ex in lost)
    predictions = [f["candidates"][0] if f["candidates"] else 0 for f in features]
    metrics = task.metrics(cpp, predictions)
    assert metrics["unpredictable"] == len(lost)
    assert metrics["n_examples"] == 10254
    assert metrics["unseen_chars"] == sum(1 for ex in cpp if not task.candidates(ex.char))
    assert all(isinstance(v, float) for v in metrics.values())  # flat: the trainer logs them


# ---- class weights -------------------------------------------------------------------------------

@needs_data
@needs_vocab
def test_balanced_class_weights_are_inverse_frequency_and_reach_the_loss(splits, tokenizer):
    weighted = make_task(class_weights="balanced")
    labels = weighted.label_names()
    weights = weighted.class_weights()
    counts = Counter(ex.label for ex in splits["g2pL/train"])
    assert weights.shape == (len(labels),)
    a, b = labels.index("le5"), labels.index("liao3")
    assert weights[a] * counts["le5"] == pytest.approx(float(weights[b]) * counts["liao3"], rel=1e-5)
    mean_over_examples = sum(float(weights[labels.index(ex.label)]) for ex in splits["g2pL/train"]) / 34200
    assert mean_over_examples == pytest.approx(1.0, rel=1e-5)
    assert make_task().class_weights() is None

    from bertkit.config import preset

    torch.manual_seed(0)
    model = weighted.build_model(preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    batch = weighted.collate(weighted.encode(splits["g2pL/dev"][:64], tokenizer, 128))
    assert torch.equal(batch["class_weights"], weights)
    with torch.no_grad():
        out = model(**batch)
    expected = F.cross_entropy(out.logits, batch["labels"], weight=weights)
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)


# ---- user dictionary -----------------------------------------------------------------------------

@needs_data
def test_dictionary_extends_candidates_and_is_checked(tmp_path):
    good = write(tmp_path / "dict.tsv", "# extra readings\n了\tle5 liao3 liao4\n率\tlv4 shuai4\n")
    task = make_task(polyphone_dict=str(good))
    assert task.candidates("了") == {"le5", "liao3", "liao4"}
    assert task.candidates("率") == {"lu:4", "shuai4"}  # "lv4" written in the datasets' spelling
    assert {"liao4", "lu:4"} <= set(task.label_names())

    contradicts = write(tmp_path / "bad.tsv", "了\tle5\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: '了' lists le5 but train example train.sent:\d+ reads it 'liao3'"):
        make_task(polyphone_dict=str(contradicts)).label_names()
    with pytest.raises(DataError, match=r"bad2.tsv:2: expected 'char<TAB>reading1"):
        read_polyphone_dict(write(tmp_path / "bad2.tsv", "了\tle5\n了了 le5\n"))
    with pytest.raises(DataError, match=r"bad3.tsv:2: '了' is listed again \(first at line 1\)"):
        read_polyphone_dict(write(tmp_path / "bad3.tsv", "了\tle5\n了\tliao3\n"))
    with pytest.raises(DataError, match=r"bad4.tsv:1: reading 'le' is not pinyin"):
        read_polyphone_dict(write(tmp_path / "bad4.tsv", "了\tle\n"))


def test_reading_spelling_is_normalised_to_the_dataset_form():
    assert [normalize_reading(r) for r in ("lv4", "lü4", "nve4", "LU:4", "le5")] == \
           ["lu:4", "lu:4", "nu:e4", "lu:4", "le5"]


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("没有标记的句子。", r"x.sent:2: no marked character"),
    ("两个▁了▁字▁了▁。", r"x.sent:2: 4 '▁' markers"),
    ("一个▁了字▁。", r"x.sent:2: 2 characters between the ▁ markers \('了字'\)"),
])
def test_bad_sentence_names_file_and_line(tmp_path, line, message):
    write(tmp_path / "x.sent", f"好▁了▁。\n{line}\n")
    write(tmp_path / "x.lb", "le5\nle5\n")
    with pytest.raises(DataError, match=message):
        read_examples(tmp_path / "x")


def test_mismatched_line_counts_name_both_files_and_the_line(tmp_path):
    write(tmp_path / "x.sent", "好▁了▁。\n走▁了▁。\n来▁了▁。\n")
    write(tmp_path / "x.lb", "le5\nle5\n")
    with pytest.raises(DataError, match=r"x.sent has 3 lines but .*x.lb has 2: line 3 of .*x.sent has no "
                                        r"counterpart in .*x.lb"):
        read_examples(tmp_path / "x")


def test_bad_label_and_bad_jsonl_name_file_and_line(tmp_path):
    write(tmp_path / "x.sent", "好▁了▁。\n")
    write(tmp_path / "x.lb", "le\n")
    with pytest.raises(DataError, match=r"x.lb:1: reading 'le' is not pinyin with a tone digit"):
        read_examples(tmp_path / "x")
    cases = {'{"text": "好了", "position": 5, "label": "le5"}': r"'position' must be a character index in 0..1",
             '{"text": "好▁了▁", "position": 2, "label": "le5"}': r"'text' contains the marker character",
             '{"text": "好了", "position": 1, "label": 5}': r"'label' must be a string",
             '{"text": "好了", "position": 1': r"not valid JSON"}
    for line, message in cases.items():
        write(tmp_path / "y.jsonl", '{"text": "好了", "position": 1, "label": "le5"}\n' + line + "\n")
        with pytest.raises(DataError, match=r"y.jsonl:2: " + message):
            read_examples(tmp_path / "y.jsonl")


def test_train_and_dev_without_labels_fail_when_read(tmp_path):
    """A dev .sent without its .lb was read as unlabelled: fine-tuning trained, then failed at its
    first evaluation ("no labelled examples to score"). Test data may come without labels."""
    for split in ("train", "dev", "test"):
        write(tmp_path / f"{split}.sent", "好▁了▁。\n走▁了▁。\n")
        write(tmp_path / f"{split}.lb", "le5\nle5\n")
    (tmp_path / "dev.lb").unlink()
    (tmp_path / "test.lb").unlink()
    task = make_task(data_dir=tmp_path)
    assert [ex.label for ex in task.read("train")] == ["le5", "le5"]
    assert [ex.label for ex in task.read("test")] == [None, None]
    with pytest.raises(DataError, match=r"polyphone dev data .*dev: example .* has no label; the dev split is scored"):
        task.read("dev")


def test_missing_data_dir_names_the_flag():
    with pytest.raises(ValueError, match="--data-dir"):
        make_task(data_dir=None).read("train")


# ---- converter -----------------------------------------------------------------------------------

@needs_data
def test_converter_round_trip_is_byte_identical(tmp_path):
    from bertkit.cli import main

    assert main(["polyphone-convert", str(G2PL / "dev"), str(tmp_path / "dev.jsonl")]) == 0
    assert main(["polyphone-convert", str(tmp_path / "dev.jsonl"), str(tmp_path / "back" / "dev")]) == 0
    for suffix in (".sent", ".lb"):
        assert (tmp_path / "back" / f"dev{suffix}").read_bytes() == (G2PL / f"dev{suffix}").read_bytes()
    lines = (tmp_path / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 11400
    first = json.loads(lines[0])
    assert first["text"][first["position"]] == read_examples(G2PL / "dev")[0].char
    # An existing output is not overwritten silently.
    assert main(["polyphone-convert", str(tmp_path / "dev.jsonl"), str(tmp_path / "back" / "dev")]) == 1


# ---- predictions and metrics ---------------------------------------------------------------------

@needs_data
def test_metrics_per_char_and_prediction_files(task, splits, tmp_path, capsys):
    examples = splits["g2pL/test"]
    labels = task.label_names()
    majority = majority_readings(splits["g2pL/train"])
    predictions = [labels.index(majority[ex.char]) for ex in examples]
    metrics = task.metrics(examples, predictions)
    expected = sum(majority[ex.char] == ex.label for ex in examples) / len(examples)
    assert metrics["accuracy"] == pytest.approx(expected)
    assert 0.75 < metrics["accuracy"] < 0.85  # 0.8002 measured: the majority-reading baseline
    per_char = task.per_char_accuracy(examples, predictions)
    assert len(per_char) == 114 and sum(row["n"] for row in per_char.values()) == 11400

    path = task.write_predictions(examples, predictions, tmp_path / "pred.lb")
    assert path.read_text(encoding="utf-8").splitlines() == [majority[ex.char] for ex in examples]
    rows = (tmp_path / "pred.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "id\tsentence\tchar\tgold\tpred" and len(rows) == 11401
    assert rows[1].split("\t")[1:] == [examples[0].marked_text(), examples[0].char, examples[0].label,
                                       majority[examples[0].char]]
    per_char_rows = (tmp_path / "pred.per_char.tsv").read_text(encoding="utf-8").splitlines()
    assert len(per_char_rows) == 115

    # A character never seen in training has no candidate list: the written file warns about it.
    import dataclasses

    third = examples[2]
    text = third.text[:third.position] + "龘" + third.text[third.position + 1:]
    unseen = [*examples[:2], dataclasses.replace(third, text=text)]
    assert not task.candidates("龘")
    task.write_predictions(unseen, predictions[:3], tmp_path / "unseen.lb")
    assert "1 of 3 examples ask for characters never seen in training" in capsys.readouterr().err


# ---- training ------------------------------------------------------------------------------------

@needs_data
@needs_vocab
def test_short_training_run_lowers_loss_and_reaches_the_majority_baseline(splits, tokenizer, tmp_path):
    trainer = pytest.importorskip("bertkit.training.trainer")
    from bertkit.config import TrainConfig, preset

    rng = random.Random(0)
    data = tmp_path / "data"
    write_sent_lb(rng.sample(splits["g2pL/train"], 3000), data / "train")
    write_sent_lb(rng.sample(splits["g2pL/dev"], 1000), data / "dev")
    task = make_task(data)
    train_examples, dev_examples = task.read("train"), task.read("dev")
    train_features = task.encode(train_examples, tokenizer, 32)
    dev_features = task.encode(dev_examples, tokenizer, 32)

    torch.manual_seed(0)
    model = task.build_model(preset("tiny", vocab_size=tokenizer.vocab_size))
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=200, batch_size=16, lr=1e-3,
                         warmup_ratio=0.1, eval_every="none", log_every=10, progress=False, device="cpu",
                         seed=0)
    result = trainer.train(task, model, train_features, (dev_examples, dev_features), config)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
              if "loss" in r]
    assert losses[-1] < 0.75 * losses[0], losses

    metrics, _ = trainer.evaluate(task, result.model, dev_examples, dev_features, 256, torch.device("cpu"))
    majority = majority_readings(train_examples)
    baseline = sum(majority.get(ex.char) == ex.label for ex in dev_examples) / len(dev_examples)
    print(f"polyphone tiny run: loss {losses[0]:.3f} -> {losses[-1]:.3f}; dev accuracy "
          f"{metrics['accuracy']:.4f} vs majority {baseline:.4f}")
    assert metrics["accuracy"] >= baseline


# ---- benchmark -----------------------------------------------------------------------------------

@needs_data
@needs_vocab
def test_benchmark_scores_baselines_and_a_saved_model(task, tokenizer, tmp_path, capsys):
    """The path the lead runs on the GPU (`--model DIR`), here with an untrained tiny model."""
    import importlib.util

    from bertkit.config import preset

    spec = importlib.util.spec_from_file_location(
        "polyphone_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / "polyphone.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    torch.manual_seed(0)
    model = task.build_model(preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer)
    out = tmp_path / "table.json"
    assert bench.main(["--model", str(tmp_path / "model"), "--limit", "150", "--device", "cpu",
                       "--json", str(out)]) == 0
    table = json.loads(out.read_text(encoding="utf-8"))
    assert table["examples"] == {"g2pL test": 150, "CPP test": 150, "CPP test ∩ g2pL chars": 150}
    acc = table["accuracy"]
    assert set(acc) == {"majority (g2pL train)", "majority (CPP dev)", "pypinyin", "bertkit"}
    assert "bertkit" in capsys.readouterr().out

    # The benchmark reloads the model from disk and rebuilds labels from config.json; it must
    # score exactly what the in-memory model scores through the task.
    examples = task.read("test")[:150]
    features = task.encode(examples, tokenizer, 128)
    with torch.no_grad():
        logits = model(**task.collate(features)).logits
    expected = task.metrics(examples, task.postprocess(examples, features, list(logits.numpy())))
    assert acc["bertkit"]["g2pL test"] == pytest.approx(expected["accuracy"])
    majority = majority_readings(task.read("train"))
    assert acc["majority (g2pL train)"]["g2pL test"] == pytest.approx(
        sum(majority[ex.char] == ex.label for ex in examples) / 150)


def test_task_state_round_trips_so_evaluation_needs_no_train_split(tmp_path) -> None:
    """Candidate readings learned from train are saved with the model (bertkit.json) and restored,
    so evaluate/predict on another machine need only the split they score."""
    import json

    from bertkit.tasks import TaskOptions, get_task_class

    g2pl = Path(__file__).resolve().parents[2] / "shared" / "data" / "polyphone" / "g2pL"
    if not g2pl.is_dir():
        pytest.skip(f"{g2pl} is absent")
    trained = get_task_class("polyphone")(TaskOptions(data_dir=str(g2pl)))
    state = json.loads(json.dumps(trained.state_dict(), ensure_ascii=True))
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    for name in ("test.sent", "test.lb"):
        (only_test / name).write_bytes((g2pl / name).read_bytes())
    restored = get_task_class("polyphone")(TaskOptions(data_dir=str(only_test)))
    restored.set_label_names(trained.label_names())
    restored.load_state_dict(state)
    assert restored.label_names() == trained.label_names()
    assert all(restored.candidates(c) == trained.candidates(c) for c in ("了", "长", "行", "抹"))
    assert len(restored.read("test")) == 11400


@needs_data
def test_cached_features_follow_the_candidate_readings(tmp_path, monkeypatch, tokenizer):
    """Feature `candidates` come from the training data and dictionary, not from the split being
    encoded: a dictionary edited in place (same path, same label set) must not reuse features
    cached with the old readings, or the candidate mask hides a reading the model now allows."""
    from bertkit.commands.common import encode_cached

    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path / "cache"))
    dictionary = tmp_path / "dict.tsv"
    write(dictionary, "抹\tma1 mo3 mo4\n")  # exactly the readings g2pL train has for 抹
    before = make_task(polyphone_dict=str(dictionary))
    dev = [ex for ex in before.read("dev") if ex.char == "抹"]
    assert len(dev) == 100
    first = encode_cached(before, "dev", dev, tokenizer, 128)

    write(dictionary, "抹\tma1 mo2 mo3 mo4\n")  # mo2 is already a label (of 模): the label set is unchanged
    after = make_task(polyphone_dict=str(dictionary))
    assert after.label_names() == before.label_names()
    mo2 = after.label_names().index("mo2")
    assert mo2 not in first[0]["candidates"]
    assert all(mo2 in f["candidates"] for f in encode_cached(after, "dev", dev, tokenizer, 128))
