#!/usr/bin/env bash
# Prepare what benchmarks/gpu.sh carries to the GPU machine, which reaches no package index:
# Ray for its Python (3.12 there) slimmed to fit the 64 MiB a call may carry (its Java jars, RLlib,
# Serve, Tune, LLM and the dashboard's web client are not needed to run Ray Data on one node),
# plus Ray's pure-Python needs that image lacks. Everything goes to .devcarry/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devcarry/wheels
rm -rf .devcarry && mkdir -p "$out" .devcarry/tmp
py=3.12
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d .devcarry/tmp "$@"; }
dl "ray==$(python3 -c 'import ray; print(ray.__version__)' 2>/dev/null || echo 2.60.0)"
# Ray's requirements that the device image does not have (it has click, filelock, msgpack, packaging,
# protobuf, pyyaml, requests, aiohttp, grpcio, pyarrow, pandas, fsspec).
dl jsonschema jsonschema-specifications referencing rpds-py attrs
wheel=$(ls .devcarry/tmp/ray-*.whl)
mkdir .devcarry/tmp/ray && (cd .devcarry/tmp/ray && python3 -m zipfile -e "../$(basename "$wheel")" .)
(cd .devcarry/tmp/ray/ray && rm -rf jars rllib serve tune llm dashboard/client tests */tests)
# A wheel is a zip: repack the slimmed tree under the same name (pip checks RECORD only on install
# of files it lists; missing files are not an error for a --no-deps --target install).
(cd .devcarry/tmp/ray && python3 - "$wheel" <<'PY'
import os, sys, zipfile
target = os.path.join("..", "..", "wheels", os.path.basename(sys.argv[1]))
with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for root, _, files in os.walk("."):
        for name in files:
            path = os.path.join(root, name)
            z.write(path, os.path.relpath(path, "."))
PY
)
mv .devcarry/tmp/*.whl "$out"/ 2>/dev/null || true
rm -f "$out/$(basename "$wheel")".orig
rm -rf .devcarry/tmp
ls -la "$out"
du -sh .devcarry
