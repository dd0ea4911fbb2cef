"""Offline checks of cluster/: the image recipe, the Ray cluster launcher config and the KubeRay
manifests.

Nothing here needs Docker, AWS or Kubernetes:

* every YAML file parses;
* ``cluster/aws-gpu.yaml`` passes Ray's own launcher validation (``ray/autoscaler/ray-schema.json``
  from the installed ``ray``), both as written and after Ray fills in its AWS defaults the way
  ``ray up`` does;
* the KubeRay manifests validate against the KubeRay CRD schemas (``../shared/schemas/kuberay``;
  skipped when absent), as written and with unknown fields rejected (``kubectl apply``'s default
  strict field validation), and negative copies prove the validation can fail;
* every ``dce-batch enhance|train`` / ``python jobs/{enhance,train}.py`` command line in
  cluster/ (RayJob entrypoints, README and YAML comments) uses the documented flags, parses with
  the project's own argument parser, and asks for no more GPUs than its cluster can provide;
* the Ray version of the image, the launcher config and the manifests agree.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import pytest

from .shared_data import REPO_ROOT, shared_path

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

CLUSTER = REPO_ROOT / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay"
RAYJOBS = ["rayjob-enhance.yaml", "rayjob-train.yaml"]
RAYCLUSTERS = ["raycluster.yaml"]
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

# The command-line contract of the entry points (value: whether the flag takes a value).
# `python jobs/enhance.py` == `dce-batch enhance`, `python jobs/train.py` == `dce-batch train`.
COMMON_FLAGS = {"--help": False, "-h": False}
ENHANCE_FLAGS = {
    "--weights": True, "--format": True, "--quality": True, "--strength": True,
    "--model-variant": True, "--scale": True, "--precision": True, "--num-actors": True,
    "--gpus-per-actor": True, "--cpus-per-actor": True, "--batch-size": True,
    "--s3-endpoint": True, "--overwrite": False, **COMMON_FLAGS,
}
TRAIN_FLAGS = {
    "--data": True, "--workers": True, "--gpus-per-worker": True, "--epochs": True,
    "--image-size": True, "--batch-size": True, "--storage": True, "--name": True,
    "--max-failures": True, "--export": True, **COMMON_FLAGS,
}
FLAGS = {"enhance": ENHANCE_FLAGS, "train": TRAIN_FLAGS}
SCRIPTS = {"enhance": "jobs/enhance.py", "train": "jobs/train.py"}

# A command of ours inside any text: `dce-batch enhance ...` or `python jobs/train.py ...`.
COMMAND_RE = re.compile(r"(?:(?<![\w/-])dce-batch\s+(enhance|train)\b|\bpython3?\s+(\S*jobs/\w+\.py))(.*)")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def manifest_paths() -> list[Path]:
    return [KUBERAY / name for name in RAYJOBS + RAYCLUSTERS]


@functools.lru_cache(maxsize=None)
def _crd_schema_at(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert "v1" in versions, f"{path} has no v1 version"
    return versions["v1"]["schema"]["openAPIV3Schema"]


def crd_schema(kind: str) -> dict:
    """The v1 openAPIV3Schema of a KubeRay CRD, or a skip when ../shared is absent."""
    return _crd_schema_at(str(shared_path("schemas", "kuberay", CRD_FILES[kind])))


def strict(schema):
    """A copy of an OpenAPI schema that rejects unknown fields, as ``kubectl apply`` does.

    jsonschema accepts unknown keys unless ``additionalProperties`` is false; the API server
    instead rejects (strict field validation) or drops (pruning) them, so a misspelt field
    would otherwise pass. Objects marked ``x-kubernetes-preserve-unknown-fields`` stay open.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = strict(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = strict(out[key])
    return out


@functools.lru_cache(maxsize=None)
def _strict_crd_schema_at(path: str) -> dict:
    return strict(_crd_schema_at(path))


def crd_errors(manifest: dict, *, strict_fields: bool = False) -> list[str]:
    kind = manifest["kind"]
    path = str(shared_path("schemas", "kuberay", CRD_FILES[kind]))
    schema = _strict_crd_schema_at(path) if strict_fields else _crd_schema_at(path)
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI v3.0 schemas are draft-4 style
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def containers(manifest: dict):
    """(group name, container) for every Ray container of a RayJob / RayCluster."""
    spec = cluster_spec(manifest)
    for c in spec["headGroupSpec"]["template"]["spec"]["containers"]:
        yield "head", c
    for group in spec.get("workerGroupSpecs", []):
        for c in group["template"]["spec"]["containers"]:
            yield group["groupName"], c


def gpus_of(container: dict) -> float:
    return float((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def max_cluster_gpus(manifest: dict) -> float:
    spec = cluster_spec(manifest)
    total = 0.0
    for group in spec.get("workerGroupSpecs", []):
        per_pod = sum(gpus_of(c) for c in group["template"]["spec"]["containers"])
        total += per_pod * group["maxReplicas"] * group.get("numOfHosts", 1)
    return total


class Command:
    """One command line of ours, split into program, positional arguments and flags."""

    def __init__(self, text: str, where: str):
        self.text, self.where = " ".join(text.split()), where
        tokens = shlex.split(self.text, comments=True)
        if tokens[:1] == ["dce-batch"] and len(tokens) > 1:
            self.form, self.sub, rest = "console-script", tokens[1], tokens[2:]
        elif tokens[:1] and re.fullmatch(r"python3?", tokens[0]) and len(tokens) > 1:
            self.form, self.script, rest = "script", tokens[1], tokens[2:]
            self.sub = Path(tokens[1]).stem
        else:
            raise AssertionError(f"{where}: not a dce_batch command: {text!r}")
        self.args = rest
        self.positionals: list[str] = []
        self.flags: dict[str, str | None] = {}
        self.unknown: list[str] = []
        known = FLAGS.get(self.sub, {})
        it = iter(rest)
        for tok in it:
            if not tok.startswith("-"):
                self.positionals.append(tok)
                continue
            name, eq, value = tok.partition("=")
            if name not in known:
                self.unknown.append(name)
                continue
            if known[name] and not eq:
                value = next(it, None)
            self.flags[name] = value if known[name] else None

    def __repr__(self) -> str:
        return f"{self.where}: {self.text}"


def commands_in_text(text: str, where: str) -> list[Command]:
    """Our command lines in README code blocks or comments: continuation lines joined."""
    logical, buf = [], ""
    in_comments = where.endswith((".yaml", ".yml", "Dockerfile"))
    for raw in text.splitlines():
        line = re.sub(r"^\s*# ?", "", raw) if in_comments else raw
        if in_comments and not buf and not line.startswith("  "):
            continue  # prose; examples in comments are indented by at least two spaces
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    logical.append(buf)
    found = []
    for line in logical:
        for m in COMMAND_RE.finditer(line):
            start = m.start()
            cmd = line[start:].split("`")[0]  # inline code in prose ends at the backtick
            found.append(Command(cmd, where))
    return found


def entrypoint_commands() -> list[Command]:
    return [Command(load_yaml(KUBERAY / name)["spec"]["entrypoint"], f"cluster/kuberay/{name}:entrypoint")
            for name in RAYJOBS]


def documented_commands() -> list[Command]:
    found = []
    readme = CLUSTER / "README.md"
    if readme.exists():
        in_code, block = False, []
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                if in_code:
                    found += commands_in_text("\n".join(block), "cluster/README.md")
                in_code, block = not in_code, []
            elif in_code:
                block.append(line)
    for path in yaml_files() + [DOCKERFILE]:
        comments = "\n".join(l for l in path.read_text(encoding="utf-8").splitlines() if l.lstrip().startswith("#"))
        found += commands_in_text(comments, str(path.relative_to(REPO_ROOT)))
    return found


def all_commands() -> list[Command]:
    return entrypoint_commands() + documented_commands()


def dockerfile_ray_version() -> str:
    m = re.search(r"^ARG BASE_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-py\d+-(?:gpu|cu\d+)\s*$",
                  DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert m, "cluster/Dockerfile must default BASE_IMAGE to a rayproject/ray:X.Y.Z-pyNNN-gpu image"
    return m.group(1)


# ---------------------------------------------------------------------------------------------
# files and YAML
# ---------------------------------------------------------------------------------------------


def test_expected_files_exist():
    for path in [DOCKERFILE, CLUSTER / "Dockerfile.dockerignore", LAUNCHER, CLUSTER / "README.md",
                 *manifest_paths()]:
        assert path.is_file(), f"missing {path.relative_to(REPO_ROOT)}"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


# ---------------------------------------------------------------------------------------------
# Dockerfile (static: no Docker engine here)
# ---------------------------------------------------------------------------------------------


def test_dockerfile_builds_from_an_official_ray_image_with_a_cpu_variant():
    text = DOCKERFILE.read_text(encoding="utf-8")
    version = dockerfile_ray_version()
    assert re.search(r"^FROM \$\{?BASE_IMAGE\}?\s*$", text, re.M), "FROM must use the BASE_IMAGE build arg"
    # The documented CPU build uses the matching -cpu tag.
    assert f"BASE_IMAGE=rayproject/ray:{version}-py311-cpu" in text
    assert "pip install --no-cache-dir ." in text


def test_dockerfile_copies_what_pip_install_needs():
    import tomllib

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    sources = []
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += [p.rstrip("/") for p in parts[:-1]]
    needed = {"pyproject.toml", pyproject["project"]["readme"], "dce_batch"}
    assert needed <= set(sources), f"the image must COPY {sorted(needed)}, copies {sources}"
    for src in sources:
        assert (REPO_ROOT / src).exists(), (
            f"cluster/Dockerfile copies {src}, which is not in the repository: `docker build` would fail there")


def test_pyproject_accepts_the_image_ray_version():
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(dockerfile_ray_version()), (
        f"pip install . in the image would replace its Ray {dockerfile_ray_version()} ({ray_req})")


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher (ray up)
# ---------------------------------------------------------------------------------------------


def test_launcher_config_validates_against_ray_schema():
    raw = load_yaml(LAUNCHER)
    jsonschema.validate(raw, ray_schema())


def test_launcher_config_passes_ray_up_validation():
    """What `ray up` does before touching AWS: fill in the AWS defaults, then validate_config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load_yaml(LAUNCHER)))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_launcher_config_shape():
    config = load_yaml(LAUNCHER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no GPU worker type"
    for name, t in gpu_types.items():
        assert t.get("min_workers", 0) == 0 and t["max_workers"] >= 1, name
        assert t["max_workers"] <= config["max_workers"], name
        assert t["node_config"]["InstanceType"].startswith(("g", "p")), name
    # The image matches the project's Ray version.
    image = config["docker"]["image"]
    if image.startswith("rayproject/ray:"):
        assert image.split(":")[1].split("-")[0] == dockerfile_ray_version()
    # The code that setup_commands installs is synced there by file_mounts.
    for remote, local in config["file_mounts"].items():
        assert (REPO_ROOT / local).exists(), f"file_mounts source {local} (relative to the repo root) is missing"
        assert any(remote in cmd and "pip install" in cmd for cmd in config["setup_commands"]), remote
    for name in config.get("rsync_filter", []):
        assert (REPO_ROOT / name).is_file(), f"rsync_filter file {name} is not at the repository root"


def test_launcher_validation_can_fail():
    schema = ray_schema()
    config = load_yaml(LAUNCHER)
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 0  # misspelt key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5  # launcher resources are integers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(config)
    del bad["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ---------------------------------------------------------------------------------------------
# KubeRay manifests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_paths(), ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_crd(path):
    manifest = load_yaml(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == ("RayJob" if path.name in RAYJOBS else "RayCluster")
    assert crd_errors(manifest) == []
    assert crd_errors(manifest, strict_fields=True) == [], "unknown fields (kubectl apply would reject them)"


@pytest.mark.parametrize("path", manifest_paths(), ids=lambda p: p.name)
def test_kuberay_manifest_content(path):
    manifest = load_yaml(path)
    spec = cluster_spec(manifest)
    if manifest["kind"] == "RayJob":
        assert manifest["spec"]["shutdownAfterJobFinishes"] is True
        assert manifest["spec"]["entrypoint"].strip()
    assert spec["rayVersion"] == dockerfile_ray_version(), "rayVersion must be the image's Ray version"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(gpus_of(c) >= 1 for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    for group, c in containers(manifest):
        env = {e["name"]: e for e in c.get("env", [])}
        for name in SECRET_ENV:
            assert name in env, f"{path.name}/{group}: no {name}"
            assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{path.name}/{group}: {name} not from a Secret"
            assert "value" not in env[name], f"{path.name}/{group}: {name} written in the manifest"


def test_kuberay_manifests_use_one_image():
    images = {c["image"] for path in manifest_paths() for _, c in containers(load_yaml(path))}
    assert len(images) == 1, f"all Ray pods should run the same dce-batch image, got {sorted(images)}"


def test_kuberay_validation_can_fail():
    job = load_yaml(KUBERAY / "rayjob-enhance.yaml")
    assert crd_errors(job) == []

    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"  # must be a boolean
    assert any("shutdownAfterJobFinishes" in e for e in crd_errors(bad))

    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert any("rayStartParams" in e for e in crd_errors(bad))

    bad = copy.deepcopy(job)
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]  # required
    assert any("groupName" in e for e in crd_errors(bad))

    bad = copy.deepcopy(job)
    limits = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["memory"] = "24 gigs"  # not a Kubernetes quantity
    assert crd_errors(bad)

    # A misspelt field passes the plain schema (jsonschema allows unknown keys) but not strict mode.
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinish"] = True
    assert crd_errors(bad) == []
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(bad, strict_fields=True))

    cluster = load_yaml(KUBERAY / "raycluster.yaml")
    bad = copy.deepcopy(cluster)
    del bad["spec"]["headGroupSpec"]  # required
    assert any("headGroupSpec" in e for e in crd_errors(bad))


# ---------------------------------------------------------------------------------------------
# command lines: entrypoints, README, comments
# ---------------------------------------------------------------------------------------------


def test_commands_are_found():
    assert len(entrypoint_commands()) == len(RAYJOBS)
    subs = {c.sub for c in documented_commands()}
    assert {"enhance", "train"} <= subs, "README should show both enhance and train command lines"


@pytest.mark.parametrize("cmd", all_commands(), ids=repr)
def test_command_uses_known_flags(cmd):
    assert cmd.sub in FLAGS, f"{cmd!r}: unknown command {cmd.sub!r}"
    assert not cmd.unknown, f"{cmd!r}: flags outside the entry point's contract: {cmd.unknown}"
    if cmd.form == "script":
        # `ray job submit --working-dir .` runs it from the repository root.
        assert cmd.script == SCRIPTS[cmd.sub], f"{cmd!r}: expected {SCRIPTS[cmd.sub]}"
    if "--help" in cmd.flags or "-h" in cmd.flags:
        return
    if cmd.sub == "enhance":
        assert len(cmd.positionals) == 2, f"{cmd!r}: expected INPUT OUTPUT"
        if "--num-actors" in cmd.flags:
            assert re.fullmatch(r"\d+(:\d+)?", cmd.flags["--num-actors"] or ""), cmd
        for flag in ("--gpus-per-actor", "--cpus-per-actor"):
            if flag in cmd.flags:
                assert float(cmd.flags[flag]) >= 0, cmd
    else:
        assert not cmd.positionals, f"{cmd!r}: train takes no positional arguments"
        assert "--data" in cmd.flags, cmd


@pytest.mark.parametrize("cmd", entrypoint_commands(), ids=repr)
def test_entrypoint_targets_exist(cmd):
    import tomllib

    if cmd.form == "console-script":
        scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
        assert "dce-batch" in scripts, "pyproject.toml declares no dce-batch console script"
        module = scripts["dce-batch"].split(":")[0]
        assert (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{module} is missing"
    else:
        assert (REPO_ROOT / cmd.script).is_file(), f"{cmd.script} is missing"


def test_enhance_entrypoint_is_the_documented_gpu_job():
    cmd = Command(load_yaml(KUBERAY / "rayjob-enhance.yaml")["spec"]["entrypoint"], "rayjob-enhance")
    assert cmd.sub == "enhance"
    assert all(p.startswith("s3://") for p in cmd.positionals)
    assert cmd.flags["--gpus-per-actor"] == "1" and cmd.flags["--num-actors"] == "1:4"


def test_train_entrypoint_stores_on_s3():
    cmd = Command(load_yaml(KUBERAY / "rayjob-train.yaml")["spec"]["entrypoint"], "rayjob-train")
    assert cmd.sub == "train"
    assert cmd.flags["--storage"].startswith("s3://") and cmd.flags["--data"].startswith("s3://")


@pytest.mark.parametrize("name", RAYJOBS)
def test_entrypoint_fits_the_cluster(name):
    """The GPUs the job asks for (at its maximum) exist in its cluster (at its maximum)."""
    manifest = load_yaml(KUBERAY / name)
    cmd = Command(manifest["spec"]["entrypoint"], name)
    available = max_cluster_gpus(manifest)
    if cmd.sub == "enhance":
        max_actors = int(cmd.flags["--num-actors"].split(":")[-1])
        wanted = max_actors * float(cmd.flags.get("--gpus-per-actor") or 0)
    else:
        wanted = int(cmd.flags["--workers"]) * float(cmd.flags.get("--gpus-per-worker") or 0)
        group = cluster_spec(manifest)["workerGroupSpecs"][0]
        assert group["minReplicas"] == group["maxReplicas"], "a training cluster should be fixed-size"
    assert 0 < wanted <= available, f"{name}: the job wants {wanted} GPUs, the cluster has at most {available}"


def test_launcher_gpu_pool_fits_documented_enhance_command():
    config = load_yaml(LAUNCHER)
    gpus = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0)
               for name, t in config["available_node_types"].items() if name != config["head_node_type"])
    for cmd in documented_commands():
        if cmd.where == "cluster/aws-gpu.yaml" and cmd.sub == "enhance" and "--num-actors" in cmd.flags:
            wanted = int(cmd.flags["--num-actors"].split(":")[-1]) * float(cmd.flags.get("--gpus-per-actor") or 0)
            assert wanted <= gpus, cmd


def test_command_flag_checker_catches_mistakes():
    cmd = Command("dce-batch enhance s3://a/ s3://b/ --gpu-per-actor 1 --num-actors 1:4", "t")
    assert cmd.unknown == ["--gpu-per-actor"]
    cmd = Command("python jobs/train.py --data s3://a/ --worker 2", "t")
    assert cmd.unknown == ["--worker"]
    found = commands_in_text("ray job submit --working-dir . -- \\\n  python jobs/enhance.py in/ out/ \\\n"
                             "    --gpus-per-actor 0.25 --num-actors 1:16", "x.md")
    assert len(found) == 1 and found[0].flags == {"--gpus-per-actor": "0.25", "--num-actors": "1:16"}


def _real_parser(sub: str):
    from dce_batch import cli  # an import error of the project's own CLI fails these tests, never skips them

    return {"enhance": cli.enhance_parser, "train": cli.train_parser}[sub]()


@pytest.mark.parametrize("cmd", [c for c in all_commands() if not {"--help", "-h"} & set(c.flags)], ids=repr)
def test_command_parses_with_the_real_cli(cmd):
    """Every command line in cluster/ is accepted by the project's own argument parser."""
    parser = _real_parser(cmd.sub)
    try:
        parser.parse_args(cmd.args)
    except SystemExit as exc:  # argparse reports the error on stderr and exits 2
        pytest.fail(f"{cmd!r}: rejected by `dce-batch {cmd.sub}` (exit {exc.code})")


def _listed_options(parser) -> set[str]:
    """The option strings ``--help`` lists: each option's line starts with two spaces and a dash,
    and its option strings come before the first run of two spaces (the help text)."""
    options: set[str] = set()
    for line in parser.format_help().splitlines():
        if line.startswith("  -"):
            options |= set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", line.strip().split("  ")[0]))
    return options


def test_listed_options_are_the_options_of_the_usage_line():
    parser = _real_parser("enhance")
    in_usage = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", parser.format_usage()))  # -h for -h/--help
    assert {"--num-actors", "--no-report"} <= in_usage
    assert _listed_options(parser) == in_usage | {"--help"}, "an option missed, or a word of help text taken"


@pytest.mark.parametrize("sub", sorted(FLAGS))
def test_contract_flags_exist_in_the_real_cli(sub):
    real = _listed_options(_real_parser(sub))
    missing = set(FLAGS[sub]) - real
    assert not missing, f"dce-batch {sub} lacks {sorted(missing)}"
