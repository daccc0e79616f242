"""Parity of bertkit's encoder and heads with transformers (fp32, CPU), and of the attention paths
with each other. Weights always cross between the two libraries through checkpoint files, so the
key map and save path are tested on the way."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import transformers

from bertkit.config import ModelConfig
from bertkit.modeling.bert import BertModel
from bertkit.modeling.heads import (BertForMaskedLM, BertForMultipleChoice, BertForPolyphone,
                                    BertForPreTraining, BertForQuestionAnswering,
                                    BertForSequenceClassification, BertForTokenClassification,
                                    model_class_for_head)

TOL = 1e-5
SENTENCES = ["A man is playing a guitar.",
             "The stock market fell sharply today as investors worried about interest rates.",
             "Someone is strumming a guitar.",
             "Hi!"]


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    return ModelConfig(**{**base, **overrides})


def random_batch(config: ModelConfig, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch with the given real lengths; pads hold id 0 and mask 0."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1, config.vocab_size, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    types = (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return dict(input_ids=ids * mask, attention_mask=mask, token_type_ids=types)


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a - b).abs().max().item()


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_encoder_matches_transformers_random_init(tmp_path: Path, act: str) -> None:
    torch.manual_seed(0)
    config = tiny_config(hidden_act=act)
    ref = transformers.BertModel(transformers.BertConfig(**config.to_hf_dict())).eval()
    ref.save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path).eval()
    batch = random_batch(config, [9, 5, 1, 7])
    with torch.no_grad():
        expected = ref(**batch)
        for backend in ("padded", "unpadded", "flex", "auto"):
            model.attn_backend = backend
            out = model(**batch)
            assert max_diff(out.last_hidden_state, expected.last_hidden_state, batch["attention_mask"]) <= TOL
            assert max_diff(out.pooler_output, expected.pooler_output) <= TOL


def test_minilm_matches_transformers_on_real_sentences(minilm_dir: Path) -> None:
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    batch = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding to test masking"
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    model = BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = ref(**batch)
        outs = {}
        for backend in ("padded", "unpadded"):
            model.attn_backend = backend
            outs[backend] = model(**batch)
            assert max_diff(outs[backend].last_hidden_state, expected.last_hidden_state,
                            batch["attention_mask"]) <= TOL
            assert max_diff(outs[backend].pooler_output, expected.pooler_output) <= TOL
    assert max_diff(outs["padded"].last_hidden_state, outs["unpadded"].last_hidden_state,
                    batch["attention_mask"]) <= TOL
    # The unpadded path returns zeros at padding.
    assert outs["unpadded"].last_hidden_state[batch["attention_mask"] == 0].abs().max() == 0
    # Mean-pooled sentence embeddings: the guitar sentences are close, the market one is not.
    mask = batch["attention_mask"][..., None].float()
    emb = torch.nn.functional.normalize((outs["padded"].last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1)
    assert (emb[0] @ emb[2]).item() > 0.6 > (emb[0] @ emb[1]).item()


def test_a_zero_inside_the_mask_only_hides_that_token_as_in_transformers(minilm_dir: Path) -> None:
    """A Hugging Face mask may hide tokens in mid-row. Positions must keep counting across them
    (they restarted after the zero, up to 5.7 off) and the row stays one sequence."""
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    batch = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    mask = batch["attention_mask"].clone()
    mask[0, 3] = 0
    mask[1, 2] = 0
    batch["attention_mask"] = mask
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    model = BertModel.from_pretrained(minilm_dir)
    assert not model.training  # as transformers returns it: no dropout without .train()
    with torch.no_grad():
        expected = ref(**batch).last_hidden_state
        for backend in ("padded", "unpadded", "sdpa_unpadded"):
            model.attn_backend = backend
            assert max_diff(model(**batch).last_hidden_state, expected, mask) <= TOL, backend


def test_inputs_of_the_wrong_shape_are_clear_errors() -> None:
    model = BertModel(tiny_config()).eval()
    ids = torch.tensor([[2, 5, 6, 3]])
    cases = [({"input_ids": ids, "attention_mask": torch.ones(2, 4, dtype=torch.long)},
              r"attention_mask has shape \[2, 4\] but input_ids has \[1, 4\]"),  # was broadcast to 2 rows
             ({"input_ids": ids, "attention_mask": torch.ones(1, 3, dtype=torch.long)}, r"attention_mask has shape"),
             ({"input_ids": ids[0]}, r"input_ids must be \[batch, tokens\]"),
             ({"input_ids": ids[:, :0]}, r"at least one token"),
             ({"input_ids": torch.ones(1, 65, dtype=torch.long), "position_ids": torch.zeros(1, 65, dtype=torch.long)},
              r"65 tokens per row but the model has only max_position_embeddings=64"),
             ({"input_ids": ids, "output_positions": torch.tensor([1, 2])}, r"output_positions must be \[batch, P\]"),
             ({"input_ids": ids, "output_positions": torch.tensor([[1, 4]])}, r"column 4, outside the 4 columns"),
             ({"input_ids": ids, "output_positions": torch.tensor([[-1, 2]])}, r"column -1, outside"),
             ({"input_ids": torch.tensor([[2, 99, 3]])}, r"input_ids holds 99, outside the model's 99 embeddings"),
             ({"input_ids": torch.tensor([[2, -5, 3]])}, r"input_ids holds -5"),
             ({"input_ids": ids, "token_type_ids": torch.tensor([[0, 0, 2, 2]])}, r"token_type_ids holds 2")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**kwargs)
    two = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    with torch.no_grad():  # position/token type ids of one row are shared by the batch, as in transformers
        shared = model(two, position_ids=torch.arange(4)[None]).last_hidden_state
        assert shared.shape == (2, 4, model.config.hidden_size)


def test_packed_rows_equal_separate_sequences() -> None:
    torch.manual_seed(1)
    config = tiny_config()
    model = BertModel(config).eval()
    a, b, c = (torch.randint(1, config.vocab_size, (n,)) for n in (6, 4, 5))
    # Row 0 packs a and b (ids 1, 2) then padding; row 1 holds c then padding.
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    ids[0, :6], ids[0, 6:10], ids[1, :5] = a, b, c
    mask[0, :6], mask[0, 6:10], mask[1, :5] = 1, 2, 1
    with torch.no_grad():
        alone = [model(s[None]).last_hidden_state[0] for s in (a, b, c)]
        for backend in ("padded", "unpadded", "flex"):
            model.attn_backend = backend
            packed = model(ids, attention_mask=mask).last_hidden_state
            assert max_diff(packed[0, :6], alone[0]) <= TOL
            assert max_diff(packed[0, 6:10], alone[1]) <= TOL
            assert max_diff(packed[1, :5], alone[2]) <= TOL


def test_attention_dropout_is_active_in_training_on_every_path() -> None:
    torch.manual_seed(2)
    config = tiny_config(attention_probs_dropout_prob=0.5)
    model = BertModel(config)
    batch = random_batch(config, [8, 3])
    for backend in ("padded", "unpadded", "flex"):
        model.attn_backend = backend
        model.train()
        first, second = model(**batch).last_hidden_state, model(**batch).last_hidden_state
        assert max_diff(first, second, batch["attention_mask"]) > 1e-3
        model.eval()
        with torch.no_grad():
            assert max_diff(model(**batch).last_hidden_state, model(**batch).last_hidden_state) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn (flash) needs a CUDA GPU")
def test_varlen_kernel_matches_padded_on_cuda() -> None:
    torch.manual_seed(7)
    config = tiny_config()
    model = BertModel(config).cuda().eval().to(torch.bfloat16)  # flash kernels take 16-bit inputs
    batch = {k: v.cuda() for k, v in random_batch(config, [12, 5, 9]).items()}
    with torch.no_grad():
        model.attn_backend = "varlen"
        varlen = model(**batch).last_hidden_state.float()
        model.attn_backend = "padded"
        padded = model(**batch).last_hidden_state.float()
    assert max_diff(varlen, padded, batch["attention_mask"]) <= 2e-2  # bf16 rounding


def test_unknown_backend_lists_valid_ones() -> None:
    model = BertModel(tiny_config())
    model.attn_backend = "fast"
    with pytest.raises(ValueError, match="valid: auto, padded"):
        model(torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0]]))


def test_pretraining_matches_transformers_and_masked_only_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    config = tiny_config()
    model = BertForPreTraining(config).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    ref, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref.eval()
    batch = random_batch(config, [10, 7, 4])
    with torch.no_grad():
        expected = ref(**batch)
        full = model(**batch)
        assert max_diff(full.mlm_logits, expected.prediction_logits, batch["attention_mask"]) <= TOL
        assert max_diff(full.nsp_logits, expected.seq_relationship_logits) <= TOL
        positions = torch.tensor([[1, 4, 8], [0, 6, -1], [2, -1, -1]])
        targets = torch.tensor([[5, 6, 7], [8, 9, -100], [10, -100, -100]])
        sparse = model(**batch, masked_positions=positions, masked_ids=targets,
                       next_sentence_label=torch.tensor([0, 1, -100]))
    valid = positions >= 0
    rows = torch.arange(3)[:, None].expand_as(positions)[valid]
    gathered = full.mlm_logits[rows, positions[valid]]  # [M,V]
    assert sparse.mlm_logits.shape == (3, 3, config.vocab_size)  # one slot per position, -1 included
    assert max_diff(sparse.mlm_logits[valid], gathered) <= TOL
    want_mlm = torch.nn.functional.cross_entropy(gathered, targets[valid])
    want_nsp = torch.nn.functional.cross_entropy(full.nsp_logits[:2], torch.tensor([0, 1]))
    assert abs(sparse.mlm_loss.item() - want_mlm.item()) <= TOL
    assert abs(sparse.loss.item() - (want_mlm + want_nsp).item()) <= TOL
    # HF-style labels [B,T] give the same MLM loss as the sparse form.
    labels = torch.full_like(batch["input_ids"], -100)
    labels[rows, positions[valid]] = targets[valid]
    with torch.no_grad():
        dense = model(**batch, labels=labels)
    assert abs(dense.mlm_loss.item() - want_mlm.item()) <= TOL


HEAD_CASES = [
    (BertForMaskedLM, transformers.AutoModelForMaskedLM, {}),
    (BertForSequenceClassification, transformers.AutoModelForSequenceClassification, {"num_labels": 3}),
    (BertForTokenClassification, transformers.AutoModelForTokenClassification, {"num_labels": 5}),
    (BertForQuestionAnswering, transformers.AutoModelForQuestionAnswering, {}),
    (BertForMultipleChoice, transformers.AutoModelForMultipleChoice, {}),
]


@pytest.mark.parametrize("cls,auto_cls,overrides", HEAD_CASES, ids=[c[0].__name__ for c in HEAD_CASES])
def test_head_saves_loadable_by_transformers(tmp_path: Path, cls, auto_cls, overrides) -> None:
    torch.manual_seed(4)
    config = tiny_config(**overrides)
    model = cls(config).eval()
    model.save_pretrained(tmp_path)
    ref, info = auto_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ref).__name__ == cls.__name__
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ref.eval()
    batch = random_batch(config, [8, 5])
    if cls is BertForMultipleChoice:  # [B,C,T]: 1 question with 2 choices
        batch = {k: v[None] for k, v in batch.items()}
    with torch.no_grad():
        ours, theirs = model(**batch), ref(**batch)
    mask = batch["attention_mask"]
    if cls is BertForQuestionAnswering:
        assert max_diff(ours.start_logits, theirs.start_logits, mask) <= TOL
        assert max_diff(ours.end_logits, theirs.end_logits, mask) <= TOL
    elif cls in (BertForMaskedLM, BertForTokenClassification):
        assert max_diff(ours.logits, theirs.logits, mask) <= TOL
    else:
        assert max_diff(ours.logits, theirs.logits) <= TOL
    # And back: bertkit loads its own save with identical outputs.
    again = cls.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = again(**batch)
    for field in ("logits", "start_logits"):
        if getattr(ours, field) is not None:
            assert torch.equal(getattr(out, field), getattr(ours, field))


def test_sequence_classification_losses_follow_problem_type() -> None:
    torch.manual_seed(5)
    batch = random_batch(tiny_config(), [6, 4, 3])
    reg = BertForSequenceClassification(tiny_config(num_labels=1, problem_type="regression")).eval()
    targets = torch.tensor([0.5, 2.0, -1.0])
    out = reg(**batch, labels=targets)
    assert out.logits.shape == (3, 1)
    assert abs(out.loss.item() - ((out.logits[:, 0] - targets) ** 2).mean().item()) <= TOL
    clf = BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    labels = torch.tensor([0, 2, 1])
    weights = torch.tensor([1.0, 5.0, 0.5])
    out = clf(**batch, labels=labels, class_weights=weights)
    want = torch.nn.functional.cross_entropy(out.logits, labels, weight=weights)
    assert abs(out.loss.item() - want.item()) <= TOL


def test_polyphone_masks_non_candidates_and_loads_as_encoder(tmp_path: Path) -> None:
    torch.manual_seed(6)
    config = tiny_config(num_labels=4)
    model = BertForPolyphone(config).eval()
    batch = random_batch(config, [7, 5])
    targets = torch.tensor([3, 1])
    candidates = torch.tensor([[True, False, True, False], [False, True, True, True]])
    out = model(**batch, target_positions=targets, candidate_mask=candidates, labels=torch.tensor([2, 1]))
    assert (out.logits[~candidates] == -1e4).all()
    hidden = model.bert(**batch).last_hidden_state
    want = model.classifier(hidden[torch.arange(2), targets])
    assert max_diff(out.logits[candidates], want[candidates]) <= TOL
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    assert '"BertForPolyphone"' in (tmp_path / "config.json").read_text()
    encoder = transformers.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_diff(encoder(**batch).last_hidden_state, hidden, batch["attention_mask"]) <= TOL
    again = BertForPolyphone.from_pretrained(tmp_path).eval()
    assert torch.equal(again(**batch, target_positions=targets).logits, model(**batch, target_positions=targets).logits)


def test_head_names_map_to_classes() -> None:
    assert model_class_for_head("regression") is BertForSequenceClassification
    assert model_class_for_head("polyphone") is BertForPolyphone
    with pytest.raises(ValueError, match="valid: pretraining"):
        model_class_for_head("summarization")


def test_new_heads_are_logged_when_loading_an_encoder(minilm_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="bertkit.modeling.checkpoints"):
        model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    assert "classifier.weight" in caplog.text
    assert model.classifier.out_features == 3
