#!/usr/bin/env bash
# Prepare what benchmarks/gpu.sh carries to the GPU machine, which reaches no package index:
# Ray for its Python (3.12 there) slimmed to fit the 64 MiB a call may carry (its Java jars, RLlib,
# Serve, Tune, LLM and the dashboard's web client are not needed to run Ray Data on one node),
# plus Ray's pure-Python needs that image lacks. Everything goes to .devcarry/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devcarry/wheels
rm -rf .devcarry && mkdir -p "$out" .devcarry/tmp
py=${DEVICE_PYTHON:-3.12}  # the device image's Python
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d .devcarry/tmp "$@"; }
dl "ray==$(python3 -c 'import ray; print(ray.__version__)' 2>/dev/null || echo 2.60.0)"
# Ray's requirements that the device image does not have (it has click, filelock, msgpack, packaging,
# protobuf, pyyaml, requests, aiohttp, grpcio, pyarrow, pandas, fsspec).
dl jsonschema jsonschema-specifications referencing rpds-py attrs
wheel=$(ls .devcarry/tmp/ray-*.whl)
# A wheel is a zip: copy it entry by entry, leaving out what a one-node Ray Data run never loads.
# Copying the entries (not extracting and re-zipping) keeps their Unix modes: Ray's gcs_server and
# raylet must stay executable. pip checks RECORD only for files it installs, so the missing ones are
# not an error for a --no-deps --target install.
python3 - "$wheel" "$out" <<'PY'
import os, re, sys, zipfile
source, out = sys.argv[1], sys.argv[2]
left_out = re.compile(r"^ray/(jars|rllib|serve|tune|llm|dashboard/client|tests|[^/]+/tests)/")
with zipfile.ZipFile(source) as zin, zipfile.ZipFile(os.path.join(out, os.path.basename(source)), "w") as zout:
    for info in zin.infolist():
        if not left_out.match(info.filename):
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
PY
rm -f "$wheel"  # the original, now repacked: it must not overwrite the slim one
mv .devcarry/tmp/*.whl "$out"/
rm -rf .devcarry/tmp
ls -la "$out"
du -sh .devcarry
