"""ONNX for Python's ``round`` on a symbolic size (used by :mod:`dce_batch.enhance.onnx_export`).

A module of its own, without ``from __future__ import annotations``: onnxscript reads the type
annotations as objects. Imported only when exporting (it needs onnxscript).
"""

import onnxscript
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op


@onnxscript.script()
def symbolic_round(x: FLOAT) -> INT64:
    # ONNX Round is round-half-to-even, exactly like Python's round().
    return op.Cast(op.Round(x), to=7)  # 7 = INT64
