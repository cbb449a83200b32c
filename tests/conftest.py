"""Shared fixtures: the read-only ``../shared`` folder beside the repo root."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (spec, configs, data); tests that need it skip loudly without it."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found beside the repo root ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def configs_dir(shared_dir: Path) -> Path:
    return shared_dir / "configs"


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> str:
    """One token-cache folder for every test that trains: each corpus is tokenized once
    per session, not once per test or module (the cache is keyed by corpus and tokenizer).
    Tests of the cache itself use their own folder."""
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread (a second one only adds barriers, which stall
    badly when the machine is shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
