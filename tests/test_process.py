"""Images end to end without Ray: ImageProcessor, and what a failed write does."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from dce_batch.errors import OutputWriteError
from dce_batch.imaging import EncodeOptions, decode_image, mean_luminance
from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
from dce_batch.enhance.settings import FinishConfig
from dce_batch.job.steps import ImageProcessor, WorkItem, enhance_states
from dce_batch.enhance.weights import load_weights

FS = pafs.LocalFileSystem()


@pytest.fixture(scope="module")
def processor():
    enhancer = Enhancer(load_weights(), InferenceConfig(precision="fp32"))
    proc = ImageProcessor(enhancer, EncodeOptions(), FS, FS, run_id="r1", worker="w", max_pixels=1_000_000)
    yield proc
    proc.close()


def _dark_png(path: Path, h=48, w=64, seed=0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 50).astype(np.uint8)).save(path)


def _item(source: Path, target: Path, fmt="PNG") -> WorkItem:
    return WorkItem(input_uri=str(source), input_path=str(source), input_relpath=source.name,
                    output_relpath=target.name, output_path=str(target), output_format=fmt, settings='{"s":1}',
                    settings_sha256="abc")


def test_a_batch_reads_enhances_and_writes_each_image_or_says_why_not(processor, tmp_path):
    (tmp_path / "in").mkdir()
    _dark_png(tmp_path / "in" / "a.png")
    _dark_png(tmp_path / "in" / "b.png", seed=1)
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    big = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(big, "PNG")  # 1.1 MP > max_pixels
    (tmp_path / "in" / "big.png").write_bytes(big.getvalue())
    names = ["a.png", "missing.png", "bad.png", "b.png", "big.png"]
    rows = processor.process_batch([_item(tmp_path / "in" / n, tmp_path / "out" / n) for n in names])
    by_name = {Path(r.input_uri).name: r for r in rows}
    assert [Path(r.input_uri).name for r in rows] == names
    for name in ("a.png", "b.png"):
        row = by_name[name]
        assert row.status == "ok" and row.error is None and row.settings_sha256 == "abc" and row.made_by_run_id == "r1"
        written = decode_image((tmp_path / "out" / name).read_bytes())
        assert row.bytes_out == (tmp_path / "out" / name).stat().st_size
        assert mean_luminance(written.pixels) > row.mean_luma_in and row.precision == "fp32"
    assert by_name["missing.png"].error.startswith("StorageError")
    assert by_name["bad.png"].error.startswith("CorruptImageError")
    assert by_name["big.png"].error.startswith("ImageTooLargeError")
    for name in ("missing.png", "bad.png", "big.png"):
        row = by_name[name]
        assert row.status == "error" and row.output_relpath is None and row.settings is None
        assert not (tmp_path / "out" / name).exists()


def test_a_name_the_filesystem_rejects_is_that_image_s_error(processor, tmp_path):
    _dark_png(tmp_path / "a.png")
    target = tmp_path / "out" / ("x" * 300 + ".png")  # over the 255-byte name limit
    row = processor.process_batch([_item(tmp_path / "a.png", target)])[0]
    assert row.status == "error" and "StorageError" in row.error


def test_an_output_that_cannot_be_written_stops_the_run(processor, tmp_path):
    _dark_png(tmp_path / "a.png")
    (tmp_path / "out").write_text("OUTPUT is a file, not a folder")
    with pytest.raises(OutputWriteError, match="run stops"):
        processor.process_batch([_item(tmp_path / "a.png", tmp_path / "out" / "a.png")])


def test_a_16_bit_png_is_enhanced_from_its_16_bit_values_and_stays_16_bit(processor, tmp_path):
    """Shadows quantised to 8 bits would be stretched into bands; 16-bit values are kept throughout."""
    import imagecodecs

    ramp = np.linspace(0, 3000, 200 * 300, dtype=np.float64).reshape(200, 300)  # dark: 0..4.6 % of full scale
    source = np.ascontiguousarray(np.stack([ramp, ramp * 0.9, ramp * 0.8], axis=2).astype(np.uint16))
    (tmp_path / "deep.png").write_bytes(imagecodecs.png_encode(source))
    row = processor.process_batch([_item(tmp_path / "deep.png", tmp_path / "out" / "deep.png")])[0]
    assert row.status == "ok" and row.bit_depth == 16, row.error
    written = decode_image((tmp_path / "out" / "deep.png").read_bytes())
    assert written.pixels.dtype == np.uint16 and written.bit_depth == 16
    expected = processor.enhancer.enhance(source).pixels
    assert np.array_equal(written.pixels, expected)
    # far more distinct levels than 8 bits could hold in this dark range
    assert len(np.unique(written.pixels[..., 0])) > 1000


@pytest.mark.parametrize("shape", [(1, 1000), (1000, 1), (2, 1300), (10, 7000)])
def test_a_long_thin_strip_is_enhanced_at_its_own_shape(tmp_path, shape):
    """With the job's default finishing: a strip whose short side is below the factor that brings
    its long side to the scene copy's 640 px. That side is not averaged (averaging it would leave
    nothing to read the scene from)."""
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((*shape, 3)) * 50).astype(np.uint8)).save(tmp_path / "in" / "strip.png")
    enhancer = Enhancer(load_weights(), InferenceConfig(precision="fp32", finish=FinishConfig()))
    finishing = ImageProcessor(enhancer, EncodeOptions(), FS, FS, run_id="r1", worker="w")
    try:
        (row,) = finishing.process_batch([_item(tmp_path / "in" / "strip.png", tmp_path / "out" / "strip.png")])
    finally:
        finishing.close()
    assert row.status == "ok" and row.error is None, row.error
    assert decode_image((tmp_path / "out" / "strip.png").read_bytes()).pixels.shape == (*shape, 3)


def test_an_image_the_network_cannot_take_gets_its_reason_and_the_others_go_through(processor, tmp_path):
    """The network's refusal of one image becomes that image's error, in a batch (the staged
    pipeline's GPU actor) and alone (the fused pipeline): no output for it, and the others are
    enhanced and written."""
    (tmp_path / "in").mkdir()
    names = ["a.png", "odd.png", "b.png"]
    for seed, name in enumerate(names):
        _dark_png(tmp_path / "in" / name, seed=seed)
    items = [_item(tmp_path / "in" / n, tmp_path / "out" / n) for n in names]
    states = list(processor.reader.read_batch(items))
    # Pixels no network takes (an image of no rows), in place of what the decoder gave.
    states[1].decoded = dataclasses.replace(states[1].decoded, pixels=np.zeros((0, 8, 3), np.uint8))
    enhance_states(processor.enhancer, states)
    assert states[1].decoded is None and states[1].row.error.startswith("RuntimeError")
    assert states[0].enhanced is not None and states[2].enhanced is not None
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rows = processor.writer.write_batch(states, pool)
    assert [r.status for r in rows] == ["ok", "error", "ok"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]

    (alone,) = list(processor.reader.read_batch(items[1:2]))
    alone.decoded = dataclasses.replace(alone.decoded, pixels=np.zeros((8, 0, 3), np.uint8))
    enhance_states(processor.enhancer, [alone])
    assert alone.decoded is None and alone.enhanced is None and alone.row.error.startswith("RuntimeError")
