"""A side-by-side contact sheet for the README: input, the authors' Zero-DCE, the previous
default (zerodce_sice_v1, network alone at full resolution; or, with ``--previous DIR``, the
outputs an earlier version wrote there, matched by file stem under DIR/SET/ or DIR/) and the new
default (zerodce_sice_v1 as the job runs it: curves from a 4x smaller copy, then finishing).

Every column runs through the same in-process code as ``dce-batch evaluate``, on the image as the
job would see it (reduced only beyond ``--process-side``), and is then reduced to thumbnails
(longer side ``--side``), so the sheet shows what a user sees of the job's output at that size
and is a small derived figure, not a copy of the data set. Enhancing the thumbnails themselves
would not: the denoiser would work on a 216-pixel image whose lights are a pixel wide. The PNG
is palette-quantised to stay small (<300 KB at the defaults).

    python scripts/contact_sheet.py --out docs/quality_contact_sheet.png \\
        ../shared/data/lowlight_real/DICM/01.jpg ../shared/data/lowlight_real/LIME/1.bmp ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dce_batch.evaluation.evaluate import _read, quantize  # noqa: E402
from dce_batch.enhance.finishing import FinishConfig  # noqa: E402

AUTHORS = REPO.parent / "shared" / "reference_weights" / "zero_dce_epoch99.pth"
LABEL_HEIGHT = 18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", type=int, default=300, help="longer side of each thumbnail (default 300)")
    parser.add_argument("--process-side", type=int, default=1024,
                        help="enhance images reduced to this longer side at most, then make thumbnails (default 1024)")
    parser.add_argument("--authors", type=Path, default=AUTHORS, help="the authors' Zero-DCE checkpoint")
    parser.add_argument("--colours", type=int, default=256, help="palette size of the PNG (default 256)")
    parser.add_argument("--previous", type=Path,
                        help="a folder of an earlier version's outputs (PNG named after each input's stem, "
                             "in a subfolder named after the input's folder, or directly in it): the third column")
    parser.add_argument("--previous-config", metavar="KEY=VALUE,...",
                        help="instead, the third column is the default with these finishing settings, as "
                             "dce-batch evaluate's --config takes them (e.g. colour=off)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    authors = Enhancer(load_weights(args.authors), InferenceConfig(device="cpu", scale=1))  # as published
    shipped = load_weights("zerodce_sice_v1")
    network_alone = Enhancer(shipped, InferenceConfig(device="cpu", scale=1))
    default = Enhancer(shipped, InferenceConfig(device="cpu", finish=FinishConfig()))  # the job's default
    if args.previous_config:
        from dce_batch.evaluation.evaluate import parse_configuration

        finish = parse_configuration(f"previous:{args.previous_config}").finish
        network_alone = Enhancer(shipped, InferenceConfig(device="cpu", finish=finish))
    third = args.previous_config or ("previous version" if args.previous else "network alone")
    columns = ["input", "Zero-DCE (authors)", third, "this version"]
    rows = []
    for path in args.images:
        low = _read(path, args.process_side)
        previous = _previous(args.previous, path, args.process_side) if args.previous else network_alone.enhance(low).pixels
        new = default.enhance(low).pixels
        rows.append([_thumbnail(x, args.side) for x in (low, authors.enhance(low).pixels, previous, new)])
        print(f"{path.name}: input mean {low.mean():.3f}, previous {previous.mean():.3f}, new {new.mean():.3f}")

    cell_w = max(r[0].shape[1] for r in rows)
    sheet_h = LABEL_HEIGHT + sum(r[0].shape[0] for r in rows) + 2 * len(rows)
    sheet = Image.new("RGB", (4 * cell_w + 6, sheet_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * (cell_w + 2) + 4, 3), name, fill="black")
    y = LABEL_HEIGHT
    for row in rows:
        for c, pixels in enumerate(row):
            sheet.paste(Image.fromarray(np.round(pixels * 255).astype(np.uint8)), (c * (cell_w + 2), y))
        y += row[0].shape[0] + 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=args.colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        args.out, optimize=True)
    print(f"wrote {args.out}: {sheet.size[0]}x{sheet.size[1]}, {args.out.stat().st_size / 1024:.0f} KB")


def _previous(folder: Path, path: Path, side: int) -> np.ndarray:
    for candidate in (folder / path.parent.name / f"{path.stem}.png", folder / f"{path.stem}.png"):
        if candidate.is_file():
            return _read(candidate, side)
    raise SystemExit(f"no previous output for {path} in {folder}")


def _thumbnail(pixels: np.ndarray, side: int) -> np.ndarray:
    """H x W x 3 floats in [0, 1], reduced (area filter) so that the longer side is ``side``."""
    image = Image.fromarray(np.round(quantize(pixels) * 255).astype(np.uint8))
    factor = side / max(image.size)
    if factor < 1:
        image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


if __name__ == "__main__":
    main()
