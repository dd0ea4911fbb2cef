"""Release step: give an exported weights file its final metadata, tensors untouched.

    python training/finalize_weights.py EXPORTED.safetensors dce_batch/weights/NAME.safetensors \
        --name NAME --metrics-json training/results/NAME_metrics.json [--note TEXT]

The training job's export already records the recipe, data and final losses. This adds what is
only known after the run: the release name, the licence, where the data came from, the hardware
and time (from the run's metrics.json), and a note. The tensor checksum is verified on load and
is unchanged, so the released file is provably the trained one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dce_batch.enhance.weights import load_weights, save_weights  # noqa: E402

LICENCE = ("Apache-2.0 (dce_batch). Trained on SICE Part 1 (Cai, Gu, Zhang, TIP 2018), a research data set "
           "redistributed for non-commercial research: check its terms before commercial use.")
DATA = ("SICE Part 1, 2,002 multi-exposure JPEGs (under- and over-exposed, no references), resized to 256 x 256 "
        "with Lanczos (the Zero-DCE authors' training size) and re-encoded as JPEG q95 to travel to the GPU machine")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exported")
    parser.add_argument("target")
    parser.add_argument("--name", required=True)
    parser.add_argument("--metrics-json", required=True, help="the run's metrics.json")
    parser.add_argument("--note", default="")
    parser.add_argument("--data", default=DATA, help="where the training data came from and how it was prepared")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="replace a recipe entry (e.g. init_weights=NAME when a run fine-tuned a local file)")
    args = parser.parse_args()
    loaded = load_weights(Path(args.exported))
    run = json.loads(Path(args.metrics_json).read_text())
    history = run["history"]
    recipe = dict(loaded.meta.recipe)
    recipe["hardware"] = run["hardware"]
    recipe["training_seconds"] = round(sum(m["epoch_seconds"] for m in history), 1)
    recipe["resumes"] = history[-1].get("resumes", 0)
    recipe["command"] = f"dce-batch train --config training/{args.name}.toml --data PATH/TO/sice_part1_train"
    for item in args.recipe:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--recipe takes KEY=VALUE, got {item!r}")
        recipe[key] = value
    metrics = dict(loaded.meta.metrics)
    if args.note:
        metrics["note"] = args.note
    _, meta = save_weights(
        loaded.state_dict, args.target, name=args.name, variant=loaded.meta.variant,
        source=f"trained by dce_batch's training job (Ray Train), run {run['run']}", licence=LICENCE,
        recipe=recipe, data=args.data, metrics=metrics,
    )
    assert meta.sha256 == loaded.meta.sha256, "the tensors must not change"
    print(f"wrote {args.target}: {meta.name}, {meta.variant}, sha256 {meta.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
