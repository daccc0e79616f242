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
