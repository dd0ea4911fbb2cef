"""Compare shipped weights with the Zero-DCE authors' checkpoints on real low-light photos.

    python training/compare_with_authors.py [--shared ../shared] [--sheet /tmp/contact_sheet.jpg]

For every image of ../shared/data/lowlight_real (DICM, LIME, MEF, VV, phone) and every model it
reports, per set (means over the set's images):

* ``luma``: mean Rec.709 luminance of the output (0..1); the input's is shown too;
* ``cast``: colour cast, the spread (max - min) of the output's R, G, B means; grey-world says 0;
* ``clip_hi``: fraction of pixels with a channel at 255 (blown highlights), ``clip_lo``: at 0;
* ``contrast``: standard deviation of the output's luma (flat, washed-out output is low);
* ``loss``: the four Zero-DCE losses with the authors' weights, computed on the output (the
  objective both models were trained on; lower is better by that objective).

Large images are enhanced at most 1024 px on the long side to keep the run short. The contact
sheet (input and each model's output for a few images) is written outside the repository:
images derived from ../shared must not be committed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dce_batch.imaging import decode_image, mean_luminance  # noqa: E402
from dce_batch.enhance.enhancer import Enhancer, InferenceConfig  # noqa: E402
from dce_batch.training.losses import LossWeights, ZeroDCELoss  # noqa: E402
from dce_batch.enhance.weights import load_weights  # noqa: E402

SETS = ("DICM", "LIME", "MEF", "VV", "phone")


def models(shared: Path, extra: list[str]) -> dict[str, tuple[object, float]]:
    """name -> (loaded weights, scale for the fast variant)."""
    refs = shared / "reference_weights"
    found = {
        "ours zerodce_sice_v1": (load_weights("zerodce_sice_v1"), 1.0),
        "authors Zero-DCE": (load_weights(refs / "zero_dce_epoch99.pth"), 1.0),
        "ours zerodcepp_sice_v2 (s12)": (load_weights("zerodcepp_sice_v2"), 12.0),
        "authors Zero-DCE++ (s12)": (load_weights(refs / "zero_dce_pp_epoch99.pth"), 12.0),
    }
    for path in extra:
        found[f"extra {Path(path).stem}"] = (load_weights(path), 12.0 if load_weights(path).meta.variant == "fast" else 1.0)
    return found


def metrics(inp: np.ndarray, out: np.ndarray, loss_fn: ZeroDCELoss) -> dict[str, float]:
    u8 = np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
    luma = out @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    means = out.reshape(-1, 3).mean(0)
    x = torch.from_numpy(inp).permute(2, 0, 1)[None]
    y = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]
    # The smoothness term needs the curve maps; the comparison uses the three output-only terms.
    w = loss_fn.weights
    from dce_batch.training.losses import color_constancy_loss, exposure_control_loss, spatial_consistency_loss

    loss = (w.spatial * spatial_consistency_loss(x, y) + w.color * color_constancy_loss(y)
            + w.exposure * exposure_control_loss(y, w.exposure_patch, w.exposure_target)).item()
    return {
        "luma_in": mean_luminance(inp),
        "luma": float(luma.mean()),
        "cast": float(means.max() - means.min()),
        "clip_hi": float((u8 == 255).any(-1).mean()),
        "clip_lo": float((u8 == 0).any(-1).mean()),
        "contrast": float(luma.std()),
        "loss": loss,
    }


def shrink(pixels: np.ndarray, longest: int) -> np.ndarray:
    h, w, _ = pixels.shape
    if max(h, w) <= longest:
        return pixels
    scale = longest / max(h, w)
    img = Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).resize((round(w * scale), round(h * scale)), Image.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("DCE_SHARED", str(Path(__file__).resolve().parents[2] / "shared")))
    parser.add_argument("--sheet", default="/tmp/dce_contact_sheet.jpg", help="contact sheet path (outside the repo)")
    parser.add_argument("--longest", type=int, default=1024)
    parser.add_argument("--extra", action="append", default=[], help="more weights files to compare")
    args = parser.parse_args()
    shared = Path(args.shared)
    if not (shared / "data" / "lowlight_real").is_dir():
        print(f"{shared}/data/lowlight_real not found: this comparison needs ../shared", file=sys.stderr)
        return 0
    torch.set_num_threads(os.cpu_count() or 1)
    loss_fn = ZeroDCELoss(LossWeights())
    enhancers = {name: Enhancer(w, InferenceConfig(scale=s)) for name, (w, s) in models(shared, args.extra).items()}
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    sheet_rows = []
    for set_name in SETS:
        files = sorted(p for p in (shared / "data" / "lowlight_real" / set_name).iterdir() if p.is_file())
        for index, path in enumerate(files):
            pixels = shrink(decode_image(path.read_bytes()).to_float(), args.longest)
            outputs = {}
            for name, enhancer in enhancers.items():
                out = enhancer.enhance(pixels).pixels
                outputs[name] = out
                rows.setdefault((set_name, name), []).append(metrics(pixels, out, loss_fn))
            if index < 2:
                sheet_rows.append((f"{set_name}/{path.name}", pixels, outputs))
    header = f"{'set':<6} {'model':<30} {'n':>3} {'luma_in':>7} {'luma':>6} {'cast':>6} {'clip_hi':>7} {'clip_lo':>7} {'contrast':>8} {'loss':>6}"
    print(header)
    print("-" * len(header))
    for (set_name, name), values in rows.items():
        mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        print(f"{set_name:<6} {name:<30} {len(values):>3} {mean['luma_in']:>7.3f} {mean['luma']:>6.3f} {mean['cast']:>6.3f} "
              f"{mean['clip_hi']:>7.4f} {mean['clip_lo']:>7.4f} {mean['contrast']:>8.3f} {mean['loss']:>6.3f}")
    write_sheet(sheet_rows, list(enhancers), args.sheet)
    print(f"contact sheet: {args.sheet}")
    return 0


def write_sheet(rows, names: list[str], path: str, cell: int = 256) -> None:
    columns = ["input", *names]
    sheet = Image.new("RGB", (cell * len(columns), (cell + 14) * len(rows) + 14), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * cell + 4, 2), name[:40], fill="black")
    for r, (label, pixels, outputs) in enumerate(rows):
        y = 14 + r * (cell + 14)
        draw.text((4, y), label, fill="black")
        for c, img in enumerate([pixels, *[outputs[n] for n in names]]):
            tile = Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))
            tile.thumbnail((cell, cell))
            sheet.paste(tile, (c * cell, y + 12))
    sheet.save(path, quality=90)


if __name__ == "__main__":
    sys.exit(main())
