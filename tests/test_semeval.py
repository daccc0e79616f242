"""SemEval-2014 Task 4 aspect-term sentiment (atsc): real XML and .seg counts, the difference
between the two formats, dev slicing, bad input, pair encoding, metrics and prediction files."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from bertkit.tasks import DataError, TaskOptions, get_task_class

SHARED = Path(__file__).resolve().parents[2] / "shared"
ABSA = SHARED / "data" / "semeval2014_absa"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"


def atsc(**extra):
    files = {k: extra.pop(k) for k in ("data_dir", "train_file", "dev_file", "test_file") if k in extra}
    files.setdefault("data_dir", str(ABSA))
    return get_task_class("atsc")(TaskOptions(**files, extra=extra))


@pytest.fixture(scope="module")
def absa() -> Path:
    if not (ABSA / "xml" / "Restaurants_Train_v2.xml").is_file():
        pytest.skip(f"{ABSA} is absent")
    return ABSA


@pytest.fixture(scope="module")
def tokenizer():
    if not (MINILM / "tokenizer.json").is_file():
        pytest.skip(f"{MINILM}/tokenizer.json is absent")
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(MINILM)


def polarity_counts(examples) -> dict[str, int]:
    return dict(collections.Counter(ex.polarity for ex in examples))


# ---- real counts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("domain, fmt, keep, train, test", [
    ("restaurants", "xml", False, {"positive": 2164, "negative": 805, "neutral": 633},
     {"positive": 728, "negative": 196, "neutral": 196}),
    ("restaurants", "xml", True, {"positive": 2164, "negative": 805, "neutral": 633, "conflict": 91},
     {"positive": 728, "negative": 196, "neutral": 196, "conflict": 14}),
    ("restaurants", "seg", False, {"positive": 2164, "negative": 807, "neutral": 637},
     {"positive": 728, "negative": 196, "neutral": 196}),
    ("laptops", "xml", False, {"positive": 987, "negative": 866, "neutral": 460},
     {"positive": 341, "negative": 128, "neutral": 169}),
    ("laptops", "xml", True, {"positive": 987, "negative": 866, "neutral": 460, "conflict": 45},
     {"positive": 341, "negative": 128, "neutral": 169, "conflict": 16}),
    ("laptops", "seg", False, {"positive": 994, "negative": 870, "neutral": 464},
     {"positive": 341, "negative": 128, "neutral": 169}),
])
def test_real_counts(absa, domain, fmt, keep, train, test):
    task = atsc(domain=domain, absa_format=fmt, keep_conflict=keep)
    assert polarity_counts(task.read("train")) == train
    assert polarity_counts(task.read("test")) == test
    assert len(task.label_names()) == (4 if keep else 3)
    # Totals: restaurants XML 3,602 (3,693 with conflict) vs seg 3,608; laptops 2,313 (2,358) vs 2,328.


def test_dropped_conflict_terms_are_counted_once_per_file(absa, capsys):
    """'conflict' terms were dropped without a word: 3,602 of 3,693 restaurant terms trained on,
    and nothing said why the total differs from the file's."""
    task = atsc(domain="restaurants", absa_format="xml")
    task.read("train")
    task.read("train")
    err = capsys.readouterr().err
    assert err.count("Restaurants_Train_v2.xml: dropped 91 of 3693 aspect terms labelled 'conflict'") == 1
    assert "--keep-conflict" in err
    atsc(domain="restaurants", absa_format="xml", keep_conflict=True).read("train")
    assert "dropped" not in capsys.readouterr().err


def test_xml_and_seg_agree_on_test_but_not_on_train(absa):
    """The .seg training files come from an earlier training-XML release (module docstring):
    same test sets, but train has one-character-cut terms and duplicate instances."""
    def key(ex):
        return ex.aspect.lower(), ex.polarity

    for domain in ("restaurants", "laptops"):
        xml, seg = atsc(domain=domain, absa_format="xml"), atsc(domain=domain, absa_format="seg")
        assert collections.Counter(map(key, xml.read("test"))) == collections.Counter(map(key, seg.read("test")))
        seg_train = seg.read("train")
        only_seg = collections.Counter(map(key, seg_train)) - collections.Counter(map(key, xml.read("train")))
        assert ("tempura dis" if domain == "restaurants" else "hard drive ligh", "positive" if domain ==
                "restaurants" else "negative") in only_seg
        # Identical 3-line instances (same sentence, same $T$ position, same label).
        duplicates = sum(n - 1 for n in collections.Counter((e.sentence, e.span, e.polarity)
                                                             for e in seg_train).values())
        assert duplicates == {"restaurants": 3, "laptops": 16}[domain]


def test_seg_text_gives_the_xml_word_pieces(absa, tokenizer):
    """The .seg sentences are Penn-Treebank tokenized. Read as they are, 174 of 1,120 restaurant and
    98 of 638 laptop test sentences gave other pieces than the XML's ("-LRB-" as "- l ##rb -",
    "do n't" as "do n ' t"). What is left is PTB text that cannot be undone ("etc. ." for "etc.",
    "can not" for "cannot")."""
    for domain, left in (("restaurants", 10), ("laptops", 8)):
        xml, seg = (atsc(domain=domain, absa_format=f).read("test") for f in ("xml", "seg"))
        differ = sum(tokenizer.tokenize(x.sentence) != tokenizer.tokenize(s.sentence) for x, s in zip(xml, seg))
        assert differ == left, (domain, differ)
        assert not any("-LRB-" in s.sentence or "``" in s.sentence or " n't" in s.sentence for s in seg)
        assert all(s.sentence[s.span[0]:s.span[1]] == s.aspect for s in seg)
    seg = atsc(absa_format="seg").read("test")
    assert any(s.sentence == "Try the rose roll ( not on menu ) ." for s in seg)


def test_xml_example_fields_and_spans(absa):
    examples = atsc().read("train")
    first = examples[0]
    assert (first.guid, first.sentence, first.aspect, first.polarity, first.span) == (
        "3121:0", "But the staff was so horrible to us.", "staff", "negative", (8, 13))
    assert all(ex.sentence[ex.span[0]:ex.span[1]] == ex.aspect for ex in examples)
    seg = atsc(absa_format="seg").read("train")
    assert (seg[0].sentence, seg[0].aspect, seg[0].polarity) == ("But the staff was so horrible to us .", "staff",
                                                                "negative")
    assert all(ex.sentence[ex.span[0]:ex.span[1]] == ex.aspect for ex in seg)


def test_dev_split_holds_out_whole_sentences(absa, capsys):
    full = atsc().read("train")
    task = atsc(dev_fraction=0.1, dev_seed=3)
    train, dev = task.read("train"), task.read("dev")
    assert "dev is the test set" not in capsys.readouterr().err
    assert len(train) + len(dev) == len(full) == 3602
    assert not {ex.sentence_key for ex in train} & {ex.sentence_key for ex in dev}
    n_sentences = len({ex.sentence_key for ex in full})
    assert len({ex.sentence_key for ex in dev}) == round(0.1 * n_sentences)
    assert [e.guid for e in atsc(dev_fraction=0.1, dev_seed=3).read("dev")] == [e.guid for e in dev]  # seeded
    assert [e.guid for e in atsc().read("dev")] == [e.guid for e in atsc().read("test")]  # default: dev = test
    assert "dev is the test set here (checkpoints are chosen on it)" in capsys.readouterr().err  # ... and says so
    with pytest.raises(ValueError, match="--dev-fraction must be in"):
        atsc(dev_fraction=1.5).read("dev")


# ---- bad input ---------------------------------------------------------------------------------------
XML_OK = """<?xml version="1.0" encoding="UTF-8"?>
<sentences>
  <sentence id="1"><text>Nothing to see here.</text></sentence>
  <sentence id="2"><text>Great pizza, slow service.</text>
    <aspectTerms>
      <aspectTerm term="pizza" polarity="positive" from="6" to="11"/>
      <aspectTerm term="service" polarity="{polarity}" from="18" to="25"/>
    </aspectTerms>
  </sentence>
</sentences>
"""


def test_xml_skips_sentences_without_terms_and_rejects_bad_ones(tmp_path):
    path = tmp_path / "train.xml"
    path.write_text(XML_OK.format(polarity="negative"))
    examples = atsc(train_file=str(path)).read("train")
    assert [(e.guid, e.aspect, e.polarity) for e in examples] == [("2:0", "pizza", "positive"),
                                                                  ("2:1", "service", "negative")]
    path.write_text(XML_OK.format(polarity="mixed"))
    with pytest.raises(DataError, match=rf"{path}: sentence id=2, aspectTerm 1: polarity 'mixed' is not one of"):
        atsc(train_file=str(path)).read("train")
    path.write_text('<sentences>\n<sentence id="1"><text>No terms.</text></sentence>\n</sentences>\n')
    with pytest.raises(DataError, match=rf"{path}: no <aspectTerm> in any <sentence>"):
        atsc(train_file=str(path)).read("train")
    path.write_text('<sentences>\n<sentence id="1"><text>broken</sentence>\n')
    with pytest.raises(DataError, match=rf"{path}:2: not well-formed XML"):
        atsc(train_file=str(path)).read("train")


def test_unlabelled_terms_are_refused_in_train_and_dev_only(tmp_path):
    """The official unlabelled test file (no polarity attributes) as dev, the default where dev is the
    test set, scored as {} at every evaluation: no best model kept, and the run ended well."""
    path = tmp_path / "test.xml"
    path.write_text(XML_OK.replace(' polarity="{polarity}"', ""))
    assert [e.polarity for e in atsc(test_file=str(path)).read("test")] == ["positive", None]
    with pytest.raises(DataError, match=rf"{path}: sentence id=2, aspectTerm 1: aspect 'service' has no polarity; "
                                        rf"every dev term needs one"):
        atsc(train_file=str(path), test_file=str(path)).read("dev")


@pytest.mark.parametrize("text, message", [
    ("the $T$ was good\nfood\n1\nno marker here\nfood\n1\n", ":4: expected exactly one $T$"),
    ("the $T$ was good\nfood\n1\nthe $T$ was bad\nfood\n2\n", ":6: polarity '2' is not 1, 0 or -1"),
    ("the $T$ was good\nfood\n1\nthe $T$ was bad\nfood\n", ":4: incomplete instance at the end (2 of 3"),
])
def test_seg_bad_input(tmp_path, text, message):
    path = tmp_path / "Restaurants_Train.xml.seg"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        atsc(data_dir=str(tmp_path)).read("train")
    assert f"{path}{message}" in str(err.value)


def test_missing_files_name_what_was_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="Laptop_Train_v2.xml.*Laptops_Train.xml.seg"):
        atsc(data_dir=str(tmp_path), domain="laptops").read("train")


# ---- encoding, metrics, predictions ----------------------------------------------------------------------
def test_encode_sentence_aspect_pair(absa, tokenizer):
    task = atsc()
    examples = task.read("test")[:50]
    features = task.encode(examples, tokenizer, 128)
    for ex, f in zip(examples, features):
        sentence = tokenizer.backend.encode(ex.sentence, add_special_tokens=False).ids
        aspect = tokenizer.backend.encode(ex.aspect, add_special_tokens=False).ids
        assert f["input_ids"] == [tokenizer.cls_id, *sentence, tokenizer.sep_id, *aspect, tokenizer.sep_id]
        assert f["token_type_ids"] == [0] * (len(sentence) + 2) + [1] * (len(aspect) + 1)
        assert task.label_names()[f["labels"]] == ex.polarity
    batch = task.collate(features[:4])
    assert batch["labels"].shape == (4,) and batch["input_ids"].shape[0] == 4
    # Conflict examples cannot be encoded with the 3-class label set.
    conflict = [e for e in atsc(keep_conflict=True).read("test") if e.polarity == "conflict"][:1]
    with pytest.raises(DataError, match="polarity 'conflict' is not in the label set"):
        task.encode(conflict, tokenizer, 128)


def test_metrics_accuracy_and_macro_f1(absa):
    task = atsc()
    examples = task.read("test")[:6]
    names = task.label_names()
    gold = [names.index(e.polarity) for e in examples]
    assert task.metrics(examples, gold)["accuracy"] == 1.0
    # Hand-made: gold [pos, neg, neu], predicted [pos, pos, neu] ->
    # F1 pos = 2*(1/2*1)/(1/2+1) = 2/3, neg = 0, neu = 1 -> macro 5/9; accuracy 2/3.
    from bertkit.tasks.semeval import AspectExample

    toy = [AspectExample(str(i), "s", "a", p, None, str(i), "x") for i, p in
           enumerate(["positive", "negative", "neutral"])]
    pred = [names.index("positive"), names.index("positive"), names.index("neutral")]
    m = task.metrics(toy, pred)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["macro_f1"] == pytest.approx(5 / 9)
    assert m["f1_negative"] == 0.0 and m["f1_neutral"] == 1.0
    # A class absent from gold and predictions (conflict, with --keep-conflict on .xml.seg data) is
    # left out of the mean, as sklearn does: perfect predictions score 1.0, not 0.75.
    conflict = atsc(keep_conflict=True)
    perfect = conflict.metrics(toy, [conflict.label_names().index(e.polarity) for e in toy])
    assert len(conflict.label_names()) == 4 and perfect["macro_f1"] == 1.0


def test_write_predictions_tsv_and_jsonl(absa, tmp_path):
    task = atsc()
    examples = task.read("test")[:3]
    pred = [0, 1, 2]
    tsv = task.write_predictions(examples, pred, tmp_path / "p.tsv").read_text().splitlines()
    assert tsv[0] == "id\taspect\tprediction\tgold"
    assert tsv[1].split("\t") == [examples[0].guid, examples[0].aspect, "negative", examples[0].polarity]
    rows = [json.loads(x) for x in task.write_predictions(examples, pred, tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ["negative", "neutral", "positive"]
    assert rows[2]["id"] == examples[2].guid and rows[2]["aspect"] == examples[2].aspect


def test_xml_predictions_are_the_official_file_with_predicted_polarities(absa, tmp_path, capsys):
    """predict --output X.xml writes SemEval-2014's submission layout: the test file itself, each aspect
    term's polarity the prediction; the 14 'conflict' terms a 3-class run drops, and the aspect
    categories (another subtask), carry no polarity, so that no gold label passes for a prediction."""
    import xml.etree.ElementTree as ET

    task = atsc(domain="restaurants")
    examples = task.read("test")
    names = task.label_names()
    predictions = [names.index(ex.polarity) for ex in examples]
    predictions[0] = (predictions[0] + 1) % 3
    written = task.write_predictions(examples, predictions, tmp_path / "Restaurants_Test_Pred.xml")
    assert "14 aspect terms of Restaurants_Test_Gold.xml have no prediction" in capsys.readouterr().err

    def terms(path):
        root = ET.parse(path).getroot()
        return {(s.get("id"), k): t for s in root.iter("sentence") for k, t in enumerate(s.iter("aspectTerm"))}

    gold, predicted = terms(absa / "xml" / "Restaurants_Test_Gold.xml"), terms(written)
    assert list(gold) == list(predicted) and len(gold) == 1134
    assert all(predicted[key].get(a) == gold[key].get(a) for key in gold for a in ("term", "from", "to"))
    # the official measure, accuracy over all gold terms: one wrong, 14 conflict terms unanswered
    right = sum(predicted[key].get("polarity") == gold[key].get("polarity") for key in gold)
    assert right == 1134 - 14 - 1
    assert sum("polarity" not in t.attrib for t in predicted.values()) == 14
    assert all("polarity" not in c.attrib for c in ET.parse(written).getroot().iter("aspectCategory"))
    with pytest.raises(ValueError, match="use .tsv or .jsonl"):
        seg = atsc(domain="restaurants", absa_format="seg")
        seg_examples = seg.read("test")[:2]
        seg.write_predictions(seg_examples, [0, 1], tmp_path / "p.xml")
