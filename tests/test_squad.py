"""SQuAD v1.1/v2.0: official metric semantics, reader counts on the real dev files, windowed
encoding + offset mapping proven by oracle logits, bad-input errors, and a short real fine-tune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from bertkit.metrics.squad import (best_threshold, exact_match, f1_v1, f1_v2, normalize_answer,
                                   squad_v1_evaluate, squad_v2_evaluate)
from bertkit.tasks import DataError, TaskOptions, get_task_class
from bertkit.tasks.squad import SquadTask

SHARED = Path(__file__).resolve().parents[2] / "shared"
V1_DEV = SHARED / "data" / "squad_v1.1" / "dev-v1.1.json"
V2_DEV = SHARED / "data" / "squad_v2.0" / "dev-v2.0.json"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def make_task(**extra) -> SquadTask:
    files = {k: extra.pop(k) for k in ("train_file", "dev_file", "data_dir") if k in extra}
    return SquadTask(TaskOptions(**files, extra=extra))


@pytest.fixture(scope="module")
def tokenizer():
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(need(MINILM))


@pytest.fixture(scope="module")
def v1_dev():
    return make_task(dev_file=str(need(V1_DEV))).read("dev")


@pytest.fixture(scope="module")
def v2_dev():
    return make_task(dev_file=str(need(V2_DEV))).read("dev")


def oracle_outputs(features) -> list[np.ndarray]:
    """Logits [2, T] peaked at each feature's gold start/end token (at [CLS] when it has none)."""
    outputs = []
    for f in features:
        logits = np.zeros((2, len(f["input_ids"])), dtype=np.float32)
        logits[0, f["start_positions"]] = 10.0
        logits[1, f["end_positions"]] = 10.0
        outputs.append(logits)
    return outputs


# ---- metric -------------------------------------------------------------------------------------
def test_normalization_follows_the_official_rules():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear & the end.") == "apple pear end"
    # Articles go only as whole words; punctuation goes even inside words.
    assert normalize_answer("Theatre anthem") == "theatre anthem"
    assert normalize_answer("U.S.-based") == "usbased"
    assert normalize_answer("  \tA\n") == ""


def test_exact_and_f1_on_known_pairs():
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1
    assert exact_match("Eiffel", "Eiffel Tower") == 0
    # pred {denver, broncos} vs gold {denver, broncos, team}: P = 1, R = 2/3, F1 = 0.8
    assert f1_v1("Denver Broncos", "the Denver Broncos team") == pytest.approx(0.8)
    # Counts are clipped: pred has "new" and "york" twice, gold once -> P = 2/4, R = 1, F1 = 2/3.
    assert f1_v1("New York New York", "new york") == pytest.approx(2 / 3)
    assert f1_v1("Paris", "London") == 0.0
    # The two scripts disagree only on empty answers: v1.1 gives 0, v2.0 rewards "no answer".
    assert f1_v1("", "") == 0.0 and f1_v2("", "") == 1.0
    assert f1_v2("the", "") == 1.0  # "the" normalises to empty
    assert f1_v2("", "Paris") == 0.0


def test_v1_evaluate_takes_the_best_gold_answer():
    golds = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["1990s", "the 1990s decade"], "q3": ["x"]}
    preds = {"q1": "broncos", "q2": "1990s decade", "q3": "y"}
    out = squad_v1_evaluate(golds, preds)
    # q1: "broncos" equals "The Broncos" after normalisation -> 1 / 1 (0 / 2/3 against the first).
    # q2: equals "the 1990s decade" -> 1 / 1.   q3: 0 / 0.
    assert out["exact_match"] == pytest.approx(100 * 2 / 3)
    assert out["f1"] == pytest.approx(100 * 2 / 3)
    out = squad_v1_evaluate({"q": ["Denver Broncos", "Carolina Panthers"]}, {"q": "the Panthers"})
    assert out["exact_match"] == 0.0 and out["f1"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="no prediction"):
        squad_v1_evaluate(golds, {"q1": "x"})


def hand_made_v2():
    """Five questions; expected numbers worked out by hand below."""
    golds = {"q1": ["Denver Broncos"], "q2": ["Carolina Panthers"], "q3": [], "q4": [], "q5": ["Levi's Stadium"]}
    preds = {"q1": "Denver Broncos",  # exact 1, f1 1
             "q2": "Panthers",        # exact 0, f1 P=1 R=1/2 -> 2/3
             "q3": "Santa Clara",     # unanswerable but answered: 0 / 0
             "q4": "",                # unanswerable, abstained: 1 / 1
             "q5": ""}                # answerable, abstained: 0 / 0
    na_probs = {"q1": 0.1, "q2": 0.5, "q3": 0.6, "q4": 0.9, "q5": 0.7}
    return golds, preds, na_probs


def test_v2_evaluate_breakdown_and_best_threshold_by_hand():
    golds, preds, na_probs = hand_made_v2()
    out = squad_v2_evaluate(golds, preds, na_probs)  # official default --na-prob-thresh 1.0: no override
    assert out["exact_match"] == pytest.approx(100 * 2 / 5)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 5)
    assert out["total"] == 5
    assert out["HasAns_exact"] == pytest.approx(100 / 3) and out["HasAns_total"] == 3
    assert out["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 3)
    assert out["NoAns_exact"] == 50.0 and out["NoAns_f1"] == 50.0 and out["NoAns_total"] == 2
    # Best threshold, walking questions by na_prob from "all abstain" (score 2 = #unanswerable):
    #   exact: q1 +1 -> 3 (best, thresh 0.1); q2 +0 -> 3 (not strictly better); q3 -1 -> 2; q5 +0; q4 +0.
    #   f1:    q1 +1 -> 3 (0.1); q2 +2/3 -> 3.667 (best, thresh 0.5); q3 -1 -> 2.667; q5, q4 +0.
    assert out["best_exact"] == pytest.approx(60.0) and out["best_exact_thresh"] == 0.1
    assert out["best_f1"] == pytest.approx(100 * (11 / 3) / 5) and out["best_f1_thresh"] == 0.5


def test_v2_na_prob_threshold_turns_answers_into_abstentions():
    golds, preds, na_probs = hand_made_v2()
    # Cut-off 0.55: q3 (0.6), q5 (0.7), q4 (0.9) count as "no answer": q3 becomes right (1/1),
    # q5 stays wrong, q4 stays right -> exact 3/5, f1 (1 + 2/3 + 1 + 1) / 5.
    out = squad_v2_evaluate(golds, preds, na_probs, na_prob_thresh=0.55)
    assert out["exact_match"] == pytest.approx(60.0)
    assert out["f1"] == pytest.approx(100 * (11 / 3) / 5)
    # Without na_probs no threshold search happens (as the official script without --na-prob-file).
    assert "best_f1" not in squad_v2_evaluate(golds, preds)
    score, thresh = best_threshold(preds, {q: 0.0 for q in golds}, na_probs, {q: bool(g) for q, g in golds.items()})
    assert (score, thresh) == (40.0, 0.0)  # nothing ever beats abstaining on all: 2 / 5


def test_v2_gold_answers_that_normalise_to_nothing_still_make_a_question_answerable():
    """evaluate-v2.0.py: HasAns is bool(qa['answers']); only the scoring drops answers that
    normalise to "" (SQuAD dev has "." answers, e.g. v1.1 5730b7ce069b5314008322c4). Such a
    question was counted as NoAns, and a no-answer verdict on it scored 1 instead of 0."""
    # The gold "The" is scored as [""], so abstaining matches it, but the question stays HasAns.
    out = squad_v2_evaluate({"q": ["The"]}, {"q": ""})
    assert out["exact_match"] == 100.0 and out["HasAns_total"] == 1 and "NoAns_total" not in out
    # Numbers of the official script for: q answerable (gold "."), u unanswerable, both abstained.
    golds, preds, na_probs = {"q": ["."], "u": []}, {"q": "", "u": ""}, {"q": 2.0, "u": -1.0}
    out = squad_v2_evaluate(golds, preds, na_probs)
    assert (out["exact_match"], out["HasAns_total"], out["HasAns_exact"], out["NoAns_total"]) == (50.0, 1, 0.0, 1)
    assert (out["best_exact"], out["best_exact_thresh"]) == (100.0, 2.0)


# ---- reader -------------------------------------------------------------------------------------
def test_reader_counts_on_official_dev_files(v1_dev, v2_dev):
    assert len(v1_dev) == 10_570
    assert all(e.is_impossible is None and e.answers for e in v1_dev)
    assert len({e.title for e in v1_dev}) == 48
    assert len(v2_dev) == 11_873
    assert sum(e.is_impossible for e in v2_dev) == 5_945
    assert all(bool(e.answers) != e.is_impossible for e in v2_dev)
    # The official dev files contain no answer_start that misses its text.
    assert all(s >= 0 for e in v1_dev + v2_dev for s in e.answer_starts)
    assert get_task_class("squad") is SquadTask


def test_data_dir_layout_and_version_detection(tmp_path):
    v1 = make_task(data_dir=str(need(V1_DEV).parent))
    assert v1.read("dev")[0].is_impossible is None
    # v2 is detected from the file, not from the file name.
    (tmp_path / "dev-v1.1.json").write_bytes(need(V2_DEV).read_bytes())
    assert make_task(data_dir=str(tmp_path)).read("dev")[0].is_impossible is not None
    with pytest.raises(FileNotFoundError, match="train-v1.1.json or train-v2.0.json"):
        make_task(data_dir=str(tmp_path)).read("train")


def test_article_split_uses_disjoint_articles_of_the_dev_file():
    task = make_task(data_dir=str(need(V1_DEV).parent), article_split=3)
    train, dev = task.read("train"), task.read("dev")
    assert len({e.title for e in train}) == 3
    assert len(train) + len(dev) == 10_570
    assert not {e.context for e in train} & {e.context for e in dev}
    with pytest.raises(DataError, match="article-split 100"):
        make_task(dev_file=str(V1_DEV), article_split=100).read("dev")


def write_squad(path: Path, qas: list[dict], context: str = "Paris is the capital of France.",
                version: str = "1.1") -> Path:
    path.write_text(json.dumps({"version": version, "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


def test_v2_data_scored_with_a_model_trained_on_v1_is_said(tmp_path, caplog):
    """A v1.1 training file with a v2.0 dev file (or evaluate of a v1.1 run on v2.0 data) was
    scored as v2 without a word, though the model never saw a question without an answer."""
    v1 = write_squad(tmp_path / "train-v1.1.json", [
        {"id": "a", "question": "What?", "answers": [{"text": "Paris", "answer_start": 0}]}])
    v2 = write_squad(tmp_path / "dev-v2.0.json", [
        {"id": "b", "question": "What?", "is_impossible": False, "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "c", "question": "Who?", "is_impossible": True, "answers": []}], version="v2.0")
    task = make_task(train_file=str(v1), dev_file=str(v2))
    task.read("train")
    with caplog.at_level("WARNING"):
        task.read("dev")
    assert "dev-v2.0.json is SQuAD v2.0 data (1 of 2 questions have no answer) but the model is trained on v1.1" \
        in caplog.text
    assert task.state_dict() == {"train_version": "1.1"}  # saved in bertkit.json for evaluate
    caplog.clear()
    evaluating = make_task(dev_file=str(v2))
    evaluating.load_state_dict(task.state_dict())
    with caplog.at_level("WARNING"):
        evaluating.read("dev")
    assert "trained on v1.1" in caplog.text
    caplog.clear()
    v2_run = make_task(train_file=str(v2), dev_file=str(v1))  # a v2 model scored on v1.1: nothing to say
    v2_run.read("train")
    with caplog.at_level("WARNING"):
        v2_run.read("dev")
    assert "trained on" not in caplog.text


def test_answer_start_mismatch_names_file_and_question(tmp_path):
    bad = write_squad(tmp_path / "dev.json", [
        {"id": "good1", "question": "What?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "off-by-3", "question": "Which?", "answers": [{"text": "France", "answer_start": 27}]}])
    with pytest.raises(DataError, match=r"dev\.json: question id 'off-by-3': answer_start 27"):
        make_task(dev_file=str(bad)).read("dev")


def test_other_bad_inputs(tmp_path):
    dup = write_squad(tmp_path / "dup.json", [
        {"id": "a", "question": "Q?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "a", "question": "Q2?", "answers": [{"text": "Paris", "answer_start": 0}]}])
    with pytest.raises(DataError, match=r"dup\.json: question id 'a' appears twice"):
        make_task(dev_file=str(dup)).read("dev")
    contradiction = write_squad(tmp_path / "imp.json", [
        {"id": "b", "question": "Q?", "is_impossible": True, "answers": [{"text": "Paris", "answer_start": 0}]}],
        version="v2.0")
    with pytest.raises(DataError, match=r"imp\.json: question id 'b': is_impossible"):
        make_task(dev_file=str(contradiction)).read("dev")
    (tmp_path / "notsquad.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match="notsquad.json.*'data' list"):
        make_task(dev_file=str(tmp_path / "notsquad.json")).read("dev")
    with pytest.raises(ValueError, match="--doc-stride must be >= 1"):
        make_task(doc_stride=0)


def test_a_stride_as_long_as_the_window_is_refused(v1_dev, tokenizer):
    """A stride is cut to the window, so windows only abutted: accepted without a word."""
    with pytest.raises(ValueError, match="--doc-stride 128 is not below --max-seq-length 128, so context windows"):
        make_task(doc_stride=128).encode(v1_dev[:1], tokenizer, 128)


def test_whitespace_slips_are_counted_and_not_trained_on(tmp_path):
    context = "The  Eiffel Tower is in Paris."
    path = write_squad(tmp_path / "slip.json", [
        {"id": "slip", "question": "What?", "answers": [{"text": "The Eiffel Tower", "answer_start": 0}]},
        {"id": "ok", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 24}]},
        {"id": "early", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 23},
                                                          {"text": "in Paris", "answer_start": 21}]}],
        context=context)
    task = make_task(train_file=str(path), dev_file=str(path))
    assert [e.qid for e in task.read("train")] == ["ok", "early"]  # "early" keeps its good answer
    dev = task.read("dev")
    assert [e.qid for e in dev] == ["slip", "ok", "early"]
    assert dev[0].answer_starts == [-1] and dev[2].answer_starts == [-1, 21]
    assert task.slipped_answers == 4  # 2 per read


# ---- encoding + post-processing ---------------------------------------------------------------
def test_feature_layout_and_labels_point_at_the_answer(v1_dev, tokenizer):
    task = make_task()
    examples = v1_dev[:300]
    features = task.encode(examples, tokenizer, 384)
    for f in features:
        ids, types, c0 = f["input_ids"], f["token_type_ids"], f["context_start"]
        assert ids[0] == tokenizer.cls_id and ids[c0 - 1] == tokenizer.sep_id and ids[-1] == tokenizer.sep_id
        assert len(ids) == len(types) <= 384 and types[c0 - 1] == 0 and types[c0] == 1
        assert len(f["char_offsets"]) == len(f["max_context"]) == len(ids) - c0 - 1
        if f["start_positions"]:
            e = examples[f["example_index"]]
            s, t = f["char_offsets"][f["start_positions"] - c0][0], f["char_offsets"][f["end_positions"] - c0][1]
            # The labelled token span covers one of the gold answers (tokens can be wider than it).
            assert any(s <= a and a + len(text) <= t for text, a in zip(e.answers, e.answer_starts))


def test_windows_cover_each_token_once_as_max_context(v1_dev, tokenizer):
    task = make_task(doc_stride=32, max_query_length=24)
    examples = v1_dev[:200]
    features = task.encode(examples, tokenizer, 96)
    assert len(features) > 2 * len(examples)  # short windows: long contexts must be split
    by_example: dict[int, list[dict]] = {}
    for f in features:
        by_example.setdefault(f["example_index"], []).append(f)
    for index, feats in by_example.items():
        owned = [tuple(o) for f in feats for o, m in zip(f["char_offsets"], f["max_context"]) if m]
        every = {tuple(o) for f in feats for o in f["char_offsets"]}
        assert len(owned) == len(set(owned)) and set(owned) == every
        # Consecutive windows start doc_stride tokens apart, so they overlap.
        assert len(feats) == 1 or feats[1]["char_offsets"][0] == feats[0]["char_offsets"][32]


def test_oracle_logits_recover_v1_answers(v1_dev, tokenizer):
    """Logits peaked at the gold tokens must give back the gold text through windows and offsets:
    EM falls short of 100 only where an answer starts or ends inside a word piece ("8" in "18")."""
    examples = v1_dev[:1000]
    for max_len, stride in ((384, 128), (128, 48)):
        task = make_task(doc_stride=stride)
        features = task.encode(examples, tokenizer, max_len)
        predictions = task.postprocess(examples, features, oracle_outputs(features))
        scores = task.metrics(examples, predictions)
        assert scores["exact_match"] >= 99.0, (max_len, scores)
        assert scores["f1"] >= 99.0, (max_len, scores)
    assert len(features) > 1.5 * len(examples)  # the 128-token run really went through windows


def test_oracle_logits_v2_give_no_answer_exactly(v2_dev, tokenizer):
    examples = v2_dev[:1500]
    task = make_task()
    features = task.encode(examples, tokenizer, 384)
    predictions = task.postprocess(examples, features, oracle_outputs(features))
    scores = task.metrics(examples, predictions)
    assert scores["NoAns_exact"] == 100.0 and scores["NoAns_total"] == sum(e.is_impossible for e in examples)
    assert scores["HasAns_exact"] >= 98.0  # a few gold answers exceed --max-answer-length 30
    assert scores["best_f1"] >= scores["f1"]
    # Null odds: +20 (null 10 + 10 against any span's 0) when unanswerable; negative when answerable,
    # since the window holding the answer has [CLS] logits of 0.
    assert all((p.null_odds > 0) == e.is_impossible for e, p in zip(examples, predictions))


def test_v2_metrics_score_the_answers_written_at_any_threshold(v2_dev):
    """evaluate must score what predict writes: with --null-score-diff-threshold 2, answers whose
    null odds lie in (1, 2] are in predictions.json, and the script's default cut-off (1.0) would
    have counted them as abstentions (audit: EM 51.09 reported vs 36.33 for the file)."""
    from bertkit.tasks.squad import SquadPrediction

    examples = v2_dev[:400]
    rng = np.random.default_rng(0)
    for threshold in (0.0, 2.0, -1.5):
        task = make_task(null_score_diff_threshold=threshold)
        predictions = []
        for e in examples:
            odds = float(rng.uniform(-4, 4))
            text = "" if odds > threshold else (e.answers[0] if e.answers and rng.random() < 0.7 else "wrong span")
            predictions.append(SquadPrediction(text, odds, []))
        reported = task.metrics(examples, predictions)
        as_written = squad_v2_evaluate({e.qid: e.answers for e in examples},
                                       {e.qid: p.text for e, p in zip(examples, predictions)})
        assert reported["exact_match"] == pytest.approx(as_written["exact_match"])
        assert reported["f1"] == pytest.approx(as_written["f1"])


def test_postprocess_respects_max_answer_length_and_threshold(v2_dev, tokenizer):
    example = next(e for e in v2_dev if not e.is_impossible and len(e.answers[0].split()) >= 3)
    task = make_task(max_answer_length=1)
    features = task.encode([example], tokenizer, 384)
    prediction = task.postprocess([example], features, oracle_outputs(features))[0]
    assert prediction.text != example.answers[0] and len(prediction.nbest) <= 20
    assert abs(sum(c["probability"] for c in prediction.nbest) - 1) < 1e-6
    # A high threshold keeps the best span even when the null score beats it.
    logits = oracle_outputs(features)
    for x in logits:
        x[:, 0] = 30.0
    lenient = make_task(null_score_diff_threshold=1000.0).postprocess([example], features, logits)[0]
    strict = make_task().postprocess([example], features, logits)[0]
    assert strict.text == "" and lenient.text == example.answers[0] and strict.null_odds == lenient.null_odds > 0


def test_write_predictions_files(v2_dev, tokenizer, tmp_path):
    examples = v2_dev[:40]
    task = make_task()
    features = task.encode(examples, tokenizer, 384)
    predictions = task.postprocess(examples, features, oracle_outputs(features))
    written = task.write_predictions(examples, predictions, tmp_path / "out")
    assert written == tmp_path / "out" / "predictions.json"
    preds = json.loads(written.read_text())
    odds = json.loads((tmp_path / "out" / "null_odds.json").read_text())
    nbest = json.loads((tmp_path / "out" / "nbest_predictions.json").read_text())
    assert list(preds) == list(odds) == list(nbest) == [e.qid for e in examples]
    # The files alone reproduce the metrics, as the official script would read them.
    golds = {e.qid: e.answers for e in examples}
    assert squad_v2_evaluate(golds, preds, odds) == pytest.approx(task.metrics(examples, predictions))


def test_an_interrupted_write_keeps_the_earlier_prediction_set_whole(v2_dev, tokenizer, tmp_path, monkeypatch):
    """predictions.json, nbest and null_odds were each renamed as soon as written: Ctrl-C while
    null_odds.json was written left new predictions beside old null odds (the official script
    then scores one run's answers with another's thresholds)."""
    task = make_task()
    out = tmp_path / "out"
    written = {}
    for name, examples in (("first", v2_dev[:20]), ("second", v2_dev[20:40])):
        features = task.encode(examples, tokenizer, 384)
        written[name] = (examples, task.postprocess(examples, features, oracle_outputs(features)))
    task.write_predictions(*written["first"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_dumps = json.dumps

    def interrupted_at_null_odds(obj, *args, **kwargs):  # null odds: the only id -> float mapping
        if isinstance(obj, dict) and obj and isinstance(next(iter(obj.values())), float):
            raise KeyboardInterrupt
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", interrupted_at_null_odds)
    with pytest.raises(KeyboardInterrupt):
        task.write_predictions(*written["second"], out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .tmp left, the first set intact
    task.write_predictions(*written["second"], out)
    assert list(json.loads((out / "null_odds.json").read_text())) == [e.qid for e in v2_dev[20:40]]


def test_dev_predictions_keep_the_test_runs_companion_files(v2_dev, tokenizer, tmp_path):
    """A dev run into the test run's folder replaced its null_odds.json and nbest_predictions.json
    (40 test ids -> the 20 dev ids, none of the test ids left), so the official script failed."""
    from bertkit.commands.predict import prediction_file_name

    task = make_task()
    out = tmp_path / "out"
    by_split = {"test": v2_dev[:40], "dev": v2_dev[40:60]}
    for split, examples in by_split.items():
        features = task.encode(examples, tokenizer, 384)
        predictions = task.postprocess(examples, features, oracle_outputs(features))
        task.write_predictions(examples, predictions, out / prediction_file_name(task, split))
    assert sorted(p.name for p in out.iterdir()) == [
        "nbest_predictions.dev.json", "nbest_predictions.json", "null_odds.dev.json", "null_odds.json",
        "predictions.dev.json", "predictions.json"]
    for split, suffix in (("test", ".json"), ("dev", ".dev.json")):
        ids = [e.qid for e in by_split[split]]
        for name in ("predictions", "null_odds", "nbest_predictions"):
            assert list(json.loads((out / f"{name}{suffix}").read_text())) == ids, name + suffix
    # A name of the user's own keeps its companions beside it under its own stem.
    assert task.write_predictions(by_split["dev"], predictions, out / "mine.json") == out / "mine.json"
    assert (out / "mine.null_odds.json").is_file() and (out / "mine.nbest_predictions.json").is_file()


def test_encode_leaves_a_truncating_tokenizer_alone(v1_dev):
    from tokenizers import Tokenizer as RustTokenizer

    raw = RustTokenizer.from_file(str(need(MINILM / "tokenizer.json")))
    assert raw.truncation["max_length"] == 128  # this file pads and cuts to 128 tokens
    example = max(v1_dev[:500], key=lambda e: len(e.context))
    features = make_task().encode([example], raw, 512)
    assert len(features) == 1 and len(features[0]["input_ids"]) > 128
    assert raw.truncation["max_length"] == 128


# ---- a real fine-tune -------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_learns_span_qa_on_held_out_articles(tmp_path, tokenizer):
    """200 questions of the first 3 dev articles, scored on 120 questions of later articles, 8 epochs
    (128 steps, about 2 minutes on 2 cores). Over three seeds of the new QA head: F1 6.6-7.1 -> 36.2-43.8,
    EM 23.3-32.5. After 4 epochs the same seeds ended anywhere from 13 to 34 F1, too close to a bar."""
    torch = pytest.importorskip("torch")
    trainer = pytest.importorskip("bertkit.training.trainer")
    from bertkit.config import TrainConfig
    from bertkit.modeling.heads import BertForQuestionAnswering

    torch.manual_seed(0)
    task = make_task(dev_file=str(need(V1_DEV)), article_split=3, doc_stride=48)
    train_examples, dev_examples = task.read("train")[:200], task.read("dev")[:120]
    # 96-token windows keep the CPU run short; only windows holding the answer are trained on.
    train_features = [f for f in task.encode(train_examples, tokenizer, 96) if f["start_positions"]]
    dev_features = task.encode(dev_examples, tokenizer, 96)
    model = BertForQuestionAnswering.from_pretrained(MINILM)
    device = torch.device("cpu")
    before, _ = trainer.evaluate(task, model, dev_examples, dev_features, 64, device)
    config = TrainConfig(output_dir=str(tmp_path), epochs=8, lr=3e-4, batch_size=16, warmup_ratio=0.1,
                         eval_every="none", progress=False, device="cpu")
    trainer.train(task, model, train_features, None, config)
    after, _ = trainer.evaluate(task, model, dev_examples, dev_features, 64, device)
    assert after["f1"] > before["f1"] + 20, (before, after)
    assert after["exact_match"] > 15.0, after


def test_run_squad_command_line_runs_unchanged(tmp_path, capsys):
    """pytorch-pretrained-bert's README command for run_squad.py (no --task: its --train_file and
    --predict_file are SQuAD files), on slices of the real dev file: it trains, then --do_predict writes
    predictions.json and nbest_predictions.json into --output_dir, as the script does."""
    data = json.loads(need(V1_DEV).read_text(encoding="utf-8"))

    def sliced(article: int, questions: int) -> dict:
        paragraph = dict(data["data"][article]["paragraphs"][0])
        paragraph["qas"] = paragraph["qas"][:questions]
        return {"version": data["version"], "data": [{"title": data["data"][article]["title"], "paragraphs": [paragraph]}]}

    train_file, predict_file = tmp_path / "train-v1.1.json", tmp_path / "dev-v1.1.json"
    train_file.write_text(json.dumps(sliced(0, 12)), encoding="utf-8")
    predict_file.write_text(json.dumps(sliced(1, 6)), encoding="utf-8")
    out = tmp_path / "debug_squad"
    from bertkit.cli import main

    assert main(["finetune", "--bert_model", str(need(MINILM)), "--do_train", "--do_predict", "--do_lower_case",
                 "--train_file", str(train_file), "--predict_file", str(predict_file), "--train_batch_size", "12",
                 "--learning_rate", "3e-5", "--num_train_epochs", "2.0", "--max_seq_length", "128", "--doc_stride", "64",
                 "--output_dir", f"{out}/", "--no-progress"]) == 0
    info = json.loads((out / "bertkit.json").read_text())
    assert info["task"] == "squad" and info["extra"]["doc_stride"] == 64 and info["train"]["eval_every"] == "none"
    predictions = json.loads((out / "predictions.json").read_text())
    qids = [qa["id"] for qa in sliced(1, 6)["data"][0]["paragraphs"][0]["qas"]]
    assert sorted(predictions) == sorted(qids) and all(isinstance(t, str) for t in predictions.values())
    assert sorted(json.loads((out / "nbest_predictions.json").read_text())) == sorted(qids)


def test_nvidia_run_squad_command_runs(nvidia_checkpoint, tmp_path, capsys):
    """NVIDIA DeepLearningExamples' scripts/run_squad.sh command ("train eval"), flag for flag, with its
    checkpoint, config and vocab given apart (MiniLM saved as NVIDIA saves a model) and a small
    --max_seq_length. Their --max_steps N stops the epochs' schedule early, after N + 1 optimizer steps
    (their loop leaves once global_step > max_steps); --bert_model only named their feature cache."""
    data = json.loads(need(V1_DEV).read_text(encoding="utf-8"))

    def sliced(article: int, questions: int) -> dict:
        paragraph = dict(data["data"][article]["paragraphs"][0])
        paragraph["qas"] = paragraph["qas"][:questions]
        return {"version": data["version"], "data": [{"title": data["data"][article]["title"], "paragraphs": [paragraph]}]}

    squad_dir = tmp_path / "v1.1"
    squad_dir.mkdir()
    (squad_dir / "train-v1.1.json").write_text(json.dumps(sliced(0, 12)), encoding="utf-8")
    (squad_dir / "dev-v1.1.json").write_text(json.dumps(sliced(1, 6)), encoding="utf-8")
    out = tmp_path / "SQuAD"
    from bertkit.cli import main

    argv = ["finetune", f"--init_checkpoint={nvidia_checkpoint['checkpoint']}", "--do_train",
            f"--train_file={squad_dir}/train-v1.1.json", "--train_batch_size=4", "--do_predict",
            f"--predict_file={squad_dir}/dev-v1.1.json", "--predict_batch_size=4",
            f"--eval_script={squad_dir}/evaluate-v1.1.py", "--do_eval", "--do_lower_case",
            "--bert_model=bert-large-uncased", "--learning_rate=3e-5", "--seed=1", "--num_train_epochs=2.0",
            "--max_seq_length=128", "--doc_stride=64", f"--output_dir={out}", f"--vocab_file={nvidia_checkpoint['vocab']}",
            f"--config_file={nvidia_checkpoint['config']}", "--max_steps=1", "--amp", f"--json-summary={out}/dllogger.json",
            "--disable-progress-bar", "--no_cuda"]
    assert main([a for a in argv if a != "--amp"]) == 0  # --amp is fp16, slow on CPU: checked below
    info = json.loads((out / "bertkit.json").read_text())
    assert (info["task"], info["base_model"], info["train"]["stop_at_step"], info["train"]["max_steps"]) == \
        ("squad", str(nvidia_checkpoint["checkpoint"]), 2, 0)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    total = log[0]["total_steps"]  # the schedule of 2 epochs of 4-feature steps
    assert total > 4 and [r["step"] for r in log if "lr" in r] == [2]
    assert next(r["lr"] for r in log if "lr" in r) == pytest.approx(3e-5 * (1 - 1 / total))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "f1" in metrics["dev"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert sorted(predictions) == sorted({qa["id"] for qa in sliced(1, 6)["data"][0]["paragraphs"][0]["qas"]})
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 30522 and config["architectures"] == ["BertForQuestionAnswering"]
    assert "--json-summary" in capsys.readouterr().err
    # --amp is --fp16; their default --max_steps -1 trains the whole --num_train_epochs.
    from bertkit.commands import finetune
    from bertkit.commands.common import train_config_from_args

    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser, argv[1:])
    args = parser.parse_args([*argv[1:], "--max_steps=-1", f"--output_dir={tmp_path / 'fp16'}"])
    config = train_config_from_args(args)
    assert (config.precision, config.stop_at_step, config.max_steps, config.epochs) == ("fp16", 0, 0, 2.0)


def test_evaluate_and_predict_take_the_saved_tasks_flags_without_task(tmp_path):
    """A run directory names its task in bertkit.json; its flags need no repeated --task."""
    import argparse

    from bertkit.commands import evaluate, predict

    run = tmp_path / "run"
    run.mkdir()
    (run / "bertkit.json").write_text(json.dumps({"task": "squad"}))
    for command in (evaluate, predict):
        argv = ["--model", str(run), "--null-score-diff-threshold", "2.0", "--output", str(tmp_path / "o")]
        parser = argparse.ArgumentParser()
        command.add_arguments(parser, argv)
        assert parser.parse_args(argv).null_score_diff_threshold == 2.0


def test_run_qa_question_records_read_as_the_official_layout(tmp_path, capsys):
    """transformers' run_qa.py reads one record per question (the `datasets` SQuAD columns), under
    "data" or as JSON lines; both give the examples of the official file (SQuAD 2.0: unanswerable =
    empty answers), and its README command line (with local files) fine-tunes and scores."""
    from bertkit.cli import main
    from bertkit.tasks.squad import parse_squad_files

    source = need(V2_DEV)
    data = json.loads(source.read_text(encoding="utf-8"))
    data["data"] = data["data"][:3]
    official_file = tmp_path / "official.json"
    official_file.write_text(json.dumps(data), encoding="utf-8")
    records = [{"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
                "answers": {"text": [x["text"] for x in qa["answers"]],
                            "answer_start": [x["answer_start"] for x in qa["answers"]]}}
               for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    (tmp_path / "records.json").write_text(json.dumps({"data": records}), encoding="utf-8")
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    def fields(examples):
        return [(e.qid, e.question, e.context, e.answers, e.answer_starts, e.is_impossible, e.title) for e in examples]

    official, _ = parse_squad_files([official_file])
    assert any(e.is_impossible for e in official) and any(e.is_impossible is False for e in official)
    for name in ("records.json", "records.jsonl"):
        assert fields(parse_squad_files([tmp_path / name])[0]) == fields(official)
    answerable = [r for r in records if r["answers"]["text"]]
    (tmp_path / "v1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answerable), encoding="utf-8")
    assert {e.is_impossible for e in parse_squad_files([tmp_path / "v1.jsonl"])[0]} == {None}  # v1.1 data
    bad = dict(records[0], answers={"text": ["a"], "answer_start": []})
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="question record 1: 'answers' must be"):
        parse_squad_files([tmp_path / "bad.jsonl"])

    (tmp_path / "train.json").write_text(json.dumps({"data": records[:16]}), encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[-8:]), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["finetune", "--model_name_or_path", str(need(MINILM)), "--train_file", str(tmp_path / "train.json"),
                 "--validation_file", str(tmp_path / "dev.jsonl"), "--do_train", "--do_eval",
                 "--per_device_train_batch_size", "12", "--learning_rate", "3e-5", "--num_train_epochs", "1",
                 "--max_seq_length", "128", "--doc_stride", "64", "--version_2_with_negative", "--output_dir", str(out),
                 "--no_cuda", "--no-progress"]) == 0
    dev = json.loads((out / "metrics.json").read_text())["dev"]
    assert dev["total"] == 8 and "NoAns_total" in dev


# ---- the Hub's Parquet files (rajpurkar/squad, rajpurkar/squad_v2) -----------------------------------
def hub_squad_rows(official: Path) -> list[dict]:
    """The rows of the Hub's SQuAD Parquet files made from an official JSON file: one per question,
    in file order, as `datasets`' squad loading script flattened the JSON."""
    data = json.loads(official.read_text(encoding="utf-8"))
    return [{"id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in data["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def write_hub_squad(path: Path, rows: list[dict], columns: tuple[str, ...] = ("id", "title", "context", "question",
                                                                            "answers")) -> Path:
    """A Parquet file in the Hub's schema (answers: struct of a string list and an int32 list)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("context", pa.string()),
                        ("question", pa.string()),
                        ("answers", pa.struct([("text", pa.list_(pa.string())),
                                               ("answer_start", pa.list_(pa.int32()))]))])
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema).select(list(columns))
    pq.write_table(table, path)
    return path


def squad_fields(examples) -> list[tuple]:
    return [(e.qid, e.question, e.context, e.answers, e.answer_starts, e.is_impossible, e.title) for e in examples]


def test_hub_parquet_reads_as_the_official_files(tmp_path, v1_dev, v2_dev):
    """The Hub's layouts of the real dev files give the official files' examples, every one: v1.1
    from --data-dir in plain_text/ as two shards (cut inside an article, concatenated in order),
    v2.0 from --data-dir in squad_v2/ and from --dev-file; --article-split slices the same articles."""
    v1_rows, v2_rows = hub_squad_rows(need(V1_DEV)), hub_squad_rows(need(V2_DEV))
    v1_dir, v2_dir = tmp_path / "squad", tmp_path / "squad_v2"
    cut = 1001  # inside an article (its title continues in the second shard)
    assert v1_rows[cut - 1]["title"] == v1_rows[cut]["title"]
    first = write_hub_squad(v1_dir / "plain_text" / "validation-00000-of-00002.parquet", v1_rows[:cut])
    second = write_hub_squad(v1_dir / "plain_text" / "validation-00001-of-00002.parquet", v1_rows[cut:])
    v2_file = write_hub_squad(v2_dir / "squad_v2" / "validation-00000-of-00001.parquet", v2_rows)

    from_hub = make_task(data_dir=str(v1_dir)).read("dev")
    assert squad_fields(from_hub) == squad_fields(v1_dev)
    assert (from_hub[0].source, from_hub[cut].source) == (f"{first}: row 0", f"{second}: row 0")
    for task in (make_task(data_dir=str(v2_dir)), make_task(dev_file=str(v2_file))):
        assert squad_fields(task.read("dev")) == squad_fields(v2_dev)

    official_split, hub_split = (make_task(dev_file=str(V1_DEV), article_split=3),
                                 make_task(data_dir=str(v1_dir), article_split=3))
    for split in ("train", "dev"):
        assert squad_fields(hub_split.read(split)) == squad_fields(official_split.read(split))


def test_hub_parquet_errors_name_file_row_and_column(tmp_path):
    rows = hub_squad_rows(need(V1_DEV))[:3]
    no_answers = write_hub_squad(tmp_path / "no_answers.parquet", rows, ("id", "title", "context", "question"))
    with pytest.raises(DataError, match=r"no_answers\.parquet: no column 'answers'; expected the columns id, context, "
                                        r"question, answers \(the file has id, title, context, question\)"):
        make_task(dev_file=str(no_answers)).read("dev")
    moved = [rows[0], dict(rows[1], answers={"text": rows[1]["answers"]["text"][:1], "answer_start": [3]})]
    path = write_hub_squad(tmp_path / "moved.parquet", moved)
    with pytest.raises(DataError, match=rf"{path}: row 1: question id '{rows[1]['id']}': answer_start 3 does not "
                                        r"point at the answer"):
        make_task(dev_file=str(path)).read("dev")
    uneven = [rows[0], dict(rows[1], answers={"text": ["a", "b"], "answer_start": [0]})]
    path = write_hub_squad(tmp_path / "uneven.parquet", uneven)
    with pytest.raises(DataError, match=rf"{path}: row 1: 'answers' must be"):
        make_task(dev_file=str(path)).read("dev")
    # Two datasets' folders in one --data-dir: refused, not one of them picked.
    write_hub_squad(tmp_path / "both" / "plain_text" / "validation-00000-of-00001.parquet", rows)
    write_hub_squad(tmp_path / "both" / "squad_v2" / "validation-00000-of-00001.parquet", rows)
    with pytest.raises(ValueError, match="plain_text and .*squad_v2 both hold validation Parquet files"):
        make_task(data_dir=str(tmp_path / "both")).read("dev")
    with pytest.raises(FileNotFoundError, match=r"nor the Hub's train-\*\.parquet"):
        make_task(data_dir=str(tmp_path / "both")).read("train")


def test_finetune_from_a_hub_dataset_folder(tmp_path, capsys):
    """`bertkit finetune --task squad --data-dir` on a downloaded rajpurkar/squad_v2 folder (real dev
    questions as its train and validation shards) trains and scores as SQuAD 2.0."""
    from bertkit.cli import main

    rows = hub_squad_rows(need(V2_DEV))
    data_dir = tmp_path / "rajpurkar-squad_v2"
    write_hub_squad(data_dir / "squad_v2" / "train-00000-of-00001.parquet", rows[:16])
    write_hub_squad(data_dir / "squad_v2" / "validation-00000-of-00001.parquet", rows[-8:])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "squad", "--model", str(need(MINILM)), "--data-dir", str(data_dir),
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "8", "--max-seq-length", "128",
                 "--doc-stride", "64", "--device", "cpu", "--no-progress"]) == 0
    dev = json.loads((out / "metrics.json").read_text())["dev"]
    assert dev["total"] == 8 and "NoAns_total" in dev
