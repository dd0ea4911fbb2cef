"""Small helpers for tests that build folders of inputs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

IMAGES = (".jpg", ".jpeg", ".png")  # the extensions the listing tests ask for
LOCAL = pafs.LocalFileSystem()
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_files(root: Path, names: list[str]) -> None:
    """Create ``names`` (``/``-separated) under ``root``, each holding its own name."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


def relpaths(files) -> list[str]:
    """The ``relpath`` of each listed input (``InputFile`` objects)."""
    return [f.relpath for f in files]
