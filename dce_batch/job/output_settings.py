"""What determines an output's pixels and bytes: the one place that says it.

Every output is made under a set of *output settings*: the model (its tensors' sha256) and variant,
the scale its curves are estimated at, the strength, the requested precision, the output format
and, for lossy formats, the quality, and the finishing (denoise, exposure and the algorithm's
name). Their canonical JSON and its sha256 go into every manifest row. Resume skips an input only
when its output was made under the very settings this run would use, so outputs made differently
are never silently mixed: a run whose settings differ from the outputs already in OUTPUT is
refused, naming the differences (:func:`describe_settings_change`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from dce_batch.enhance.settings import resolve_scale

__all__ = ["OUTPUT_SETTINGS_VERSION", "describe_settings_change", "output_settings", "settings_digest",
           "settings_for_run"]

#: Changed when the meaning of the output settings changes (rows of the earlier meaning never match).
OUTPUT_SETTINGS_VERSION = 1

_LOSSY_FORMATS = frozenset({"JPEG", "WEBP"})


def output_settings(*, model_sha256: str, variant: str, scale: float, strength: float, precision: str,
                    format: str, quality: int, output_format: str,
                    finishing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings that determine an output's pixels and bytes (see the module docstring).

    ``precision`` is the *requested* one: ``auto`` may resolve to int8 on one node and bf16 on
    another (within a few 8-bit steps of each other), and the row's ``precision`` column records
    what each node used.
    """
    return {
        "version": OUTPUT_SETTINGS_VERSION,
        "model_sha256": model_sha256,
        "variant": variant,
        # DCE-Net at full resolution records None: the form every output made at scale 1 carries.
        "scale": None if variant == "full" and float(scale) == 1.0 else float(scale),
        "strength": round(float(strength), 6),
        "precision": precision,
        "format": format,
        "output_format": output_format,
        "quality": int(quality) if output_format in _LOSSY_FORMATS else None,
        "finishing": dict(finishing) if finishing else None,
    }


def settings_for_run(config, meta, output_format: str) -> dict[str, Any]:
    """The output settings a run with ``config`` (an :class:`~dce_batch.job.config.EnhanceConfig`)
    and weights ``meta`` records for its outputs of ``output_format``."""
    finish = config.finish_config()
    # "fast" records what the same filter has always recorded (denoise auto plus its method's
    # name), so OUTPUTs made with it resume with --denoise fast.
    denoise = "auto" if finish.denoise == "fast" else finish.denoise
    finishing = None if not finish.enabled else {
        "denoise": denoise, "denoise_strength": finish.denoise_strength, "exposure": finish.exposure,
        "method": finish.method}
    # Recorded only where it acts, so that outputs whose exposure does not lift highlights match.
    if finishing and finish.exposure_target is not None and finish.highlight_stretch > 0:
        finishing["highlight_stretch"] = finish.highlight_stretch
    if finishing and finish.colour != "auto":  # auto is the method's default (the weights say what it does)
        finishing["colour"] = finish.colour
    return output_settings(model_sha256=meta.sha256, variant=meta.variant,
                           scale=resolve_scale(meta.variant, config.scale), strength=config.strength,
                           precision=config.precision, format=config.format, quality=config.quality,
                           output_format=output_format, finishing=finishing)


def settings_digest(settings: Mapping[str, Any]) -> tuple[str, str]:
    """Canonical JSON of ``settings`` and its sha256."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def describe_settings_change(before: str | None, after: str) -> str:
    """``strength 1.0 -> 0.3, quality 95 -> 80`` from two settings JSON texts."""
    if not before:
        return "settings not recorded (outputs made before settings-aware resume)"
    old, new = json.loads(before), json.loads(after)

    def shown(key: str, value: Any) -> str:
        return "1.0 (full resolution)" if key == "scale" and value is None else repr(value)

    changes = [f"{key} {shown(key, old.get(key))} -> {shown(key, new.get(key))}" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    return ", ".join(changes) or "identical settings with a different digest"
