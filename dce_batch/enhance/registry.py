"""The shipped weights, declared once, and what a weights file says about itself, read without torch.

Every weights file that ships in ``dce_batch/weights/`` is declared in :data:`SHIPPED_WEIGHTS`: its
name, file, variant, its member name in the variant's enum and whether it is the variant's
default. What it is beyond that (recipe, metrics, licence, training curves) is in the JSON sidecar
next to it, derived from the file itself by ``scripts/make_weights_sidecars.py``.
:mod:`dce_batch.models` builds its torchvision-style enums from these declarations, and
:func:`read_weights_bytes` resolves names and defaults with them.

A dce_batch weights file is a ``.safetensors`` file whose header metadata holds one key,
``dce_batch``, with a JSON object that says what the weights are (:class:`WeightsMeta`).
:func:`read_safetensors_metadata` is the one reader of that header: the job's driver plans a run
from it (the workers load and verify the tensors themselves, sha256 included), the report and the
sidecar script read it, and :func:`dce_batch.enhance.weights.load_weights` reads it before
checking the tensors against it.

Standard library only (no torch, no numpy): the driver keeps torch out of its start-up, and the
sidecar script runs without the package's dependencies.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dce_batch.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover - the type only; network.py imports torch
    from dce_batch.enhance.network import ModelVariant

__all__ = [
    "DEFAULT_WEIGHTS",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "PACKAGED_WEIGHTS",
    "SHIPPED_WEIGHTS",
    "ShippedWeights",
    "WeightsMeta",
    "declared_colour_bias",
    "default_weights_for",
    "is_safetensors",
    "read_header_metadata",
    "read_safetensors_metadata",
    "read_weights_bytes",
    "shipped_weights",
]

#: The safetensors header metadata key under which a dce_batch weights file describes itself.
METADATA_KEY = "dce_batch"
#: The version of that description's layout.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShippedWeights:
    """One weights file shipped inside the package.

    Attributes:
        name: the registry name (what ``--weights`` and ``weights=`` accept); the file records
            the same name in its metadata.
        file: the file name under ``dce_batch/weights/``; its sidecar has the same stem and
            ``.json``.
        variant: ``full`` (DCE-Net) or ``fast`` (Zero-DCE++).
        tag: the member name in the variant's enum in :mod:`dce_batch.models`
            (``ZeroDCE_Weights.SICE_V1``): the training data and a version.
        default: the variant's default: what ``weights=None`` and no ``--weights`` load, and the
            enum's ``DEFAULT``. Exactly one per variant.
        colour_bias: the network's mean colour cast against well-exposed references of the same
            scenes, as (log R/G, log B/G) of its output's mean linear colour minus the reference's;
            the finishing takes it out (``FinishConfig.colour``). Measured by
            ``benchmarks/quality/measure_colour_bias.py`` on the 217 real pairs of SICE's brackets
            (``sice_sequences.py --pairs``), and declared only where taking it out gained on those
            and on the simulated LOL-like levels of Kodak24 alike (benchmarks/quality/README.md,
            "The network's colour cast").
    """

    name: str
    file: str
    variant: str
    tag: str
    default: bool = False
    colour_bias: tuple[float, float] | None = None

    @property
    def sidecar_file(self) -> str:
        """The sidecar's file name under ``dce_batch/weights/``."""
        return str(Path(self.file).with_suffix(".json"))

    @property
    def path(self) -> Path:
        """The weights file inside the installed package."""
        return Path(str(resources.files("dce_batch").joinpath("weights", self.file)))

    def read_bytes(self) -> bytes:
        """The file's bytes (not verified: :func:`dce_batch.enhance.weights.load_weights` does that)."""
        resource = resources.files("dce_batch").joinpath("weights", self.file)
        if not resource.is_file():
            raise WeightsError(
                f"the packaged weights {self.name!r} are missing from this installation "
                f"({self.file}); reinstall dce-batch or pass --weights PATH"
            )
        return resource.read_bytes()

    def sidecar(self) -> dict[str, Any]:
        """The sidecar's content: ``meta`` (the file's own metadata), ``file_sha256``,
        ``file_bytes``, ``url``, ``transforms`` and ``training`` (see ``scripts/make_weights_sidecars.py``)."""
        return _read_sidecar(self.name, self.sidecar_file)


#: Every weights file shipped in ``dce_batch/weights/``.
SHIPPED_WEIGHTS: tuple[ShippedWeights, ...] = (
    ShippedWeights(name="zerodce_sice_v1", file="zerodce_sice_v1.safetensors", variant="full", tag="SICE_V1",
                   default=True, colour_bias=(-0.017, 0.172)),
    # Its cast (+0.065, +0.255 on SICE) is not declared: taking it out gained 0.50 dB on SICE's real
    # pairs and lost 0.27-0.43 dB on every simulated level (benchmarks/quality/README.md).
    ShippedWeights(name="zerodcepp_sice_v2", file="zerodcepp_sice_v2.safetensors", variant="fast", tag="SICE_V2",
                   default=True),
)

#: Shipped name -> its file under ``dce_batch/weights/``.
PACKAGED_WEIGHTS: dict[str, str] = {shipped.name: shipped.file for shipped in SHIPPED_WEIGHTS}
#: Variant -> the name of its default weights.
DEFAULT_WEIGHTS: dict[str, str] = {shipped.variant: shipped.name for shipped in SHIPPED_WEIGHTS if shipped.default}


def shipped_weights(name: str) -> ShippedWeights:
    """The declaration of the shipped weights called ``name``."""
    for shipped in SHIPPED_WEIGHTS:
        if shipped.name == name:
            return shipped
    raise WeightsError(f"no shipped weights named {name!r}; shipped: {sorted(PACKAGED_WEIGHTS)}")


def declared_colour_bias(name: str, sha256: str) -> tuple[float, float] | None:
    """The colour bias declared for the shipped weights ``name`` (see :class:`ShippedWeights`), if
    these are they: weights trained again under the same name have other tensors and none."""
    for shipped in SHIPPED_WEIGHTS:
        if shipped.name == name and shipped.colour_bias is not None:
            return shipped.colour_bias if shipped.sidecar()["meta"]["sha256"] == sha256 else None
    return None


def default_weights_for(variant: str) -> str:
    """The name of the shipped weights a variant loads by default."""
    return DEFAULT_WEIGHTS[variant]


@functools.lru_cache(maxsize=None)
def _read_sidecar(name: str, sidecar_file: str) -> dict[str, Any]:
    resource = resources.files("dce_batch").joinpath("weights", sidecar_file)
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"the description of the shipped weights {name!r} ({sidecar_file}) is missing or "
                           f"unreadable in this installation ({exc}): reinstall dce-batch") from exc


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
        return shipped_weights(spec_str).read_bytes(), spec_str
    path = Path(spec_str).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights {spec_str!r} not found: pass a file path, an s3:// URI, or one of the packaged "
            f"names {sorted(PACKAGED_WEIGHTS)}"
        )
    return path.read_bytes(), path.name


# --------------------------------------------------------------------------------------------
# What a weights file says about itself


@dataclass(frozen=True)
class WeightsMeta:
    """What a weights file is, how it was made, how good it is and under which licence."""

    name: str
    variant: ModelVariant
    num_params: int
    sha256: str
    source: str = ""
    licence: str = ""
    recipe: Mapping[str, Any] = field(default_factory=dict)
    data: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WeightsMeta":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "WeightsMeta":
        """The metadata a file records (as :func:`read_safetensors_metadata` returns it); keys
        this version does not know are ignored.

        Raises:
            WeightsError: a key every weights file records is missing.
        """
        missing = [key for key in _REQUIRED_METADATA if key not in raw]
        if missing:
            raise WeightsError(f"the weights' {METADATA_KEY} metadata lacks {', '.join(missing)}: the file was "
                               "damaged or edited; download or export it again")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


_REQUIRED_METADATA = ("name", "variant", "num_params", "sha256")


def is_safetensors(blob: bytes) -> bool:
    """Whether ``blob`` starts as a safetensors file does: an 8-byte little-endian header length,
    then a JSON header starting with ``{``."""
    if len(blob) < 10:
        return False
    header_len = int.from_bytes(blob[:8], "little")
    return 0 < header_len < len(blob) and blob[8:9] == b"{"


def read_safetensors_metadata(blob: bytes) -> dict[str, Any] | None:
    """The ``dce_batch`` metadata a ``.safetensors`` file records in its header, as a dict.

    None for any other file: not safetensors (a PyTorch checkpoint), a header that is not JSON, or
    a safetensors file without ``dce_batch`` metadata (a bare state dict); load such a file fully
    to learn what it is. Only the header is parsed; the tensors are not read.

    Raises:
        WeightsError: the header has ``dce_batch`` metadata but it is not a JSON object (the file
            was damaged or edited).
    """
    if not is_safetensors(blob):
        return None
    header_len = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(bytes(blob[8 : 8 + header_len]))
    except ValueError:  # also UnicodeDecodeError
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        return None
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise WeightsError(f"the weights' {METADATA_KEY} metadata is not a JSON object: the file was damaged or "
                           "edited; download or export it again")
    return meta


def read_header_metadata(blob: bytes) -> WeightsMeta | None:
    """What a dce_batch weights file records about itself (:func:`read_safetensors_metadata`),
    typed; None for any other file (load it fully to learn what it is).

    Raises:
        WeightsError: the metadata is damaged or lacks a required key.
    """
    raw = read_safetensors_metadata(blob)
    return None if raw is None else WeightsMeta.from_dict(raw)
