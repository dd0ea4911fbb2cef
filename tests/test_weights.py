import json

import numpy as np
import pytest
import torch
from PIL import Image

from dce_batch.errors import WeightsError
from dce_batch.enhance.network import DCENet, DCENetFast, init_weights
from dce_batch.enhance.weights import (
    METADATA_KEY,
    import_checkpoint,
    load_weights,
    save_weights,
    state_dict_sha256,
)

from .shared_data import shared_path

# reference array name -> (checkpoint file, fast-variant scale)
PARITY_CASES = {
    "zero_dce_epoch99": ("zero_dce_epoch99.pth", 1),
    "seed_enhancer_model_v_10": ("seed_enhancer_model_v_10.pth", 1),
    "zero_dce_pp_epoch99_scale1": ("zero_dce_pp_epoch99.pth", 1),
    "zero_dce_pp_epoch99_scale12": ("zero_dce_pp_epoch99.pth", 12),
}


@pytest.mark.parametrize("array_name", sorted(PARITY_CASES))
def test_published_checkpoints_reproduce_reference_outputs(array_name):
    """Network, curve and checkpoint import together match the authors' published outputs."""
    ref_dir = shared_path("reference_outputs")
    index = json.loads((ref_dir / "index.json").read_text())
    checkpoint, scale = PARITY_CASES[array_name]
    weights = load_weights(shared_path("reference_weights", checkpoint))
    model = weights.build(scale=scale)
    checked = 0
    for entry in index.values():
        if array_name not in entry["arrays"]:
            continue
        pixels = np.asarray(Image.open(ref_dir / entry["input"]).convert("RGB"), dtype=np.float32) / 255.0
        expected = np.load(ref_dir / entry["expected"])[array_name]
        with torch.no_grad():
            out = model(torch.from_numpy(pixels).permute(2, 0, 1)[None]).image[0].permute(1, 2, 0).numpy()
        assert out.shape == expected.shape
        assert np.abs(out - expected).max() < 1e-4
        checked += 1
    assert checked == 2


def test_import_detects_layouts_and_seed_halves_are_swapped():
    official = import_checkpoint(shared_path("reference_weights", "zero_dce_epoch99.pth").read_bytes())
    seed_path = shared_path("reference_weights", "seed_enhancer_model_v_10.pth")
    seed_raw = torch.load(seed_path, map_location="cpu", weights_only=True)
    seed = import_checkpoint(seed_path.read_bytes())
    pp = import_checkpoint(shared_path("reference_weights", "zero_dce_pp_epoch99.pth").read_bytes())
    assert official.meta.variant == "full" and official.meta.num_params == 79_416
    assert pp.meta.variant == "fast" and pp.meta.num_params == 10_561
    assert "seed" in seed.meta.source
    # conv5's first input half in the official layout is the seed's second half.
    assert torch.equal(seed.state_dict["e_conv5.weight"][:, :32], seed_raw["conv5.weight"][:, 32:])
    assert torch.equal(seed.state_dict["e_conv1.weight"], seed_raw["conv1.weight"])


def _random_model(variant="full"):
    torch.manual_seed(1)
    model = DCENet() if variant == "full" else DCENetFast()
    init_weights(model)
    return model


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_safetensors_round_trip_keeps_metadata_and_checksum(tmp_path, variant):
    model = _random_model(variant)
    path = tmp_path / "w.safetensors"
    blob, meta = save_weights(
        model, path, name="test", variant=variant, recipe={"epochs": 3}, metrics={"val_loss": 1.5},
        licence="Apache-2.0", data="synthetic",
    )
    assert path.read_bytes() == blob
    loaded = load_weights(path)
    assert loaded.meta == meta
    assert loaded.meta.recipe == {"epochs": 3} and loaded.meta.metrics == {"val_loss": 1.5}
    assert loaded.meta.sha256 == state_dict_sha256(model.state_dict())
    rebuilt = loaded.build()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(rebuilt(x).image, model.eval()(x).image)
    # Loading from bytes gives the same thing.
    assert load_weights(blob).meta.sha256 == meta.sha256


def test_tampered_weights_fail_their_checksum(tmp_path):
    blob, _ = save_weights(_random_model(), None, name="t", variant="full")
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF  # last byte of the last tensor
    with pytest.raises(WeightsError, match="checksum"):
        load_weights(bytes(tampered))


def test_variant_mismatch_and_bad_files_are_clear_errors(tmp_path):
    blob, _ = save_weights(_random_model("fast"), None, name="t", variant="fast")
    with pytest.raises(WeightsError, match="variant"):
        load_weights(blob, variant="full")
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        load_weights(b"definitely not a checkpoint")
    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(WeightsError, match="unknown checkpoint layout"):
        load_weights(bad)


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"e_conv1.weight": Payload()}, path)
    with pytest.raises(WeightsError):
        load_weights(path)


def test_nested_and_dataparallel_checkpoints_import(tmp_path):
    model = _random_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_weights(path)
    assert loaded.meta.sha256 == state_dict_sha256(model.state_dict())


def test_safetensors_metadata_key_is_json():
    blob, meta = save_weights(_random_model(), None, name="t", variant="full")
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert json.loads(header["__metadata__"][METADATA_KEY])["sha256"] == meta.sha256


def test_convert_and_show_weights_commands(tmp_path, capsys):
    from dce_batch.cli import main

    source = shared_path("reference_weights", "seed_enhancer_model_v_10.pth")
    target = tmp_path / "seed.safetensors"
    assert main(["convert-weights", str(source), str(target), "--name", "seed_v10"]) == 0
    converted = load_weights(target)
    assert converted.meta.name == "seed_v10" and "seed" in converted.meta.source
    assert converted.meta.sha256 == load_weights(source).meta.sha256
    assert main(["show-weights", str(target)]) == 0
    assert '"name": "seed_v10"' in capsys.readouterr().out
    assert main(["convert-weights", str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 2


def test_shipped_weights_carry_their_metadata():
    for name, variant, params in (("zerodce_sice_v1", "full", 79_416), ("zerodcepp_sice_v2", "fast", 10_561)):
        meta = load_weights(name).meta
        assert (meta.name, meta.variant, meta.num_params) == (name, variant, params)
        assert meta.recipe["epochs"] >= 1 and meta.recipe["hardware"]["torch"] and meta.recipe["training_seconds"] > 0
        assert "val_loss" in meta.metrics and meta.licence and "SICE" in meta.data
    assert load_weights().meta.name == "zerodce_sice_v1"
    assert load_weights(variant="fast").meta.name == "zerodcepp_sice_v2"


# --------------------------------------------------------------------------------------------
# Subnormal values: slow on Intel CPUs (a microcode path per multiply), never kept
# --------------------------------------------------------------------------------------------

SUBNORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def _raw_tensors(path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors exactly as stored (no dce_batch loader in between)."""
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("name", ["zerodce_sice_v1", "zerodcepp_sice_v2"])
def test_shipped_weights_hold_no_subnormal_value(name):
    from importlib import resources

    from dce_batch.enhance.weights import count_subnormals

    path = resources.files("dce_batch").joinpath("weights", f"{name}.safetensors")
    state = _raw_tensors(path)
    assert sum(t.numel() for t in state.values()) in (79_416, 10_561)
    assert count_subnormals(state) == 0


def _with_subnormals(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every exact zero of ``state`` replaced by a subnormal of either sign, the rest unchanged.

    Made from bit patterns: arithmetic or a float conversion would give zero in a process whose
    denormal arithmetic is flushed (any test that built an Enhancer before this one)."""
    positive = torch.tensor(0x000AE398, dtype=torch.int32).view(torch.float32)  # 1.0e-39
    negative = torch.tensor(-0x7FF51C68, dtype=torch.int32).view(torch.float32)  # -1.0e-39
    dirty = {}
    for key, tensor in state.items():
        even = torch.arange(tensor.numel()).reshape(tensor.shape) % 2 == 0
        dirty[key] = torch.where(tensor == 0, torch.where(even, positive, negative), tensor)
    return dirty


@pytest.fixture
def dirty_state() -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in load_weights("zerodce_sice_v1").state_dict.items()}
    dirty = _with_subnormals(state)
    from dce_batch.enhance.weights import count_subnormals

    assert count_subnormals(dirty) > 10_000  # the shipped file had 20,742 before it was cleaned
    return dirty


def test_every_way_in_flushes_subnormals(tmp_path, dirty_state):
    """A published checkpoint, a bare safetensors file and one of ours written by an older version:
    each loads with its subnormals at zero; ours keeps the checksum its file records."""
    from safetensors.torch import save_file

    from dce_batch.enhance.weights import FORMAT_VERSION, WeightsMeta, count_subnormals

    torch.save(dirty_state, tmp_path / "published.pth")
    save_file(dirty_state, str(tmp_path / "bare.safetensors"))
    recorded = state_dict_sha256(dirty_state)
    meta = WeightsMeta(name="old", variant="full", num_params=79_416, sha256=recorded, format_version=FORMAT_VERSION,
                       created="2026-01-01T00:00:00+00:00")
    save_file(dirty_state, str(tmp_path / "ours_old.safetensors"), metadata={METADATA_KEY: meta.to_json()})
    assert count_subnormals(_raw_tensors(tmp_path / "ours_old.safetensors")) > 10_000
    for name in ("published.pth", "bare.safetensors", "ours_old.safetensors"):
        loaded = load_weights(tmp_path / name)
        assert count_subnormals(loaded.state_dict) == 0, name
        for key, tensor in loaded.state_dict.items():  # only the subnormals changed
            normal = dirty_state[key].abs() >= torch.finfo(torch.float32).tiny
            assert torch.equal(tensor[normal], dirty_state[key][normal]), (name, key)
    assert load_weights(tmp_path / "ours_old.safetensors").meta.sha256 == recorded


def test_saved_and_converted_files_hold_no_subnormal_value(tmp_path, dirty_state):
    from dce_batch.cli import main
    from dce_batch.enhance.weights import count_subnormals

    save_weights(dirty_state, tmp_path / "saved.safetensors", name="saved", variant="full")
    assert count_subnormals(_raw_tensors(tmp_path / "saved.safetensors")) == 0
    torch.save(dirty_state, tmp_path / "published.pth")
    assert main(["convert-weights", str(tmp_path / "published.pth"), str(tmp_path / "converted.safetensors")]) == 0
    assert count_subnormals(_raw_tensors(tmp_path / "converted.safetensors")) == 0


def test_convert_weights_keeps_the_metadata_of_our_own_files(tmp_path):
    from dce_batch.cli import main

    assert main(["convert-weights", "zerodce_sice_v1", str(tmp_path / "copy.safetensors")]) == 0
    original, copy = load_weights("zerodce_sice_v1").meta, load_weights(tmp_path / "copy.safetensors").meta
    assert copy == original  # name, recipe, metrics, licence, created; and the clean tensors' checksum


def test_flushing_subnormal_weights_leaves_the_outputs_unchanged(dirty_state):
    """What flushing changes is below float32's resolution of the outputs: a real photo through the
    network in fp32 at full resolution, with the subnormal weights and with zeros."""
    from dce_batch.imaging import decode_image
    from dce_batch.job import sample_images_dir

    pixels = decode_image((__import__("pathlib").Path(sample_images_dir()) / "rocket_dusk.jpg").read_bytes()).to_float()
    x = torch.from_numpy(pixels[:128, :160]).permute(2, 0, 1)[None].contiguous()
    clean, dirty = DCENet().eval(), DCENet().eval()
    clean.load_state_dict(load_weights("zerodce_sice_v1").state_dict)
    dirty.load_state_dict(dirty_state)
    with torch.inference_mode():
        difference = (clean(x).image - dirty(x).image).abs().max().item()
    # Each subnormal weight adds at most |w x activation| < 1e-38 to a sum of order 1e-2 or more,
    # which float32 (24-bit mantissa) cannot represent: 1e-6 is many orders above that.
    assert difference < 1e-6


def test_the_enhancer_flushes_denormal_arithmetic():
    """Workers run with denormals flushed (activations, not only weights, can go subnormal)."""
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode torch can set")
    try:
        tiny = torch.tensor(0x000AE398, dtype=torch.int32).view(torch.float32).reshape(1)  # 1.0e-39, from its bits
        assert (tiny * 1.0).item() != 0.0  # off: the value survives arithmetic
        Enhancer(load_weights("zerodce_sice_v1"), InferenceConfig(device="cpu", precision="fp32"))
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(True)  # as any Enhancer leaves this process
