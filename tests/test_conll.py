"""CoNLL-2003 NER task: reader (real files, IOB1, bad input), windowed encoding, seqeval metric,
prediction file, and a short real fine-tuning run of all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.metrics.ner import ner_scores
from bertkit.tasks import DataError, TaskOptions, get_task_class
from bertkit.tasks.conll import CONLL2003_TAGS, bioes_to_iob2, iob1_to_iob2, iob2_to_bioes, plan_windows

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONLL = SHARED / "data" / "conll2003"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"


def conll_task(name: str = "conll2003", **kwargs) -> object:
    extra = kwargs.pop("extra", {})
    return get_task_class(name)(TaskOptions(**kwargs, extra=extra))


@pytest.fixture(scope="module")
def conll_dir() -> Path:
    if not (CONLL / "train.txt").is_file():
        pytest.skip(f"{CONLL}/train.txt is absent")
    return CONLL


@pytest.fixture(scope="module")
def tokenizer():
    if not (MINILM / "tokenizer.json").is_file():
        pytest.skip(f"{MINILM}/tokenizer.json is absent")
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(MINILM)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- reading the real files -----------------------------------------------------------------------
def test_real_counts_match_published_statistics(conll_dir):
    task = conll_task(data_dir=str(conll_dir))
    expected = {"train": (14041, 203621, 946), "dev": (3250, 51362, 216), "test": (3453, 46435, 231)}
    for split, (sentences, tokens, documents) in expected.items():
        examples = task.read(split)
        assert len(examples) == sentences, split
        assert sum(len(ex.words) for ex in examples) == tokens, split
        assert sum(ex.doc_start for ex in examples) == documents, split
        assert all(len(ex.words) == len(ex.tags) for ex in examples)
    assert task.converted_files == []  # this copy is already IOB2
    first = task.read("train")[0]
    assert first.words[:3] == ["EU", "rejects", "German"] and first.tags[:3] == ["B-ORG", "O", "B-MISC"]
    assert first.source == f"{conll_dir / 'train.txt'}:3"
    assert task.label_names() == CONLL2003_TAGS


def test_ner_task_infers_tag_set_from_train(conll_dir):
    task = conll_task("ner", data_dir=str(conll_dir))
    assert task.label_names() == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


# ---- IOB1 -> IOB2 -----------------------------------------------------------------------------------
def test_iob1_to_iob2_rules():
    assert iob1_to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert iob1_to_iob2(["I-ORG", "I-LOC", "I-LOC"]) == ["B-ORG", "B-LOC", "I-LOC"]  # type change opens
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert iob1_to_iob2(iob2) == iob2  # IOB2 input is unchanged


def test_iob1_file_is_detected_and_converted(tmp_path):
    # The original eng.train layout: IOB1, DOCSTART, 4 columns.
    write(tmp_path / "eng.train",
          "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
          "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\nJohn NNP I-NP B-PER\n")
    task = conll_task(data_dir=str(tmp_path))
    examples = task.read("train")
    assert [ex.tags for ex in examples] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER", "B-PER"]]
    assert examples[0].doc_start and not examples[1].doc_start
    assert task.converted_files == [str(tmp_path / "eng.train")]


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, line, message", [
    ("EU NNP B-NP B-ORG\nrejects O\n", 2, "2 columns, expected 4"),
    ("EU NNP B-NP B-ORG\n\nrejects VBZ B-VP X-PER\n", 3, "tag 'X-PER' is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE"),
    ("EU NNP B-NP B-ORG\nrejects VBZ B-VP B-DATE\n", 2, "entity type 'DATE' is not a CoNLL-2003 type"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "train.txt", text)
    with pytest.raises(DataError) as err:
        conll_task(data_dir=str(tmp_path)).read("train")
    assert f"{path}:{line}:" in str(err.value) and message in str(err.value)


def test_other_bad_inputs(tmp_path):
    write(tmp_path / "train.txt", "-DOCSTART- -X- O O\n\n\n")
    with pytest.raises(DataError, match="no sentences found"):
        conll_task(data_dir=str(tmp_path)).read("train")
    write(tmp_path / "train.txt", "EU B-ORG\n")
    with pytest.raises(DataError, match="--label-column 5 does not exist"):
        conll_task(data_dir=str(tmp_path), extra={"label_column": 5}).read("train")
    with pytest.raises(FileNotFoundError, match="valid.txt"):
        conll_task(data_dir=str(tmp_path)).read("dev")
    # A dev tag the training set never had cannot be encoded by `ner`; the error names the example.
    write(tmp_path / "valid.txt", "Paris B-GPE\n")
    task = conll_task("ner", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"valid.txt:1 .*tag 'B-GPE' is not in the label set"):
        task.encode(task.read("dev"), _whitespace_tokenizer(), 16)


def test_bioes_conversions_round_trip_on_real_sentences(conll_dir):
    examples = conll_task(data_dir=str(conll_dir)).read("dev")
    assert iob2_to_bioes(["B-PER", "I-PER", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]) == [
        "B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]
    for ex in examples:
        bioes = iob2_to_bioes(ex.tags)
        assert bioes_to_iob2(bioes) == ex.tags and iob2_to_bioes(bioes) == bioes
    # The same entities, so the same scores, read from either scheme.
    gold = [ex.tags for ex in examples[:300]]
    rng = np.random.default_rng(0)
    predicted = [[t if rng.random() > 0.1 else str(rng.choice(CONLL2003_TAGS)) for t in tags] for tags in gold]
    predicted = [iob1_to_iob2(tags) for tags in predicted]  # well-formed, as BIOES can only express those
    iob2 = ner_scores(gold, predicted)
    bioes = ner_scores([iob2_to_bioes(t) for t in gold], [iob2_to_bioes(t) for t in predicted], scheme="BIOES")
    assert 0.5 < iob2["f1"] < 1
    for key in ("precision", "recall", "f1", "strict_f1", "f1_PER", "f1_MISC"):
        assert bioes[key] == pytest.approx(iob2[key]), key


def test_bioes_training_file_makes_a_bioes_task(conll_dir, tmp_path):
    """A BIOES train.txt: the model learns BIOES tags (B/I/E/S per type), an IOB1/IOB2 dev file is
    converted to BIOES, and predictions are made in BIOES (written in IOB2); `conll2003` does the same."""
    real = conll_task(data_dir=str(conll_dir))
    train = real.read("train")[:200]
    write(tmp_path / "train.txt", "".join("".join(f"{w} {t}\n" for w, t in zip(ex.words, iob2_to_bioes(ex.tags)))
                                         + "\n" for ex in train))
    shutil.copy(conll_dir / "valid.txt", tmp_path / "valid.txt")
    for name, labels in (("ner", ["O"] + [f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in "BIES"]),
                         ("conll2003", ["O"] + [f"{p}-{t}" for t in ("PER", "ORG", "LOC", "MISC") for p in "BIES"])):
        task = conll_task(name, data_dir=str(tmp_path))
        assert task.label_names() == labels
        assert [ex.tags for ex in task.read("train")] == [iob2_to_bioes(ex.tags) for ex in train]
        dev = task.read("dev")
        assert [ex.tags for ex in dev] == [iob2_to_bioes(ex.tags) for ex in real.read("dev")]
        assert task.metrics(dev, [ex.tags for ex in dev])["strict_f1"] == 1.0
    # A model saved with BIOES labels reads an IOB2 file as BIOES too (evaluate/predict).
    saved = conll_task("ner", test_file=str(conll_dir / "test.txt"))
    saved.set_label_names(labels)
    assert any(t.startswith("S-") for ex in saved.read("test") for t in ex.tags)


def test_label_column_and_custom_tags(tmp_path):
    # Tag in the middle column, types outside CoNLL-2003: fine for `ner`, which infers them.
    write(tmp_path / "train.txt", "aspirin B-DRUG x\nworks O x\n\nibuprofen B-DRUG x\ntoo O x\n")
    task = conll_task("ner", data_dir=str(tmp_path), extra={"label_column": 1})
    assert [ex.tags for ex in task.read("train")] == [["B-DRUG", "O"], ["B-DRUG", "O"]]
    assert task.label_names() == ["O", "B-DRUG", "I-DRUG"]


def test_tokens_may_hold_line_separators_and_nbsp(tmp_path):
    """Only a newline ends a line and only spaces/tabs separate columns: U+2028, U+0085, form feeds
    and NBSP inside a token are text (str.splitlines/str.split broke the token across lines or
    columns and reported a column count the line does not have)."""
    tokens = ["foo\u2028bar", "a\x85b", "x\x0cy", "10\u00a0000"]
    write(tmp_path / "train.txt", "-DOCSTART- O\n\n" + "".join(f"{t} O\n" for t in tokens) + "Paris\tB-LOC\r\n\n")
    [example] = conll_task("ner", data_dir=str(tmp_path)).read("train")
    assert (example.words, example.tags) == (tokens + ["Paris"], ["O"] * 4 + ["B-LOC"])


# ---- windows -----------------------------------------------------------------------------------------
def test_plan_windows_scores_every_word_once():
    rng = random.Random(0)
    for _ in range(300):
        budget = rng.randint(1, 20)
        lengths = [rng.randint(1, budget) for _ in range(rng.randint(1, 40))]
        overlap = rng.randint(0, budget)
        windows = plan_windows(lengths, budget, overlap)
        scored = [w for _, _, s in windows for w in s]
        assert sorted(scored) == list(range(len(lengths)))  # each word exactly once
        for first, end, s in windows:
            assert sum(lengths[first:end]) <= budget
            assert all(first <= w < end for w in s)
        assert windows[0][0] == 0 and windows[-1][1] == len(lengths)
        for (f1, e1, _), (f2, e2, _) in zip(windows, windows[1:]):
            assert f1 < f2 <= e1  # moves forward, leaves no gap
            assert f2 == e1 or sum(lengths[f2:e1]) <= overlap


def test_plan_windows_max_context_rule():
    # 10 one-token words, windows of 6 with 4 repeated: [0,6) then [2,8) then [4,10).
    windows = plan_windows([1] * 10, budget=6, overlap=4)
    assert [(f, e) for f, e, _ in windows] == [(0, 6), (2, 8), (4, 10)]
    # Word 3 has context min(3,2)=2 in window 0 and min(1,4)=1 in window 1 -> window 0.
    assert [s for _, _, s in windows] == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9]]


def test_long_sentences_are_windowed_not_truncated(conll_dir, tokenizer):
    task = conll_task(data_dir=str(conll_dir))
    examples = task.read("dev")
    max_len = 24
    features = task.encode(examples, tokenizer, max_len)
    assert len(features) > len(examples)  # many dev sentences exceed 22 sub-tokens
    seen: dict[int, list[int]] = {}
    label_to_id = {t: i for i, t in enumerate(task.label_names())}
    for f in features:
        assert len(f["input_ids"]) <= max_len
        assert f["input_ids"][0] == tokenizer.cls_id and f["input_ids"][-1] == tokenizer.sep_id
        assert len(f["labels"]) == len(f["word_ids"]) == len(f["input_ids"])
        ex = examples[f["example_index"]]
        for label, word in zip(f["labels"], f["word_ids"]):
            assert (label == -100) == (word == -1)
            if word >= 0:
                assert label == label_to_id[ex.tags[word]]
                seen.setdefault(f["example_index"], []).append(word)
    assert len(seen) == len(examples)
    for index, words in seen.items():
        assert sorted(words) == list(range(len(examples[index].words))), index


def test_first_subtoken_gets_the_label_and_tokenizer_json_limits_are_ignored(tokenizer, tmp_path):
    import tokenizers

    # tokenizer.json of all-MiniLM-L6-v2 truncates and pads to 128; the task must not inherit that.
    raw = tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    assert raw.truncation is not None
    words = ["Huggingface"] + ["x"] * 200
    write(tmp_path / "train.txt", "\n".join(f"{w} {'B-ORG' if i == 0 else 'O'}" for i, w in enumerate(words)) + "\n")
    task = conll_task(data_dir=str(tmp_path))
    ex = task.read("train")
    for tok in (tokenizer, raw):
        features = task.encode(ex, tok, 128)
        assert len(features) == 2 and all(len(f["input_ids"]) <= 128 for f in features)
        first = features[0]
        n_pieces = len(tokenizer.tokenize("huggingface"))
        assert n_pieces > 1
        assert first["labels"][1] == CONLL2003_TAGS.index("B-ORG")
        assert first["labels"][2:1 + n_pieces] == [-100] * (n_pieces - 1)
        assert sum(w >= 0 for f in features for w in f["word_ids"]) == len(words)


def test_collate_and_postprocess_round_trip(conll_dir, tokenizer):
    task = conll_task(data_dir=str(conll_dir))
    examples = task.read("test")[:200]
    features = task.encode(examples, tokenizer, 20)
    n_labels = len(task.label_names())
    outputs = []
    for start in range(0, len(features), 16):
        chunk = features[start:start + 16]
        batch = task.collate(chunk)
        B, T = batch["input_ids"].shape
        assert batch["labels"].shape == (B, T)
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
        # Logits that put all mass on the gold label, so postprocess must return the gold tags.
        logits = torch.nn.functional.one_hot(batch["labels"].clamp(min=0), n_labels).float()

        class Out:
            pass

        out = Out()
        out.logits = logits
        outputs += task.gather_outputs(batch, out)
    assert [o.shape for o in outputs] == [(len(f["input_ids"]), n_labels) for f in features]
    predictions = task.postprocess(examples, features, outputs)
    assert predictions == [ex.tags for ex in examples]
    assert task.metrics(examples, predictions)["f1"] == 1.0


# ---- metric ------------------------------------------------------------------------------------------
def test_ner_scores_hand_made_cases():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    perfect = ner_scores(gold, gold)
    assert perfect["f1"] == perfect["strict_f1"] == perfect["token_accuracy"] == 1.0
    # One of three entities missed, one spurious: P = 2/3, R = 2/3.
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    s = ner_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["f1_LOC"] == 0.0 and s["f1_PER"] == 1.0 and s["f1_MISC"] == 0.0
    assert s["token_accuracy"] == pytest.approx(4 / 6)
    # A wrong boundary is a wrong entity (no partial credit).
    s = ner_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert s["f1"] == 0.0 and s["token_accuracy"] == 0.5
    # conlleval reads an I- start as an entity; strict IOB2 does not (module docstring example).
    s = ner_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["I-PER", "I-PER", "O", "B-LOC"]])
    assert s["f1"] == 1.0 and s["strict_f1"] == pytest.approx(2 / 3)
    assert ner_scores([["O", "O"]], [["O", "O"]])["f1"] == 0.0  # no entities at all: nothing found
    with pytest.raises(ValueError, match="sentence 0 has 2 gold tags but 1 predicted"):
        ner_scores([["O", "O"]], [["O"]])


def test_write_predictions_conll_format(tmp_path):
    path = write(tmp_path / "test.txt", "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
                                        "Peter NNP B-NP B-PER\n")
    task = conll_task(test_file=str(path))
    examples = task.read("test")
    out = task.write_predictions(examples, [["B-ORG", "B-PER"], ["O"]], tmp_path / "pred" / "test.conll")
    assert out.read_text() == "-DOCSTART- O O\n\nEU B-ORG B-ORG\nrejects O B-PER\n\nPeter B-PER O\n\n"


def test_a_bioes_model_is_scored_and_written_as_conlleval_reads_iob2(conll_dir, tmp_path):
    """conlleval has no S- tag: on a BIOES file it joins `S-LOC S-LOC` into one entity. The file is
    written in IOB2 and the conlleval numbers are those of the IOB2 tags; they were seqeval's
    BIOES reading, which splits a predicted `S-PER E-PER` in two where conlleval (and the IOB2
    `B-PER I-PER`) sees the gold entity `B-PER E-PER` found."""
    path = write(tmp_path / "train.txt", "Ed B-PER\nMiliband E-PER\nin O\nParis S-LOC\nLyon S-LOC\n")
    task = conll_task("ner", train_file=str(path), test_file=str(path))
    examples = task.read("test")
    predicted = [["S-PER", "E-PER", "O", "S-LOC", "S-LOC"]]
    scores = task.metrics(examples, predicted)
    assert scores["f1"] == 1.0 and scores["f1_PER"] == 1.0 and scores["strict_f1"] == pytest.approx(2 / 3)
    out = task.write_predictions(examples, predicted, tmp_path / "pred.txt")
    assert out.read_text() == "Ed B-PER B-PER\nMiliband I-PER I-PER\nin O O\nParis B-LOC B-LOC\nLyon B-LOC B-LOC\n\n"

    # Real dev sentences in BIOES with a model's kind of errors: the reported numbers are the IOB2
    # ones, which equal conlleval's (test_ner_scores_hand_made_cases and the module docstring).
    dev = conll_task(data_dir=str(conll_dir)).read("dev")[:1000]
    gold = [iob2_to_bioes(ex.tags) for ex in dev]
    bioes_tags = ["O"] + [f"{p}-{t}" for p in "BIES" for t in ("PER", "ORG", "LOC", "MISC")]
    rng = random.Random(0)
    predicted = [[t if rng.random() > 0.1 else rng.choice(bioes_tags) for t in tags] for tags in gold]
    bioes = ner_scores(gold, predicted, scheme="BIOES")
    iob2 = ner_scores([bioes_to_iob2(t) for t in gold], [bioes_to_iob2(t) for t in predicted])
    for key in ("precision", "recall", "f1", "f1_PER", "f1_ORG", "f1_LOC", "f1_MISC"):
        assert bioes[key] == iob2[key], key


# ---- a real fine-tuning run ----------------------------------------------------------------------
def _whitespace_tokenizer():
    import tokenizers
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris"])}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.mark.slow  # 125 MiniLM optimizer steps: 90-150 s on the shared 2-core machine
def test_finetune_minilm_on_2000_sentences_learns(conll_dir, tokenizer, tmp_path):
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"{MINILM}/model.safetensors is absent")
    from bertkit.config import TrainConfig
    from bertkit.modeling.heads import BertForTokenClassification
    from bertkit.training.trainer import evaluate, train

    torch.manual_seed(0)
    task = conll_task(data_dir=str(conll_dir))
    train_examples = task.read("train")[:2000]
    dev_examples = task.read("dev")[:400]
    train_features = task.encode(train_examples, tokenizer, 64)
    dev_features = task.encode(dev_examples, tokenizer, 64)
    model = BertForTokenClassification.from_pretrained(MINILM, **task.model_config_updates())
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, lr=2e-4, batch_size=16, warmup_ratio=0.1,
                         eval_every="none", progress=False, device="cpu", group_by_length=True, log_every=20)
    start = time.perf_counter()
    train(task, model, train_features, None, config)
    metrics, predictions = evaluate(task, model, dev_examples, dev_features, 128, torch.device("cpu"))
    elapsed = time.perf_counter() - start
    print(f"\nconll2003 MiniLM 2000 sentences x 1 epoch: dev[:400] {json.dumps(metrics)} in {elapsed:.0f}s")
    # An untrained head scores 0 (10 steps: 0.0); one epoch on 2,000 sentences measured 0.65 F1.
    assert metrics["f1"] > 0.5
    assert metrics["token_accuracy"] > 0.9
    assert len(predictions) == len(dev_examples)
    assert all(len(p) == len(ex.words) for p, ex in zip(predictions, dev_examples))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    np.testing.assert_array_less(0, losses)


def test_run_ner_json_records_read_as_the_conll_files(conll_dir, tmp_path):
    """transformers' run_ner.py data, one record per sentence with `tokens` and `ner_tags`: tag strings
    (JSON lines, --task ner) or the `datasets` conll2003 tag indices (under "data", --task conll2003)
    give the sentences of the real CoNLL-2003 dev file; malformed records name the record."""
    reference = conll_task(dev_file=str(conll_dir / "valid.txt")).read("dev")
    strings = [{"tokens": ex.words, "ner_tags": ex.tags} for ex in reference]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in strings), encoding="utf-8")
    indices = [{"id": str(n), "tokens": ex.words, "ner_tags": [CONLL2003_TAGS.index(t) for t in ex.tags]}
               for n, ex in enumerate(reference)]
    (tmp_path / "dev.json").write_text(json.dumps({"data": indices}), encoding="utf-8")
    for name, path in (("ner", "dev.jsonl"), ("conll2003", "dev.json")):
        examples = conll_task(name, dev_file=str(tmp_path / path)).read("dev")
        assert [(e.words, e.tags) for e in examples] == [(e.words, e.tags) for e in reference]
    with pytest.raises(DataError, match="'ner_tags' are numbers; --task ner needs the tag strings"):
        conll_task("ner", dev_file=str(tmp_path / "dev.json")).read("dev")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="sentence record 1: needs 'tokens' and 'ner_tags'"):
        conll_task("ner", dev_file=str(tmp_path / "bad.jsonl")).read("dev")

    # run_ner.py's command line with local files
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"{MINILM} is absent")
    from bertkit.cli import main

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in strings[:32]), encoding="utf-8")
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in strings[32:48]), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["finetune", "--model_name_or_path", str(MINILM), "--task_name", "ner", "--train_file",
                 str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "small.jsonl"), "--do_train",
                 "--do_eval", "--per_device_train_batch_size", "16", "--num_train_epochs", "1", "--output_dir", str(out),
                 "--no_cuda", "--no-progress"]) == 0
    assert "f1" in json.loads((out / "metrics.json").read_text())["dev"]


# ---- the Hub's Parquet files (conll2003) -------------------------------------------------------------
# The `datasets` conll2003 class lists of the POS and chunk columns (the NER one is CONLL2003_TAGS).
HUB_POS_TAGS = ['"', "''", "#", "$", "(", ")", ",", ".", ":", "``", "CC", "CD", "DT", "EX", "FW", "IN", "JJ", "JJR",
                "JJS", "LS", "MD", "NN", "NNP", "NNPS", "NNS", "NN|SYM", "PDT", "POS", "PRP", "PRP$", "RB", "RBR",
                "RBS", "RP", "SYM", "TO", "UH", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "WDT", "WP", "WP$", "WRB"]
HUB_CHUNK_TAGS = ["O", "B-ADJP", "I-ADJP", "B-ADVP", "I-ADVP", "B-CONJP", "I-CONJP", "B-INTJ", "I-INTJ", "B-LST",
                  "I-LST", "B-NP", "I-NP", "B-PP", "I-PP", "B-PRT", "I-PRT", "B-SBAR", "I-SBAR", "B-UCP", "I-UCP",
                  "B-VP", "I-VP"]


def hub_conll_rows(text_file: Path) -> list[dict]:
    """The rows of the Hub's conll2003 Parquet files made from a CoNLL-2003 text file as `datasets`'
    conll2003 script made them: a row per sentence (-DOCSTART- lines dropped), tag columns as class
    indices."""
    rows, sentence = [], []
    for line in text_file.read_text(encoding="utf-8").split("\n") + [""]:
        if line.strip() and not line.startswith("-DOCSTART-"):
            sentence.append(line.split(" "))
        elif sentence:
            rows.append({"id": str(len(rows)), "tokens": [c[0] for c in sentence],
                         "pos_tags": [HUB_POS_TAGS.index(c[1]) for c in sentence],
                         "chunk_tags": [HUB_CHUNK_TAGS.index(c[2]) for c in sentence],
                         "ner_tags": [CONLL2003_TAGS.index(c[3]) for c in sentence]})
            sentence = []
    return rows


def write_parquet(path: Path, rows: list[dict], tag_type=None) -> Path:
    """Rows in the Hub's conll2003 schema (int64 class indices; `tag_type` string for tag strings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tags = pa.list_(tag_type or pa.int64())
    schema = pa.schema([("id", pa.string()), ("tokens", pa.list_(pa.string())), ("pos_tags", pa.list_(pa.int64())),
                        ("chunk_tags", pa.list_(pa.int64())), ("ner_tags", tags)])
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([field for field in schema if field.name in rows[0]])  # a column left out on purpose
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_hub_parquet_reads_as_the_conll_files(conll_dir, tmp_path):
    """The Hub's conll2003 layout (refs/convert/parquet: conll2003/SPLIT/0000.parquet) made from the
    real files gives, in --data-dir, every sentence of train.txt, valid.txt and test.txt: words, tags
    and guid; the rows name FILE: row N, and carry no document starts (the Hub dropped -DOCSTART-)."""
    hub_dir = tmp_path / "eriktnlp-conll2003"
    reference = {}
    for split, text_name, hub_split in (("train", "train.txt", "train"), ("dev", "valid.txt", "validation"),
                                        ("test", "test.txt", "test")):
        parquet = write_parquet(hub_dir / "conll2003" / hub_split / "0000.parquet",
                                hub_conll_rows(conll_dir / text_name))
        reference[split] = conll_task(data_dir=str(conll_dir)).read(split)
        examples = conll_task(data_dir=str(hub_dir)).read(split)
        assert [(e.guid, e.words, e.tags) for e in examples] == [(e.guid, e.words, e.tags) for e in reference[split]]
        assert [e.source for e in examples] == [f"{parquet}: row {n}" for n in range(len(reference[split]))]
        assert not any(e.doc_start for e in examples)
    assert conll_task(data_dir=str(hub_dir)).label_names() == CONLL2003_TAGS

    # --task ner: tag strings in a Parquet file (an explicit --dev-file)
    import pyarrow as pa

    rows = [dict(r, ner_tags=[CONLL2003_TAGS[t] for t in r["ner_tags"]])
            for r in hub_conll_rows(conll_dir / "valid.txt")]
    strings = write_parquet(tmp_path / "dev-strings.parquet", rows, pa.string())
    examples = conll_task("ner", dev_file=str(strings)).read("dev")
    assert [(e.words, e.tags) for e in examples] == [(e.words, e.tags) for e in reference["dev"]]
    with pytest.raises(DataError, match="'ner_tags' are numbers; --task ner needs the tag strings"):
        conll_task("ner", data_dir=str(hub_dir)).read("dev")


def test_hub_parquet_errors_name_file_row_and_column(conll_dir, tmp_path):
    rows = hub_conll_rows(conll_dir / "valid.txt")[:4]
    no_tags = write_parquet(tmp_path / "no_tags.parquet",
                            [{k: v for k, v in r.items() if k != "ner_tags"} for r in rows])
    with pytest.raises(DataError, match=r"no_tags\.parquet: no column 'ner_tags'; expected the columns tokens, "
                                        r"ner_tags \(the file has id, tokens, pos_tags, chunk_tags\)"):
        conll_task(dev_file=str(no_tags)).read("dev")
    out_of_range = write_parquet(tmp_path / "bad.parquet",
                                 rows[:2] + [dict(rows[2], ner_tags=[9] * len(rows[2]["tokens"]))])
    with pytest.raises(DataError, match=rf"{out_of_range}: row 2: tag index out of 0..8"):
        conll_task(dev_file=str(out_of_range)).read("dev")
    short = write_parquet(tmp_path / "short.parquet", [rows[0], dict(rows[1], ner_tags=rows[1]["ner_tags"][:-1])])
    with pytest.raises(DataError, match=rf"{short}: row 1: needs 'tokens' and 'ner_tags', lists of one tag per token"):
        conll_task(dev_file=str(short)).read("dev")
    with pytest.raises(FileNotFoundError, match=r"the Hub's validation Parquet files \(there or in conll2003/\)"):
        conll_task(data_dir=str(tmp_path / "empty")).read("dev")


def test_finetune_from_a_hub_dataset_folder(conll_dir, tmp_path):
    """`bertkit finetune --task conll2003 --data-dir` on a downloaded conll2003 folder (its
    refs/convert/parquet layout; real sentences) trains and scores."""
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"{MINILM} is absent")
    from bertkit.cli import main

    hub_dir = tmp_path / "conll2003-hub"
    write_parquet(hub_dir / "conll2003" / "train" / "0000.parquet", hub_conll_rows(conll_dir / "train.txt")[:32])
    write_parquet(hub_dir / "conll2003" / "validation" / "0000.parquet", hub_conll_rows(conll_dir / "valid.txt")[:16])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "conll2003", "--model", str(MINILM), "--data-dir", str(hub_dir), "--output-dir",
                 str(out), "--max-steps", "2", "--batch-size", "16", "--max-seq-length", "64", "--device", "cpu",
                 "--no-progress"]) == 0
    dev = json.loads((out / "metrics.json").read_text())["dev"]
    assert 0.0 <= dev["f1"] <= 1.0
