"""SICE Part 1's multi-exposure sequences: how its 2,002 numbered files group into scenes, and
well-exposed references with the brightness spread of real scenes, for simulated pairs.

The files (``1.jpg`` .. ``2002.jpg``, 512 x 512) are the frames of about 245 bracketed
sequences, one after another in file-number order, mostly darkest to brightest. Consecutive
frames of one scene show the same structure at another exposure, so their luma has the same
*ranks*: a frame joins the current sequence when the Spearman correlation of its 32 x 32 luma
with any frame already in it is above 0.8 (otherwise it starts a new one). Sequences of fewer
than 3 frames are dropped (a handful of stray frames).

``--references DIR`` writes one frame per sequence as a well-exposed reference (PNG, in DIR,
outside the repository: nothing from ../shared is committed): among the frames whose mean luma
is between 0.2 and 0.7, the one with the fewest pixels clipped at either end (luma under 0.02
or a channel above 0.98), fewer than 2 % in all; ties go to the darker frame. The selection does
not look at any mean-brightness target, so the references keep the scenes' own spread (the
dark-walled room stays dark, the white facade bright), as a photographer's exposures do;
``--every K`` keeps every K-th such sequence.

``--pairs DIR`` writes real dark/metered pairs for ``dce-batch evaluate --paired DIR/low DIR/ref``:
in each bracket of 5, 7 or 9 frames, every dark frame (mean luma 0.015-0.15) against the bracket's
middle frame by mean luma, the exposure the camera metered (``fit_exposure.py`` fits on them).

    python benchmarks/quality/sice_sequences.py --summary
    python benchmarks/quality/sice_sequences.py --references /tmp/sice_refs --every 5
    python benchmarks/quality/sice_sequences.py --pairs /tmp/sice_brackets
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
LUMA = np.array([0.2126, 0.7152, 0.0722])


def shared_root() -> Path:
    return Path(os.environ.get("DCE_SHARED", REPO.parent / "shared"))


def load_thumbnails(folder: Path, side: int = 128) -> tuple[list[int], np.ndarray]:
    """File numbers in order and their ``side`` x ``side`` area-averaged copies (uint8)."""
    numbers = sorted(int(p.stem) for p in folder.glob("*.jpg") if p.stem.isdigit())
    thumbs = np.stack([np.asarray(Image.open(folder / f"{n}.jpg").convert("RGB").resize((side, side), Image.BOX))
                       for n in numbers])
    return numbers, thumbs


def group_sequences(thumbs: np.ndarray, threshold: float = 0.8, min_frames: int = 3) -> list[list[int]]:
    """Indices of ``thumbs`` grouped into sequences (see the module docstring)."""
    from scipy.stats import rankdata

    luma = thumbs.astype(np.float64) / 255.0 @ LUMA
    n, h, w = luma.shape
    small = luma.reshape(n, 32, h // 32, 32, w // 32).mean(axis=(2, 4)).reshape(n, -1)
    ranks = np.stack([rankdata(row) for row in small])
    ranks -= ranks.mean(axis=1, keepdims=True)
    ranks /= np.linalg.norm(ranks, axis=1, keepdims=True) + 1e-12
    groups = [[0]]
    for i in range(1, n):
        if (ranks[groups[-1]] @ ranks[i]).max() > threshold:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [g for g in groups if len(g) >= min_frames]


def pick_reference(thumbs: np.ndarray, group: list[int]) -> int | None:
    """The frame of ``group`` to use as a well-exposed reference, or None (see the docstring)."""
    best, best_clip = None, 0.02
    for i in sorted(group, key=lambda j: (thumbs[j] @ LUMA).mean()):
        x = thumbs[i].astype(np.float64) / 255.0
        y = x @ LUMA
        if not 0.2 <= y.mean() <= 0.7:
            continue
        clip = float((y < 0.02).mean() + (x.max(axis=2) > 0.98).mean())
        if clip < best_clip:
            best, best_clip = i, clip
    return best


DARK_FRAMES = (0.015, 0.15)     # mean luma of the dark frames paired with their metered frame
BRACKET_SIZES = (5, 7, 9)       # brackets centred on the metered exposure


def bracket_pairs(thumbs: np.ndarray, groups: list[list[int]]) -> list[tuple[int, int]]:
    """(dark frame, its bracket's metered frame) index pairs (see ``--pairs`` in the docstring)."""
    pairs = []
    for group in groups:
        if len(group) not in BRACKET_SIZES:
            continue
        means = {i: float((thumbs[i] / 255.0 @ LUMA).mean()) for i in group}
        order = sorted(group, key=means.get)
        metered = order[len(order) // 2]
        pairs += [(i, metered) for i in order if DARK_FRAMES[0] <= means[i] <= DARK_FRAMES[1]]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sice", type=Path, default=shared_root() / "data" / "sice_part1_train")
    parser.add_argument("--summary", action="store_true", help="print the sequences and their frames' mean luma")
    parser.add_argument("--references", type=Path, help="write one well-exposed frame per sequence here (PNG)")
    parser.add_argument("--every", type=int, default=1, help="keep every K-th sequence that has a reference")
    parser.add_argument("--pairs", type=Path, help="write real dark/metered pairs here (DIR/low, DIR/ref; PNG)")
    args = parser.parse_args()
    if not args.sice.is_dir():
        sys.exit(f"{args.sice} is absent (../shared; set DCE_SHARED)")
    numbers, thumbs = load_thumbnails(args.sice)
    groups = group_sequences(thumbs)
    sizes = np.bincount([len(g) for g in groups])
    print(f"{len(numbers)} files, {len(groups)} sequences of 3+ frames holding {sum(map(len, groups))} files; "
          f"frames per sequence: " + ", ".join(f"{k}: {v}" for k, v in enumerate(sizes) if v))
    if args.summary:
        for g in groups:
            means = [(thumbs[i] @ LUMA).mean() / 255.0 for i in g]
            print(f"  {numbers[g[0]]}-{numbers[g[-1]]}: " + " ".join(f"{m:.2f}" for m in means))
    if args.pairs:
        pairs = bracket_pairs(thumbs, groups)
        (args.pairs / "low").mkdir(parents=True, exist_ok=True)
        (args.pairs / "ref").mkdir(parents=True, exist_ok=True)
        for dark, metered in pairs:
            name = f"s{numbers[dark]}.png"
            Image.open(args.sice / f"{numbers[dark]}.jpg").convert("RGB").save(args.pairs / "low" / name)
            Image.open(args.sice / f"{numbers[metered]}.jpg").convert("RGB").save(args.pairs / "ref" / name)
        print(f"wrote {len(pairs)} dark/metered pairs to {args.pairs}/low and {args.pairs}/ref")
    if args.references:
        chosen = [r for r in (pick_reference(thumbs, g) for g in groups) if r is not None][::args.every]
        args.references.mkdir(parents=True, exist_ok=True)
        means = []
        for i in chosen:
            image = Image.open(args.sice / f"{numbers[i]}.jpg").convert("RGB")
            image.save(args.references / f"sice{numbers[i]}.png")
            means.append((np.asarray(image, dtype=np.float64) / 255.0 @ LUMA).mean())
        print(f"wrote {len(chosen)} references to {args.references}: mean luma {min(means):.3f}-{max(means):.3f} "
              f"(average {np.mean(means):.3f}); frames " + ", ".join(str(numbers[i]) for i in chosen))


if __name__ == "__main__":
    main()
