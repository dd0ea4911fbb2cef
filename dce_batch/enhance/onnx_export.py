"""Export weights to ONNX: ``dce-batch export-onnx [WEIGHTS] OUT.onnx``.

The graph (opset 18 unless ``opset`` asks for another one, from :data:`MIN_OPSET` to the newest
opset of the installed onnx) has

* input ``image``: float32 N x 3 x H x W in [0, 1] (RGB, 8-bit values / 255); N, H and W are
  dynamic;
* input ``strength``: float32 of shape [1], 0 (unchanged) .. 1 (the model as trained). An input
  rather than a constant so that one file serves every strength; it costs one multiply.
* output ``enhanced``: float32 N x 3 x H x W in [0, 1].

The fast variant (Zero-DCE++) estimates its curves on the image downscaled by ``scale``. The
factor is fixed in the graph (``--scale``, default 12 like ``dce-batch enhance``), but the
downscaled size is computed in the graph from each input's size, ``round(H / scale)`` with
round-half-to-even exactly as the PyTorch model does (ONNX ``Round``), so any image size works.
Export another file for another scale. Full-frame inference is what the graph does: the batch
job's exact tiling is a memory measure, and gives the same pixels.

DCE-Net's graph is the network at full resolution (scale 1, the authors' network). The job's
default for DCE-Net, curves from a 4x downscaled copy with guided upsampling
(:class:`dce_batch.enhance.network.DCENet`), is not in the graph: its outputs differ from the job's default
ones (``dce-batch enhance --scale 1`` gives the graph's).

The weights' metadata is copied into the model's ``metadata_props``: ``dce_batch.name``,
``dce_batch.sha256`` (of the tensors), ``dce_batch.variant``, ``dce_batch.scale``,
``dce_batch.licence``, ``dce_batch.meta`` (the whole metadata as JSON) and a description of
the inputs. Exporting uses torch's exporter (``torch.onnx.export(dynamo=True)``, which needs
``onnxscript``); ``pip install 'dce-batch[onnx]'`` installs it with onnx and onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dce_batch.errors import ConfigError, WeightsError
from dce_batch.limits import MAX_SCALE, check_number

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "OnnxExport", "export_onnx", "newest_opset"]

DEFAULT_OPSET = 18
#: The oldest opset the graph converts to: the exporter writes opset 18, and ONNX's version
#: converter has no adapter for ``Pow`` below 15 (asked for 13 or 14, it would keep 18).
MIN_OPSET = 15
INPUT_DOC = ("image: float32 N x 3 x H x W RGB in [0, 1] (dynamic N, H, W); strength: float32 [1] in [0, 1] "
             "(0 = unchanged, 1 = the model as trained); output enhanced: float32 N x 3 x H x W in [0, 1]")


@dataclass(frozen=True)
class OnnxExport:
    """What was exported."""

    path: str
    name: str
    variant: str
    sha256: str
    scale: float
    opset: int
    bytes: int


def _export_module(loaded, scale: float):
    """A module computing exactly what :class:`dce_batch.enhance.enhancer.Enhancer` computes, in one pass."""
    import torch
    import torch.nn.functional as F

    from dce_batch.enhance.network import apply_curves

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = loaded.build(scale=scale if loaded.meta.variant == "fast" else 1.0)
            self.fast = loaded.meta.variant == "fast"
            self.scale = float(scale)

        def forward(self, image: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
            if not self.fast:
                curves = self.net.head(image) * strength
                return apply_curves(image, curves).clamp(0.0, 1.0)
            height, width = image.shape[-2], image.shape[-1]
            small = image
            if self.scale != 1.0:
                # Same size rule as DCENetFast.downscaled_size (round, at least 1): traced as
                # Shape -> Div -> Round -> Max, so it follows each input's size.
                size = (max(1, round(height / self.scale)), max(1, round(width / self.scale)))
                small = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            curves = self.net.head(small) * strength
            curves = F.interpolate(curves, size=(height, width), mode="bilinear", align_corners=True)
            return apply_curves(image, curves).clamp(0.0, 1.0)

    return Exported().eval()


# The exporter registers torchvision's operators when it can and logs a WARNING for each one it
# skips without torchvision; DCE-Net uses none of them.
_EXPORTER_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def _exporter_notices_hidden() -> Iterator[None]:
    """The exporter's notices about things this graph does not use (missing torchvision, pytree
    deprecations inside torch) kept from the user; its errors still raise."""
    registry = logging.getLogger(_EXPORTER_REGISTRY_LOGGER)
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        registry.setLevel(level)


def newest_opset() -> int | None:
    """The newest opset the installed onnx knows (None without onnx)."""
    try:
        import onnx
    except ImportError:
        return None
    return int(onnx.defs.onnx_opset_version())


def check_export_settings(target: str | Path, *, scale: float, opset: int | None) -> None:
    """ConfigError for a scale, opset or target the export cannot honour, before the slow export."""
    check_number("--scale", scale, 1, MAX_SCALE)
    if opset is not None:
        newest = newest_opset()
        check_number("--opset", opset, MIN_OPSET, newest if newest is not None else DEFAULT_OPSET, integer=True)
    if not str(target).strip():
        raise ConfigError("the ONNX file's path is empty")
    if Path(target).is_dir():
        raise ConfigError(f"{target} is a folder: give the path of the .onnx file to write")


def export_onnx(weights: str | Path | None, target: str | Path, *, variant: str | None = None,
                scale: float = 12.0, opset: int | None = None) -> OnnxExport:
    """Export ``weights`` (a shipped name, a .safetensors or .pth file; None: the default of
    ``variant``) to the ONNX file ``target``. See the module docstring for the graph."""
    import builtins

    check_export_settings(target, scale=scale, opset=opset)
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it
        import torch
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs onnxscript and onnx: pip install 'dce-batch[onnx]' ({exc})") from exc
    from dce_batch._version import __version__
    from dce_batch.enhance.onnx_round import symbolic_round
    from dce_batch.enhance.weights import load_weights

    loaded = load_weights(None if weights is None else str(weights), variant=variant)  # type: ignore[arg-type]
    meta = loaded.meta
    module = _export_module(loaded, scale)
    example = (torch.rand(1, 3, 64, 96), torch.ones(1))
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)}
    opset = opset or DEFAULT_OPSET
    try:
        with _exporter_notices_hidden():
            program = torch.onnx.export(
                module, example, dynamo=True, opset_version=opset, input_names=["image", "strength"],
                output_names=["enhanced"], dynamic_shapes={"image": dims, "strength": None},
                custom_translation_table={builtins.round: symbolic_round}, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; say what failed
        raise WeightsError(f"ONNX export of {meta.name} failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    written_opset = program.model.opset_imports.get("")
    if written_opset != opset:
        raise WeightsError(f"ONNX export of {meta.name} could not convert the graph to opset {opset} (it stayed at "
                           f"{written_opset}); use --opset {DEFAULT_OPSET} or later")
    effective_scale = float(scale) if meta.variant == "fast" else 1.0
    program.model.metadata_props.update({
        "dce_batch.name": meta.name,
        "dce_batch.sha256": meta.sha256,
        "dce_batch.variant": meta.variant,
        "dce_batch.scale": f"{effective_scale:g}",
        "dce_batch.licence": meta.licence,
        "dce_batch.meta": json.dumps(asdict(meta), sort_keys=True, default=str),
        "dce_batch.inputs": INPUT_DOC,
        "dce_batch.version": __version__,
    })
    program.model.producer_name = "dce_batch"
    program.model.doc_string = f"Zero-DCE low-light enhancement ({meta.name}, {meta.variant}). {INPUT_DOC}"
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(target))
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc}") from exc
    return OnnxExport(path=str(target), name=meta.name, variant=meta.variant, sha256=meta.sha256,
                      scale=effective_scale, opset=opset, bytes=target.stat().st_size)
