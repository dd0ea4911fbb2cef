"""ONNX export: the exported graph, run in onnxruntime, gives the batch job's pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dce_batch.imaging import decode_image
from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
from dce_batch.enhance.onnx_export import export_onnx
from dce_batch.job import sample_images_dir
from dce_batch.enhance.weights import load_weights

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[test]'")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[test]'")

pytestmark = pytest.mark.slow


def _sample(name: str) -> np.ndarray:
    return decode_image((Path(sample_images_dir()) / name).read_bytes()).to_float()


def _run(path: Path, pixels: np.ndarray, strength: float) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    (out,) = session.run(None, {"image": image, "strength": np.array([strength], np.float32)})
    return out[0].transpose(1, 2, 0)


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0, 1) * 255).astype(np.int16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Both shipped models exported once: the full one through the CLI, as a user would; the fast
    one in this process (a second CLI process would only import torch again)."""
    folder = tmp_path_factory.mktemp("onnx")
    paths = {"full": folder / "zerodce.onnx", "fast": folder / "zerodcepp.onnx"}
    done = subprocess.run([sys.executable, "-m", "dce_batch.cli", "export-onnx", "zerodce_sice_v1", str(paths["full"])],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {paths['full']}" in done.stdout
    assert done.stderr.strip() == "", done.stderr[-3000:]  # no exporter notices (missing torchvision, ...)
    export_onnx(None, paths["fast"], variant="fast", scale=12)
    return paths


@pytest.mark.parametrize("variant,weights", [("full", "zerodce_sice_v1"), ("fast", "zerodcepp_sice_v2")])
@pytest.mark.parametrize("sample,strength", [("rocket_dusk.jpg", 1.0), ("coffee_dim_rotated.jpg", 0.6)])
def test_onnxruntime_matches_pytorch_within_one_8bit_step(exported, variant, weights, sample, strength):
    """Real photos of odd sizes (640 x 427, 512 x 341): dynamic H and W, and the fast variant's
    in-graph downscaled size (round(427 / 12) = 36 rounds up, 341 / 12 rounds down)."""
    pixels = _sample(sample)
    enhancer = Enhancer(load_weights(weights), InferenceConfig(strength=strength, device="cpu", precision="fp32",
                                                                scale=12.0 if variant == "fast" else 1.0))
    expected = enhancer.enhance(pixels).pixels
    got = _run(exported[variant], pixels, strength)
    assert got.shape == expected.shape
    difference = np.abs(_eight_bit(got) - _eight_bit(expected))
    # Float rounding in different kernels may move a value across an 8-bit rounding boundary, never more.
    assert difference.max() <= 1, f"max 8-bit difference {difference.max()}"
    assert (difference > 0).mean() < 0.01  # and only rarely
    assert np.abs(got - pixels).mean() > 0.05  # it did enhance


def test_batch_and_strength_are_inputs(exported):
    rng = np.random.default_rng(0)
    batch = rng.random((3, 3, 40, 70), dtype=np.float32) * 0.3
    session = ort.InferenceSession(str(exported["full"]), providers=["CPUExecutionProvider"])
    (unchanged,) = session.run(None, {"image": batch, "strength": np.zeros(1, np.float32)})
    np.testing.assert_allclose(unchanged, batch, atol=1e-6)  # strength 0 is the identity
    (full,) = session.run(None, {"image": batch, "strength": np.ones(1, np.float32)})
    assert full.shape == batch.shape and (full.mean(axis=(1, 2, 3)) > batch.mean(axis=(1, 2, 3))).all()


def test_metadata_props_carry_the_weights_identity(exported):
    for variant, weights in (("full", "zerodce_sice_v1"), ("fast", "zerodcepp_sice_v2")):
        model = onnx.load(str(exported[variant]))
        props = {p.key: p.value for p in model.metadata_props}
        meta = load_weights(weights).meta
        assert props["dce_batch.name"] == meta.name
        assert props["dce_batch.sha256"] == meta.sha256
        assert props["dce_batch.variant"] == variant
        assert props["dce_batch.scale"] == ("12" if variant == "fast" else "1")
        assert json.loads(props["dce_batch.meta"])["num_params"] == meta.num_params
        onnx.checker.check_model(model)
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_exported_weights_hold_no_subnormal_value(exported, variant):
    """Subnormal weights run as slowly in onnxruntime as in torch on Intel CPUs."""
    from onnx import numpy_helper

    model = onnx.load(str(exported[variant]))
    values = np.concatenate([numpy_helper.to_array(t).ravel() for t in model.graph.initializer
                             if numpy_helper.to_array(t).dtype == np.float32])
    assert values.size >= 10_561
    tiny = np.finfo(np.float32).tiny
    assert int(np.count_nonzero((values != 0) & (np.abs(values) < tiny))) == 0


def test_bad_scale_and_opset_are_refused(tmp_path):
    from dce_batch.cli import main
    from dce_batch.enhance.onnx_export import export_onnx
    from dce_batch.errors import ConfigError

    with pytest.raises(SystemExit) as refused:  # by the parser, in one line
        main(["export-onnx", "--model-variant", "fast", "--scale", "0.5", str(tmp_path / "x.onnx")])
    assert refused.value.code == 2
    for settings in [{"scale": 0.5}, {"scale": 1e300}, {"opset": 14}, {"opset": 99999}]:
        with pytest.raises(ConfigError):
            export_onnx(None, tmp_path / "x.onnx", variant="fast", **settings)
    assert not (tmp_path / "x.onnx").exists()
