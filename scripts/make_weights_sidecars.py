"""Write (or --check) the JSON sidecars of the shipped weights: dce_batch/weights/NAME.json.

    python scripts/make_weights_sidecars.py           # regenerate after changing a weights file
    python scripts/make_weights_sidecars.py --check   # exit 1 if a sidecar disagrees with its files

A sidecar lets :mod:`dce_batch.models` show a model's metadata (recipe, metrics, licence,
transforms, training curves) without torch and before the tensors are read. It is derived,
never edited by hand:

* ``meta``: the ``dce_batch`` metadata stored in the .safetensors header, verbatim;
* ``file``, ``file_bytes``, ``file_sha256``: the weights file the sidecar describes;
* ``training``: per-epoch losses of the training runs that made the weights, copied from
  ``training/results/<run>_metrics.json`` (several runs for a model fine-tuned in stages);
* ``transforms``: what the network expects and returns (the same for every shipped model).

The shipped weights are those declared in :data:`dce_batch.enhance.registry.SHIPPED_WEIGHTS`; a
weights file in the folder that is not declared there, or whose header disagrees with its
declaration (name, variant), is an error. Only the standard library and that module (itself
standard library only) are used, so the script runs without the package's dependencies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, whatever else is installed

from dce_batch.enhance.registry import SHIPPED_WEIGHTS, ShippedWeights, read_safetensors_metadata  # noqa: E402
from dce_batch.errors import WeightsError  # noqa: E402

WEIGHTS_DIR = REPO / "dce_batch" / "weights"
RESULTS_DIR = REPO / "training" / "results"

# Shipped weights -> the training runs that made them, oldest stage first (see training/README.md).
TRAINING_RUNS: dict[str, list[str]] = {
    "zerodce_sice_v1": ["zerodce_sice_v1"],
    "zerodcepp_sice_v2": ["zerodcepp_sice_v1", "zerodcepp_sice_v2_stage2", "zerodcepp_sice_v2"],
}

# Per-epoch values kept in the sidecar (the metrics files have a few more, e.g. timings).
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "train_smoothness", "train_spatial", "train_color",
                "train_exposure", "val_smoothness", "val_spatial", "val_color", "val_exposure")

TRANSFORMS = {
    "input": "RGB, float32 in [0, 1] (8-bit values / 255), N x 3 x H x W, any H and W, no normalisation",
    "output": "the enhanced image, same layout and size, in [0, 1]",
    "orientation": "apply EXIF orientation before the network (dce_batch.imaging.decode_image does)",
}


def training_runs(name: str) -> list[dict]:
    runs = []
    for run in TRAINING_RUNS.get(name, []):
        path = RESULTS_DIR / f"{run}_metrics.json"
        metrics = json.loads(path.read_text())
        history = [{key: entry[key] for key in HISTORY_KEYS if key in entry} for entry in metrics["history"]]
        runs.append({"run": run, "source": f"training/results/{run}_metrics.json",
                     "curves_png": f"training/results/{run}_loss_curves.png", "history": history})
    return runs


def sidecar_for(shipped: ShippedWeights) -> dict:
    """The sidecar of a declared weights file, from the file itself and its training results.

    Raises:
        ValueError: the file records no dce_batch metadata, or a name or variant other than its
            declaration's.
    """
    weights_file = WEIGHTS_DIR / shipped.file
    blob = weights_file.read_bytes()
    meta = read_safetensors_metadata(blob)
    if meta is None:
        raise ValueError(f"{weights_file.relative_to(REPO)} records no dce_batch metadata: export it with "
                         "dce-batch convert-weights")
    recorded, declared = (meta.get("name"), meta.get("variant")), (shipped.name, shipped.variant)
    if recorded != declared:
        raise ValueError(f"{weights_file.relative_to(REPO)} records name and variant {recorded}, but "
                         f"dce_batch/enhance/registry.py declares {declared}: correct one of the two")
    return {
        "name": meta["name"],
        "file": weights_file.name,
        "file_bytes": len(blob),
        "file_sha256": hashlib.sha256(blob).hexdigest(),
        "url": None,  # shipped inside the package
        "meta": meta,
        "transforms": TRANSFORMS,
        "training": training_runs(meta["name"]),
    }


def render(sidecar: dict) -> str:
    return json.dumps(sidecar, indent=1, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args()
    undeclared = sorted({path.name for path in WEIGHTS_DIR.glob("*.safetensors")} - {w.file for w in SHIPPED_WEIGHTS})
    if undeclared:
        print(f"dce_batch/weights/ holds {', '.join(undeclared)}, not declared in SHIPPED_WEIGHTS "
              "(dce_batch/enhance/registry.py): declare or remove them", file=sys.stderr)
        return 1
    stale = []
    for shipped in SHIPPED_WEIGHTS:
        target = WEIGHTS_DIR / shipped.sidecar_file
        try:
            text = render(sidecar_for(shipped))
        except (OSError, ValueError, WeightsError) as exc:
            print(f"{shipped.file}: {exc}" if isinstance(exc, WeightsError) else exc, file=sys.stderr)
            return 1
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(REPO)}")
    for target in stale:
        print(f"{target.relative_to(REPO)} is stale: run python scripts/make_weights_sidecars.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
