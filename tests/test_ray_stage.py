"""dce_batch.ray.Enhance in a user's own Ray Data pipeline, and dce_batch.enhance_batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dce_batch
from dce_batch.imaging import decode_image
from dce_batch.job import EnhanceConfig, run_enhance

pytestmark = pytest.mark.ray


def _inputs(folder: Path) -> None:
    rng = np.random.default_rng(3)
    folder.mkdir()
    for i, (h, w) in enumerate([(96, 128), (96, 128), (70, 90)]):
        yy = np.linspace(0, 1, h)[:, None, None]
        pixels = np.clip((0.05 + 0.15 * yy + 0.04 * rng.random((h, w, 3))) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def test_the_ray_data_stage_gives_the_job_s_pixels(ray_local, tmp_path):
    import ray.data

    from dce_batch.ray import Enhance

    _inputs(tmp_path / "in")
    run_enhance(EnhanceConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), engine="local", report=False))
    dataset = ray.data.read_images(str(tmp_path / "in"), mode="RGB", include_paths=True)
    rows = dataset.map_batches(Enhance, fn_constructor_kwargs={"output_column": "enhanced"}, batch_size=2,
                               compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1)).take_all()
    assert len(rows) == 3
    for row in rows:
        name = Path(row["path"]).name
        expected = decode_image((tmp_path / "out" / name).read_bytes()).pixels
        assert row["enhanced"].dtype == np.uint8 and row["enhanced"].shape == expected.shape
        assert np.array_equal(row["enhanced"], expected), name
        assert np.array_equal(row["image"], np.asarray(Image.open(tmp_path / "in" / name)))  # input kept


def test_enhance_batch_takes_the_shapes_and_depths_people_have():
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 50, 3)) * 60).astype(np.uint8)
    gray = rgb[..., 0].copy()
    rgba = np.dstack([rgb, np.full((40, 50), 200, np.uint8)])
    deep = rgb.astype(np.uint16) * 257
    out = dce_batch.enhance_batch([rgb, gray, rgba, deep])
    assert [o.shape for o in out] == [(40, 50, 3), (40, 50), (40, 50, 4), (40, 50, 3)]
    assert [o.dtype for o in out] == [np.uint8, np.uint8, np.uint8, np.uint16]
    assert out[0].mean() > rgb.mean() + 10 and np.array_equal(out[2][..., 3], rgba[..., 3])
    with pytest.raises(dce_batch.models.ConfigError, match="shape"):
        dce_batch.enhance_batch([np.zeros((4, 4, 2), np.uint8)])
