"""Pre-training data: instances (NSP / packed), masking strategies, determinism, workers and parts,
bad input, and the pretrain-data / inspect commands, on the shared real corpora."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bertkit.data.masking import MaskingConfig, TargetWords, VocabInfo, mask_row, word_spans
from bertkit.data.pretraining import PretrainDataConfig, create_pretraining_data, dynamic_masking_for
from bertkit.data.records import collate_pretraining, open_pretraining_data
from bertkit.tasks.base import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLE = SHARED / "data/bert_sample_text/sample_text.txt"
WIKITEXT_VALID = SHARED / "data/wikitext-2/valid.txt"
POLYPHONE = SHARED / "data/polyphone/g2pL/train.sent"
UNCASED = SHARED / "models/bert-base-uncased"
CHINESE = SHARED / "models/bert-base-chinese"


def need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"shared asset {p} is missing")


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def uncased():
    need(UNCASED)
    from bertkit.tokenization import Tokenizer

    return Tokenizer.from_pretrained(str(UNCASED))


@pytest.fixture(scope="module")
def vocab(uncased) -> VocabInfo:
    return VocabInfo.from_vocab(uncased.vocab)


@pytest.fixture(scope="module")
def wiki_rows(uncased) -> list[np.ndarray]:
    """600 rows of [CLS] up-to-126 wikitext tokens [SEP] (real text, real word pieces)."""
    need(WIKITEXT_VALID)
    lines = [l.strip() for l in WIKITEXT_VALID.read_text(encoding="utf-8").splitlines()
             if len(l.split()) > 20 and not l.strip().startswith("=")][:600]
    encs = uncased.backend.encode_batch(lines, add_special_tokens=False)
    return [np.array([uncased.cls_id] + e.ids[:126] + [uncased.sep_id], dtype=np.int32) for e in encs]


@pytest.fixture(scope="module")
def wiki_corpus(tmp_path_factory) -> Path:
    """A slice of WikiText-2 valid (paragraphs as documents), big enough for several chunks."""
    need(WIKITEXT_VALID)
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    path.write_text("\n".join(WIKITEXT_VALID.read_text(encoding="utf-8").splitlines()[:600]) + "\n", encoding="utf-8")
    return path


def build(tmp_path: Path, inputs, name: str = "r", tokenizer: Path = UNCASED, **kwargs):
    opts = {k: kwargs.pop(k) for k in ("workers", "num_shards", "shard_index") if k in kwargs}
    out = tmp_path / name
    create_pretraining_data([str(p) for p in inputs], str(tokenizer), out, PretrainDataConfig(**kwargs), log=quiet, **opts)
    return out, open_pretraining_data(out)


def words_whole(masked: np.ndarray, spans: np.ndarray) -> bool:
    """True when every word of `spans` [W,2] is either fully masked or not at all."""
    if not len(spans):
        return True
    per_word = np.add.reduceat(masked.astype(np.int64), spans[:, 0])
    # reduceat sums up to the next start; words are followed by at most special tokens, never masked.
    return bool(np.all((per_word == 0) | (per_word == spans[:, 1] - spans[:, 0])))


def shard_digests(directory: Path) -> list[tuple[str, str]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return [(s["name"], s["sha256"]) for s in manifest["shards"]]


# ---- NSP instances ----------------------------------------------------------------------------
def test_nsp_structure_on_sample_text(tmp_path, uncased):
    need(SAMPLE)
    out, ds = build(tmp_path, [SAMPLE], dupe_factor=3)
    assert len(ds) > 20
    labels = set()
    for i in range(len(ds)):
        r = ds[i]
        ids, types = r["input_ids"], r["token_type_ids"]
        assert ids.size <= 128 and ids[0] == uncased.cls_id and ids[-1] == uncased.sep_id
        seps = np.flatnonzero(ids == uncased.sep_id)
        assert seps.size == 2, "exactly [CLS] A [SEP] B [SEP]"
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:] == 1).all()
        assert seps[0] >= 2 and seps[1] - seps[0] >= 2, "A and B each hold at least one token"
        assert (r["sequence_ids"] == 1).all()
        labels.add(int(r["nsp_label"]))
        pos = r["masked_positions"]
        assert np.all(np.diff(pos) > 0) and not np.isin(ids[pos], [uncased.cls_id, uncased.sep_id]).any()
        assert 1 <= pos.size <= 20
    assert labels == {0, 1}
    manifest = ds.manifest
    assert manifest["shards"][0]["epoch_rows"] and len(manifest["shards"][0]["epoch_rows"]) == 3
    # Each generated epoch pairs and masks differently.
    e0 = manifest["shards"][0]["epoch_rows"][0]
    first = [tuple(ds[i]["input_ids"]) for i in range(e0)]
    second = [tuple(ds[e0 + i]["input_ids"]) for i in range(manifest["shards"][0]["epoch_rows"][1])]
    assert set(first) != set(second)


def test_nsp_follows_are_real_continuations(tmp_path, uncased):
    """With label 0, B is text that follows A in the same document (checked on unmasked rows)."""
    need(SAMPLE)
    _, ds = build(tmp_path, [SAMPLE], masking="dynamic", short_seq_prob=0.0)
    text_ids = np.concatenate([np.array(uncased.backend.encode(l, add_special_tokens=False).ids)
                               for l in SAMPLE.read_text(encoding="utf-8").splitlines() if l.strip()])
    joined = " " + " ".join(map(str, text_ids.tolist())) + " "

    def find(tokens: np.ndarray) -> int:
        return joined.find(" " + " ".join(map(str, tokens.tolist())) + " ")

    checked = 0
    for i in range(len(ds)):
        r = ds[i]
        ids = r["input_ids"]
        seps = np.flatnonzero(ids == uncased.sep_id)
        a, b = ids[1:seps[0]], ids[seps[0] + 1:seps[1]]
        # truncate_seq_pair trims only segment ends, so A and B are each contiguous corpus text.
        start_a, start_b = find(a), find(b)
        assert start_a >= 0 and start_b >= 0
        if int(r["nsp_label"]) == 0:
            end_a = start_a + len(" ".join(map(str, a.tolist())))
            assert 0 <= start_b - end_a < 400, "B starts right after A (up to trimmed tokens)"
            checked += 1
    assert checked >= 3


def test_special_tokens_written_in_the_corpus_are_read_as_text(tmp_path, uncased):
    """A corpus about BERT spells out "[MASK]", "[SEP]", ...: google-research/bert tokenizes them as
    text ("[", "sep", "]"); read as the special tokens they gave rows an unlabelled [MASK] input and
    extra [SEP]s inside a segment, and a row held [CLS]/[PAD] in its middle."""
    corpus = tmp_path / "bert.txt"
    corpus.write_text("BERT replaces 15% of the tokens with [MASK] before training.\n"
                      "The input is [CLS] sentence A [SEP] sentence B [SEP], padded with [PAD].\n"
                      "It predicts the masked tokens.\n\nSecond document about cats.\nCats sleep a lot.\n"
                      "They also eat.\n", encoding="utf-8")
    _, ds = build(tmp_path, [corpus], dupe_factor=5, short_seq_prob=0.0)
    specials = [uncased.cls_id, uncased.sep_id, uncased.mask_id, uncased.pad_id]
    spelled = []
    for i in range(len(ds)):
        r = ds[i]
        ids = r["input_ids"].copy()
        ids[r["masked_positions"]] = r["masked_ids"]
        assert ids[0] == uncased.cls_id and np.flatnonzero(ids == uncased.sep_id).size == 2
        assert np.isin(ids, specials).sum() == 3, "[CLS] A [SEP] B [SEP] and no other special token"
        unlabelled = np.setdiff1d(np.flatnonzero(r["input_ids"] == uncased.mask_id), r["masked_positions"])
        assert unlabelled.size == 0, "every [MASK] in the input is a prediction"
        spelled.append(" ".join(uncased.convert_ids_to_tokens(ids.tolist())))
    assert any("with [ mask ] before" in row for row in spelled)
    assert any("is [ cl ##s ] sentence a [ sep ] sentence b [ sep ] , padded with [ pad ]" in row for row in spelled)


# ---- masking statistics -----------------------------------------------------------------------
def test_uniform_masking_rate_and_80_10_10(wiki_rows, vocab):
    rng = np.random.default_rng(0)
    cfg = MaskingConfig()
    n_pred = n_mask = n_rand = n_keep = expected = 0
    for ids in wiki_rows:
        out, pos, orig = mask_row(ids, rng, cfg, vocab)
        expected += min(20, max(1, round(ids.size * 0.15)))
        assert np.array_equal(orig, ids[pos]) and pos.size <= 20
        assert not np.isin(ids[pos], vocab.special_ids).any()
        unchanged = np.setdiff1d(np.arange(ids.size), pos)
        assert np.array_equal(out[unchanged], ids[unchanged])
        n_pred += pos.size
        n_mask += int((out[pos] == vocab.mask_id).sum())
        n_keep += int((out[pos] == orig).sum())
        n_rand += int(((out[pos] != vocab.mask_id) & (out[pos] != orig)).sum())
    assert n_pred == expected  # the reference's budget: round(15% of the row), capped at 20
    # ~11,000 predictions: the binomial std of a 10% share is 0.003, so +-0.015 is a 5-sigma band.
    assert abs(n_mask / n_pred - 0.8) < 0.015
    assert abs(n_rand / n_pred - 0.1) < 0.015
    assert abs(n_keep / n_pred - 0.1) < 0.015


def test_whole_word_mask_never_splits_a_word(wiki_rows, vocab):
    rng = np.random.default_rng(1)
    cfg = MaskingConfig(whole_word_mask=True)
    multi_piece_words_masked = 0
    for ids in wiki_rows:
        _, pos, _ = mask_row(ids, rng, cfg, vocab)
        assert 1 <= pos.size <= 20
        masked = np.zeros(ids.size, dtype=bool)
        masked[pos] = True
        spans = word_spans(ids, vocab)
        assert words_whole(masked, spans), "a word was partly masked"
        multi_piece_words_masked += int(((spans[:, 1] - spans[:, 0] > 1) & masked[spans[:, 0]]).sum())
    assert multi_piece_words_masked > 20  # the check above had split-able words to fail on


def test_max_predictions_respected(wiki_rows, vocab):
    rng = np.random.default_rng(2)
    cfg = MaskingConfig(masked_lm_prob=0.5, max_predictions_per_seq=7, whole_word_mask=True)
    sizes = [mask_row(ids, rng, cfg, vocab)[1].size for ids in wiki_rows]
    assert max(sizes) <= 7 and np.mean(sizes) > 6


def test_span_masking_contiguous_spans(wiki_rows, vocab):
    rng = np.random.default_rng(3)
    cfg = MaskingConfig(strategy="span")
    run_lengths, totals, budgets = [], 0, 0
    for ids in wiki_rows:
        out, pos, _ = mask_row(ids, rng, cfg, vocab)
        budget = min(20, max(1, round(ids.size * 0.15)))
        assert pos.size <= budget
        totals += pos.size
        budgets += budget
        masked = np.zeros(ids.size, dtype=bool)
        masked[pos] = True
        assert words_whole(masked, word_spans(ids, vocab))
        # Maximal runs of masked positions; a span's tokens share one replacement decision.
        breaks = np.flatnonzero(np.diff(pos) > 1) + 1
        for run in np.split(pos, breaks):
            run_lengths.append(run.size)
    assert totals / budgets > 0.9  # spans fill nearly all of the 15% budget
    # Geometric(0.2) word spans clipped at 10: runs are much longer than single tokens.
    assert np.mean(run_lengths) > 3.0


def segments_of(ids: np.ndarray, vocab: VocabInfo) -> list[np.ndarray]:
    """Token positions of each run of maskable tokens between specials ([CLS] A [SEP] B [SEP])."""
    maskable = np.flatnonzero(vocab.maskable(ids))
    return [run for run in np.split(maskable, np.flatnonzero(np.diff(maskable) > 1) + 1) if run.size]


def test_mass_masking_masks_one_fragment_of_half_of_each_segment(wiki_rows, vocab):
    """MASS: per segment one contiguous run of whole words, about 50% of the segment's tokens
    (within a word of it), each token replaced 80/10/10 on its own; on real NSP-shaped rows
    (two real sentences of WikiText-2 in one row)."""
    rng = np.random.default_rng(5)
    cfg = MaskingConfig(strategy="mass", masked_lm_prob=0.5, max_predictions_per_seq=64)
    sep = int(wiki_rows[0][-1])
    n_pred = n_mask = n_keep = n_segment_tokens = 0
    rows = [np.concatenate([a[:60], [sep], b[1:60], [sep]]).astype(np.int32)
            for a, b in zip(wiki_rows[::2], wiki_rows[1::2])]
    for ids in rows:
        out, pos, orig = mask_row(ids, rng, cfg, vocab)
        assert pos.size <= 64 and np.array_equal(orig, ids[pos]) and np.all(np.diff(pos) > 0)
        masked = np.zeros(ids.size, dtype=bool)
        masked[pos] = True
        assert words_whole(masked, word_spans(ids, vocab))
        segments = segments_of(ids, vocab)
        assert len(segments) == 2
        for segment in segments:
            inside = np.flatnonzero(masked[segment])
            assert inside.size and np.all(np.diff(inside) == 1), "not one contiguous fragment"
            words = word_spans(ids[segment[0] - 1:segment[-1] + 2], vocab)
            longest_word = int((words[:, 1] - words[:, 0]).max())
            assert abs(inside.size - round(0.5 * segment.size)) <= longest_word
            n_segment_tokens += segment.size
        unchanged = ~masked
        assert np.array_equal(out[unchanged], ids[unchanged])
        n_pred += pos.size
        n_mask += int((out[pos] == vocab.mask_id).sum())
        n_keep += int((out[pos] == orig).sum())
    print(f"MASS on {len(rows)} WikiText-2 rows: {n_pred / n_segment_tokens:.4f} of segment tokens masked, "
          f"[MASK] {n_mask / n_pred:.4f}, kept {n_keep / n_pred:.4f}")
    assert abs(n_pred / n_segment_tokens - 0.5) < 0.01
    # ~18,000 predictions decided one by one: 5-sigma bands of about +-0.015 / +-0.011.
    assert abs(n_mask / n_pred - 0.8) < 0.015 and abs(n_keep / n_pred - 0.1) < 0.011


def test_mass_fragments_fit_the_prediction_cap(wiki_rows, vocab):
    rng = np.random.default_rng(6)
    cfg = MaskingConfig(strategy="mass", masked_lm_prob=0.5, max_predictions_per_seq=20)
    sizes = [mask_row(ids, rng, cfg, vocab)[1].size for ids in wiki_rows[:200]]
    assert max(sizes) <= 20 and np.mean(sizes) > 17  # the cap binds (half of 126 tokens is 63)


def test_pretrain_data_mass_mask_static_and_dynamic_then_pretrain(tmp_path, capsys, uncased):
    """`pretrain-data --mass-mask` on WikiText-2 valid: 50% of tokens masked by default, the cap
    raised to 64, the strategy kept in the manifest so that dynamic masks at training time are
    MASS fragments too; `pretrain` trains on both."""
    need(WIKITEXT_VALID)
    from bertkit.cli import main

    args = ["pretrain-data", "--input", str(WIKITEXT_VALID), "--wikitext", "--tokenizer", str(UNCASED), "--mass-mask"]
    assert main([*args, "--output-dir", str(tmp_path / "static")]) == 0
    err = capsys.readouterr().err
    rate = float(re.search(r"([0-9.]+)% of tokens masked", err).group(1))
    assert 49.0 < rate < 51.0 and "warning" not in err
    static = open_pretraining_data(tmp_path / "static")
    assert static.manifest["settings"]["mask"]["strategy"] == "mass"
    assert static.manifest["settings"]["mask"]["max_predictions_per_seq"] == 64
    assert main([*args, "--output-dir", str(tmp_path / "dynamic"), "--masking", "dynamic"]) == 0
    dynamic = open_pretraining_data(tmp_path / "dynamic")
    masking = dynamic_masking_for(dynamic.manifest, uncased, seed=0)
    assert masking.config.strategy == "mass"
    row = dynamic[0]["input_ids"]
    _, pos, _ = masking(row)
    assert abs(pos.size - 0.5 * (row.size - 3)) < 8 and (np.diff(pos) > 1).sum() <= 1  # a fragment in A, one in B
    for name in ("static", "dynamic"):
        run = tmp_path / f"run-{name}"
        assert main(["pretrain", "--data", str(tmp_path / name), "--config", "tiny", "--output-dir", str(run),
                     "--max-steps", "3", "--batch-size", "8", "--device", "cpu", "--no-progress"]) == 0
        losses = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert any(np.isfinite(r.get("loss", np.nan)) for r in losses)
        assert f"masking {name}, MASS fragments at 0.5" in capsys.readouterr().err


def test_mass_mask_refuses_other_strategies(tmp_path, capsys):
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    words = tmp_path / "words.txt"
    words.write_text("the\n", encoding="utf-8")
    base = ["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED), "--mass-mask"]
    assert main([*base, "--span-mask", "--output-dir", str(tmp_path / "a")]) == 1
    assert "--span-mask and --mass-mask cannot be combined" in capsys.readouterr().err
    assert main([*base, "--target-words", str(words), "--output-dir", str(tmp_path / "b")]) == 1
    assert "--target-words and --mass-mask cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dynamic_masking_and_collate(tmp_path, uncased):
    need(SAMPLE)
    out, ds = build(tmp_path, [SAMPLE], masking="dynamic", mask=MaskingConfig(whole_word_mask=True))
    assert all(ds[i]["masked_positions"].size == 0 for i in range(len(ds)))
    dm = dynamic_masking_for(ds.manifest, uncased, seed=0)
    assert dm.config.whole_word_mask
    rows = [ds[i] for i in range(6)]
    batch = collate_pretraining(rows, uncased.pad_id, 20, dynamic_masking=dm)
    b, t = batch["input_ids"].shape
    assert b == 6 and t == max(r["input_ids"].size for r in rows)
    # One slot per masked position of the fullest row (at most max_predictions=20).
    width = int((batch["masked_positions"] >= 0).sum(1).max())
    assert 1 <= width <= 20 and batch["masked_positions"].shape == batch["masked_ids"].shape == (6, width)
    for i, r in enumerate(rows):
        n = r["input_ids"].size
        k = int((batch["masked_positions"][i] >= 0).sum())
        assert k >= 1 and (batch["masked_ids"][i, k:] == -100).all() and (batch["masked_positions"][i, k:] == -1).all()
        pos = batch["masked_positions"][i, :k].numpy()
        assert np.array_equal(batch["masked_ids"][i, :k].numpy(), r["input_ids"][pos])
        assert (batch["attention_mask"][i, :n] == 1).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert (batch["input_ids"][i, n:] == uncased.pad_id).all()
    assert set(batch["next_sentence_label"].tolist()) <= {0, 1}
    # Fresh masks on every call: dynamic masking is the point.
    again = collate_pretraining(rows, uncased.pad_id, 20, dynamic_masking=dm)
    assert not np.array_equal(again["masked_positions"].numpy(), batch["masked_positions"].numpy())


# ---- MLM-only packed rows ---------------------------------------------------------------------
def test_no_nsp_packs_documents_with_sequence_ids(tmp_path, uncased, wiki_corpus):
    _, ds = build(tmp_path, [wiki_corpus], nsp=False, max_seq_length=128)
    full = 0
    for i in range(len(ds)):
        r = ds[i]
        ids, seq = r["input_ids"], r["sequence_ids"]
        assert ids.size <= 128 and int(r["nsp_label"]) == -1 and not r["token_type_ids"].any()
        k = int(seq.max())
        assert np.array_equal(np.unique(seq), np.arange(1, k + 1)) and (np.diff(seq) >= 0).all()
        for d in range(1, k + 1):
            piece = np.flatnonzero(seq == d)
            assert ids[piece[0]] == uncased.cls_id and ids[piece[-1]] == uncased.sep_id
        full += ids.size >= 128 - 16
    assert full / len(ds) > 0.9  # packed to (nearly) full length
    batch = collate_pretraining([ds[0], ds[1]], uncased.pad_id, 20)
    assert batch["attention_mask"].max() >= 1 and (batch["next_sentence_label"] == -100).all()


# ---- target-word masking (polyphone characters, Chinese vocab) ----------------------------------
@pytest.fixture(scope="module")
def polyphone(tmp_path_factory):
    """Polyphone sentences with the ▁ markers removed (5 per document) and the marked characters."""
    need(POLYPHONE, CHINESE)
    lines = POLYPHONE.read_text(encoding="utf-8").splitlines()
    targets = sorted({line.split("▁")[1] for line in lines})
    d = tmp_path_factory.mktemp("poly")
    corpus = d / "poly.txt"
    sents = [line.replace("▁", "") for line in lines[:400]]
    corpus.write_text("\n\n".join("\n".join(sents[i:i + 5]) for i in range(0, len(sents), 5)) + "\n", encoding="utf-8")
    words = d / "targets.txt"
    words.write_text("\n".join(targets) + "\n", encoding="utf-8")
    return corpus, words, targets


def test_target_words_only_targets_when_others_rate_zero(tmp_path, polyphone):
    corpus, words_file, targets = polyphone
    from bertkit.tokenization import Tokenizer

    tok = Tokenizer.from_pretrained(str(CHINESE))
    target_ids = set(tok.convert_tokens_to_ids(targets))
    assert len(targets) == 114  # the g2pL README: 114 polyphonic characters
    _, ds = build(tmp_path, [corpus], tokenizer=CHINESE, target_words=targets,
                  mask=MaskingConfig(masked_lm_prob=0.0, target_mask_prob=1.0, max_predictions_per_seq=64))
    n = 0
    for i in range(len(ds)):
        r = ds[i]
        assert set(r["masked_ids"].tolist()) <= target_ids
        n += r["masked_ids"].size
    assert n > 300


def test_a_multi_piece_target_word_is_masked_whole_or_not_at_all(uncased, vocab, wiki_rows):
    """Without --whole-word-mask the other words' pieces are masked one by one, but a target
    occurrence is one unit: masking only part of "crust ##ace ##ans" would give the word away."""
    words = ["crustaceans", "homarus", "species", "lobsters"]
    pieces = {tuple(uncased.backend.encode(w, add_special_tokens=False).ids) for w in words}
    assert max(map(len, pieces)) == 3  # crust ##ace ##ans, ho ##mar ##us
    targets = TargetWords(pieces)
    whole = partial = untouched = 0
    for masked_lm_prob in (0.0, 0.15):
        cfg = MaskingConfig(masked_lm_prob=masked_lm_prob, target_mask_prob=0.8, max_predictions_per_seq=40)
        rng = np.random.default_rng(5)
        for ids in wiki_rows:
            spans = word_spans(ids, vocab)
            is_target = targets(ids, spans)
            _, positions, _ = mask_row(ids, rng, cfg, vocab, is_target, spans)
            masked = np.zeros(ids.size, dtype=bool)
            masked[positions] = True
            for start, end in spans[is_target & (spans[:, 1] - spans[:, 0] > 1)]:
                n = int(masked[start:end].sum())
                whole += n == end - start
                untouched += n == 0
                partial += 0 < n < end - start
    assert partial == 0 and whole + untouched >= 40
    assert 0.65 < whole / (whole + untouched) < 0.95


def test_a_target_words_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    words = tmp_path / "words.txt"
    words.write_bytes("lobster\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"--target-words .*words\.txt:2: invalid UTF-8"):
        from bertkit.commands.pretrain_data import _read_target_words
        _read_target_words(str(words))
    assert main(["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED), "--output-dir",
                 str(tmp_path / "r"), "--target-words", str(words)]) == 1


def test_target_words_that_can_never_match_are_named(tmp_path):
    need(SAMPLE, UNCASED)
    messages: list[str] = []
    config = PretrainDataConfig(target_words=["anarchism", "don't", "covid-19", "text"])
    create_pretraining_data([str(SAMPLE)], str(UNCASED), tmp_path / "r", config, log=messages.append)
    warning = [m for m in messages if "--target-words" in m]
    assert len(warning) == 1 and "2 of 4 entries" in warning[0] and "\"don't\", 'covid-19'" in warning[0]


def test_a_masking_rate_of_zero_without_target_words_is_refused():
    with pytest.raises(ValueError, match=r"--masked-lm-prob 0 masks nothing"):
        PretrainDataConfig(mask=MaskingConfig(masked_lm_prob=0.0))
    with pytest.raises(ValueError, match=r"--masked-lm-prob 0 masks nothing"):
        PretrainDataConfig(mask=MaskingConfig(masked_lm_prob=0.0, target_mask_prob=0.0), target_words=["a"])
    PretrainDataConfig(mask=MaskingConfig(masked_lm_prob=0.0, target_mask_prob=0.8), target_words=["a"])


def test_target_mask_prob_hits_about_80_percent(polyphone):
    corpus, _, targets = polyphone
    from bertkit.tokenization import Tokenizer

    tok = Tokenizer.from_pretrained(str(CHINESE))
    vocab = VocabInfo.from_vocab(tok.vocab)
    tw = TargetWords({(i,) for i in tok.convert_tokens_to_ids(targets)})
    cfg = MaskingConfig(masked_lm_prob=0.0, target_mask_prob=0.8, max_predictions_per_seq=128)
    rng = np.random.default_rng(4)
    occurrences = hits = 0
    lines = [l for l in corpus.read_text(encoding="utf-8").splitlines() if l]
    for enc in tok.backend.encode_batch(lines, add_special_tokens=False):
        ids = np.array([tok.cls_id] + enc.ids[:126] + [tok.sep_id], dtype=np.int32)
        is_target = tw(ids, word_spans(ids, vocab))
        _, pos, _ = mask_row(ids, rng, cfg, vocab, is_target)
        occurrences += int(is_target.sum())
        hits += pos.size
    # >= 400 occurrences: binomial std of the rate is <= 0.02, so +-0.06 is a 3-sigma band.
    assert occurrences >= 400
    assert abs(hits / occurrences - 0.8) < 0.06


def test_target_words_plus_normal_rate_for_others(polyphone):
    corpus, _, targets = polyphone
    from bertkit.tokenization import Tokenizer

    tok = Tokenizer.from_pretrained(str(CHINESE))
    vocab = VocabInfo.from_vocab(tok.vocab)
    target_ids = np.array(tok.convert_tokens_to_ids(targets))
    tw = TargetWords({(int(i),) for i in target_ids})
    cfg = MaskingConfig(masked_lm_prob=0.15, target_mask_prob=1.0, max_predictions_per_seq=64)
    rng = np.random.default_rng(5)
    others = 0
    for line in corpus.read_text(encoding="utf-8").splitlines()[:100]:
        if not line:
            continue
        ids = np.array([tok.cls_id] + tok.backend.encode(line, add_special_tokens=False).ids[:126] + [tok.sep_id])
        is_target = tw(ids, word_spans(ids, vocab))
        _, pos, orig = mask_row(ids, rng, cfg, vocab, is_target)
        spans = word_spans(ids, vocab)
        target_pos = spans[is_target, 0]
        assert np.isin(target_pos, pos).all(), "p=1.0 masks every target occurrence"
        others += int((~np.isin(pos, target_pos)).sum())
    assert others > 50


def test_other_words_are_masked_at_the_uniform_rate_beside_target_words():
    """The polyphone seed's targets+uniform strategy on its own corpus: the polyphonic characters
    are common (了, 的, 为 ...), so taking 15% of the whole row for the other characters masked
    them at 18.9%. They are masked as uniform masking masks the row without its targets."""
    need(POLYPHONE, CHINESE)
    from bertkit.tokenization import Tokenizer

    lines = POLYPHONE.read_text(encoding="utf-8").splitlines()
    targets = sorted({line.split("▁")[1] for line in lines})
    lines = lines[::len(lines) // 2000]  # the file is grouped by character: take every character's sentences
    tok = Tokenizer.from_pretrained(str(CHINESE), do_lower_case=True)
    vocab = VocabInfo.from_vocab(tok.vocab)
    tw = TargetWords({(int(i),) for i in tok.convert_tokens_to_ids(targets)})
    with_targets = MaskingConfig(masked_lm_prob=0.15, target_mask_prob=0.8, max_predictions_per_seq=64)
    rng, uniform_rng = np.random.default_rng(0), np.random.default_rng(1)
    others = other_masked = target_tokens = without_targets = uniform_masked = 0
    for enc in tok.backend.encode_batch([line.replace("▁", "") for line in lines], add_special_tokens=False):
        ids = np.array([tok.cls_id] + enc.ids[:126] + [tok.sep_id], dtype=np.int32)
        spans = word_spans(ids, vocab)
        is_target = tw(ids, spans)
        _, pos, _ = mask_row(ids, rng, with_targets, vocab, is_target, spans)
        targets_at = spans[is_target, 0]  # Chinese: every target is one character
        others += int(vocab.maskable(ids).sum()) - targets_at.size
        other_masked += int((~np.isin(pos, targets_at)).sum())
        target_tokens += targets_at.size
        rest = np.delete(ids, targets_at)
        uniform_masked += mask_row(rest, uniform_rng, MaskingConfig(), vocab)[1].size
        without_targets += int(vocab.maskable(rest).sum())
    assert target_tokens > 0.15 * (others + target_tokens)  # why the whole row's 15% was too much
    uniform_rate = uniform_masked / without_targets
    assert 0.15 <= uniform_rate < 0.17  # short rows round their 15% up a little
    assert abs(other_masked / others - uniform_rate) < 0.005, (other_masked / others, uniform_rate)


# ---- determinism, workers, parts, resume ------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tmp_path, wiki_corpus):
    a, _ = build(tmp_path, [wiki_corpus], "a", chunk_docs=60)
    b, _ = build(tmp_path, [wiki_corpus], "b", chunk_docs=60)
    c, _ = build(tmp_path, [wiki_corpus], "c", chunk_docs=60, seed=7)
    assert len(shard_digests(a)) >= 2
    assert shard_digests(a) == shard_digests(b)
    assert shard_digests(a) != shard_digests(c)


def test_an_interrupted_build_stops_its_workers_at_once(tmp_path, wiki_corpus):
    """Ctrl-C or SIGTERM while workers build: the pool was closed and joined, which waited for every
    chunk in flight (and for ever where a signal to the process group had ended a worker mid-chunk).
    Now the workers are stopped and a rerun completes the directory."""
    import multiprocessing
    import signal

    def interrupt_at_first_shard(message: str) -> None:
        if ".arrow:" in message:  # as `kill -TERM -PGID`: the workers end, the main process unwinds
            for worker in set(multiprocessing.active_children()) - before:
                os.kill(worker.pid, signal.SIGTERM)
            raise KeyboardInterrupt

    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt):
        create_pretraining_data([str(wiki_corpus)], str(UNCASED), tmp_path / "r", PretrainDataConfig(chunk_docs=10),
                                workers=2, log=interrupt_at_first_shard)
    assert set(multiprocessing.active_children()) == before  # no worker left running
    assert not (tmp_path / "r" / "manifest.json").exists() or not json.loads(
        (tmp_path / "r" / "manifest.json").read_text())["complete"]
    out, data = build(tmp_path, [wiki_corpus], "r", chunk_docs=10, workers=2)
    assert shard_digests(out) == shard_digests(build(tmp_path, [wiki_corpus], "one", chunk_docs=10)[0])


def test_a_worker_killed_mid_chunk_is_an_error_naming_it_not_a_hang(tmp_path, wiki_corpus):
    """The out-of-memory killer's SIGKILL on a worker: multiprocessing.Pool replaced the worker and
    never its task, so the build waited for that chunk for ever. Now it stops with the worker and
    its chunk named, and a rerun builds the rest."""
    import multiprocessing
    import signal

    from bertkit.data.pretraining import WorkerDied

    killed: list[int] = []

    def oom_kill_at_first_shard(message: str) -> None:
        if ".arrow:" in message and not killed:
            for worker in set(multiprocessing.active_children()) - before:
                os.kill(worker.pid, signal.SIGKILL)
                killed.append(worker.pid)

    before = set(multiprocessing.active_children())
    with pytest.raises(WorkerDied, match=r"worker \d+ was killed by SIGKILL while building chunk \d+ .*rerunning"):
        create_pretraining_data([str(wiki_corpus)], str(UNCASED), tmp_path / "r", PretrainDataConfig(chunk_docs=10),
                                workers=2, log=oom_kill_at_first_shard)
    assert killed and set(multiprocessing.active_children()) == before
    out, _ = build(tmp_path, [wiki_corpus], "r", chunk_docs=10, workers=2)
    assert shard_digests(out) == shard_digests(build(tmp_path, [wiki_corpus], "one", chunk_docs=10)[0])


def test_an_error_in_a_worker_reaches_the_command_as_itself(tmp_path, wiki_corpus, monkeypatch):
    """A full disk while a worker writes its shard: the worker's OSError is raised in the main
    process with its message (the forked workers inherit the patched writer), the other workers
    are stopped, and no half-written shard is left."""
    import multiprocessing

    from bertkit.data import records

    real_write_shard = records.write_shard

    def disk_full_at_chunk_3(path, rows, sidecar):
        if sidecar["chunk"] == 3:
            raise OSError(28, "No space left on device", str(path))
        return real_write_shard(path, rows, sidecar)

    monkeypatch.setattr(records, "write_shard", disk_full_at_chunk_3)
    before = set(multiprocessing.active_children())
    with pytest.raises(OSError, match="No space left on device"):
        create_pretraining_data([str(wiki_corpus)], str(UNCASED), tmp_path / "r", PretrainDataConfig(chunk_docs=10),
                                workers=2, log=quiet)
    assert set(multiprocessing.active_children()) == before
    assert not list((tmp_path / "r").glob("*.tmp")) and not (tmp_path / "r" / records.shard_name(3)).exists()


def test_workers_and_machine_parts_give_identical_shards(tmp_path, wiki_corpus):
    one, _ = build(tmp_path, [wiki_corpus], "one", chunk_docs=60)
    two, _ = build(tmp_path, [wiki_corpus], "two", chunk_docs=60, workers=2)
    assert shard_digests(one) == shard_digests(two)

    p0 = tmp_path / "p0"
    create_pretraining_data([str(wiki_corpus)], str(UNCASED), p0, PretrainDataConfig(chunk_docs=60),
                            num_shards=2, shard_index=0, log=quiet)
    create_pretraining_data([str(wiki_corpus)], str(UNCASED), tmp_path / "p1", PretrainDataConfig(chunk_docs=60),
                            num_shards=2, shard_index=1, log=quiet)
    assert not json.loads((p0 / "manifest.json").read_text())["complete"]
    with pytest.raises(DataError, match="missing"):
        open_pretraining_data(p0)
    for f in (tmp_path / "p1").glob("shard-*"):
        shutil.copy(f, p0 / f.name)
    merged = open_pretraining_data(p0)  # completes the manifest from the copied sidecars
    assert shard_digests(p0) == shard_digests(one) and len(merged) == len(open_pretraining_data(one))

    # A rerun skips complete shards; settings that differ are refused.
    logs: list[str] = []
    create_pretraining_data([str(wiki_corpus)], str(UNCASED), one, PretrainDataConfig(chunk_docs=60), log=logs.append)
    assert "0 built" in logs[-1]
    with pytest.raises(ValueError, match=r"other settings: seed \(12345, now 1\)"):
        create_pretraining_data([str(wiki_corpus)], str(UNCASED), one, PretrainDataConfig(chunk_docs=60, seed=1),
                                log=quiet)
    # Records of an earlier builder (rows made differently from the same settings) are not completed.
    manifest = json.loads((one / "manifest.json").read_text())
    del manifest["builder"]
    (one / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"other settings: builder; use a new --output-dir"):
        create_pretraining_data([str(wiki_corpus)], str(UNCASED), one, PretrainDataConfig(chunk_docs=60), log=quiet)


# ---- bad and odd input ------------------------------------------------------------------------
def test_empty_corpus_is_an_error(tmp_path):
    need(UNCASED)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        build(tmp_path, [empty])
    assert not (tmp_path / "r").exists()  # nothing half made is left behind (it had a tokenizer/ before)


def test_an_output_dir_of_other_files_or_other_settings_is_refused(tmp_path):
    """Records were written among the files of a non-empty directory (a corpus folder given as
    --output-dir); and a change of --max-seq-length was reported as "max_seq_length (64, now
    128), max_seq_length"."""
    need(UNCASED, SAMPLE)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "text.txt").write_text(SAMPLE.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus is not empty and holds no records \(it holds text.txt\)"):
        create_pretraining_data([str(corpus / "text.txt")], str(UNCASED), corpus, PretrainDataConfig(), log=quiet)
    assert [p.name for p in corpus.iterdir()] == ["text.txt"]
    build(tmp_path, [corpus / "text.txt"], max_seq_length=64)
    with pytest.raises(ValueError) as err:
        build(tmp_path, [corpus / "text.txt"], max_seq_length=128)
    assert "other settings: max_seq_length (64, now 128); use a new --output-dir" in str(err.value)


def test_one_sentence_document_and_overlong_line(tmp_path, uncased):
    need(UNCASED)
    corpus = tmp_path / "odd.txt"
    long_line = " ".join(f"word{i}" for i in range(3000))
    corpus.write_text(f"Only one sentence here.\n\n{long_line}\n\nAnother lonely line.\n", encoding="utf-8")
    _, ds = build(tmp_path, [corpus], max_seq_length=64)
    assert len(ds) >= 3
    for i in range(len(ds)):
        r = ds[i]
        assert r["input_ids"].size <= 64 and int(r["nsp_label"]) == 1  # single segments: B is random
    assert max(ds[i]["input_ids"].size for i in range(len(ds))) == 64  # the long line was truncated


def test_invalid_utf8_names_file_and_line(tmp_path):
    need(UNCASED)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nanother\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: invalid UTF-8"):
        build(tmp_path, [bad])
    assert not (tmp_path / "r").exists()


def test_bad_input_mid_shard_leaves_no_partial_file(tmp_path):
    from bertkit.data.records import write_shard

    def rows():
        yield {"input_ids": np.arange(5, dtype=np.int32), "nsp_label": 0}
        raise DataError("row 2: bad record")

    with pytest.raises(DataError, match="row 2"):
        write_shard(tmp_path / "shard-00000.arrow", rows())
    assert list(tmp_path.iterdir()) == []


def test_gzip_and_jsonl_inputs(tmp_path, uncased):
    need(SAMPLE)
    gz = tmp_path / "sample.txt.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    plain, _ = build(tmp_path, [SAMPLE], "plain")
    zipped, _ = build(tmp_path, [gz], "zipped")
    assert [d for _, d in shard_digests(plain)] == [d for _, d in shard_digests(zipped)]

    docs = SAMPLE.read_text(encoding="utf-8").split("\n\n")
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"body": " ".join(d.split("\n"))}) + "\n" for d in docs if d.strip()),
                  encoding="utf-8")
    _, ds = build(tmp_path, [jl], "jsonl", text_field="body")
    assert len(ds) > 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "ok."}\n{"text": "no body"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*'body'"):
        build(tmp_path, [bad], "bad", text_field="body")


def test_google_create_pretraining_data_spellings(tmp_path):
    """create_pretraining_data.py's command line: --input_file takes a comma-separated list, and
    --do_whole_word_mask=true a value (it was refused: "ignored explicit argument")."""
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    documents = SAMPLE.read_text(encoding="utf-8").split("\n\n")
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n\n".join(documents[:4]), encoding="utf-8")
    second.write_text("\n\n".join(documents[4:]), encoding="utf-8")
    runs = {}
    for name, inputs, wwm in (("google", [f"--input_file={first},{second}"], ["--do_whole_word_mask=true"]),
                              ("bertkit", ["--input", str(first), str(second)], ["--whole-word-mask"]),
                              ("off", [f"--input_file={first},{second}"], ["--do_whole_word_mask=false"])):
        runs[name] = tmp_path / name
        assert main(["pretrain-data", *inputs, f"--vocab_file={UNCASED}", f"--output_dir={runs[name]}", *wwm,
                     "--random_seed=3"]) == 0
    assert [d for _, d in shard_digests(runs["google"])] == [d for _, d in shard_digests(runs["bertkit"])]
    assert [d for _, d in shard_digests(runs["off"])] != [d for _, d in shard_digests(runs["bertkit"])]


# ---- commands ---------------------------------------------------------------------------------
def test_cli_pretrain_data_then_inspect(tmp_path, capsys):
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    out = tmp_path / "rec"
    rc = main(["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED), "--output-dir", str(out),
               "--whole-word-mask", "--dupe-factor", "2", "--seed", "3"])
    assert rc == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--n", "3", "--stats"]) == 0
    text = capsys.readouterr().out
    assert "[MASK](" in text and "  A: [CLS]" in text and "  B: " in text and "nsp_label" in text
    # The original token is printed after each [MASK]: check one against the record.
    ds = open_pretraining_data(out)
    r = ds[0]
    from bertkit.tokenization import Tokenizer

    tok = Tokenizer.from_pretrained(str(out / "tokenizer"))
    k = int(np.flatnonzero(r["input_ids"][r["masked_positions"]] == tok.mask_id)[0])
    assert f"[MASK]({tok.convert_ids_to_tokens(int(r['masked_ids'][k]))})" in text
    assert "masking rate:" in text and "length histogram" in text and f"records: {len(ds)}" in text
    assert main(["inspect", str(out), "--start", str(len(ds))]) == 1
    assert f"--start {len(ds)}: the records hold {len(ds)} rows" in capsys.readouterr().err
    assert main(["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED), "--output-dir",
                 str(tmp_path / "other"), "--target-mask-prob", "0.5"]) == 1
    assert "give --target-words FILE too" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_split_sentences_for_paragraph_corpora(tmp_path):
    from bertkit.data.pretraining import iter_documents

    f = tmp_path / "paras.txt"
    f.write_text(" = Title = \n \n The first one . The second , longer one ! \n Third line\n", encoding="utf-8")
    assert list(iter_documents([f])) == [["= Title ="], ["The first one . The second , longer one !", "Third line"]]
    assert list(iter_documents([f], split=True)) == [["= Title ="],
                                                     ["The first one .", "The second , longer one !", "Third line"]]


def test_wikitext_articles_become_documents(tmp_path):
    from bertkit.data.pretraining import iter_wikitext_documents

    f = tmp_path / "wiki.tokens"
    f.write_text(" \n = First Article = \n \n Its lead , 1 @,@ 000 words . A <unk> follows @-@ here . \n"
                 " \n = = History = = \n \n The state @-@ of @-@ the @-@ art was 0 @.@ 5 . \n"
                 " \n = = = Early years = = = \n \n Early text . \n"
                 " Key : GP \n = Games played ; G = \n Goals . \n"  # a wrapped legend, not a heading
                 " \n = Second Article = \n \n Only one sentence . \n", encoding="utf-8")
    assert list(iter_wikitext_documents([f])) == [
        ["Its lead , 1,000 words .", "A [UNK] follows-here .", "The state-of-the-art was 0.5 .", "Early text .",
         "Key : GP", "= Games played ; G =", "Goals ."],
        ["Only one sentence ."],
    ]


def test_wikitext_records_have_articles_as_documents_and_balanced_nsp(tmp_path, capsys, uncased):
    """WikiText-2 valid (60 articles): --wikitext makes one document per article; reading it as
    paragraphs makes most documents one heading line and most NSP labels random, and says so."""
    need(WIKITEXT_VALID)
    from bertkit.cli import main
    from bertkit.data.pretraining import iter_wikitext_documents

    documents = list(iter_wikitext_documents([WIKITEXT_VALID]))
    assert len(documents) == 60  # the published number of WikiText-2 validation articles
    assert not any(s.startswith("= = ") for doc in documents for s in doc)

    def nsp_random_share(out):
        labels = np.array([int(r["nsp_label"]) for r in open_pretraining_data(out)])
        return labels.mean(), len(labels)

    args = ["pretrain-data", "--input", str(WIKITEXT_VALID), "--tokenizer", str(UNCASED), "--masking", "dynamic"]
    assert main([*args, "--output-dir", str(tmp_path / "articles"), "--wikitext"]) == 0
    assert "warning" not in capsys.readouterr().err
    articles_random, articles_rows = nsp_random_share(tmp_path / "articles")
    assert main([*args, "--output-dir", str(tmp_path / "paragraphs"), "--split-sentences"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "most NSP labels will be 'random'" in err and "--wikitext" in err
    paragraphs_random, _ = nsp_random_share(tmp_path / "paragraphs")
    print(f"WikiText-2 valid NSP 'random' share: --wikitext {articles_random:.3f} ({articles_rows} rows), "
          f"paragraphs {paragraphs_random:.3f}")
    assert 0.45 < articles_random < 0.56 and paragraphs_random > 0.6
    # <unk> is read as [UNK], not as the pieces "<", "un", "##k", ">".
    ids = np.concatenate([r["input_ids"] for r in open_pretraining_data(tmp_path / "articles")])
    assert (ids == uncased.unk_id).sum() > 1000
    pieces = np.array(uncased.convert_tokens_to_ids(["<", "un", "##k", ">"]))
    windows = np.lib.stride_tricks.sliding_window_view(ids, len(pieces))
    assert not (windows == pieces).all(axis=1).any()


@pytest.mark.parametrize("nsp", [True, False], ids=["nsp", "packed"])
def test_held_out_documents_share_no_text_with_training_over_several_epochs(tmp_path, nsp, uncased):
    """Three epochs of WikiText-2 valid's 60 articles: a held-out draw by row repeats most of its
    text in training; by document, the two parts share no 8-gram of text."""
    need(WIKITEXT_VALID, UNCASED)
    from bertkit.training.pretraining import IndexView, held_out_warning, split_held_out

    out, ds = build(tmp_path, [WIKITEXT_VALID], wikitext=True, dupe_factor=3, masking="dynamic", nsp=nsp)
    offsets, values = ds.document_ids()
    for i in range(0, len(ds), 97):
        documents, row = values[offsets[i]:offsets[i + 1]], ds[i]
        if nsp:  # A's document, and B's when B is random
            assert len(documents) == 1 + int(row["nsp_label"]) and len(set(documents.tolist())) == len(documents)
        else:  # one per packed piece
            assert len(documents) == int(row["sequence_ids"].max())

    def grams(view, a_only=None) -> set[bytes]:
        found = set()
        for i in range(len(view)):
            ids = view[i]["input_ids"]
            if a_only is not None and a_only[i]:  # B is training text, evaluated for NSP only
                ids = ids[view[i]["token_type_ids"] == 0]
            if ids.size <= 8:
                continue
            # The windows starting at 0 .. size - 9, all at once (a Python loop over them took ~20 s).
            windows = np.lib.stride_tricks.sliding_window_view(ids, 8)[:ids.size - 8]
            text = windows[~np.isin(windows, [101, 102]).any(axis=1)]  # text only, not [CLS]/[SEP] framing
            found.update(window.tobytes() for window in np.ascontiguousarray(text))
        return found

    train, held = split_held_out(ds, 0.05, seed=1)
    assert len(held) >= round(0.05 * len(ds)) and len(train) + len(held) > 0.75 * len(ds)
    held_grams = grams(held, held.training_segment_b)
    if nsp:  # NotNext pairs are held out too (their A is held-out text), not only IsNext ones
        not_next = np.mean([int(held[i]["nsp_label"]) for i in range(len(held))])
        assert 0.3 < not_next < 0.7 and held.training_segment_b.sum() > 0.5 * not_next * len(held)
        from bertkit.training.pretraining import PretrainingTask

        task = PretrainingTask(ds, uncased)
        items, _ = task.eval_set(held)
        for inst, b_is_training_text in zip(items, held.training_segment_b):
            in_b = inst["token_type_ids"][inst["masked_positions"]] == 1
            assert not (b_is_training_text and in_b.any())
            assert (inst["input_ids"][inst["token_type_ids"] == 1] != 103).all() or not b_is_training_text
        assert sum(inst["masked_positions"].size for inst in items) > 0.1 * sum(inst["input_ids"].size for inst in items)
    shared = len(held_grams & grams(train)) / len(held_grams)
    print(f"held-out 8-grams also in training: by document {shared:.4f}", end="")
    assert shared < 0.01  # phrases that different articles happen to share
    assert held_out_warning(ds, held) is None
    rng = np.random.default_rng(0)
    by_row = np.sort(rng.choice(len(ds), len(held), replace=False))
    rest = np.setdiff1d(np.arange(len(ds)), by_row)
    by_row_grams = grams(IndexView(ds, by_row))
    shared_by_row = len(by_row_grams & grams(IndexView(ds, rest))) / len(by_row_grams)
    print(f", by row {shared_by_row:.3f}")
    assert shared_by_row > 0.8


def test_records_without_document_ids_warn_that_the_held_out_split_may_leak():
    from bertkit.training.pretraining import held_out_warning, split_held_out

    tfrecord = SHARED / "data/pretraining_formats/google_create_pretraining_data_format.tfrecord"
    need(tfrecord)
    ds = open_pretraining_data(tfrecord)
    train, held = split_held_out(ds, 0.1, seed=1)
    assert len(train) + len(held) == len(ds) and len(held) == round(0.1 * len(ds))
    assert "held-out rows repeat text seen in training" in held_out_warning(ds, held)


def test_a_lone_last_document_joins_the_chunk_before(tmp_path):
    """BERT's sample text has 3 documents; in chunks of 2 the last would be alone and every
    'random' B of its rows would be its own text. It joins the first chunk instead."""
    need(SAMPLE, UNCASED)
    out, ds = build(tmp_path, [SAMPLE], chunk_docs=2, dupe_factor=3)
    assert len(ds.manifest["shards"]) == 1 and ds.manifest["shards"][0]["documents"] == 3
    offsets, values = ds.document_ids()
    random_rows = [values[offsets[i]:offsets[i + 1]] for i in range(len(ds)) if int(ds[i]["nsp_label"]) == 1]
    assert random_rows and all(len(d) == 2 and d[0] != d[1] for d in random_rows)
    with pytest.raises(ValueError, match=r"--chunk-docs must be >= 2 with NSP"):
        PretrainDataConfig(chunk_docs=1)


def test_vectorised_word_picking_equals_the_greedy_scan() -> None:
    # _pick_words replaced a per-word Python loop (the hot path of target-word masking); it must
    # choose exactly what the plain greedy scan chooses, for any order, budget and word lengths.
    from bertkit.data.masking import _pick_words, _positions_of

    def greedy(spans, order, budget, taken):
        chosen = []
        for w in order:
            if taken >= budget:
                break
            n = int(spans[w, 1] - spans[w, 0])
            if taken + n <= budget:
                chosen.append(int(w))
                taken += n
        return chosen

    rng = np.random.default_rng(0)
    for _ in range(500):
        lengths = rng.integers(1, 5, rng.integers(0, 40))
        starts = np.concatenate([[1], 1 + np.cumsum(lengths)])[:-1] if lengths.size else np.zeros(0, np.int64)
        spans = np.stack([starts, starts + lengths], axis=1) if lengths.size else np.zeros((0, 2), np.int64)
        order = rng.permutation(len(spans))
        budget, taken = int(rng.integers(0, 25)), int(rng.integers(0, 5))
        picked = _pick_words(spans, order, budget, taken)
        assert picked == greedy(spans, order, budget, taken)
        expected = [p for w in picked for p in range(spans[w, 0], spans[w, 1])]
        assert _positions_of(spans, picked).tolist() == expected


# ---- warnings about records that would train badly ---------------------------------------------
def build_logged(tmp_path: Path, inputs, name: str = "r", **kwargs) -> tuple[Path, str]:
    """Like build(), returning the run's log (warnings and summary) instead of the dataset."""
    messages: list[str] = []
    out = tmp_path / name
    create_pretraining_data([str(p) for p in inputs], str(UNCASED), out, PretrainDataConfig(**kwargs),
                            log=messages.append)
    return out, "\n".join(messages)


def masking_rate(directory: Path, tok) -> float:
    """Masked share of the records' tokens other than [CLS]/[SEP] (what pretrain-data reports)."""
    ds = open_pretraining_data(directory)
    predictions = sum(ds[i]["masked_positions"].size for i in range(len(ds)))
    tokens = sum(int((~np.isin(ds[i]["input_ids"], [tok.cls_id, tok.sep_id])).sum()) for i in range(len(ds)))
    return predictions / tokens


def test_max_predictions_scale_with_the_row_length_and_a_binding_cap_warns(tmp_path, capsys, uncased):
    """At --max-seq-length 512 the old fixed default of 20 predictions masked 4.9% of the tokens
    instead of 15% (measured on the prepare-wiki output: 4.88%, 74.76% of rows at the cap), silently."""
    need(WIKITEXT_VALID, UNCASED)
    from bertkit.cli import main

    corpus = tmp_path / "valid.txt"
    corpus.write_text("\n".join(WIKITEXT_VALID.read_text(encoding="utf-8").splitlines()[:400]) + "\n", encoding="utf-8")
    out, log = build_logged(tmp_path, [corpus], "capped", max_seq_length=512, nsp=False,
                            mask=MaskingConfig(max_predictions_per_seq=20))
    rate = masking_rate(out, uncased)
    assert rate < 0.06
    assert "rows hit --max-predictions-per-seq 20" in log and f"{rate:.1%} of tokens are masked" in log
    assert "raise --max-predictions-per-seq (e.g. to 77)" in log

    assert main(["pretrain-data", "--input", str(corpus), "--tokenizer", str(UNCASED), "--output-dir",
                 str(tmp_path / "scaled"), "--max-seq-length", "512", "--no-nsp"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err
    manifest = json.loads((tmp_path / "scaled" / "manifest.json").read_text())
    assert manifest["settings"]["mask"]["max_predictions_per_seq"] == 77  # round(512 x 0.15)
    rate = masking_rate(tmp_path / "scaled", uncased)
    assert 0.145 < rate < 0.155 and f"{rate:.2%} of tokens masked" in err  # the summary line says it  # the summary line says it


def test_a_one_document_corpus_warns_that_random_next_sentences_are_its_own(tmp_path):
    """One article of 300 lines: every 'random' B came from that same document, with no warning."""
    need(WIKITEXT_VALID, UNCASED)
    lines = [l for l in WIKITEXT_VALID.read_text(encoding="utf-8").splitlines()
             if l.strip() and not l.strip().startswith("=")][:300]
    corpus = tmp_path / "onedoc.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, log = build_logged(tmp_path, [corpus], masking="dynamic")
    ds = open_pretraining_data(out)
    random_rows = sum(int(ds[i]["nsp_label"]) == 1 for i in range(len(ds)))
    assert random_rows > 10
    assert (f"{random_rows:,} of {random_rows:,} (100.00%) NSP rows labelled 'random next sentence' take segment B "
            f"from their own document (the corpus is a single document)") in log
    assert "--no-nsp" in log
    _, log = build_logged(tmp_path, [WIKITEXT_VALID], "articles", wikitext=True, masking="dynamic")
    assert "warning" not in log


def test_a_huge_line_warns_how_much_text_truncation_drops(tmp_path):
    """A 2.5 MB line gave 1 record of 128 tokens (99.97% of the text dropped) and exit code 0."""
    need(UNCASED)
    corpus = tmp_path / "huge.txt"
    corpus.write_text(" ".join(f"word{i % 50}" for i in range(20000)) + "\n\nA short document follows here.\n"
                      "It has two lines.\n", encoding="utf-8")
    _, log = build_logged(tmp_path, [corpus], masking="dynamic")
    match = re.search(r"warning: 1 line is \(sentences\) longer than --max-seq-length 128 \(the longest has "
                      r"([\d,]+) tokens\): ([\d,]+) of ([\d,]+) \(([\d.]+)%\) tokens of the corpus are cut off", log)
    assert match, log
    longest, cut, total = (int(match.group(i).replace(",", "")) for i in (1, 2, 3))
    assert cut == longest - 125 and total > longest and float(match.group(4)) > 99
    assert "--split-sentences" in log


def test_records_with_almost_no_masked_tokens_warn(tmp_path):
    """--target-words with a rare word and --masked-lm-prob 0: 99% of the rows had no masked token,
    written silently; pretrain then learned NSP only and failed at its first evaluation."""
    need(SAMPLE, UNCASED)
    _, log = build_logged(tmp_path, [SAMPLE], target_words=["sword"], mask=MaskingConfig(masked_lm_prob=0.0,
                                                                                       target_mask_prob=0.8))
    match = re.search(r"warning: ([\d,]+) of ([\d,]+) \(([\d.]+)%\) rows have no masked token", log)
    assert match and float(match.group(3)) > 50, log
    assert "raise --masked-lm-prob (now 0) or list more --target-words" in log
    _, log = build_logged(tmp_path, [SAMPLE], "normal")
    assert "warning" not in log


def test_pretrain_refuses_held_out_records_without_masks_before_training(tmp_path, capsys):
    """It trained and then failed at the first evaluation ("no masked positions")."""
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    out, _ = build_logged(tmp_path, [SAMPLE], target_words=["nonesuchword"],
                          mask=MaskingConfig(masked_lm_prob=0.0, target_mask_prob=0.8))
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(out), "--eval-data", str(out), "--config", "tiny", "--output-dir",
                 str(run), "--max-steps", "2", "--device", "cpu", "--no-progress"]) == 1
    assert "records hold no masked token, so there is no MLM loss to measure" in capsys.readouterr().err
    assert not (run / "log.jsonl").exists()


def test_an_unfinished_record_directory_says_to_rerun_pretrain_data(tmp_path, capsys):
    """An interrupted run (complete shards, no manifest.json yet) was 'unsupported format'."""
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    args = ["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED), "--output-dir", str(tmp_path / "r"),
            "--chunk-docs", "2"]
    assert main(args) == 0
    complete = sorted(p.name for p in (tmp_path / "r").glob("shard-*.arrow"))
    (tmp_path / "r" / "manifest.json").unlink()  # what SIGKILL before the last step leaves
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert (f"an unfinished `bertkit pretrain-data` (or `convert-records`) run: {len(complete)} complete shard(s) "
            f"and no manifest.json") in err and "rerun the same command" in err
    with pytest.raises(DataError, match=r"--data .*: an unfinished `bertkit pretrain-data`"):
        open_pretraining_data(tmp_path / "r", flag="--data")
    assert main(args) == 0  # ... which resumes and finishes it
    assert "0 built, 1 already complete" in capsys.readouterr().err
    assert len(open_pretraining_data(tmp_path / "r")) > 0


FORMATS = SHARED / "data/pretraining_formats"


@pytest.mark.parametrize("name, kind", [
    ("nvidia_hdf5_format.hdf5", r"HDF5 pre-training data\); .*bertkit convert-records"),
    ("google_create_pretraining_data_format.tfrecord", r"TFRecord pre-training data\); .*bertkit convert-records"),
    ("expected.npz", r"a zip archive, e.g. NumPy \.npz\)"),
])
def test_binary_input_is_named_as_not_text(tmp_path, name, kind):
    """An HDF5/TFRecord/NPZ file got "re-encode the file as UTF-8 (e.g. iconv -f latin1 ...)"."""
    need(FORMATS / name, UNCASED)
    with pytest.raises(DataError, match=rf"{re.escape(name)}:1: not a text file \({kind}") as err:
        build(tmp_path, [FORMATS / name])
    assert "iconv" not in str(err.value)
    assert not (tmp_path / "r").exists()


def test_nul_bytes_and_arrow_shards_are_not_text(tmp_path):
    need(SAMPLE, UNCASED)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"A fine first line.\nx\x00y\x00z\n")  # valid UTF-8: it used to be accepted silently
    with pytest.raises(DataError, match=r"nul\.txt:2: not a text file \(binary data \(NUL bytes\)\)"):
        build(tmp_path, [nul])
    out, _ = build(tmp_path, [SAMPLE], "records")
    shard = out / "shard-00000.arrow"
    with pytest.raises(DataError, match=r"not a text file \(Arrow data, e.g. a bertkit record shard\).*pretrain --data"):
        build(tmp_path, [shard], "again")


def test_span_lengths_are_documented_as_measured(wiki_rows, vocab):
    """The docs promised Geometric(0.2) span lengths clipped at 10 words (mean 4.46); the spans
    produced are shortened to the budget. The module doc gives the measured numbers; check them."""
    import bertkit.data.masking as masking
    from bertkit.data.masking import _span_positions

    rng = np.random.default_rng(0)
    words = []
    for ids in wiki_rows:
        pos, groups = _span_positions(ids, rng, MaskingConfig(strategy="span"), vocab)
        starts = word_spans(ids, vocab)[:, 0]
        for g in range(int(groups.max()) + 1 if groups.size else 0):
            p = pos[groups == g]
            words.append(int(((starts >= p.min()) & (starts <= p.max())).sum()))
    words = np.array(words)
    # 600 WikiText-2 valid rows of 128 tokens; the doc's 3.60 / 27% / 6% are from 2,000 train rows.
    assert 3.4 < words.mean() < 3.8 and 0.23 < (words == 1).mean() < 0.31 and (words == 10).mean() < 0.09
    assert "mean 3.60 words, P(1) 27%, P(10) 6%" in " ".join(masking.__doc__.split())


def test_a_document_that_fills_a_chunk_alone_takes_the_next_one_with_it() -> None:
    """NSP draws random B segments from the chunk's other documents: a chunk of one document would
    draw them from itself. Mid-stream, a document reaching chunk_bytes alone made such a chunk."""
    from bertkit.data.pretraining import iter_chunks

    docs = [[c * n] for c, n in zip("abcdef", (5, 5, 100, 5, 5, 5))]
    chunks = [[d[0][0] for d in chunk] for chunk in iter_chunks(docs, chunk_docs=100, chunk_bytes=10)]
    assert chunks == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert [[d[0][0] for d in c] for c in iter_chunks(docs[:3], chunk_docs=100, chunk_bytes=10)] == [["a", "b", "c"]]
    # --no-nsp with --chunk-docs 1 asks for one document per chunk, and gets it.
    assert len(list(iter_chunks(docs, chunk_docs=1, chunk_bytes=10))) == 6


def test_rows_longer_than_the_models_positions_are_refused_before_building(tmp_path, capsys):
    """A model directory's config states its position table: --max-seq-length beyond it is refused
    before any record is built; a bare vocab.txt (a model of any size) gets a warning past 512."""
    need(SAMPLE, UNCASED)
    from bertkit.cli import main

    assert main(["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED), "--output-dir",
                 str(tmp_path / "long"), "--max-seq-length", "1024"]) == 1
    assert ("--max-seq-length 1024: the model in" in capsys.readouterr().err) and not (tmp_path / "long").exists()
    assert main(["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(UNCASED / "vocab.txt"), "--output-dir",
                 str(tmp_path / "vocab"), "--max-seq-length", "1024"]) == 0
    assert "warning: --max-seq-length 1024: BERT checkpoints have 512 position embeddings" in capsys.readouterr().err


def _same_records(a: Path, b: Path) -> int:
    x, y = open_pretraining_data(a), open_pretraining_data(b)
    assert len(x) == len(y) > 0
    for i in range(len(x)):
        for key in x[i]:
            np.testing.assert_array_equal(x[i][key], y[i][key], err_msg=f"record {i} {key}")
    return len(x)


def test_hub_parquet_corpora_build_the_records_of_their_text_files(tmp_path, capsys):
    """Hub text corpora in their Parquet layout: one document per row (wikimedia/wikipedia's `text`
    column) builds what the same documents as JSON lines build, and Salesforce/wikitext's rows (one
    line of the file each, newline kept) build with --wikitext what the raw file builds."""
    need(SAMPLE, WIKITEXT_VALID, UNCASED)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertkit.cli import main

    documents = [d for d in SAMPLE.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    pq.write_table(pa.table({"id": [str(i) for i in range(len(documents))], "title": ["t"] * len(documents),
                             "text": documents}), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    lines = WIKITEXT_VALID.read_text(encoding="utf-8").splitlines(keepends=True)
    pq.write_table(pa.table({"text": lines}), tmp_path / "validation-00000-of-00001.parquet", row_group_size=1000)
    args = ["pretrain-data", "--tokenizer", str(UNCASED), "--seed", "7"]
    runs = {"hub-docs": ["--input", str(tmp_path / "train-00000-of-00001.parquet")],
            "jsonl-docs": ["--input", str(tmp_path / "docs.jsonl"), "--text-field", "text"],
            "hub-wikitext": ["--input", str(tmp_path / "validation-00000-of-00001.parquet"), "--wikitext"],
            "raw-wikitext": ["--input", str(WIKITEXT_VALID), "--wikitext"]}
    for name, extra in runs.items():
        assert main([*args, *extra, "--output-dir", str(tmp_path / name)]) == 0, capsys.readouterr().err
    assert _same_records(tmp_path / "hub-docs", tmp_path / "jsonl-docs") >= 10
    assert _same_records(tmp_path / "hub-wikitext", tmp_path / "raw-wikitext") > 2000

    # bookcorpus's layout: a sentence per row. --parquet-rows lines reads rows as the lines of the text
    # file (an empty row ends a document); as documents, every row is one, and the NSP warning says so.
    sample_lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    pq.write_table(pa.table({"text": sample_lines}), tmp_path / "sentences.parquet", row_group_size=7)
    capsys.readouterr()
    assert main([*args, "--input", str(tmp_path / "sentences.parquet"), "--parquet-rows", "lines",
                 "--output-dir", str(tmp_path / "hub-lines")]) == 0
    assert main([*args, "--input", str(SAMPLE), "--output-dir", str(tmp_path / "raw-lines")]) == 0
    assert _same_records(tmp_path / "hub-lines", tmp_path / "raw-lines") >= 10
    capsys.readouterr()
    assert main([*args, "--input", str(tmp_path / "sentences.parquet"), "--output-dir", str(tmp_path / "rows")]) == 0
    assert "add --parquet-rows lines" in capsys.readouterr().err

    capsys.readouterr()
    assert main([*args, "--input", str(tmp_path / "train-00000-of-00001.parquet"), "--text-field", "body",
                 "--output-dir", str(tmp_path / "bad")]) == 1
    assert "train-00000-of-00001.parquet: no column 'body' (--text-field; the file's columns: id, title, text)" \
        in capsys.readouterr().err
    assert main([*args, "--input", str(tmp_path / "train-00000-of-00001.parquet"), str(tmp_path / "docs.jsonl"),
                 "--output-dir", str(tmp_path / "mixed")]) == 1
    assert "--input mixes Parquet and text files" in capsys.readouterr().err
    assert main([*args, "--input", str(tmp_path / "train-00000-of-00001.parquet"), "--text-field", "id",
                 "--output-dir", str(tmp_path / "ok-ids")]) == 0  # string ids are text: accepted
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "numbers.parquet")
    assert main([*args, "--input", str(tmp_path / "numbers.parquet"), "--output-dir", str(tmp_path / "num")]) == 1
    assert "numbers.parquet: row 0: column 'text' holds int, not text" in capsys.readouterr().err
