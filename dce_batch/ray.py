"""A Ray Data stage for your own pipelines: :class:`Enhance`.

    import ray.data
    from dce_batch.ray import Enhance

    ds = ray.data.read_images("s3://bucket/dark/", mode="RGB")
    ds = ds.map_batches(Enhance, fn_constructor_kwargs={"strength": 0.8},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=8), batch_size=4)
    ds.write_images("s3://bucket/bright/", column="image", file_format="png")

Each actor loads the network once; each call enhances the batch's images with the settings the
job uses (the same pixels ``dce-batch enhance`` computes for those values). It takes the columns
Ray's readers produce: an image column of H x W x 3 (or H x W x 4, or H x W) uint8, uint16 or
float32 arrays, as one N x H x W x C array when the images share a size or an object array of
arrays when they do not; the result has the same form. Other columns pass through.

For plain Python (no Ray) there is :func:`dce_batch.enhance_batch`; for whole collections with a
manifest, resume and reports, the ``dce-batch enhance`` job.
"""

from __future__ import annotations

from typing import Any

from dce_batch.enhance.settings import FinishConfig

__all__ = ["Enhance"]


class Enhance:
    """Enhance the images of a Ray Data batch (a callable class for ``Dataset.map_batches``).

    Args:
        weights: a shipped name (default ``zerodce_sice_v1``), an enum member or a weights file
            every worker can read.
        strength, scale, precision, denoise, denoise_strength, exposure, highlight_stretch: as for
            ``dce-batch enhance``.
        device: ``auto`` (CUDA when the actor has a GPU: pass ``num_gpus=`` to ``map_batches``), ``cpu``.
        column: the column holding the images (``image``, as ``ray.data.read_images`` names it).
        output_column: where to put the enhanced images (default: replace ``column``).
        threads: torch CPU threads per actor (default 1: one actor per CPU).
    """

    def __init__(self, *, weights: Any = None, strength: float = 1.0, scale: float | None = None,
                 precision: str = "auto", denoise: str = "auto", denoise_strength: float = 1.0,
                 exposure: float | str = "auto", highlight_stretch: float = FinishConfig.highlight_stretch,
                 device: str = "auto", column: str = "image", output_column: str | None = None,
                 threads: int | None = 1) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.settings = dict(weights=weights, strength=strength, scale=scale, device=device, precision=precision,
                             denoise=denoise, denoise_strength=denoise_strength, exposure=exposure,
                             highlight_stretch=highlight_stretch)
        self.column, self.output_column = column, output_column or column
        from dce_batch.models import enhance_batch

        self._enhance = enhance_batch
        self._enhance([_tiny()], **self.settings)  # load the network now, not on the first batch

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        images = batch[self.column]
        enhanced = self._enhance(list(images), **self.settings)
        if isinstance(images, np.ndarray) and images.dtype != object:
            result = np.stack(enhanced) if enhanced else images.copy()
        else:
            result = np.empty(len(enhanced), dtype=object)
            result[:] = enhanced
        out = dict(batch)
        out[self.output_column] = result
        return out


def _tiny():
    import numpy as np

    return np.zeros((8, 8, 3), np.uint8)
