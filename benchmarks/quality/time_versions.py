"""Time the job's Enhancer (network + default finishing) of two code trees on the same photos,
each in its own process, rounds alternating: what a change of the finishing costs.

    git archive OLD_COMMIT | tar -x -C /tmp/old
    python benchmarks/quality/time_versions.py /tmp/old . --images ../shared/data/lowlight_real/DICM

One torch thread, int8 (the CPU default), images as the job decodes them; per round, each tree
enhances every image once after a warm-up image; prints each round's seconds and the ratio of the
medians (second tree / first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from pathlib import Path
from dce_batch.evaluation.evaluate import _read
from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
from dce_batch.enhance.weights import load_weights
from dce_batch.enhance.finishing import FinishConfig
paths = sorted(p for p in Path(sys.argv[2]).iterdir() if p.suffix.lower() in ('.jpg', '.png', '.bmp'))[:int(sys.argv[3])]
images = [_read(p, None) for p in paths]
enhancer = Enhancer(load_weights(None), InferenceConfig(device='cpu', finish=FinishConfig()))
enhancer.enhance(images[0])
start = time.perf_counter()
for x in images:
    enhancer.enhance(x)
print(json.dumps({'seconds': time.perf_counter() - start, 'images': len(images)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"first": [], "second": []}
    for r in range(args.rounds):
        order = ("first", "second") if r % 2 == 0 else ("second", "first")
        for which in order:
            tree = str(getattr(args, which).resolve())
            out = subprocess.run([sys.executable, "-c", CHILD, tree, str(args.images), str(args.count)],
                                 capture_output=True, text=True, check=True, env={"PYTHONPATH": tree, "PATH": ""})
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[which].append(result["seconds"])
            print(f"round {r + 1} {which} ({tree}): {result['seconds']:.2f} s for {result['images']} images", flush=True)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"median: first {median['first']:.2f} s, second {median['second']:.2f} s; "
          f"second / first = {median['second'] / median['first']:.3f}")


if __name__ == "__main__":
    main()
