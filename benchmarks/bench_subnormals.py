"""Subnormal weights and denormal arithmetic: the cost on this CPU, side by side in one run.

What it proves: how much slower DCE-Net runs in fp32 at full resolution (``--scale 1
--precision fp32``, the Python API ``models.zero_dce``, and the exported ONNX graph in
onnxruntime) when its weights hold subnormal floats (0 < |w| < 1.18e-38), as the shipped files did
before they were re-exported clean, and what flushing denormal arithmetic adds. On Intel CPUs each
multiply by a subnormal takes a microcode path; AMD CPUs pay little or nothing, so read the ratios
with the CPU line this prints.

Rows (one 512 x 512 dark image, 1 torch thread, median of --repeats timed passes after one warm-up):

* weights with subnormals: the shipped ``zerodce_sice_v1`` with every exact zero replaced by
  +-1e-39 (what training's weight decay leaves; the file shipped before had 20,742 such values), or
  the file given with ``--dirty-weights`` (e.g. ``git show 1eba097:dce_batch/weights/zerodce_sice_v1.safetensors``),
  loaded without dce_batch's loader so nothing is flushed; denormal flushing off;
* the shipped (clean) weights, denormal flushing off: a user's plain process (``models.zero_dce``);
* the shipped weights with denormal flushing on: what the job's workers and ``enhance_image`` run;
* onnxruntime on an export of each, default session options, and with ``session.set_denormal_as_zero``;
* with ``../shared``: the Zero-DCE authors' checkpoint as published (unflushed, flushing off) against
  the same checkpoint imported by ``load_weights`` (flushed) with flushing on.

Outputs are compared with the clean row's (max absolute difference), so a speed-up is never quoted
without its cost.

    python benchmarks/bench_subnormals.py              # ~2 min on a 2-core Intel VM, seconds elsewhere
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, dark_image, hardware_line, table

SUBNORMAL = 1e-39


def _time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (and the output)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dirty-weights", help="a .safetensors file with subnormal values (default: synthesized)")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch
    from safetensors.torch import load_file

    from dce_batch import models
    from dce_batch.enhance.network import DCENet
    from dce_batch.enhance.weights import LoadedWeights, count_subnormals, load_weights

    torch.set_num_threads(1)
    print(hardware_line(1))
    clean = load_weights("zerodce_sice_v1")
    if args.dirty_weights:
        dirty_state = load_file(args.dirty_weights)
        source = args.dirty_weights
    else:
        dirty_state = {k: torch.where(v == 0, torch.where(torch.arange(v.numel()).reshape(v.shape) % 2 == 0, 1.0, -1.0)
                                      * SUBNORMAL, v) for k, v in clean.state_dict.items()}
        source = "shipped weights, exact zeros replaced by +-1e-39"
    print(f"subnormal values: {count_subnormals(dirty_state):,} in the dirty weights ({source}), "
          f"{count_subnormals(clean.state_dict)} in the shipped ones")
    pixels = dark_image(args.size, args.size)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()

    def network(state):
        model = DCENet().eval()
        model.load_state_dict(state)
        return model

    def run_torch(model):
        def call():
            with torch.inference_mode():
                return model(x).image.numpy()
        return call

    rows, reference = [], None

    def add(label: str, seconds: float, out, base_seconds: float | None) -> None:
        nonlocal reference
        if reference is None:
            reference = out
        difference = float(np.abs(np.asarray(out) - reference).max())
        rows.append([label, f"{seconds:.3f}", f"{(base_seconds or seconds) / seconds:.2f}x", f"{difference:.1e}"])

    torch.set_flush_denormal(False)
    clean_s, clean_out = _time(run_torch(models.zero_dce(weights="zerodce_sice_v1")), args.repeats)
    add("torch fp32 scale 1, shipped (clean) weights, flushing off (models.zero_dce)", clean_s, clean_out, None)
    dirty_s, dirty_out = _time(run_torch(network(dirty_state)), max(1, args.repeats - 1))
    add("torch fp32 scale 1, weights with subnormals, flushing off", dirty_s, dirty_out, clean_s)
    torch.set_flush_denormal(True)
    flushed_s, flushed_out = _time(run_torch(models.zero_dce(weights="zerodce_sice_v1")), args.repeats)
    add("torch fp32 scale 1, shipped weights, flushing on (the job's workers)", flushed_s, flushed_out, clean_s)
    torch.set_flush_denormal(False)

    authors = REPO.parent / "shared" / "reference_weights" / "zero_dce_epoch99.pth"
    if authors.is_file():
        raw = torch.load(authors, map_location="cpu", weights_only=True)
        raw = {k.removeprefix("module."): v.float() for k, v in raw.items()}
        print(f"authors' checkpoint: {count_subnormals(raw):,} subnormal values as published")
        authors_s, authors_out = _time(run_torch(network(raw)), max(1, args.repeats - 1))
        torch.set_flush_denormal(True)
        imported_s, imported_out = _time(run_torch(load_weights(authors).build()), args.repeats)
        torch.set_flush_denormal(False)
        difference = float(np.abs(authors_out - imported_out).max())
        rows.append(["authors' checkpoint as published, flushing off", f"{authors_s:.3f}", "1.00x", "-"])
        rows.append(["authors' checkpoint through load_weights, flushing on", f"{imported_s:.3f}",
                     f"{authors_s / imported_s:.2f}x", f"{difference:.1e} (vs the row above)"])

    if not args.no_onnx:
        try:
            import onnxruntime as ort

            from dce_batch.enhance.onnx_export import export_onnx
        except ImportError as exc:
            print(f"onnx rows skipped: {exc}")
        else:
            with tempfile.TemporaryDirectory() as folder:
                clean_path, dirty_path = Path(folder, "clean.onnx"), Path(folder, "dirty.onnx")
                export_onnx("zerodce_sice_v1", clean_path)
                _export_unflushed(LoadedWeights(dirty_state, clean.meta), dirty_path)
                image = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
                feed = {"image": image, "strength": np.array([1.0], np.float32)}

                def session(path, daz: bool):
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = 1
                    if daz:
                        options.add_session_config_entry("session.set_denormal_as_zero", "1")
                    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    return lambda: s.run(None, feed)[0][0]

                onnx_clean_s, out = _time(session(clean_path, False), args.repeats)
                base = onnx_clean_s
                rows.append(["onnxruntime, clean export, default options", f"{onnx_clean_s:.3f}", "1.00x",
                             f"{float(np.abs(out - reference[0]).max()):.1e}"])
                onnx_dirty_s, out = _time(session(dirty_path, False), max(1, args.repeats - 1))
                rows.append(["onnxruntime, export with subnormal weights", f"{onnx_dirty_s:.3f}",
                             f"{base / onnx_dirty_s:.2f}x", f"{float(np.abs(out - reference[0]).max()):.1e}"])
                onnx_daz_s, out = _time(session(clean_path, True), args.repeats)
                rows.append(["onnxruntime, clean export, set_denormal_as_zero", f"{onnx_daz_s:.3f}",
                             f"{base / onnx_daz_s:.2f}x", f"{float(np.abs(out - reference[0]).max()):.1e}"])

    print(table(["configuration", "s / image", "speed vs the group's first row", "max |diff| vs clean torch"], rows))
    print(f"\nsubnormal weights cost {dirty_s / clean_s:.1f}x in torch fp32 at scale 1 on this CPU; "
          f"flushing denormal arithmetic gives {clean_s / flushed_s:.2f}x more")
    return 0


def _export_unflushed(loaded, path: Path) -> None:
    """The export of :func:`dce_batch.enhance.onnx_export.export_onnx`, but of tensors exactly as given."""
    import builtins

    import torch

    from dce_batch.enhance.onnx_round import symbolic_round
    from dce_batch.enhance.onnx_export import _export_module

    module = _export_module(loaded, 1.0)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)}
    program = torch.onnx.export(module, (torch.rand(1, 3, 64, 96), torch.ones(1)), dynamo=True, opset_version=18,
                                input_names=["image", "strength"], output_names=["enhanced"],
                                dynamic_shapes={"image": dims, "strength": None},
                                custom_translation_table={builtins.round: symbolic_round}, verbose=False)
    program.save(str(path))


if __name__ == "__main__":
    sys.exit(main())
