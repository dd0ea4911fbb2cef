"""Access to ../shared (reference weights, outputs, real images) for tests that need it.

Users of the project do not have ../shared: every test that reads it goes through these
fixtures, which skip cleanly when it is absent. ``DCE_SHARED`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("DCE_SHARED", REPO_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a pytest skip if it is not there."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (reference material from ../shared; set DCE_SHARED to point at it)")
    return path


@pytest.fixture(scope="session")
def reference_weights_dir() -> Path:
    return shared_path("reference_weights")


@pytest.fixture(scope="session")
def reference_outputs_dir() -> Path:
    return shared_path("reference_outputs")
