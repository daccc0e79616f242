"""Shared pytest fixtures. Real assets live read-only in ../shared (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """/work/shared (models/, data/); the test is skipped when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared assets directory {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def minilm_dir(shared_dir: Path) -> Path:
    """all-MiniLM-L6-v2: the one real pretrained BERT checkpoint in shared/models."""
    path = shared_dir / "models" / "all-MiniLM-L6-v2"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path}/model.safetensors is absent")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, shared_dir: Path) -> Path:
    """A tiny random BERT (2 layers, H=128) sequence classifier saved in HF format with
    bert-base-uncased's real vocab: fast enough for training-loop tests on CPU."""
    import torch

    from bertkit.config import preset
    from bertkit.modeling.heads import BertForSequenceClassification
    from bertkit.tokenization import Tokenizer

    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    model = BertForSequenceClassification(preset("tiny", vocab_size=30522))
    model.init_weights()
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / "bert-base-uncased" / "vocab.txt",
                                          do_lower_case=True)
    model.save_pretrained(directory, tokenizer=tokenizer)
    return directory


@pytest.fixture(scope="session")
def nvidia_checkpoint(tmp_path_factory, minilm_dir: Path) -> dict[str, Path]:
    """all-MiniLM-L6-v2 as NVIDIA DeepLearningExamples saves a BertForPreTraining: torch.save({"model":
    state_dict, "epoch": ...}), its names those of NVIDIA's modeling.py (`dense_act` for the intermediate,
    pooler and MLM-transform `dense`), the word embeddings and MLM bias padded from 30522 to 30528 rows
    (a multiple of 8), the config a Google-format bert_config.json and the vocab kept apart. MiniLM has
    no pre-training heads: seeded random ones stand in. Keys: checkpoint, config, vocab, state (the
    unpadded HF-named tensors, for comparing)."""
    import json

    import torch
    from safetensors.torch import load_file

    directory = tmp_path_factory.mktemp("nvidia-ckpt")
    hf = {f"bert.{k}": v for k, v in load_file(minilm_dir / "model.safetensors").items() if "position_ids" not in k}
    generator = torch.Generator().manual_seed(0)
    hidden = hf["bert.embeddings.word_embeddings.weight"].shape[1]
    hf.update({"cls.predictions.transform.dense.weight": torch.randn(hidden, hidden, generator=generator) * 0.02,
               "cls.predictions.transform.dense.bias": torch.zeros(hidden),
               "cls.predictions.transform.LayerNorm.weight": torch.ones(hidden),
               "cls.predictions.transform.LayerNorm.bias": torch.zeros(hidden),
               "cls.predictions.bias": torch.randn(30522, generator=generator) * 0.1,
               "cls.seq_relationship.weight": torch.randn(2, hidden, generator=generator) * 0.02,
               "cls.seq_relationship.bias": torch.zeros(2)})
    nvidia = {}
    for name, tensor in hf.items():
        for module in ("intermediate", "pooler", "transform"):
            name = name.replace(f"{module}.dense.", f"{module}.dense_act.")
        if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            tensor = torch.cat([tensor, torch.full((6, *tensor.shape[1:]), 7.0)])  # 30528 rows; padding never read
        nvidia[name] = tensor
    nvidia["cls.predictions.decoder.weight"] = nvidia["bert.embeddings.word_embeddings.weight"]  # tied, as saved
    torch.save({"model": nvidia, "epoch": 1}, directory / "ckpt_8601.pt")
    config = json.loads((minilm_dir / "config.json").read_text())
    keep = ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size", "initializer_range",
            "intermediate_size", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
            "type_vocab_size", "vocab_size")
    (directory / "bert_config.json").write_text(json.dumps({k: config[k] for k in keep}, indent=2))
    (directory / "vocab").mkdir()
    (directory / "vocab" / "vocab").write_bytes((minilm_dir / "vocab.txt").read_bytes())  # NVIDIA's name for it
    return {"checkpoint": directory / "ckpt_8601.pt", "config": directory / "bert_config.json",
            "vocab": directory / "vocab" / "vocab", "state": hf}
