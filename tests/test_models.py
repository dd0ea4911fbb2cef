"""The torchvision-style model API, the weights registry's sidecars, and enhance_image."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

import dce_batch
from dce_batch import models
from dce_batch.errors import WeightsError
from dce_batch.imaging import decode_image, mean_luminance
from dce_batch.enhance import registry
from dce_batch.enhance.enhancer import Enhancer
from dce_batch.enhance.network import DCENet, DCENetFast
from dce_batch.job import EnhanceConfig, sample_images_dir
from dce_batch.enhance.weights import PACKAGED_WEIGHTS, load_weights

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(sample_images_dir())


def test_metadata_is_available_without_torch():
    code = ("import sys, dce_batch; from dce_batch import models; w = models.ZeroDCE_Weights.DEFAULT; "
            "print(w.meta['name'], w.meta['num_params'], w.meta['metrics']['val_loss'] > 0, "
            "len(w.weights.training[0]['history'])); assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["zerodce_sice_v1", "79416", "True", "100"]


def test_sidecars_agree_with_the_weights_files_and_training_results():
    """The sidecars are derived data: regenerating them from the files changes nothing."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_weights_sidecars.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(models.list_weights()) == sorted(PACKAGED_WEIGHTS)
    for name in PACKAGED_WEIGHTS:
        shipped = models.get_weights(name)
        loaded = load_weights(name)  # reads the tensors and verifies their checksum
        assert dict(shipped.meta) == json.loads(loaded.meta.to_json())
        assert shipped.variant == loaded.meta.variant and shipped.num_params == loaded.meta.num_params
        assert shipped.path.stat().st_size == shipped.file_bytes
        run = shipped.training[-1]
        metrics = json.loads((REPO / run["source"]).read_text())
        assert [e["val_loss"] for e in run["history"]] == [e["val_loss"] for e in metrics["history"]]


def test_enum_members_and_names():
    assert models.ZeroDCE_Weights.DEFAULT is models.ZeroDCE_Weights.SICE_V1  # an alias, as in torchvision
    assert models.get_weights("ZeroDCEPP_Weights.DEFAULT").name == "zerodcepp_sice_v2"
    assert models.ZeroDCEPP_Weights.SICE_V2.meta["variant"] == "fast"
    assert models.ZeroDCE_Weights.SICE_V1.url is None  # ships in the package
    assert models.list_weights("fast") == ["zerodcepp_sice_v2"]
    with pytest.raises(WeightsError, match="no shipped weights named"):
        models.get_weights("zerodce_nope")


def test_builders_load_the_shipped_weights():
    net = models.zero_dce(weights="zerodce_sice_v1")
    assert isinstance(net, DCENet) and not net.training
    reference = load_weights("zerodce_sice_v1").state_dict
    assert all(torch.equal(net.state_dict()[k], reference[k]) for k in reference)
    assert torch.equal(models.zero_dce(weights=models.ZeroDCE_Weights.DEFAULT).e_conv7.weight, net.e_conv7.weight)
    fast = models.zero_dce_pp(weights="DEFAULT", scale=4)
    assert isinstance(fast, DCENetFast) and fast.scale == 4.0
    x = torch.rand(1, 3, 48, 64) * 0.3
    with torch.no_grad():
        assert net(x).image.mean() > x.mean() and fast(x).image.shape == x.shape


def test_builders_take_files_and_refuse_the_wrong_variant(tmp_path):
    path = tmp_path / "copy.safetensors"
    path.write_bytes(models.get_weights("zerodce_sice_v1").path.read_bytes())
    assert torch.equal(models.zero_dce(weights=path).e_conv1.bias, models.zero_dce(weights="DEFAULT").e_conv1.bias)
    with pytest.raises(WeightsError, match="zero_dce_pp"):
        models.zero_dce(weights="zerodcepp_sice_v2")
    with pytest.raises(WeightsError, match="zero_dce\\(\\)"):
        models.zero_dce_pp(weights=models.ZeroDCE_Weights.SICE_V1)


def test_no_weights_is_a_random_initialisation():
    a, b = models.zero_dce(), models.zero_dce()
    assert not torch.equal(a.e_conv1.weight, b.e_conv1.weight)
    assert float(a.e_conv1.weight.detach().std()) == pytest.approx(0.02, rel=0.3)  # the authors' N(0, 0.02)


def test_enhance_image_matches_the_batch_job():
    source = Image.open(SAMPLES / "coffee_dim_rotated.jpg")  # EXIF orientation 6: stored 341 x 512
    out = dce_batch.enhance_image(source, strength=0.7)
    assert out.size == (512, 341) and out.mode == "RGB"  # upright
    decoded = decode_image((SAMPLES / "coffee_dim_rotated.jpg").read_bytes())
    job_settings = EnhanceConfig(input="unused", strength=0.7).inference_config()  # finishing on, as the job
    assert job_settings.finish is not None and job_settings.finish.enabled
    expected = Enhancer(load_weights("zerodce_sice_v1"), job_settings).enhance(decoded.pixels).pixels
    assert expected.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert mean_luminance(np.asarray(out)) > 2 * mean_luminance(decoded.pixels)
    assert out.getexif().get(0x0112) in (None, 1) and out.info.get("icc_profile") == decoded.icc_profile


def test_enhance_image_keeps_grayscale_and_alpha_and_fast_variant():
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(np.dstack([(rng.random((30, 40, 3)) * 60).astype(np.uint8),
                                      np.full((30, 40), 128, np.uint8)]), "RGBA")
    out = dce_batch.enhance_image(rgba, weights="zerodcepp_sice_v2", scale=1)
    assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == 128).all()
    gray = Image.fromarray((rng.random((20, 20)) * 50).astype(np.uint8), "L")
    out = dce_batch.enhance_image(gray)
    assert out.mode == "L" and np.asarray(out).mean() > np.asarray(gray).mean()
    unchanged = dce_batch.enhance_image(gray, strength=0)
    np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(gray))


@pytest.mark.parametrize("mode, expected", [
    ("La", "LA"), ("RGBa", "RGBA"), ("HSV", "RGB"), ("I", "I;16"), ("I;16B", "I;16"), ("F", "I;16"),
    ("CMYK", "RGB"), ("RGBX", "RGB"), ("PA", "RGBA"), ("1", "L"),
])
def test_enhance_image_takes_every_pillow_mode(mode, expected):
    """Modes PNG cannot hold (premultiplied alpha, HSV, 32-bit, float, CMYK) still enhance."""
    rng = np.random.default_rng(5)
    rgba = Image.fromarray(np.dstack([(rng.random((12, 16, 3)) * 60).astype(np.uint8),
                                      np.full((12, 16), 200, np.uint8)]), "RGBA")
    source = rgba.convert("L").convert(mode) if mode in ("I", "I;16B", "F", "1") else rgba.convert(mode)
    if mode == "F":  # float gray is read as [0, 1]
        source = Image.fromarray(np.asarray(rgba.convert("L"), np.float32) / 255, "F")
    out = dce_batch.enhance_image(source)
    assert out.mode == expected and out.size == (16, 12)


def test_enhance_batch_refuses_what_has_no_pixels_and_takes_an_empty_list():
    assert dce_batch.enhance_batch([]) == []
    with pytest.raises(models.ConfigError, match="image 1 has no pixels"):
        dce_batch.enhance_batch([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)])
    for bad in (np.nan, np.inf):
        image = np.full((6, 6, 3), 0.1, np.float32)
        image[2, 3, 1] = bad
        with pytest.raises(models.ConfigError, match="image 0 holds NaN or infinite values"):
            dce_batch.enhance_batch([image])


def test_enhance_image_takes_the_keywords_of_enhance_batch():
    """One list of settings, with its defaults, in enhance_batch; enhance_image passes them on and
    shows them in its signature."""
    import inspect

    image = inspect.signature(dce_batch.enhance_image).parameters
    batch = inspect.signature(dce_batch.enhance_batch).parameters
    assert list(image)[1:] == list(batch)[1:] and list(image)[0] == "image"
    assert all(image[name].default == batch[name].default for name in list(batch)[1:])
    with pytest.raises(TypeError, match="colour"):
        dce_batch.enhance_image(Image.new("RGB", (4, 4)), colour=1)


def test_transforms_give_the_network_input():
    tensor = models.ZeroDCE_Weights.DEFAULT.transforms()(Image.open(SAMPLES / "chelsea_night.png"))
    assert tensor.shape == (1, 3, 213, 320) and tensor.dtype == torch.float32 and 0 <= tensor.min() <= tensor.max() <= 1
    buffer = io.BytesIO()
    Image.open(SAMPLES / "chelsea_night.png").save(buffer, "PNG")
    np.testing.assert_array_equal(tensor[0].permute(1, 2, 0).numpy(), decode_image(buffer.getvalue()).to_float())


# --------------------------------------------------------------------------------------------
# The registry of shipped weights and the safetensors header reader
# --------------------------------------------------------------------------------------------


def test_each_variant_has_one_default_and_the_enums_follow_the_registry():
    for variant, enum_cls in (("full", models.ZeroDCE_Weights), ("fast", models.ZeroDCEPP_Weights)):
        declared = [w for w in registry.SHIPPED_WEIGHTS if w.variant == variant]
        assert [w.name for w in declared if w.default] == [registry.default_weights_for(variant)]
        assert {m.name: m.value for m in enum_cls} == {w.tag: w.name for w in declared}
        assert enum_cls.DEFAULT.value == registry.default_weights_for(variant)
        assert all(models.get_weights(w.name).variant == variant for w in declared)  # the sidecar agrees
    assert len({w.name for w in registry.SHIPPED_WEIGHTS}) == len(registry.SHIPPED_WEIGHTS)
    assert registry.PACKAGED_WEIGHTS == {w.name: w.file for w in registry.SHIPPED_WEIGHTS}


def _copy_for_the_sidecar_script(root: Path) -> Path:
    """The files the sidecar script reads, in a tree of their own that a test may change."""
    for relative in ("scripts/make_weights_sidecars.py", "dce_batch/__init__.py", "dce_batch/_version.py",
                     "dce_batch/errors.py", "dce_batch/enhance/__init__.py", "dce_batch/enhance/registry.py"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes((REPO / relative).read_bytes())
    for folder, pattern in (("dce_batch/weights", "*"), ("training/results", "*_metrics.json")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for path in (REPO / folder).glob(pattern):
            (root / folder / path.name).write_bytes(path.read_bytes())
    return root / "scripts" / "make_weights_sidecars.py"


def _run_sidecar_check(script: Path) -> tuple[int, str, list[str]]:
    """(exit status, stderr, heavy modules imported) of ``make_weights_sidecars.py --check``."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = [{str(script)!r}, '--check']\n"
            "try:\n"
            f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
            "    status = 0\n"
            "except SystemExit as exit_:\n"
            "    status = exit_.code\n"
            "print(status, json.dumps([m for m in ('torch', 'numpy') if m in sys.modules]))\n")
    # Another working directory and no PYTHONPATH: the script finds its own checkout's package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=script.parents[1].parent, env=env)
    status, heavy = done.stdout.strip().split(" ", 1)
    return int(status), done.stderr, json.loads(heavy)


def test_the_sidecar_script_needs_no_torch_and_refuses_undeclared_or_mislabelled_weights(tmp_path):
    script = _copy_for_the_sidecar_script(tmp_path)
    assert _run_sidecar_check(script) == (0, "", [])
    weights = tmp_path / "dce_batch" / "weights"
    (weights / "extra.safetensors").write_bytes((weights / "zerodce_sice_v1.safetensors").read_bytes())
    status, stderr, _ = _run_sidecar_check(script)
    assert status == 1 and "extra.safetensors, not declared in SHIPPED_WEIGHTS" in stderr
    (weights / "extra.safetensors").unlink()
    (weights / "zerodce_sice_v1.safetensors").write_bytes((weights / "zerodcepp_sice_v2.safetensors").read_bytes())
    status, stderr, _ = _run_sidecar_check(script)
    assert status == 1 and "('zerodcepp_sice_v2', 'fast')" in stderr and "declares ('zerodce_sice_v1', 'full')" in stderr


def _safetensors(metadata: dict[str, str] | None) -> bytes:
    return save_safetensors({"w": torch.zeros(2)}, metadata=metadata)


def test_the_header_reader_gives_the_metadata_of_our_files_and_none_for_others():
    blob = models.get_weights("zerodce_sice_v1").path.read_bytes()
    assert registry.read_safetensors_metadata(blob) == dict(models.get_weights("zerodce_sice_v1").meta)
    assert registry.read_header_metadata(blob) == load_weights("zerodce_sice_v1").meta
    checkpoint = io.BytesIO()
    torch.save({"e_conv1.weight": torch.zeros(1)}, checkpoint)
    others = [checkpoint.getvalue(), _safetensors(None), _safetensors({"format": "pt"}), b"", b"{}", blob[:9],
              b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"]
    assert [registry.read_safetensors_metadata(other) for other in others] == [None] * len(others)
    assert [registry.read_header_metadata(other) for other in others] == [None] * len(others)


def test_damaged_metadata_is_a_weights_error_that_names_the_file(tmp_path):
    damaged = _safetensors({registry.METADATA_KEY: "{truncated"})
    with pytest.raises(WeightsError, match="not a JSON object"):
        registry.read_safetensors_metadata(damaged)
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damaged)
    with pytest.raises(WeightsError, match="damaged.safetensors: .*not a JSON object"):
        load_weights(path)
    incomplete = _safetensors({registry.METADATA_KEY: json.dumps({"name": "x", "variant": "full"})})
    with pytest.raises(WeightsError, match="lacks num_params, sha256"):
        registry.read_header_metadata(incomplete)
