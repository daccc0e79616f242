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
