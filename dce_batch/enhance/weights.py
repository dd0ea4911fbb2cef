"""Weights: loading and saving the project's safetensors format, and importing published checkpoints.

Like torchvision's weights objects, a dce_batch weights file says what it is (architecture,
parameter count), how it was made (recipe, data, epochs, hardware), how good it is (metrics) and
its licence. The format is a plain ``.safetensors`` file whose header metadata holds one key,
``dce_batch``, with that information as JSON, including the sha256 of the tensors (checked on load).
That metadata (:class:`~dce_batch.enhance.registry.WeightsMeta`), its reader and the shipped
weights are in :mod:`dce_batch.enhance.registry`, which needs no torch.

Published checkpoints are imported, never unpickled as arbitrary objects: ``torch.load`` runs
with ``weights_only=True`` and the keys and layouts are mapped onto this project's modules:

* the Zero-DCE authors' ``Epoch99.pth`` (keys ``e_conv1..7``, the official concatenation order);
* the Zero-DCE++ authors' checkpoint (``e_convN.depth_conv/point_conv``);
* the seed implementation's ``conv1..7`` file, which concatenates ``[x4, x3]``, ``[x5, x2]``,
  ``[x6, x1]``: the input halves of its conv5/6/7 kernels are swapped into the official order.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from dce_batch.errors import WeightsError
from dce_batch.enhance.network import DCENet, DCENetFast, ModelVariant, build_model
from dce_batch.enhance.registry import (
    DEFAULT_WEIGHTS,
    FORMAT_VERSION,
    METADATA_KEY,
    PACKAGED_WEIGHTS,
    WeightsMeta,
    default_weights_for,
    is_safetensors,
    read_safetensors_metadata,
    read_weights_bytes,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "PACKAGED_WEIGHTS",
    "LoadedWeights",
    "WeightsMeta",
    "default_weights_for",
    "count_subnormals",
    "flush_subnormals",
    "import_checkpoint",
    "load_weights",
    "read_weights_bytes",
    "save_weights",
    "state_dict_sha256",
]


# Bit layouts of the float types weights come in: (signed integer type of the same width, the
# exponent field's mask). A value is subnormal when its exponent bits are all zero and its other
# bits are not; decided on the bits, because in a process that flushes denormal arithmetic (every
# worker of the job) comparing a subnormal with zero says they are equal.
_BIT_LAYOUTS = {
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
    torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80),
}


def subnormal_mask(tensor: torch.Tensor) -> torch.Tensor:
    """Where ``tensor`` holds a subnormal value (non-zero, below its dtype's smallest normal)."""
    if tensor.dtype not in _BIT_LAYOUTS:
        return torch.zeros(tensor.shape, dtype=torch.bool)
    int_type, exponent = _BIT_LAYOUTS[tensor.dtype]
    bits = tensor.contiguous().view(int_type)
    magnitude = bits & ~(torch.tensor(1, dtype=int_type) << (torch.iinfo(int_type).bits - 1))
    return ((bits & exponent) == 0) & (magnitude != 0)


def flush_subnormals(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every subnormal float (0 < |x| < 1.18e-38 in fp32) set to zero.

    Training with weight decay leaves many weights decaying towards zero; once they are subnormal,
    every multiply by one takes a slow microcode path on Intel CPUs, in torch and in onnxruntime
    alike (benchmarks/bench_subnormals.py; benchmarks/README.md, "Subnormal weights and denormal
    arithmetic (Intel)"). Such a value is far below anything the
    network's output can resolve, so zero gives the same outputs.
    """
    return {key: tensor.masked_fill(subnormal_mask(tensor), 0) if tensor.is_floating_point() else tensor
            for key, tensor in state.items()}


def count_subnormals(state: Mapping[str, torch.Tensor]) -> int:
    """How many values of ``state`` are subnormal."""
    return sum(int(subnormal_mask(t).sum()) for t in state.values() if t.is_floating_point())


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict in this project's layout plus its metadata; builds the model on demand."""

    state_dict: Mapping[str, torch.Tensor]
    meta: WeightsMeta

    def build(self, *, scale: float = 1.0) -> DCENet | DCENetFast:
        """The network in eval mode with these weights, estimating its curves at ``scale``."""
        model = build_model(self.meta.variant, scale=scale)
        model.load_state_dict(dict(self.state_dict), strict=True)
        return model.eval()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A checksum of the tensors alone (names, dtypes, shapes, values), independent of metadata."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_weights(
    model_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | Path | None,
    *,
    name: str,
    variant: ModelVariant,
    source: str = "",
    licence: str = "",
    recipe: Mapping[str, Any] | None = None,
    data: str = "",
    metrics: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> tuple[bytes, WeightsMeta]:
    """Serialise weights with their metadata; write them to ``path`` when given.

    Subnormal values are flushed to zero first (:func:`flush_subnormals`), so no file this project
    writes carries them. ``created`` defaults to now. Returns the file's bytes (so callers can
    write them to object storage) and the metadata.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    state = flush_subnormals({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()})
    meta = _describe_state(
        state, name=name, variant=variant, source=source, licence=licence, recipe=dict(recipe or {}),
        data=data, metrics=dict(metrics or {}),
        created=created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    blob = save_safetensors_bytes(state, metadata={METADATA_KEY: meta.to_json()})
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(blob)
    return blob, meta


def load_weights(
    spec: str | Path | bytes | None = None,
    *,
    variant: ModelVariant | None = None,
    name: str | None = None,
) -> LoadedWeights:
    """Load weights from a spec (see :func:`read_weights_bytes`) or from raw file bytes.

    safetensors files (the project's format) are verified against the sha256 in their metadata;
    anything else is treated as a published PyTorch checkpoint and imported. Either way the
    tensors come back with subnormal values flushed to zero (:func:`flush_subnormals`); the
    metadata's sha256 stays the file's, so a file is known by the same checksum wherever it loads.
    """
    if isinstance(spec, (bytes, bytearray, memoryview)):
        blob, label = bytes(spec), name or "weights"
    else:
        blob, label = read_weights_bytes(spec, variant=variant)
        label = name or label
    if is_safetensors(blob):
        loaded = _load_project_weights(blob, label)
    else:
        loaded = import_checkpoint(blob, name=_strip_suffix(label))
    if variant is not None and loaded.meta.variant != variant:
        raise WeightsError(
            f"weights {label!r} are for the {loaded.meta.variant!r} variant, but --model-variant "
            f"{variant!r} was asked for; drop one of the two or pass matching weights"
        )
    return loaded


def _strip_suffix(label: str) -> str:
    for suffix in (".safetensors", ".pth", ".pt", ".ckpt"):
        if label.endswith(suffix):
            return label[: -len(suffix)]
    return label


def _load_project_weights(blob: bytes, label: str) -> LoadedWeights:
    try:
        state = load_safetensors_bytes(blob)
    except (SafetensorError, ValueError) as exc:
        raise WeightsError(f"{label}: not a readable safetensors file ({exc})") from exc
    try:
        raw_meta = read_safetensors_metadata(blob)
        meta = None if raw_meta is None else WeightsMeta.from_dict(raw_meta)
    except WeightsError as exc:
        raise WeightsError(f"{label}: {exc}") from exc
    if meta is None:
        # A bare safetensors state dict (e.g. exported by other tools): infer what it is.
        return _as_loaded(_map_known_layouts(flush_subnormals(state), label), name=_strip_suffix(label), source=label)
    _check_layout(state, meta.variant, origin=label)
    actual = state_dict_sha256(state)
    if actual != meta.sha256:
        raise WeightsError(
            f"{label}: tensor checksum {actual[:12]}... does not match the {meta.sha256[:12]}... recorded "
            "in its metadata; the file is damaged or was edited: download or export it again"
        )
    return LoadedWeights(state_dict=flush_subnormals(state), meta=meta)


def import_checkpoint(blob: bytes, *, name: str = "imported") -> LoadedWeights:
    """Import a published PyTorch checkpoint (see module docstring) safely."""
    try:
        raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise WeightsError(
            f"{name}: cannot read as a PyTorch checkpoint with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); only plain state dicts of tensors are accepted"
        ) from exc
    state = flush_subnormals(_unwrap_state_dict(raw, name))
    return _as_loaded(_map_known_layouts(state, name), name=name, source=f"imported from {name}")


def _as_loaded(mapped: tuple[dict[str, torch.Tensor], ModelVariant, str], *, name: str, source: str) -> LoadedWeights:
    state, variant, layout = mapped
    meta = _describe_state(state, name=name, variant=variant, source=f"{source} ({layout} layout)",
                           licence="as published by the checkpoint's authors")
    return LoadedWeights(state_dict=state, meta=meta)


def _describe_state(state: Mapping[str, torch.Tensor], *, name: str, variant: ModelVariant, **fields: Any) -> WeightsMeta:
    """Metadata of a state dict after checking it fits the variant: counts and checksum derived."""
    _check_layout(state, variant, origin=name)
    return WeightsMeta(name=name, variant=variant, num_params=sum(t.numel() for t in state.values()),
                       sha256=state_dict_sha256(state), **fields)


def _unwrap_state_dict(raw: Any, name: str) -> dict[str, torch.Tensor]:
    # Training checkpoints nest the weights ({"model": ...}, {"state_dict": ...}); DataParallel
    # prefixes keys with "module.".
    if isinstance(raw, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in raw and isinstance(raw[key], Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{name}: expected a state dict of tensors, found {type(raw).__name__}")
    return {k.removeprefix("module."): v.detach().to("cpu", torch.float32) for k, v in raw.items()}


def _map_known_layouts(state: Mapping[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], ModelVariant, str]:
    """Rename/re-layout a state dict into this project's modules; (state, variant, layout name)."""
    keys = set(state)
    if "e_conv1.depth_conv.weight" in keys:
        return dict(state), "fast", "Zero-DCE++"
    if "e_conv1.weight" in keys:
        return dict(state), "full", "Zero-DCE"
    if "conv1.weight" in keys and "conv7.weight" in keys:
        mapped = {}
        for key, tensor in state.items():
            index = int(key[4])
            new_key = f"e_conv{index}{key[5:]}"
            if index >= 5 and key.endswith("weight"):
                # The seed concatenated [deep, shallow]; the official layout is [shallow, deep].
                half = tensor.shape[1] // 2
                tensor = torch.cat([tensor[:, half:], tensor[:, :half]], dim=1)
            mapped[new_key] = tensor
        return mapped, "full", "seed (reversed concatenation)"
    raise WeightsError(
        f"{name}: unknown checkpoint layout (keys {sorted(keys)[:4]}...); expected Zero-DCE (e_conv1..7), "
        "Zero-DCE++ (e_convN.depth_conv/point_conv) or the seed's conv1..7"
    )


def _check_layout(state: Mapping[str, torch.Tensor], variant: ModelVariant, origin: str) -> None:
    expected = build_model(variant).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{origin}: does not fit the {variant!r} network (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shapes {wrong[:3]})"
        )


def describe(meta: WeightsMeta) -> str:
    """One line for logs and summaries."""
    return f"{meta.name} ({meta.variant}, {meta.num_params:,} params, sha256 {meta.sha256[:12]})"
