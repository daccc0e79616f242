"""Tokenizer parity with transformers' pure-Python BERT tokenizer on real text, offsets, pairs,
truncation, casing checks, save/load round trips and `bertkit train-tokenizer`.

The id reference is `BertTokenizerLegacy`: transformers 5 made `BertTokenizer` the Rust-backed
class (the same library we use), so the independent reference is the old Python implementation
of google-research/bert's BasicTokenizer + WordpieceTokenizer, kept under that name.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch

from bertkit.cli import main as cli_main
from bertkit.commands.train_tokenizer import expand_inputs, iter_line_batches
from bertkit.tasks.base import DataError
from bertkit.tokenization import CasingMismatchWarning, Tokenizer, train_wordpiece, vocab_casing

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS, DATA = SHARED / "models", SHARED / "data"

legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
transformers = pytest.importorskip("transformers")
# The slow reference logs a notice per pair that it returns no overflow for longest_first.
transformers.logging.set_verbosity_error()


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared asset {path} is missing")
    return path


# ---- real text --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sst2() -> list[str]:
    lines = need(DATA / "glue/SST-2/train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:4000]]


@pytest.fixture(scope="module")
def squad() -> list[dict]:
    data = json.loads(need(DATA / "squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    return [p for article in data["data"] for p in article["paragraphs"]]


@pytest.fixture(scope="module")
def squad_sentences(squad) -> list[str]:
    # Split on sentence-final punctuation; exact sentence boundaries do not matter for parity.
    return [s for p in squad[:700] for s in re.split(r"(?<=[.!?])\s+", p["context"]) if s]


@pytest.fixture(scope="module")
def conll_sentences() -> list[list[str]]:
    sentences, words = [], []
    for line in need(DATA / "conll2003/train.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(words)
            words = []
        else:
            words.append(line.split(" ")[0])
    return sentences[:3000]


def polyphone_sentences(name: str, limit: int | None = None) -> list[str]:
    lines = need(DATA / "polyphone/g2pL" / name).read_text(encoding="utf-8").splitlines()
    return [line.replace("▁", "") for line in lines[:limit] if line.strip()]


@pytest.fixture(scope="module")
def english(sst2, squad_sentences, conll_sentences) -> list[str]:
    return sst2 + squad_sentences + [" ".join(words) for words in conll_sentences]


def load(name: str, do_lower_case: bool | None) -> tuple[Tokenizer, object, object]:
    """(ours, slow Python reference, fast transformers reference) for one shared vocab."""
    vocab = need(MODELS / name / "vocab.txt")
    ours = Tokenizer.from_pretrained(vocab, do_lower_case=do_lower_case)
    slow = legacy.BertTokenizerLegacy(str(vocab), do_lower_case=ours.do_lower_case)
    fast = transformers.BertTokenizerFast(vocab=str(vocab), do_lower_case=ours.do_lower_case)
    return ours, slow, fast


def surface_matches(text: str, start: int, end: int, token: str, lowercase: bool) -> bool:
    """Does text[start:end] spell the WordPiece (after BERT's lowercasing/accent stripping)?"""
    surface = text[start:end]
    if lowercase:
        surface = "".join(c for c in unicodedata.normalize("NFD", surface.lower())
                          if unicodedata.category(c) != "Mn")
    return surface == (token[2:] if token.startswith("##") else token)


# ---- parity on real sentences -----------------------------------------------------------------
# The uncased vocab sees all ~10,100 English sentences; the other runs use subsets to keep the
# slow Python reference (~100k sentences/min on one free core) within the test-time budget.
@pytest.mark.parametrize("name,do_lower_case,corpus,step", [
    ("bert-base-uncased", True, "english", 1),
    ("bert-base-cased", False, "english", 3),
    ("bert-base-chinese", True, "chinese", 1),
    ("bert-base-chinese", False, "chinese", 3),
])
def test_ids_and_offsets_match_transformers(name, do_lower_case, corpus, step, request):
    texts = request.getfixturevalue("english") if corpus == "english" else polyphone_sentences("train.sent", 3000)
    texts = texts[::step]
    assert len(texts) >= 1000
    with warnings.catch_warnings():
        # bert-base-chinese kept cased is a deliberate mismatch (tested on its own below).
        warnings.simplefilter("ignore", CasingMismatchWarning)
        ours, slow, fast = load(name, do_lower_case)
    encodings = ours.encode_batch(texts)

    reference = slow(texts)["input_ids"]
    mismatched = [i for i, (e, ref) in enumerate(zip(encodings, reference)) if e.ids != ref]
    assert not mismatched, (f"{len(mismatched)}/{len(texts)} differ; first: {texts[mismatched[0]]!r}\n"
                            f"ours {encodings[mismatched[0]].tokens}\n"
                            f"ref  {slow.convert_ids_to_tokens(reference[mismatched[0]])}")

    fast_out = fast(texts, return_offsets_mapping=True)
    assert [e.ids for e in encodings] == fast_out["input_ids"]
    assert [[tuple(o) for o in e.offsets] for e in encodings] == \
           [[tuple(o) for o in row] for row in fast_out["offset_mapping"]]

    checked = 0
    for text, e in zip(texts, encodings):
        for token, (start, end), seq in zip(e.tokens, e.offsets, e.sequence_ids):
            if seq is None or token == "[UNK]":
                continue
            assert surface_matches(text, start, end, token, ours.do_lower_case), \
                (text, token, text[start:end])
            checked += 1
    assert checked > 10 * len(texts)


def test_parity_covers_ten_thousand_real_sentences(english):
    # SST-2 + SQuAD context sentences + CoNLL-2003 sentences (uncased vocab; a third of them
    # again with the cased one), plus 3,000 Chinese polyphone sentences.
    assert len(english) >= 10_000


def test_pretokenized_conll_words_keep_word_ids(conll_sentences):
    ours, _, fast = load("bert-base-cased", False)
    words = conll_sentences[:1000]
    encodings = ours.encode_batch(words, is_pretokenized=True)
    reference = fast(words, is_split_into_words=True)
    assert [e.ids for e in encodings] == reference["input_ids"]
    for i, (sentence, e) in enumerate(zip(words, encodings)):
        assert e.word_ids == reference.word_ids(i)
        first_pieces = [w for k, w in enumerate(e.word_ids) if w is not None and e.word_ids[k - 1] != w]
        assert first_pieces == list(range(len(sentence)))
        # Offsets of pretokenized input index into each word.
        for token, w, (s, t) in zip(e.tokens, e.word_ids, e.offsets):
            if w is not None and token != "[UNK]":
                assert surface_matches(sentence[w], s, t, token, False)


# ---- pairs, truncation, padding ---------------------------------------------------------------
@pytest.mark.parametrize("truncation,max_length", [("longest_first", 64), ("only_second", 96),
                                                   ("only_first", 128), (False, 512)])
def test_pairs_and_truncation_match_transformers(squad, truncation, max_length):
    ours, slow, fast = load("bert-base-uncased", True)
    qas = [(qa["question"], p["context"]) for p in squad[:100] for qa in p["qas"][:2]]
    # only_first shortens the first segment, so the long context goes first there.
    first, second = zip(*((c, q) if truncation == "only_first" else (q, c) for q, c in qas))
    if truncation is False:
        lengths = [len(e.ids) for e in ours.encode_batch(list(first), list(second))]
        keep = [i for i, n in enumerate(lengths) if n <= max_length]
        first, second = [first[i] for i in keep], [second[i] for i in keep]
    batch = ours(list(first), list(second), max_length=max_length, truncation=truncation)
    for ref in (fast, slow):
        expected = ref(list(first), list(second), max_length=max_length if truncation else None,
                       truncation=truncation, padding=True, return_tensors="pt", return_token_type_ids=True)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(batch[key], expected[key]), (type(ref).__name__, key)
    assert batch["input_ids"].shape[1] <= max_length
    # Segment B starts right after the first [SEP] and carries type id 1 up to its own [SEP].
    row = batch["input_ids"][0]
    seps = (row == ours.sep_id).nonzero().flatten().tolist()
    assert batch["token_type_ids"][0, : seps[0] + 1].eq(0).all()
    assert batch["token_type_ids"][0, seps[0] + 1: seps[1] + 1].eq(1).all()


def test_padding_modes_and_errors():
    ours, _, _ = load("bert-base-uncased", True)
    texts = ["a short one", "a somewhat longer sentence than the first"]
    longest = ours(texts)
    assert longest["input_ids"].shape == (2, len(ours.encode(texts[1]).ids))
    assert longest["input_ids"].dtype == torch.long
    fixed = ours(texts, padding="max_length", max_length=32)
    assert fixed["input_ids"].shape == (2, 32)
    assert fixed["attention_mask"].sum(1).tolist() == [len(ours.encode(t).ids) for t in texts]
    assert (fixed["input_ids"][fixed["attention_mask"] == 0] == ours.pad_id).all()
    ragged = ours(texts, padding=False, return_tensors=False)
    assert [len(r) for r in ragged["input_ids"]] == [5, 9]
    with pytest.raises(ValueError, match="texts\\[1\\] has 9 tokens"):
        ours(texts, padding="max_length", max_length=6, truncation=False)
    with pytest.raises(ValueError, match="truncation='middle'"):
        ours(texts, truncation="middle")
    with pytest.raises(ValueError, match="only_second"):
        ours(["a long first segment " * 20], ["short"], max_length=16, truncation="only_second")
    with pytest.raises(ValueError, match="pairs has 1 entries"):
        ours(texts, ["one pair only"])


def test_sliding_windows_overflow_with_stride(squad):
    ours, _, _ = load("bert-base-uncased", True)
    question, context = squad[0]["qas"][0]["question"], squad[0]["context"]
    e = ours.encode(question, context, max_length=64, truncation="only_second", stride=16)
    windows = [e] + e.overflowing
    assert len(windows) > 1 and all(len(w.ids) <= 64 for w in windows)
    # Consecutive windows share `stride` context tokens, so no answer falls between two windows.
    ctx = [[i for i, s in zip(w.ids, w.sequence_ids) if s == 1] for w in windows]
    assert all(a[-16:] == b[:16] for a, b in zip(ctx, ctx[1:]))


# ---- casing -----------------------------------------------------------------------------------
def test_vocab_casing_inferred_from_shared_vocabs():
    def tokens(name):
        return (need(MODELS / name / "vocab.txt")).read_text(encoding="utf-8").splitlines()
    assert vocab_casing(tokens("bert-base-uncased")) is True
    assert vocab_casing(tokens("bert-base-cased")) is False
    assert vocab_casing(tokens("bert-base-multilingual-cased")) is False
    assert vocab_casing(tokens("bert-base-chinese")) is True
    assert Tokenizer.from_pretrained(MODELS / "bert-base-cased" / "vocab.txt").do_lower_case is False
    assert Tokenizer.from_pretrained(MODELS / "bert-base-uncased").do_lower_case is True


def test_casing_mismatch_warns_and_match_is_silent():
    cased, uncased = MODELS / "bert-base-cased" / "vocab.txt", MODELS / "bert-base-uncased" / "vocab.txt"
    with pytest.warns(CasingMismatchWarning, match="vocabulary is cased"):
        tok = Tokenizer.from_pretrained(need(cased), do_lower_case=True)
    assert tok.tokenize("Paris") == ["par", "##is"]  # the cased vocab's "Paris" is never reached
    with pytest.warns(CasingMismatchWarning, match="vocabulary is uncased"):
        tok = Tokenizer.from_pretrained(need(uncased), do_lower_case=False)
    assert "[UNK]" in tok.tokenize("Zebra Xylophone")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tokenizer.from_pretrained(cased, do_lower_case=False)
        Tokenizer.from_pretrained(uncased, do_lower_case=True)
        Tokenizer.from_pretrained(need(MODELS / "all-MiniLM-L6-v2"))  # do_lower_case true in its config


def test_chinese_config_casing_is_checked_against_vocab():
    # Hugging Face's bert-base-chinese says do_lower_case=false, but its vocab has no capitals
    # (Google's validate_case_matches_checkpoint lists chinese_L-12_H-768_A-12 as uncased).
    with pytest.warns(CasingMismatchWarning, match="tokenizer_config.json"):
        tok = Tokenizer.from_pretrained(need(MODELS / "bert-base-chinese"))
    assert tok.do_lower_case is False
    assert tok.tokenize("我爱北京") == ["我", "爱", "北", "京"]


# ---- loading, saving, API ---------------------------------------------------------------------
def test_tokenizer_json_directory_and_special_tokens():
    ours = Tokenizer.from_pretrained(need(MODELS / "all-MiniLM-L6-v2"))
    plain = Tokenizer.from_pretrained(MODELS / "bert-base-uncased" / "vocab.txt")
    assert ours.vocab_hash == plain.vocab_hash and ours.vocab_size == 30522
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 100, 101, 102, 103)
    # tokenizer.json shipped with fixed padding/truncation to 128; calls must not inherit it.
    assert len(ours.encode("hello").ids) == 3
    assert ours.tokenize("the [MASK] sat") == ["the", "[MASK]", "sat"]
    ids = ours.encode("Hello, world!").ids
    assert ours.convert_ids_to_tokens(ids) == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert ours.convert_tokens_to_ids(["hello", "no-such-token"]) == [7592, ours.unk_id]
    assert ours.decode(ids) == "hello, world!"
    assert ours.decode(ids, skip_special_tokens=False).startswith("[CLS]")
    assert ours.vocab["[MASK]"] == 103


@pytest.mark.parametrize("name,do_lower_case", [("bert-base-uncased", True), ("bert-base-cased", False)])
def test_save_pretrained_round_trips_through_autotokenizer(tmp_path, english, name, do_lower_case):
    ours, _, _ = load(name, do_lower_case)
    ours.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                   "special_tokens_map.json"}
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == \
        (MODELS / name / "vocab.txt").read_text(encoding="utf-8")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    texts, pairs = english[:500], english[500:1000]
    expected = auto(texts, pairs, max_length=64, truncation=True, padding=True, return_tensors="pt")
    got = ours(texts, pairs, max_length=64)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(got[key], expected[key]), key
    again = Tokenizer.from_pretrained(tmp_path)
    assert (again.vocab_hash, again.do_lower_case) == (ours.vocab_hash, do_lower_case)
    assert [e.ids for e in again.encode_batch(texts)] == [e.ids for e in ours.encode_batch(texts)]


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "missing" / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="neither vocab.txt nor tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n[PAD]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.txt:3: token '\\[PAD\\]' already appears on line 1"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks BERT's special token\\(s\\) \\[CLS\\], \\[SEP\\], \\[MASK\\]"):
        Tokenizer.from_pretrained(tmp_path)


def test_a_tf_checkpoint_prefix_finds_the_vocab_beside_it():
    """`--model DIR/bert_model.ckpt` (Google's spelling, which the model loader and `bertkit info`
    take) failed in finetune: "tokenizer path '.../bert_model.ckpt' does not exist"."""
    fixture = SHARED / "models" / "tf-bert-fixture"
    if not (fixture / "bert_model.ckpt.index").is_file():
        pytest.skip(f"{fixture} is absent")
    expected = Tokenizer.from_pretrained(fixture).vocab
    assert Tokenizer.from_pretrained(fixture / "bert_model.ckpt").vocab == expected
    assert Tokenizer.from_pretrained(fixture / "bert_model.ckpt.index").vocab == expected


def test_a_mistyped_model_path_is_named_as_the_model(tmp_path, capsys):
    """A --model path that does not exist was reported as "tokenizer path ... does not exist"
    (the tokenizer is read first), which sent users looking at their tokenizer files."""
    from bertkit.cli import main

    missing = tmp_path / "runs" / "bert_model.ckptX"
    assert main(["finetune", "--task", "sst2", "--model", str(missing), "--data-dir", str(tmp_path),
                 "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"--model {missing} does not exist" in err and "tokenizer path" not in err


def test_a_model_hub_id_that_cannot_be_fetched_says_why(monkeypatch, tmp_path, capsys):
    """`--model bert-base-uncased` offline said only "does not exist: give ... a hub id", the
    form just given; the hub's reason (offline, not in the cache) was dropped."""
    from bertkit.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    assert main(["finetune", "--task", "sst2", "--model", "bert-base-uncased", "--data-dir", str(tmp_path),
                 "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "--model bert-base-uncased is not a local path" in err and "Hugging Face hub" in err
    assert "Offline?" in err or "HF_HUB_OFFLINE" in err


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="pass its local directory"):
        Tokenizer.from_pretrained("bertkit-test/no-such-model")


# ---- train-tokenizer --------------------------------------------------------------------------
def unk_rate(tok: Tokenizer, lines: list[str]) -> float:
    encodings = tok.encode_batch(lines, add_special_tokens=False)
    total = sum(len(e.ids) for e in encodings)
    return sum(e.ids.count(tok.unk_id) for e in encodings) / total


def test_train_tokenizer_on_wikitext(tmp_path, capsys):
    valid = need(DATA / "wikitext-2/valid.txt").read_bytes()
    # Two compressed halves found by a glob: exercises .bz2/.gz reading and glob expansion.
    half = len(valid) // 2
    cut = valid.index(b"\n", half) + 1
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part1.txt.bz2").write_bytes(bz2.compress(valid[:cut]))
    (tmp_path / "in" / "part2.txt.gz").write_bytes(gzip.compress(valid[cut:]))
    out = tmp_path / "vocab"
    assert cli_main(["train-tokenizer", "--input", str(tmp_path / "in" / "part*"), "--vocab-size", "2000",
                     "--output-dir", str(out), "--unused", "99"]) == 0
    assert "2,461 lines" in capsys.readouterr().err
    tok = Tokenizer.from_pretrained(out)
    assert tok.vocab_size == 2000 and tok.do_lower_case
    assert Tokenizer.from_pretrained(out / "tokenizer.json").vocab_hash == tok.vocab_hash
    # BERT's id layout: [PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103.
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.convert_ids_to_tokens(1) == "[unused0]"
    test_lines = [l for l in need(DATA / "wikitext-2/test.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    # Measured: 33 [UNK] in 394,460 held-out tokens (8e-5): '#', '¥', 'Władysław' are unseen in valid.
    assert unk_rate(tok, test_lines) < 1e-3
    # A 2,000-piece vocab splits words more than bert-base-uncased's 30,522 does, but not absurdly
    # (measured 1.65 pieces per whitespace word).
    pieces = sum(len(e.ids) for e in tok.encode_batch(test_lines, add_special_tokens=False))
    words = sum(len(l.split()) for l in test_lines)
    assert 1.0 < pieces / words < 2.0
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    assert auto(test_lines[:200])["input_ids"] == [e.ids for e in tok.encode_batch(test_lines[:200])]


def test_train_tokenizer_wikitext_matches_pretrain_data(tmp_path, capsys):
    """Learned as plain text, WikiText gave the vocab "unk" (from 14,334 "<unk>" lines of train) and
    "@" (from " @-@ "), which `pretrain-data --wikitext` never produces: it reads <unk> as [UNK]."""
    valid = need(DATA / "wikitext-2/valid.txt")
    args = ["train-tokenizer", "--input", str(valid), "--vocab-size", "2000"]
    assert cli_main([*args, "--output-dir", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    assert "lines hold WikiText markers (<unk>, ' @-@ ')" in err and "rerun with --wikitext" in err
    plain = (tmp_path / "plain" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert "unk" in plain and "@" in plain
    assert cli_main([*args, "--output-dir", str(tmp_path / "wt"), "--wikitext"]) == 0
    assert "warning" not in capsys.readouterr().err
    vocab = (tmp_path / "wt" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert "unk" not in vocab and "@" not in vocab and "[UNK]" in vocab
    # The vocab covers what pretrain-data --wikitext makes of the text, [UNK] aside.
    from bertkit.data.pretraining import iter_wikitext_documents

    tok = Tokenizer.from_pretrained(tmp_path / "wt")
    sentences = [s for doc in iter_wikitext_documents([valid]) for s in doc]
    ids = [i for e in tok.encode_batch(sentences[:500], add_special_tokens=False) for i in e.ids]
    texts_unk = sum(s.count("[UNK]") for s in sentences[:500])
    assert ids.count(tok.unk_id) <= texts_unk + 5


def test_train_tokenizer_chinese_and_cased(tmp_path):
    train = polyphone_sentences("train.sent")
    (tmp_path / "zh.txt.gz").write_bytes(gzip.compress("\n".join(train).encode("utf-8")))
    out = tmp_path / "zh"
    assert cli_main(["train-tokenizer", "--input", str(tmp_path / "zh.txt.gz"), "--vocab-size", "6000",
                     "--output-dir", str(out), "--chinese", "--cased", "--min-frequency", "1"]) == 0
    tok = Tokenizer.from_pretrained(out)
    assert tok.do_lower_case is False
    assert tok.tokenize("她挽起袖子") == ["她", "挽", "起", "袖", "子"]
    # 34,200 sentences hold ~5,000 distinct characters and too few repeated pairs to fill 6,000.
    assert 4000 < tok.vocab_size <= 6000
    # Measured: 263 [UNK] in 363,805 held-out tokens (7e-4), characters absent from train.sent.
    held_out = polyphone_sentences("test.sent")
    assert unk_rate(tok, held_out) < 2e-3


def test_train_tokenizer_input_errors(tmp_path, capsys):
    args = ["--vocab-size", "100", "--output-dir", str(tmp_path / "o")]
    assert cli_main(["train-tokenizer", "--input", str(tmp_path / "*.txt"), *args]) == 1
    assert "--input" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.txt")])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nanother\nbroken \xff\xfe line\n")
    with pytest.raises(DataError, match="bad.txt:3: not UTF-8"):
        list(iter_line_batches([bad], {"lines": 0, "chars": 0}))
    assert cli_main(["train-tokenizer", "--input", str(bad), *args]) == 1
    assert "bad.txt:3: not UTF-8" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--vocab-size 4 leaves no room"):
        train_wordpiece(["some text"], 4)
    # A model directory as --output-dir had its vocab.txt replaced under its weights.
    model = tmp_path / "model"
    model.mkdir()
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nmine\n", encoding="utf-8")
    (tmp_path / "ok.txt").write_text("some text here\n" * 20, encoding="utf-8")
    capsys.readouterr()
    assert cli_main(["train-tokenizer", "--input", str(tmp_path / "ok.txt"), "--vocab-size", "100",
                     "--output-dir", str(model)]) == 1
    assert f"--output-dir {model} is not empty; pass a new directory" in capsys.readouterr().err
    assert (model / "vocab.txt").read_text(encoding="utf-8").endswith("mine\n")


def test_default_length_is_what_the_model_allows():
    """Without max_length a call truncates at model_max_length (it cut at 128 silently), and a
    checkpoint without a tokenizer_config.json length takes its max_position_embeddings."""
    tok = Tokenizer.from_pretrained(need(MODELS / "all-MiniLM-L6-v2"))
    batch = tok(["word " * 1000, "short"])
    assert tok.model_max_length == 512 and batch["input_ids"].shape == (2, 512)
    tf_fixture = Tokenizer.from_pretrained(need(MODELS / "tf-bert-fixture"))  # bert_config.json: 128 positions
    assert tf_fixture.model_max_length == 128 and tf_fixture(["word " * 300])["input_ids"].shape == (1, 128)


def test_a_config_json_given_as_tokenizer_is_named_for_what_it_is():
    with pytest.raises(ValueError, match=r"config.json: not a tokenizer.json .*pass the model directory"):
        Tokenizer.from_pretrained(need(MODELS / "all-MiniLM-L6-v2" / "config.json"))


@pytest.mark.parametrize("command", ["finetune", "evaluate", "predict", "pretrain", "pretrain-data"])
def test_casing_flags_force_either_way_or_defer_to_the_files(command):
    import argparse

    from bertkit.cli import build_parser
    from bertkit.commands.common import add_casing_arguments

    _, chosen = build_parser([command])
    options = {s for a in chosen._actions if a.dest == "do_lower_case" for s in a.option_strings}
    assert {"--do_lower_case", "--do-lower-case", "--cased"} <= options

    parser = argparse.ArgumentParser()
    add_casing_arguments(parser, "the files")

    def parsed(*flags):
        return parser.parse_args(list(flags)).do_lower_case

    assert parsed() is None
    assert parsed("--do_lower_case") is True and parsed("--do-lower-case") is True
    assert parsed("--do_lower_case=False") is False and parsed("--do_lower_case", "true") is True
    assert parsed("--cased") is False
    with pytest.raises(SystemExit):
        parsed("--cased", "--do_lower_case")
    with pytest.raises(SystemExit):
        parsed("--do_lower_case=maybe")


def test_feature_cache_key_covers_every_tokenizer_setting(tmp_path, monkeypatch):
    """Two tokenizers with one vocab but different accent handling must not share cached features."""
    from bertkit.commands.common import encode_cached
    from bertkit.tasks.base import TaskOptions, get_task_class

    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "accents.csv"
    data.write_text("text,label\ncafé résumé naïve,a\nplain words,b\n", encoding="utf-8")
    task = get_task_class("classification")(TaskOptions(train_file=str(data), dev_file=str(data)))
    examples = task.read("train")
    vocab = need(MODELS / "bert-base-uncased" / "vocab.txt")
    stripping = Tokenizer.from_vocab(vocab, do_lower_case=True)
    keeping = Tokenizer.from_vocab(vocab, do_lower_case=True, strip_accents=False)
    assert stripping.vocab_hash == keeping.vocab_hash
    for tokenizer in (stripping, keeping, stripping):
        cached = encode_cached(task, "train", examples, tokenizer, 32)
        assert cached[0]["input_ids"] == task.encode(examples, tokenizer, 32)[0]["input_ids"]
    assert stripping.tokenize("café") == ["cafe"] and keeping.tokenize("café") == ["[UNK]"]
    assert len(list((tmp_path / "cache" / "features").glob("*.pkl"))) == 2


def test_train_tokenizer_reads_hub_parquet_as_its_text(tmp_path, capsys):
    """The Hub's Salesforce/wikitext rows (a line of the file each) and a document-per-row column give
    the trainer the very lines of the raw file, with and without --wikitext."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertkit.commands.train_tokenizer import _text_lines, iter_wikitext_batches

    valid = need(DATA / "wikitext-2/valid.txt")
    lines = valid.read_text(encoding="utf-8").splitlines(keepends=True)
    hub = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": lines}), hub, row_group_size=700)
    pq.write_table(pa.table({"body": ["".join(lines[:1000]), "".join(lines[1000:])]}), tmp_path / "docs.parquet")
    raw = list(_text_lines([valid], {}))
    assert len(raw) == 2461
    assert list(_text_lines([hub], {})) == raw == list(_text_lines([tmp_path / "docs.parquet"], {}, "body"))
    stats: dict[str, int] = {"lines": 0, "chars": 0}
    assert list(iter_wikitext_batches([hub], stats)) == list(iter_wikitext_batches([valid], {"lines": 0, "chars": 0}))
    # End to end: the same vocab.txt, byte for byte, from the file and from both Parquet layouts. Before
    # the continuation pieces were fixed (train_wordpiece), two runs on one file already differed: the
    # tokenizers trainer numbered them in hash-map order (huggingface/tokenizers#1794).
    vocabs = []
    for name, source in (("raw", [str(valid)]), ("raw-again", [str(valid)]), ("hub", [str(hub)]),
                         ("docs", [str(tmp_path / "docs.parquet"), "--text-field", "body"])):
        assert cli_main(["train-tokenizer", "--vocab-size", "2000", "--input", *source,
                         "--output-dir", str(tmp_path / name)]) == 0
        assert "2,461 lines, 1,110,211 characters" in capsys.readouterr().err
        vocabs.append((tmp_path / name / "vocab.txt").read_bytes())
    assert vocabs[1:] == vocabs[:1] * 3
    # Salesforce/wikitext's rows read as plain text hold the same markers as the file, and say so.
    assert cli_main(["train-tokenizer", "--vocab-size", "2000", "--input", str(hub), "--output-dir",
                     str(tmp_path / "markers")]) == 0
    assert "lines hold WikiText markers" in capsys.readouterr().err
    assert Tokenizer.from_pretrained(tmp_path / "hub").vocab_size == 2000
    assert cli_main(["train-tokenizer", "--vocab-size", "2000", "--input", str(tmp_path / "docs.parquet"),
                     "--output-dir", str(tmp_path / "bad")]) == 1
    assert "docs.parquet: no column 'text' (--text-field; the file's columns: body)" in capsys.readouterr().err
