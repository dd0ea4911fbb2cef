"""The metadata of a dce_batch weights file, read from its safetensors header without torch.

Also where the shipped weights are, and reading a weights spec's bytes (both torch-free too).

The driver of the enhancement job needs only what the weights are (name, variant, sha256) to plan
a run; the workers load and verify the tensors themselves (:func:`dce_batch.enhance.weights.load_weights`
checks the sha256). Reading the header alone keeps torch out of the driver's start-up.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

from dce_batch.errors import WeightsError

__all__ = ["DEFAULT_WEIGHTS", "PACKAGED_WEIGHTS", "default_weights_for", "read_header_metadata", "read_weights_bytes"]

_METADATA_KEY = "dce_batch"  # as dce_batch.enhance.weights.METADATA_KEY
_REQUIRED = ("name", "variant", "sha256", "num_params")


def read_header_metadata(blob: bytes) -> SimpleNamespace | None:
    """The metadata a dce_batch safetensors file records, or None (another format: load it fully)."""
    if len(blob) < 10:
        return None
    length = int.from_bytes(blob[:8], "little")
    if not 0 < length < len(blob) or blob[8:9] != b"{":
        return None
    try:
        header = json.loads(blob[8 : 8 + length])
        meta = json.loads((header.get("__metadata__") or {})[_METADATA_KEY])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(meta, dict) or any(key not in meta for key in _REQUIRED):
        return None
    meta.setdefault("source", "")
    return SimpleNamespace(**meta)


# Name -> file under dce_batch/weights/. Their metadata lives in the files themselves.
PACKAGED_WEIGHTS: dict[str, str] = {
    "zerodce_sice_v1": "zerodce_sice_v1.safetensors",
    "zerodcepp_sice_v2": "zerodcepp_sice_v2.safetensors",
}
DEFAULT_WEIGHTS: dict[str, str] = {"full": "zerodce_sice_v1", "fast": "zerodcepp_sice_v2"}


def default_weights_for(variant: str) -> str:
    return DEFAULT_WEIGHTS[variant]


def read_weights_bytes(spec: str | Path | None, *, variant: str | None = None) -> tuple[bytes, str]:
    """The raw bytes of a weights spec and the name it goes by.

    ``spec`` is ``None`` (the shipped default of ``variant``, "full" if not given), a packaged name
    such as ``zerodce_sice_v1``, or a local path. Object-storage URIs are read by the caller
    through :mod:`dce_batch.storage` and passed to :func:`load_weights` as bytes.
    """
    if spec is None or str(spec) == "default":
        spec = default_weights_for(variant or "full")
    spec_str = str(spec)
    if spec_str in PACKAGED_WEIGHTS:
        resource = resources.files("dce_batch").joinpath("weights", PACKAGED_WEIGHTS[spec_str])
        if not resource.is_file():
            raise WeightsError(
                f"the packaged weights {spec_str!r} are missing from this installation "
                f"({PACKAGED_WEIGHTS[spec_str]}); reinstall dce-batch or pass --weights PATH"
            )
        return resource.read_bytes(), spec_str
    path = Path(spec_str).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights {spec_str!r} not found: pass a file path, an s3:// URI, or one of the packaged "
            f"names {sorted(PACKAGED_WEIGHTS)}"
        )
    return path.read_bytes(), path.name
