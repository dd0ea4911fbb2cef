import json

import numpy as np
import pytest
import torch
from PIL import Image

from dce_batch.errors import WeightsError
from dce_batch.model import DCENet, DCENetFast, init_weights
from dce_batch.weights import (
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
