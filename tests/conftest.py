"""Shared test fixtures. Tests never read the team's shared data folder: fixtures live in tests/fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module's torch code on one thread.

    On a shared 2-core machine, 2 OpenMP threads stall at barriers whenever another
    process holds a core (measured: 0.07 s vs up to 8 s per training step), and tiny
    models gain nothing from intra-op threads. Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_synth_cohort(tmp_path_factory) -> Path:
    """48 synthetic cases (seed 5, 224-px images): the training and federated-training
    tests read it and never write into it."""
    from medfuse.synth.cohort import SynthConfig, synth_cohort

    out = tmp_path_factory.mktemp("small-synth") / "cohort"
    synth_cohort(n=48, seed=5, out=out, config=SynthConfig(image_size=224), workers=1, progress=False)
    return out
