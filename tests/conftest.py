"""Shared fixtures: a tiny synthetic MVTec-layout dataset written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from surfad.data.synth import write_synthetic_dataset

TINY = {"size": 64, "n_train": 12, "n_test_good": 4, "n_test_defect": 8, "n_val_good": 2, "n_val_defect": 4}


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Category folder of a 64 px synthetic wood dataset (counts in TINY); shared: treat as read-only."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("tiny_mvtec"), seed=0, **TINY)
