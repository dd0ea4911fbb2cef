"""``dce-batch evaluate``: metrics, configurations, reports, and the low-light simulation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dce_batch.cli import main
from dce_batch.errors import ConfigError
from dce_batch.evaluation.evaluate import (
    PSNR_CAP,
    EvalSet,
    no_reference_stats,
    paired_metrics,
    parse_configuration,
    quantize,
)
from dce_batch.evaluation.lowlight_sim import LEVELS, LowLightLevel, linear_to_srgb, simulate_low_light, srgb_to_linear


def _photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 H x W x 3 with gradients and blocks, values within [20, 220]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack((20 + 150 * xx / width, 40 + 120 * yy / height, 120 + 40 * np.sin(xx / 5.0)), axis=-1)
    blocks = np.kron(rng.uniform(-20, 50, (height // 8, width // 8, 3)), np.ones((8, 8, 1)))
    return np.clip(base + blocks, 20, 220).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Metrics


def test_identical_images_score_capped_psnr_and_ssim_one():
    image = _photo().astype(np.float32) / 255
    scores = paired_metrics(image, image.copy())
    assert scores["psnr"] == PSNR_CAP
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-9)


def test_a_constant_offset_gives_the_hand_computed_psnr():
    reference = _photo().astype(np.float64) / 255
    output = reference + 10 / 255  # every pixel off by 10 levels: MSE = (10/255)^2, no clipping (max 230)
    expected = 20 * math.log10(255 / 10)  # 28.130 dB
    assert paired_metrics(reference, output)["psnr"] == pytest.approx(expected, abs=1e-6)
    assert paired_metrics(reference, output)["ssim"] < 1.0


def test_size_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="sizes differ"):
        paired_metrics(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_no_reference_stats_by_hand():
    image = np.zeros((64, 64, 3), dtype=np.float32)
    image[:, 32:] = 1.0  # half black, half white: grey on average
    stats = no_reference_stats(image, exposure_target=0.45)
    assert stats["mean"] == pytest.approx(0.5, abs=1e-6)
    assert stats["exposure_error"] == pytest.approx(0.05, abs=1e-6)
    assert stats["clip_shadows"] == pytest.approx(0.5)
    assert stats["clip_highlights"] == pytest.approx(0.5)
    assert stats["colour_cast"] == pytest.approx(0.0, abs=1e-6)
    red = np.zeros((8, 8, 3), dtype=np.float32)
    red[..., 0] = 0.6
    # mean luma 0.2126 * 0.6; Cr = (0.6 - Y) / 1.5748, Cb = -Y / 1.8556
    y = 0.2126 * 0.6
    cast = math.hypot((0.6 - y) / 1.5748, y / 1.8556)
    assert no_reference_stats(red)["colour_cast"] == pytest.approx(cast, abs=2e-3)  # 0.6 rounds to 153/255
    assert no_reference_stats(red)["noise"] == 0.0  # flat: nothing to measure (skimage would say NaN)
    # chroma: every pixel is as far from grey as the mean colour; a grey image has none
    assert no_reference_stats(red)["chroma"] == pytest.approx(no_reference_stats(red)["colour_cast"], abs=1e-6)
    assert stats["chroma"] == pytest.approx(0.0, abs=1e-6)


def test_piqe_scores_a_noisy_photo_worse_when_installed():
    """PIQE (pypiqe, an optional extra) needs no weights; it is None on images under 32 px.
    Measured on the bundled coffee sample (brightened 3x): 26.8 clean, 60.4 with noise of 0.08."""
    pytest.importorskip("pypiqe")
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "dce_batch" / "samples" / "coffee_dim_rotated.jpg"
    photo = np.clip(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0 * 3.0, 0.0, 1.0)
    noisy = np.clip(photo + np.random.default_rng(0).normal(0.0, 0.08, photo.shape), 0.0, 1.0).astype(np.float32)
    clean, bad = no_reference_stats(photo)["piqe"], no_reference_stats(noisy)["piqe"]
    assert clean is not None and bad is not None and 0.0 <= clean < bad - 10.0 and bad <= 100.0
    assert no_reference_stats(photo[:16, :16])["piqe"] is None


def test_noise_estimate_grows_with_noise():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 0.5, dtype=np.float32)
    quiet = no_reference_stats(flat + rng.normal(0, 2 / 255, flat.shape).astype(np.float32))["noise"]
    loud = no_reference_stats(flat + rng.normal(0, 8 / 255, flat.shape).astype(np.float32))["noise"]
    assert loud == pytest.approx(8 / 255, rel=0.2) and quiet == pytest.approx(2 / 255, rel=0.3)


def test_quantize_matches_8_bit_output():
    values = np.array([[[-0.1, 0.5, 1.2]]], dtype=np.float32)
    assert np.array_equal(quantize(values), np.array([[[0.0, 128 / 255, 1.0]]], dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Configurations


def test_parse_configurations():
    assert parse_configuration("input").identity
    default = parse_configuration("new")
    assert default.finish is not None and default.finish.denoise == "auto" and default.weights is None
    spec = parse_configuration("mine:weights=w.pth,strength=0.8,denoise=off,exposure=0.4")
    assert spec.weights == "w.pth" and spec.strength == 0.8
    assert spec.finish.denoise == "off" and spec.finish.exposure == 0.4
    assert parse_configuration("net:finish=off").finish is None
    assert parse_configuration("x:denoise-strength=2").finish.denoise_strength == 2.0
    assert parse_configuration("one-pass:chroma-refine-radius=0").finish.chroma_refine_radius == 0
    unmatched = parse_configuration("no-matching:matched_noise_level=inf").finish
    assert unmatched.matched_noise_level == math.inf and not unmatched.block_matching
    assert default.finish.block_matching and unmatched.method != default.finish.method
    assert parse_configuration("x:precision=fp32").precision == "fp32" and default.precision == "auto"
    ratio = parse_configuration("previous:noise_gain=ratio").finish
    assert default.finish.noise_gain == "slope" and ratio.noise_gain == "ratio" and ratio.method != default.finish.method
    assert parse_configuration("tone:highlight_stretch=0").finish.highlight_stretch == 0.0


@pytest.mark.parametrize("spec, message", [
    (":weights=a", "no label"), ("x:colour=1", "colour must be"), ("x:tint=1", "unknown keys"), ("x:strength", "key=value"),
    ("x:strength=lots", "not a number"), ("x:exposure=2", "exposure"), ("x:folder=/nonexistent/dir", "does not exist"),
    ("x:chroma_refine_radius=2.5", "whole number"), ("x:chroma_refine_radius=99", "0..32"),
    ("x:precision=int4", "precision must be one of"), ("x:matched_noise_level=-1", "matched_noise_level"),
    ("x:noise_gain=mean", "noise_gain must be"), ("x:highlight_stretch=2", "highlight stretch"),
])
def test_bad_configurations_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_configuration(spec)


def test_unmatched_references_are_refused(tmp_path):
    low, ref = tmp_path / "low", tmp_path / "ref"
    low.mkdir(), ref.mkdir()
    Image.fromarray(_photo()).save(low / "a.png")
    Image.fromarray(_photo()).save(ref / "b.png")
    with pytest.raises(ConfigError, match="no reference"):
        EvalSet("s", low, ref).images()


# --------------------------------------------------------------------------------------------
# The command


def _paired_folders(root: Path, count: int = 2) -> tuple[Path, Path]:
    low, ref = root / "pairs" / "low", root / "pairs" / "high"
    low.mkdir(parents=True), ref.mkdir(parents=True)
    for i in range(count):
        reference = _photo(seed=i)
        Image.fromarray(reference).save(ref / f"img{i}.png")
        Image.fromarray(simulate_low_light(reference, LEVELS["lol"], key=f"img{i}")).save(low / f"img{i}.jpg")
    return low, ref


def test_cli_writes_json_csv_and_markdown(tmp_path, capsys):
    low, ref = _paired_folders(tmp_path)
    out = tmp_path / "report"
    code = main(["evaluate", "--paired", str(low), str(ref), "--unpaired", str(low), "--out", str(out),
                 "--config", "input", "--config", "net:finish=off", "--config", "default",
                 "--config", f"references:folder={ref}"])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    labels = [c["label"] for c in document["configurations"]]
    assert labels == ["input", "net", "default", "references"]
    summary = {(row["set"], row["configuration"]): row for row in document["summary"]}
    assert summary[("pairs", "references")]["psnr"] == PSNR_CAP
    assert summary[("pairs", "references")]["ssim"] == pytest.approx(1.0)
    assert summary[("pairs", "net")]["psnr"] > summary[("pairs", "input")]["psnr"]
    assert summary[("pairs", "net")]["mean"] > summary[("pairs", "(input stats)")]["mean"]
    assert summary[("pairs-2", "default")]["psnr"] is None  # the unpaired set (same folder name) has stats only
    with (out / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 4  # two sets x two images x four configurations
    assert {"psnr", "ssim", "mean_in", "mean_out", "clip_highlights_out", "noise_out"} <= set(rows[0])
    markdown = (out / "summary.md").read_text()
    assert "| pairs | references | 2 | 100.00 | 1.000 |" in markdown
    assert "summary.md" in capsys.readouterr().out


def test_cli_simulates_pairs_on_demand(tmp_path):
    source = tmp_path / "well_exposed"
    source.mkdir()
    Image.fromarray(_photo(64, 96)).save(source / "scene.png")
    out = tmp_path / "report"
    code = main(["evaluate", "--simulate", "lol,dim_clean", "--simulate-from", str(source), "--out", str(out),
                 "--config", "input"])
    assert code == 0
    assert (out / "simulated" / "lol" / "low" / "scene.png").is_file()
    sets = {s["name"] for s in json.loads((out / "results.json").read_text())["sets"]}
    assert sets == {"lol", "dim_clean"}


def test_cli_invalid_input_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path / "r")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", "--unpaired", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert main(["evaluate", "--simulate", "moonless", "--simulate-from", str(tmp_path), "--out", str(tmp_path)]) == 2


# --------------------------------------------------------------------------------------------
# Simulation


def test_srgb_transfer_round_trips():
    values = np.linspace(0, 1, 101)
    assert np.allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-12)


def test_simulation_is_seeded_dark_and_noisier_with_fewer_photons():
    reference = _photo(96, 128)
    level = LEVELS["lol"]
    first = simulate_low_light(reference, level, seed=3, key="a")
    assert first.dtype == np.uint8 and first.shape == reference.shape
    assert np.array_equal(first, simulate_low_light(reference, level, seed=3, key="a"))
    assert not np.array_equal(first, simulate_low_light(reference, level, seed=3, key="b"))
    assert first.mean() < 0.35 * reference.mean()  # 5 stops down in linear light, about 1/3 in sRGB
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    noise = [simulate_low_light(flat, LowLightLevel("x", exposure=0.05, photons=p, read_noise=0.0)).std()
             for p in (40000.0, 2000.0)]
    assert noise[1] > 2 * noise[0]


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_every_preset_darkens_as_its_exposure_says(name):
    """A flat grey through each preset lands where its linear-light exposure (with jitter) puts it."""
    level = LEVELS[name]
    grey = 0.45
    linear = float(srgb_to_linear(np.array(grey)))
    low = float(linear_to_srgb(np.array(linear * level.exposure / level.exposure_jitter)))
    high = float(linear_to_srgb(np.array(linear * level.exposure * level.exposure_jitter)))
    flat = np.full((64, 64, 3), round(grey * 255), dtype=np.uint8)
    for key in ("a", "b", "c"):
        mean = simulate_low_light(flat, level, key=key).mean() / 255.0
        assert low - 1.5 / 255 < mean < high + 1.5 / 255, (name, key, mean, low, high)


def test_simulation_levels_are_validated():
    with pytest.raises(ConfigError):
        LowLightLevel("x", exposure=0.0)
    with pytest.raises(ConfigError):
        LowLightLevel("x", exposure=0.1, jpeg_quality=0)
