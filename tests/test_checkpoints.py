"""Checkpoint interop: HF files in every layout, Google TF bundles read without TensorFlow, the
info/convert commands, and a clear error for each kind of bad checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bertkit.cli import main as cli_main
from bertkit.config import ModelConfig
from bertkit.modeling.bert import BertModel
from bertkit.modeling.checkpoints import (bertkit_name, convert, load_state_dict, model_info,
                                          read_tf_checkpoint, read_tf_index, to_bertkit_names)
from bertkit.modeling.heads import BertForPreTraining, BertForSequenceClassification

TOL = 1e-5


@pytest.fixture(scope="module")
def tf_fixture(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "tf-bert-fixture"
    if not (path / "bert_model.ckpt.index").is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def tf_index_only(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "bert-mini-uncased-L4-H256-tf-index-only"
    if not (path / "bert_model.ckpt.index").is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Path:
    """A saved tiny BertForSequenceClassification with a vocab.txt of matching size."""
    config = ModelConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    out = tmp_path / "tiny"
    BertForSequenceClassification(config).save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(40)) + "\n")
    return out


def batch_for(vocab_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return dict(input_ids=ids * mask, attention_mask=mask, token_type_ids=torch.zeros_like(ids))


# ---- Google TF checkpoints ----------------------------------------------------------------------
def test_tf_fixture_tensors_equal_expected(tf_fixture: Path) -> None:
    tensors = read_tf_checkpoint(tf_fixture / "bert_model.ckpt")
    expected = np.load(tf_fixture / "expected.npz")
    model_tensors = {k: v for k, v in tensors.items() if bertkit_name(k)[0] is not None}
    assert sorted(k.replace("/", "__") for k in model_tensors) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_array_equal(tensors[key.replace("__", "/")], expected[key], err_msg=key)
    # Optimizer slots and the step counter are in the file but not in the mapped weights.
    assert tensors["global_step"] == 1000
    assert any(k.endswith("/adam_m") for k in tensors)
    mapped = to_bertkit_names(tensors)
    assert not any("adam" in k or "global_step" in k for k in mapped)
    kernel = expected["bert__encoder__layer_0__attention__self__query__kernel"]  # [in, out]
    assert torch.equal(mapped["bert.encoder.layer.0.attention.self.query.weight"], torch.from_numpy(kernel.T))
    nsp = expected["cls__seq_relationship__output_weights"]  # already [2, H]
    assert torch.equal(mapped["cls.seq_relationship.weight"], torch.from_numpy(nsp))


def test_any_file_of_a_tf_checkpoint_names_it(tf_fixture: Path) -> None:
    """The prefix, the .index and the .data-00000-of-00001 file all mean the same checkpoint (the data
    file was read as a PyTorch pickle: 'UnpicklingError: Unsupported operand 70')."""
    from bertkit.modeling.checkpoints import find_weights

    prefix = tf_fixture / "bert_model.ckpt"
    for given in (prefix, tf_fixture / "bert_model.ckpt.index", tf_fixture / "bert_model.ckpt.data-00000-of-00001"):
        assert find_weights(given) == ("tf", prefix), given


def test_tf_convert_matches_transformers(tf_fixture: Path, tmp_path: Path) -> None:
    dst = convert(tf_fixture, tmp_path / "hf")
    assert (dst / "vocab.txt").read_bytes() == (tf_fixture / "vocab.txt").read_bytes()
    assert json.loads((dst / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    ref, info = transformers.BertForPreTraining.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    direct = BertForPreTraining.from_pretrained(tf_fixture).eval()  # straight from the TF bundle
    batch = batch_for(1024)
    with torch.no_grad():
        theirs, ours = ref.eval()(**batch), direct(**batch)
    mask = batch["attention_mask"].bool()
    assert (ours.mlm_logits - theirs.prediction_logits)[mask].abs().max() <= TOL
    assert (ours.nsp_logits - theirs.seq_relationship_logits).abs().max() <= TOL


def test_tf_index_only_lists_tensors_and_load_names_missing_data(tf_index_only: Path) -> None:
    entries = read_tf_index(tf_index_only / "bert_model.ckpt")
    assert len(entries) == 78
    assert entries["bert/embeddings/word_embeddings"].shape == (30522, 256)
    assert entries["bert/encoder/layer_3/intermediate/dense/kernel"].shape == (256, 1024)
    assert entries["cls/seq_relationship/output_weights"].shape == (2, 256)
    assert entries["cls/seq_relationship/output_weights"].offset == 45_069_552
    assert all(e.dtype == 1 for e in entries.values())  # DT_FLOAT
    info = model_info(tf_index_only)
    assert (info["layers"], info["hidden"], info["parameters"]) == (4, 256, 11_267_900)
    assert info["heads_present"] == ["pooler", "mlm", "nsp"]
    with pytest.raises(FileNotFoundError, match=r"data file missing: expected .*bert_model\.ckpt\.data-00000-of-00001"):
        BertModel.from_pretrained(tf_index_only)


def test_tf_index_rejects_a_non_index_file(tmp_path: Path) -> None:
    (tmp_path / "bad.ckpt.index").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="bad.ckpt.index: not a TF checkpoint index"):
        read_tf_index(tmp_path / "bad.ckpt")


# ---- HF layouts and the key map ----------------------------------------------------------------
def test_bin_with_old_names_and_sharded_safetensors_load_the_same(tiny_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_dir / "model.safetensors"))
    reference = BertForSequenceClassification.from_pretrained(tiny_dir).eval()
    # pytorch_model.bin with TF-era LayerNorm names, no `bert.` prefix and HF's position_ids buffer.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tiny_dir / "config.json", old / "config.json")
    renamed = {k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()}
    renamed["embeddings.position_ids"] = torch.arange(32)[None]
    torch.save(renamed, old / "pytorch_model.bin")
    # Two safetensors shards with an index.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(tiny_dir / "config.json", sharded / "config.json")
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(sharded / file))
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    batch = batch_for(40)
    with torch.no_grad():
        want = reference(**batch).logits
        for path in (old, sharded):
            assert torch.equal(BertForSequenceClassification.from_pretrained(path).eval()(**batch).logits, want)
    assert set(to_bertkit_names(load_state_dict(old))) == set(state)


def test_encoder_checkpoint_loads_into_bertmodel_and_heads_ignore_extra(tiny_dir: Path) -> None:
    encoder = BertModel.from_pretrained(tiny_dir)  # a head checkpoint loads as a bare encoder
    head = BertForSequenceClassification.from_pretrained(tiny_dir)
    assert torch.equal(encoder.encoder.layer[1].output.dense.weight, head.bert.encoder.layer[1].output.dense.weight)


def test_save_writes_hf_layout_without_the_tied_decoder(tmp_path: Path) -> None:
    config = ModelConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)
    model = BertForPreTraining(config)
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "cls.predictions.decoder.weight" not in keys and "cls.predictions.bias" in keys
    again = BertForPreTraining.from_pretrained(tmp_path)
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    assert torch.equal(again.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)


# ---- bad inputs: one clear error each ----------------------------------------------------------
def test_truncated_safetensors(tiny_dir: Path) -> None:
    file = tiny_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors file, it is truncated"):
        BertForSequenceClassification.from_pretrained(tiny_dir)


def test_config_hidden_size_disagrees_with_weights(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    config.update(hidden_size=32, intermediate_size=64)
    (tiny_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config says hidden_size=32 but the weights .* shape \[40, 16\]"):
        BertModel.from_pretrained(tiny_dir)


def test_shape_mismatch_names_tensor_shapes_and_file(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    config["intermediate_size"] = 48
    (tiny_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor encoder\.layer\.0\.intermediate\.dense\.(bias|weight) "
                                         r"has shape \[32(, 16)?\] in the file but the model .* expects \[48(, 16)?\]"):
        BertModel.from_pretrained(tiny_dir)


def test_vocab_larger_than_embeddings(tiny_dir: Path) -> None:
    (tiny_dir / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(45)) + "\n")
    with pytest.raises(ValueError, match=r"vocab\.txt has 45 tokens but the word embeddings .* have only 40 rows"):
        BertModel.from_pretrained(tiny_dir)


def test_missing_encoder_weights(tiny_dir: Path) -> None:
    state = load_file(str(tiny_dir / "model.safetensors"))
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(state, str(tiny_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder weights missing .*encoder\.layer\.1\.attention\.self\.key\.weight"):
        BertForSequenceClassification.from_pretrained(tiny_dir)


def test_directory_with_only_vocab_and_config(shared_dir: Path) -> None:
    path = shared_dir / "models" / "bert-base-uncased"
    with pytest.raises(FileNotFoundError, match=r"no weights found in .*bert-base-uncased: expected "
                                                r"model\.safetensors, pytorch_model\.bin or bert_model\.ckpt"):
        BertModel.from_pretrained(path)


def test_offline_hub_id_says_to_pass_a_local_directory(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'no-such-user/fake-bert-xyz' is not a local path .*HF_HUB_OFFLINE"
                                                r".*pass a local directory"):
        BertModel.from_pretrained("no-such-user/fake-bert-xyz")


def test_missing_local_path() -> None:
    with pytest.raises(FileNotFoundError, match="model path './nowhere/model' does not exist"):
        BertModel.from_pretrained("./nowhere/model")


# ---- commands -----------------------------------------------------------------------------------
def test_info_command_on_minilm(minilm_dir: Path, capsys) -> None:
    assert cli_main(["info", str(minilm_dir)]) == 0
    out = capsys.readouterr().out
    assert "22,713,216 in 103 tensors" in out and "pooler" in out
    assert cli_main(["info", str(minilm_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["layers"], info["hidden"], info["heads"], info["vocab"]) == (6, 384, 12, 30522)


def test_convert_command_and_its_errors(tf_fixture: Path, tf_index_only: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["convert", str(tf_fixture), str(tmp_path / "out"), "--from", "tf"]) == 0
    assert "BertForPreTraining, 2 layers, hidden 64" in capsys.readouterr().out
    assert cli_main(["convert", str(tf_fixture), str(tmp_path / "out2"), "--from", "hf"]) == 1
    assert "--from hf but" in capsys.readouterr().err
    assert cli_main(["convert", str(tf_index_only), str(tmp_path / "out3")]) == 1
    assert "data file missing" in capsys.readouterr().err


def test_head_of_another_size_is_new_when_fine_tuning_and_an_error_otherwise(tmp_path: Path) -> None:
    """A model fine-tuned with 2 labels can start a 9-tag NER run (new head); loading it for
    evaluation with the wrong label count stays an error naming the tensor."""
    from bertkit.config import preset
    from bertkit.modeling.heads import BertForSequenceClassification, BertForTokenClassification

    source = BertForSequenceClassification(preset("tiny", vocab_size=1000, num_labels=2))
    source.init_weights()
    source.save_pretrained(tmp_path)
    model = BertForTokenClassification.from_pretrained(tmp_path, new_head_on_mismatch=True, num_labels=9)
    assert model.classifier.weight.shape[0] == 9
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, source.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match=r"tensor classifier\.(weight|bias) has shape \[2.*\] in the file but the model"):
        BertForTokenClassification.from_pretrained(tmp_path, num_labels=9)


def test_info_counts_the_tied_mlm_decoder_once(tmp_path):
    """A .bin of BertForMaskedLM stores the decoder weight (the word embeddings) a second time."""
    transformers = pytest.importorskip("transformers")
    import torch

    from bertkit.modeling.checkpoints import model_info

    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert "cls.predictions.decoder.weight" in torch.load(tmp_path / "pytorch_model.bin")
    assert model_info(tmp_path)["parameters"] == sum(p.numel() for p in hf.parameters())


def tiny_config(**changes) -> ModelConfig:
    shape = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)
    return ModelConfig(**{**shape, **changes})


@pytest.mark.parametrize("head", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering", "BertForMultipleChoice"])
@pytest.mark.parametrize("named", [True, False], ids=["architectures", "heads-only"])
def test_convert_keeps_a_fine_tuned_head(tmp_path: Path, head: str, named: bool) -> None:
    """convert wrote a BertModel: the trained head was dropped (its id2label kept) and, for QA and
    NER, a random pooler was added. Now the class follows `architectures` or the heads found."""
    from bertkit.modeling import heads

    labels = 1 if head == "BertForMultipleChoice" else 3
    id2label = {0: "neg", 1: "neu", 2: "pos"} if labels == 3 else None
    torch.manual_seed(0)
    model = getattr(heads, head)(tiny_config(num_labels=labels, id2label=id2label))
    src = model.save_pretrained(tmp_path / "src")
    if not named:
        config = json.loads((src / "config.json").read_text())
        del config["architectures"]
        (src / "config.json").write_text(json.dumps(config))
    (src / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(40)) + "\n")
    dst = convert(src, tmp_path / "dst")
    expected = "BertForSequenceClassification" if head == "BertForMultipleChoice" and not named else head
    assert json.loads((dst / "config.json").read_text())["architectures"] == [expected]
    before, after = load_file(str(src / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_convert_refuses_to_drop_or_invent_tensors(tmp_path: Path) -> None:
    model = BertForSequenceClassification(tiny_config())
    src = model.save_pretrained(tmp_path / "src")
    state = load_file(str(src / "model.safetensors"))
    save_file({**state, "extra_head.weight": torch.zeros(2, 16)}, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match=r"as BertForSequenceClassification, 1 tensors would be dropped "
                                         r"\(extra_head.weight\).*makes none up"):
        convert(src, tmp_path / "dst")


def test_relative_position_embeddings_are_refused(tmp_path: Path) -> None:
    """They were loaded as absolute positions, silently, without their distance embeddings."""
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'; bertkit implements absolute"):
        ModelConfig.from_dict({**tiny_config().to_hf_dict(), "position_embedding_type": "relative_key"})
    assert ModelConfig.from_dict({**tiny_config().to_hf_dict(), "position_embedding_type": "absolute"})
    # Without model_type, another family's config passed for BERT's defaults (12 layers, 768 wide).
    with pytest.raises(ValueError, match=r"architectures=\['DistilBertForMaskedLM'\]; bertkit reads BERT"):
        ModelConfig.from_dict({"architectures": ["DistilBertForMaskedLM"], "n_layers": 2, "dim": 64})


def test_untied_decoder_is_kept_apart_from_the_word_embeddings(tmp_path: Path) -> None:
    """With tie_word_embeddings false the decoder matrix was copied over the word embeddings."""
    from bertkit.modeling.heads import BertForMaskedLM

    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, tie_word_embeddings=False)
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        reference.cls.predictions.decoder.weight.normal_()  # unlike the embeddings
    reference.save_pretrained(tmp_path / "hf")
    ours = BertForMaskedLM.from_pretrained(tmp_path / "hf")
    assert not torch.equal(ours.bert.embeddings.word_embeddings.weight, ours.cls.predictions.decoder.weight)
    batch = batch_for(40)
    real = batch["attention_mask"].bool()  # padding positions are not compared (their outputs are unused)
    with torch.no_grad():
        expected = reference(**batch).logits[real]
        torch.testing.assert_close(ours(**batch).logits[real], expected, atol=TOL, rtol=0)
    ours.save_pretrained(tmp_path / "again")
    again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits[real], expected, atol=TOL, rtol=0)


def test_resaved_config_drops_the_source_dtype(tmp_path: Path) -> None:
    """A config saying float16 was copied onto fp32 weights; transformers then loaded them as fp16."""
    model = BertForSequenceClassification(tiny_config())
    src = model.save_pretrained(tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "dtype": "float16", "torch_dtype": "float16"}))
    BertForSequenceClassification.from_pretrained(src).save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert "dtype" not in saved and "torch_dtype" not in saved
    assert transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "again").dtype == torch.float32


def test_a_new_head_does_not_keep_the_old_heads_labels(tmp_path: Path) -> None:
    """A QA model from a 3-label classifier saved num_labels 3 (transformers then could not load it),
    and a num_labels override kept the old id2label."""
    from bertkit.modeling.heads import BertForQuestionAnswering

    src = BertForSequenceClassification(tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
                                        ).save_pretrained(tmp_path / "cls3")
    qa = BertForQuestionAnswering.from_pretrained(src)
    assert (qa.config.num_labels, qa.config.id2label) == (2, None)
    qa.save_pretrained(tmp_path / "qa")
    assert transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa").qa_outputs.out_features == 2
    five = BertForSequenceClassification.from_pretrained(src, num_labels=5, new_head_on_mismatch=True)
    assert (five.config.num_labels, five.config.id2label) == (5, None)


def test_convert_writes_the_tokenizer_so_transformers_keeps_a_cased_vocab(shared_dir: Path, tmp_path: Path) -> None:
    """convert copied vocab.txt alone, and transformers lowercases without tokenizer_config.json."""
    cased = shared_dir / "models" / "bert-base-cased" / "vocab.txt"
    if not cased.is_file():
        pytest.skip(f"{cased} is absent")
    BertModel(tiny_config(vocab_size=28996)).save_pretrained(tmp_path / "src")
    shutil.copyfile(cased, tmp_path / "src" / "vocab.txt")
    dst = convert(tmp_path / "src", tmp_path / "dst")
    assert json.loads((dst / "tokenizer_config.json").read_text())["do_lower_case"] is False
    tokenizer = transformers.AutoTokenizer.from_pretrained(dst)
    assert tokenizer.tokenize("Paris") == ["Paris"]


def test_loading_copies_every_weight_and_initialises_only_what_the_file_lacks(minilm_dir: Path) -> None:
    """Models are built without values (meta device) and filled from the file: loaded tensors equal
    the file's, a complete checkpoint draws no random numbers, and each tensor the file lacks gets
    BERT's init (not whatever the fresh memory held)."""
    file_state = to_bertkit_names(load_state_dict(minilm_dir / "model.safetensors"))
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    encoder = BertModel.from_pretrained(minilm_dir)
    assert torch.equal(torch.random.get_rng_state(), before)  # nothing was initialised only to be overwritten
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, file_state[f"bert.{name}"]), name

    pretraining = BertForPreTraining.from_pretrained(minilm_dir)  # MiniLM has no cls.* tensors
    predictions = pretraining.cls.predictions
    assert torch.equal(predictions.transform.LayerNorm.weight, torch.ones(384))
    assert torch.equal(predictions.transform.LayerNorm.bias, torch.zeros(384))
    assert torch.equal(predictions.bias, torch.zeros(30522))
    assert abs(predictions.transform.dense.weight.std().item() - 0.02) < 1e-3
    assert predictions.decoder.weight is pretraining.bert.embeddings.word_embeddings.weight
    assert torch.equal(pretraining.cls.seq_relationship.bias, torch.zeros(2))
    assert abs(pretraining.cls.seq_relationship.weight.std().item() - 0.02) < 5e-3
    assert torch.isfinite(torch.cat([p.flatten() for p in pretraining.parameters()])).all()
    for name, tensor in pretraining.bert.state_dict().items():
        assert torch.equal(tensor, file_state[f"bert.{name}"]), name


def test_nvidia_checkpoint_loads_with_its_names_and_vocab_padding_dropped(nvidia_checkpoint: dict, minilm_dir: Path,
                                                                           tmp_path: Path) -> None:
    """NVIDIA DeepLearningExamples' .pt (`{"model": state_dict}`, `dense_act` names, 30528-row embeddings)
    with its bert_config.json and vocab given apart, as run_squad.py's --init_checkpoint --config_file
    --vocab_file name them: every tensor lands under HF's name, the padding rows are dropped, the encoder
    computes what transformers computes from the original MiniLM, and the saved model loads there."""
    from bertkit.commands.common import nvidia_model
    from bertkit.tokenization import Tokenizer

    directory = nvidia_model(str(nvidia_checkpoint["checkpoint"]), str(nvidia_checkpoint["config"]),
                             str(nvidia_checkpoint["vocab"]))
    model = BertForPreTraining.from_pretrained(directory)
    assert model.config.vocab_size == 30522
    loaded = model.state_dict()
    for name, tensor in nvidia_checkpoint["state"].items():
        assert torch.equal(loaded[name], tensor), name
    tokenizer = Tokenizer.from_pretrained(directory, do_lower_case=True)
    batch = tokenizer(["NVIDIA pads the vocabulary to a multiple of eight.", "short"], max_length=32)
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        ours = model.bert(**batch).last_hidden_state
        theirs = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert torch.allclose(ours[mask], theirs[mask], atol=TOL)
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    again = transformers.BertForPreTraining.from_pretrained(tmp_path / "saved")
    assert again.config.vocab_size == 30522
    assert torch.equal(again.cls.predictions.bias, nvidia_checkpoint["state"]["cls.predictions.bias"])
    # Older run_squad.py/run_glue.py checkpoints are the bare state dict.
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(nvidia_checkpoint["checkpoint"])["model"], bare)
    directory = nvidia_model(str(bare), str(nvidia_checkpoint["config"]), str(nvidia_checkpoint["vocab"]))
    assert torch.equal(BertModel.from_pretrained(directory).encoder.layer[0].intermediate.dense.weight,
                       nvidia_checkpoint["state"]["bert.encoder.layer.0.intermediate.dense.weight"])


def test_nvidia_mid_run_checkpoint_with_a_pickled_data_loader_loads_its_weights(nvidia_checkpoint: dict,
                                                                                tmp_path: Path, caplog) -> None:
    """run_pretraining.py saves `data_loader` (its DataLoader over the script's own pretraining_dataset
    class) in every checkpoint before --max_steps: weights-only loading refused the file ("Unsupported
    global"), and a full unpickle would import that script. The weights load; the rest is skipped unrun."""
    import sys

    from bertkit.commands.common import nvidia_model

    script = tmp_path / "their_run_pretraining.py"
    script.write_text("import numpy as np\nimport torch\n\n\nclass pretraining_dataset(torch.utils.data.Dataset):\n"
                      "    def __init__(self, n):\n        self.inputs = [np.arange(n), np.ones(n)]\n\n"
                      "    def __len__(self):\n        return 4\n\n    def __getitem__(self, i):\n        return i\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import their_run_pretraining

        dataset = their_run_pretraining.pretraining_dataset(5)
        loader = torch.utils.data.DataLoader(dataset, sampler=torch.utils.data.RandomSampler(dataset), batch_size=2)
        saved = torch.load(nvidia_checkpoint["checkpoint"])
        mid_run = tmp_path / "ckpt_1000.pt"
        torch.save({**saved, "optimizer": {"state": {}, "param_groups": [{"lr": 6e-3, "params": [0]}]},
                    "master params": [torch.ones(3)], "files": [3, "part_3.hdf5"], "data_loader": loader}, mid_run)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("their_run_pretraining", None)
    script.unlink()  # as on the machine that fine-tunes: their script is not importable there
    directory = nvidia_model(str(mid_run), str(nvidia_checkpoint["config"]), str(nvidia_checkpoint["vocab"]))
    with caplog.at_level("WARNING"):
        loaded = BertForPreTraining.from_pretrained(directory).state_dict()
    assert "their_run_pretraining.pretraining_dataset" in caplog.text and "read the tensors only" in caplog.text
    for name, tensor in nvidia_checkpoint["state"].items():
        assert torch.equal(loaded[name], tensor), name
    # A file whose "weights" are not tensors is refused, naming them.
    odd = tmp_path / "odd.pt"
    torch.save({"model": {"bert.embeddings.word_embeddings.weight": "not a tensor"}}, odd)
    with pytest.raises(ValueError, match=r"odd\.pt: expected a dict of tensors; bert\.embeddings\.word_embeddings"
                                         r"\.weight is not a tensor"):
        BertForPreTraining.from_pretrained(
            nvidia_model(str(odd), str(nvidia_checkpoint["config"]), str(nvidia_checkpoint["vocab"])))
