#!/usr/bin/env bash
# The GPU figure, as one prepared command for the device machine (one H100/H200):
#   1. here:  benchmarks/gpu_prepare.sh        (slim Ray wheels for the device's Python, into .devcarry/)
#   2. there: run with carry [".devcarry"] and the command `bash benchmarks/gpu.sh`
# It installs the carried wheels into /tmp/site (the image has torch, pyarrow, pillow, ...), then
# runs benchmarks/bench_gpu.py: model-only and end-to-end images/s for 1200x900 JPEGs, fp32 and
# bf16/fp16, against the authors' loop on the same GPU. Fits in 8 minutes; prints everything.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -d .devcarry/wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .devcarry/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)"
timeout 450 python3 benchmarks/bench_gpu.py --images "${IMAGES:-2000}" 2>&1 | tee "${OUT:-/tmp}/bench_gpu.txt"
