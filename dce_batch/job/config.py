"""The settings of one enhancement run: :class:`EnhanceConfig`, validated whole before anything starts.

Built by the CLI (``dce-batch enhance``) or by a caller, and shipped whole to the workers. Every
setting is checked here, in the driver, so that a bad value fails at once with exit 2 and one
line, never later in a worker with a traceback: NaN and infinity where a number is expected,
counts below one, precisions the chosen device cannot run.
"""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources

from dce_batch.enhance.settings import FinishConfig, check_inference_settings
from dce_batch.errors import ConfigError
from dce_batch.imaging import DEFAULT_MAX_PIXELS, EncodeOptions
from dce_batch.job.manifest.parts import DEFAULT_PART_MAX_AGE_S, DEFAULT_PART_MAX_ROWS
from dce_batch.limits import (MAX_ACTOR_MEMORY, MAX_COUNT, MAX_FLUSH_S, MAX_IMAGES_PER_CALL, MAX_PIXEL_LIMIT, MAX_SCALE,
                              MAX_SIDE, MAX_WORKER_RESOURCES, MAX_WORKERS, check_number)
from dce_batch.storage import S3Options

__all__ = ["DEFAULT_OUTPUT", "ENGINES", "PIPELINES", "EnhanceConfig", "new_run_id", "sample_images_dir"]

DEFAULT_OUTPUT = "./enhanced"
ENGINES = ("auto", "ray", "local")
PIPELINES = ("auto", "fused", "staged")
#: Images per call of a CPU actor when --batch-size is not given (the next image's read overlaps
#: the current one's enhancement).
CPU_IMAGES_PER_CALL = 2
#: Images per call of a GPU actor at most, and the pixels one call may hold when --batch-size is not
#: given (so that the memory one call declares stays bounded for large --max-pixels).
GPU_IMAGES_PER_CALL = 16
GPU_CALL_PIXELS = 400_000_000


def sample_images_dir() -> str:
    """The bundled sample images (the job's default INPUT)."""
    return str(resources.files("dce_batch").joinpath("samples"))


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class EnhanceConfig:
    """Settings of one enhancement run (built by the CLI; shipped whole to the workers)."""

    input: str
    output: str = DEFAULT_OUTPUT
    weights: str | None = None
    variant: str | None = None  # full | fast; None: from the weights
    scale: float | None = None  # None: the variant's default (enhance.settings.DEFAULT_SCALES)
    format: str = "same"
    quality: int = 95
    strength: float = 1.0
    precision: str = "auto"
    denoise: str = "auto"  # noise-aware denoising after the curves: auto | fast | off
    denoise_strength: float = 1.0
    exposure: float | str = "auto"  # scene-fitted exposure: auto | off | a target mean brightness
    colour: str = "auto"  # take out the network's known colour cast: auto | off
    highlight_stretch: float = FinishConfig.highlight_stretch
    base: str | None = None  # list-file inputs: name outputs relative to this URI
    num_actors: tuple[int, int] | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1 per actor (its torch threads)
    batch_size: int | None = None  # images per call; None: see images_per_call
    pipeline: str = "auto"  # auto: fused on CPUs, staged with GPUs
    actor_memory: int | None = None  # bytes; None: from max_pixels and the images per call
    s3: S3Options | None = None
    overwrite: bool = False
    allow_output_inside_input: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    tile_size: int | None = None
    max_full_frame_pixels: int | None = None
    progress_interval_s: float = 10.0
    part_rows: int = DEFAULT_PART_MAX_ROWS  # rows per manifest part at most
    part_flush_s: float = DEFAULT_PART_MAX_AGE_S  # seconds a finished image's row may wait for its part
    dashboard: bool = False
    engine: str = "auto"  # ray | local | auto (see dce_batch.job.driver.choose_engine)
    quiet: bool = False  # only errors and the final summary
    verbose: bool = False  # Ray's own INFO lines and worker logs too
    report: bool | None = None  # dce-batch enhance builds OUTPUT/_report/index.html; None: for local OUTPUTs
    run_id: str = field(default_factory=new_run_id)

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name.upper()} is empty: give a folder, glob, s3:// prefix or list file"
                                  if name == "input" else "OUTPUT is empty: give a folder or s3:// prefix")
        for name in ("input", "output", "base", "weights"):
            value = getattr(self, name)
            try:
                (value or "").encode("utf-8")
            except UnicodeEncodeError:
                shown = (value or "").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                raise ConfigError(f"{name.upper() if name in ('input', 'output') else '--' + name} {shown!r} is not "
                                  "valid UTF-8, which the storage layer needs for paths; rename it") from None
        if self.variant not in (None, "full", "fast"):
            raise ConfigError(f"--model-variant must be full or fast, got {self.variant!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be auto, ray or local, got {self.engine!r}")
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"--pipeline must be auto, fused or staged, got {self.pipeline!r}")
        if self.num_actors is not None:
            if not (isinstance(self.num_actors, (tuple, list)) and len(self.num_actors) == 2):
                raise ConfigError(f"--num-actors must be MIN[:MAX], got {self.num_actors!r}")
            low, high = self.num_actors
            check_number("--num-actors MIN", low, 1, MAX_WORKERS, integer=True)
            check_number("--num-actors MAX", high, low, MAX_WORKERS, integer=True)
        check_number("--gpus-per-actor", self.gpus_per_actor, 0, MAX_WORKER_RESOURCES)
        check_number("--cpus-per-actor", self.cpus_per_actor, 0, MAX_WORKER_RESOURCES, low_open=True)
        check_number("--batch-size", self.batch_size, 1, MAX_IMAGES_PER_CALL, integer=True)
        check_number("--max-pixels", self.max_pixels, 1, MAX_PIXEL_LIMIT, integer=True)
        check_number("--quality", self.quality, 1, 100, integer=True)
        check_number("--tile-size", self.tile_size, 16, MAX_SIDE, integer=True)
        check_number("max_full_frame_pixels", self.max_full_frame_pixels, 1, MAX_PIXEL_LIMIT, integer=True)
        check_number("part_rows", self.part_rows, 1, MAX_COUNT, integer=True)
        check_number("part_flush_s", self.part_flush_s, 0, MAX_FLUSH_S)
        check_number("progress_interval_s", self.progress_interval_s, 0, MAX_FLUSH_S, low_open=True)
        check_number("--scale", self.scale, 1, MAX_SCALE)
        check_number("--strength", self.strength, 0, 1)
        check_number("--denoise-strength", self.denoise_strength, 0, 4)
        check_number("--highlight-stretch", self.highlight_stretch, 0, 1)
        if not isinstance(self.exposure, str):
            check_number("--exposure", self.exposure, 0, 1, low_open=True)
        if self.actor_memory is not None:
            from dce_batch.job.sizing import ACTOR_BASE_MEMORY

            check_number("--actor-memory", self.actor_memory, ACTOR_BASE_MEMORY, MAX_ACTOR_MEMORY, integer=True)
        if self.engine == "local" and (self.gpus_per_actor > 0 or self.pipeline == "staged"):
            raise ConfigError("--engine local runs the fused CPU pipeline; GPUs and --pipeline staged need --engine ray")
        if self.quiet and self.verbose:
            raise ConfigError("--quiet and --verbose contradict each other; pass one")
        self._check_precision()
        check_inference_settings(strength=self.strength, precision=self.precision, scale=self.scale,
                                 tile_size=self.tile_size, max_full_frame_pixels=self.max_full_frame_pixels)
        self.finish_config()  # validates denoise and exposure
        self.encode_options()  # validates format and quality

    def _check_precision(self) -> None:
        """What can be known before a worker starts: the device the actors will have."""
        gpus = self.gpus_per_actor > 0
        if self.precision == "fp16" and not gpus:
            raise ConfigError("--precision fp16 needs a CUDA GPU (--gpus-per-actor); on CPUs use auto, fp32, bf16 "
                              "or int8")
        if self.precision == "int8" and gpus:
            raise ConfigError("--precision int8 runs on CPUs; with GPUs use auto (bf16 or fp16), fp32 or bf16")
        if self.precision == "int8" and platform.machine().lower() not in ("x86_64", "amd64"):
            raise ConfigError(f"--precision int8 needs an x86-64 CPU (this is {platform.machine()}); use auto or fp32")

    @property
    def staged(self) -> bool:
        return self.pipeline == "staged" or (self.pipeline == "auto" and self.gpus_per_actor > 0)

    @property
    def images_per_call(self) -> int:
        """Images per actor call: ``--batch-size``, else 2 on CPUs and, on GPUs, up to 16 within
        :data:`GPU_CALL_PIXELS` of images of ``--max-pixels``."""
        if self.batch_size:
            return self.batch_size
        if not self.staged:
            return CPU_IMAGES_PER_CALL
        return max(1, min(GPU_IMAGES_PER_CALL, GPU_CALL_PIXELS // self.max_pixels))

    def inference_config(self):
        from dce_batch.enhance.enhancer import InferenceConfig  # torch stays out of the driver until needed

        return InferenceConfig(
            strength=self.strength, precision=self.precision,  # type: ignore[arg-type]
            scale=self.scale, tile_size=self.tile_size, max_full_frame_pixels=self.max_full_frame_pixels,
            finish=self.finish_config(),
        )

    def finish_config(self) -> FinishConfig:
        return FinishConfig(denoise=self.denoise, denoise_strength=self.denoise_strength,  # type: ignore[arg-type]
                            exposure=self.exposure, highlight_stretch=self.highlight_stretch,
                            colour=self.colour)  # type: ignore[arg-type]

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(format=self.format, quality=self.quality)

    def settings_record(self) -> dict:
        """Every setting, for the run summary (no credentials: only the S3 endpoint)."""
        from dataclasses import asdict

        settings = asdict(self)
        settings.pop("s3", None)
        if self.s3 is not None:
            settings["s3_endpoint"] = self.s3.endpoint_url
        return settings
