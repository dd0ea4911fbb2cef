"""Tests of dce_batch.storage against the real local filesystem and a real S3 server (moto).

Listing local folders and list files: tests/test_listing.py; S3 errors: tests/test_s3_errors.py.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from dce_batch.errors import ConfigError, CredentialsError, StorageError
from dce_batch.storage import (
    Location,
    S3Options,
    delete_tree_contents,
    exists,
    filesystem_for,
    list_inputs,
    read_bytes,
    write_bytes_atomic,
)
from dce_batch.storage import io as storage_io
from dce_batch.storage.uris import s3_endpoint
from tests.trees import IMAGES, LOCAL, REPO_ROOT, make_files, relpaths


# --- Location ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath",
    ["../x", "/etc/passwd", "a/../../b", "a\\..\\..\\b", "..", "", "a//b", "./a", "a/", "s3://b/k"],
)
def test_child_rejects_escapes(tmp_path: Path, relpath: str) -> None:
    location = Location.parse(str(tmp_path / "out"))
    with pytest.raises(StorageError, match="invalid relative path"):
        location.child(relpath)
    with pytest.raises(StorageError):
        location.child_uri(relpath)


def test_child_and_child_uri_local(tmp_path: Path) -> None:
    location = Location.parse(str(tmp_path / "out") + "/")
    assert location.uri == location.path == str(tmp_path / "out")
    assert location.child("a/b.png") == str(tmp_path / "out/a/b.png")
    assert location.child_uri("a/b.png") == str(tmp_path / "out/a/b.png")
    root = Location.parse("/")
    assert root.child("etc/x") == "/etc/x"


def test_child_s3_and_s3a_normalised() -> None:
    options = S3Options(endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s")
    location = Location.parse("s3a://bucket/out/", options)
    assert location.uri == "s3://bucket/out"
    assert location.path == "bucket/out"
    assert location.child("x/y.jpg") == "bucket/out/x/y.jpg"
    assert location.child_uri("x/y.jpg") == "s3://bucket/out/x/y.jpg"
    assert Location.parse("s3://bucket", options).child_uri("k.jpg") == "s3://bucket/k.jpg"


def test_contains_local_including_symlinks(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "input2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in", target_is_directory=True)
    inp = Location.parse(str(tmp_path / "in"))
    assert inp.contains(inp)
    assert inp.contains(Location.parse(str(tmp_path / "in/sub/out")))  # need not exist yet
    assert inp.contains(Location.parse(str(tmp_path / "link/out")))  # via the symlink
    assert not inp.contains(Location.parse(str(tmp_path / "input2")))
    assert not inp.contains(Location.parse(str(tmp_path)))


def test_contains_s3_prefixes() -> None:
    options = S3Options(endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s")
    other_endpoint = S3Options(endpoint_url="http://127.0.0.1:2", access_key="k", secret_key="s")
    inp = Location.parse("s3://b/in", options)
    assert inp.contains(Location.parse("s3://b/in/out", options))
    assert inp.contains(Location.parse("s3://b/in/", options))
    assert not inp.contains(Location.parse("s3://b/input2", options))
    assert not inp.contains(Location.parse("s3://b2/in/out", options))
    assert not inp.contains(Location.parse("s3://b/in/out", other_endpoint))
    assert Location.parse("s3://b", options).contains(inp)
    assert not inp.contains(Location.parse("/b/in/out"))


def test_location_pickles(tmp_path: Path) -> None:
    location = Location.parse(str(tmp_path))
    clone = pickle.loads(pickle.dumps(location))
    assert clone == location
    assert clone.child("a.jpg") == str(tmp_path / "a.jpg")


# --- reading and writing locally ----------------------------------------------------------


def test_write_bytes_atomic_local(tmp_path: Path) -> None:
    target = tmp_path / "out" / "deep" / "a.png"
    write_bytes_atomic(LOCAL, str(target), b"first")
    write_bytes_atomic(LOCAL, str(target), b"second")  # replaces
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["a.png"]  # no temp files left
    assert exists(LOCAL, str(target))
    assert not exists(LOCAL, str(tmp_path / "out/missing.png"))


def test_write_bytes_atomic_local_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    temp_names: list[str] = []
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        # The data is in the temp file now; record its name, then fail as a full disk would.
        temp_names.extend(n for n in os.listdir(tmp_path) if n != "a.png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage_io.os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match="cannot write .*a.png.*No space left"):
        write_bytes_atomic(LOCAL, str(target), b"new content")
    monkeypatch.setattr(storage_io.os, "fsync", real_fsync)

    assert len(temp_names) == 1
    assert temp_names[0].startswith(".a.png.") and temp_names[0].endswith(".tmp")
    assert target.read_bytes() == b"old"  # the old file was never half-replaced
    assert os.listdir(tmp_path) == ["a.png"]  # the temp file was removed


def test_temp_names_are_recognised_as_debris_and_nothing_else_is() -> None:
    for target in ("out/a.png", "out/sub/b.jpg", "x" * 300 + ".png", "out/.hidden.png"):
        assert re.search(storage_io.TEMP_NAME_PATTERN, storage_io.temp_name(target))
    for path in ("out/a.png", "out/a.png.tmp", "out/.a.png.tmp", "out/.a.png.0123456789ab.tmp/x.png",
                 "out/.a.png.0123456789AB.tmp", "out/a.png.0123456789ab.tmp"):
        assert not re.search(storage_io.TEMP_NAME_PATTERN, path), path


def test_write_into_a_file_parent_is_storage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot write"):
        write_bytes_atomic(LOCAL, str(tmp_path / "f" / "a.png"), b"x")


def test_read_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read .*no such file"):
        read_bytes(LOCAL, str(tmp_path / "nope.jpg"))


def test_read_does_not_decompress(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "a.jpg.gz"
    path.write_bytes(gzip.compress(b"abc"))
    assert read_bytes(LOCAL, str(path)) == path.read_bytes()


def test_delete_tree_contents_local(tmp_path: Path) -> None:
    manifest = tmp_path / "_manifest"
    make_files(manifest, ["a.parquet", "sub/b.json"])
    delete_tree_contents(LOCAL, str(manifest))
    assert manifest.is_dir() and list(manifest.iterdir()) == []
    delete_tree_contents(LOCAL, str(tmp_path / "missing"))  # missing is fine
    with pytest.raises(StorageError, match="refusing"):
        delete_tree_contents(LOCAL, "/")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="not a folder"):
        delete_tree_contents(LOCAL, str(tmp_path / "file"))


def test_fsspec_memory_filesystem_round_trip() -> None:
    location = Location.parse("memory://dce-test/out")
    assert isinstance(location.filesystem, pafs.PyFileSystem)
    path = location.child("a/b.jpg")
    write_bytes_atomic(location.filesystem, path, b"mem")
    assert read_bytes(location.filesystem, path) == b"mem"
    fs, files = list_inputs("memory://dce-test/out", extensions=IMAGES)
    assert relpaths(files) == ["a/b.jpg"]
    assert files[0].uri.startswith("memory://")


def test_non_object_store_fsspec_uses_temp_and_move(tmp_path: Path) -> None:
    import fsspec

    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("file")))
    write_bytes_atomic(fs, str(tmp_path / "d" / "x.png"), b"via fsspec")
    assert (tmp_path / "d" / "x.png").read_bytes() == b"via fsspec"
    assert os.listdir(tmp_path / "d") == ["x.png"]


def test_unknown_scheme_and_missing_fsspec_package() -> None:
    with pytest.raises(StorageError, match="unknown URI scheme"):
        filesystem_for("nosuchscheme://bucket/x")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StorageError, match="pip install gcsfs"):
            filesystem_for("gs://bucket/x")


# --- S3Options (botocore resolution) --------------------------------------------------------


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A clean AWS environment: no AWS_* variables, empty config files, no metadata service.

    Returns a function that writes the config/credentials files and sets variables.
    """
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    config, credentials = tmp_path / "aws_config", tmp_path / "aws_credentials"
    config.write_text("")
    credentials.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def setup(config_text: str = "", credentials_text: str = "", **variables: str) -> None:
        config.write_text(config_text)
        credentials.write_text(credentials_text)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return setup


def test_s3_options_from_env_variables(aws_env, monkeypatch: pytest.MonkeyPatch) -> None:
    aws_env(
        AWS_ENDPOINT_URL="http://global:1",
        AWS_ENDPOINT_URL_S3="http://minio:9000",
        AWS_ACCESS_KEY_ID="AK",
        AWS_SECRET_ACCESS_KEY="SK",
        AWS_SESSION_TOKEN="TOK",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_MAX_ATTEMPTS="4",
    )
    options = S3Options.from_env()
    # Keys are not read: each node's own credential chain finds them.
    assert options == S3Options("http://minio:9000", "eu-west-1", max_attempts=4)
    assert S3Options.from_env(endpoint_url="https://r2.example").endpoint_url == "https://r2.example"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")  # beats AWS_DEFAULT_REGION (monkeypatch restores)
    assert S3Options.from_env().region == "ap-south-1"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert S3Options.from_env().endpoint_url == "http://global:1"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert S3Options.from_env().endpoint_url is None
    assert S3Options.from_env(endpoint_url="http://cli:1").endpoint_url == "http://cli:1"


def test_s3_options_from_env_without_anything(aws_env) -> None:
    assert S3Options.from_env() == S3Options()  # AWS itself, the default chain on each node


def test_s3_options_from_profile_files(aws_env, monkeypatch: pytest.MonkeyPatch) -> None:
    aws_env(
        config_text=(
            "[default]\nregion = us-west-2\n\n"
            "[profile minio]\nregion = eu-central-1\nservices = local-minio\nmax_attempts = 7\n\n"
            "[services local-minio]\ns3 =\n  endpoint_url = http://minio.local:9000\n\n"
            "[profile r2]\nendpoint_url = https://acct.r2.example\n"
        ),
        credentials_text="[minio]\naws_access_key_id = MINIOKEY\naws_secret_access_key = se%cret\n",
    )
    default = S3Options.from_env()
    assert (default.region, default.profile, default.endpoint_url) == ("us-west-2", None, None)

    monkeypatch.setenv("AWS_PROFILE", "minio")
    minio = S3Options.from_env()
    assert minio == S3Options("http://minio.local:9000", "eu-central-1", profile="minio", max_attempts=7)
    assert minio.access_key is None  # the profile's keys stay in its file
    # A services section beats the profile's own endpoint_url; the environment beats both.
    assert S3Options.from_env(profile="r2").endpoint_url == "https://acct.r2.example"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    assert S3Options.from_env().endpoint_url == "http://env:1"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert S3Options.from_env().endpoint_url is None

    monkeypatch.setenv("AWS_PROFILE", "typo")
    with pytest.raises(ConfigError, match="'typo'.*not found"):
        S3Options.from_env()


def test_s3_options_validation() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        S3Options(endpoint_url="127.0.0.1:9000")
    with pytest.raises(ConfigError, match="must not contain a path"):
        S3Options(endpoint_url="http://host:9000/bucket")
    with pytest.raises(ConfigError, match="incomplete"):
        S3Options(access_key="only-the-key")
    with pytest.raises(ConfigError, match="session token"):
        S3Options(session_token="t")
    with pytest.raises(ConfigError, match="anonymous"):
        S3Options(access_key="k", secret_key="s", anonymous=True)
    with pytest.raises(ConfigError, match="max_attempts"):
        S3Options(max_attempts=0)
    with pytest.raises(ConfigError, match="timeouts"):
        S3Options(request_timeout_s=0)
    for wait in (-1, float("nan"), 86_401, "60"):
        with pytest.raises(ConfigError, match=r"outage wait in seconds \(--s3-outage-wait\) must be a number from 0"):
            S3Options(outage_wait_s=wait)
    options = S3Options(access_key="AKID", secret_key="very-secret", session_token="very-token")
    assert "very-secret" not in repr(options) and "very-token" not in repr(options)


def test_filesystem_for_custom_endpoint_defaults_region(aws_env) -> None:
    aws_env(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    fs, path = filesystem_for("s3://bkt/a/b/", S3Options(endpoint_url="https://example.com:8443"))
    assert path == "bkt/a/b"
    assert isinstance(fs, pafs.S3FileSystem)
    assert fs.region == "us-east-1"
    assert s3_endpoint(fs) == "https://example.com:8443"
    with pytest.raises(StorageError, match="s3://bucket/prefix"):
        filesystem_for("s3://", S3Options(endpoint_url="http://x:1"))


def test_no_credentials_at_all_fails_fast(aws_env, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = S3Options(endpoint_url="http://127.0.0.1:1")
    with pytest.raises(CredentialsError, match="no AWS credentials found.*AWS_ACCESS_KEY_ID"):
        filesystem_for("s3://bkt/x", endpoint)
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        filesystem_for("s3://bkt/x", S3Options(region="us-east-1"))  # AWS itself too
    # Half a key pair in the environment is a mistake worth naming.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    with pytest.raises(CredentialsError, match="(?i)partial credentials"):
        filesystem_for("s3://bkt/x", endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    # Public buckets, and keys given in code, need nothing from the environment.
    filesystem_for("s3://bkt/x", S3Options(endpoint_url="http://127.0.0.1:1", anonymous=True))
    filesystem_for("s3://bkt/x", S3Options(endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s"))


def test_failing_credential_process_is_credentials_error(aws_env, tmp_path: Path) -> None:
    script = tmp_path / "broken-credentials.sh"
    script.write_text("#!/bin/sh\necho 'token expired, run aws sso login' >&2\nexit 1\n")
    script.chmod(0o755)
    aws_env(config_text=f"[profile broken]\ncredential_process = {script}\n", AWS_PROFILE="broken")
    with pytest.raises(CredentialsError, match="profile 'broken'.*token expired"):
        filesystem_for("s3://bkt/x", S3Options.from_env(endpoint_url="http://127.0.0.1:1"))


def test_pickled_filesystem_carries_settings_not_credentials(aws_env) -> None:
    secret, token = "s3cr3t-from-env-7f1c", "t0ken-from-env-93ab"
    aws_env(AWS_ACCESS_KEY_ID="AKIDENV", AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token,
            AWS_ENDPOINT_URL="http://127.0.0.1:1", AWS_PROFILE="team",
            config_text="[profile team]\nregion = eu-north-1\nmax_attempts = 6\n")
    location = Location.parse("s3://bkt/out")
    blob = pickle.dumps(location)
    assert secret.encode() not in blob and token.encode() not in blob and b"AKIDENV" not in blob
    clone = pickle.loads(blob)
    assert clone.filesystem.options == S3Options("http://127.0.0.1:1", "eu-north-1", profile="team", max_attempts=6)
    assert clone.filesystem.region == "eu-north-1"
    # Keys given in code are what that caller asked for: they travel with the filesystem.
    explicit = Location.parse("s3://bkt/out", S3Options(endpoint_url="http://127.0.0.1:1", access_key="AKIDCODE",
                                                        secret_key="code-secret", outage_wait_s=42.5))
    clone = pickle.loads(pickle.dumps(explicit))
    assert clone.filesystem.options.secret_key == "code-secret"
    assert clone.filesystem.options.outage_wait_s == 42.5  # workers wait out outages as the driver was told
    assert os.environ["AWS_PROFILE"] == "team"  # building it did not leave the variables changed


# --- S3 end to end (moto_server) ------------------------------------------------------------


@pytest.fixture
def s3_photos(s3_server, s3_bucket: str) -> str:
    for key in ["in/a.jpg", "in/sub/b.PNG", "in/sub/c.txt", "in/.hidden/d.jpg", "in/_manifest/e.jpg",
                "input2/f.jpg", "other/g.jpg"]:
        s3_server.put_object(s3_bucket, key, key.encode())
    return s3_bucket


@pytest.mark.s3
def test_s3_list_prefix_read_write_exists_delete(s3_server, s3_photos: str) -> None:
    options = s3_server.s3_options()
    fs, files = list_inputs(f"s3://{s3_photos}/in/", options, extensions=IMAGES)
    assert isinstance(fs, pafs.S3FileSystem)
    assert relpaths(files) == ["a.jpg", "sub/b.PNG"]  # not input2/, .hidden, _manifest, .txt
    assert files[0].uri == f"s3://{s3_photos}/in/a.jpg"
    assert files[0].size == len("in/a.jpg")
    assert read_bytes(fs, files[1].path) == b"in/sub/b.PNG"

    out = Location.parse(f"s3://{s3_photos}/out", options)
    target = out.child("sub/b.png")
    write_bytes_atomic(out.filesystem, target, b"\x89PNG enhanced")
    assert s3_server.get_object(s3_photos, "out/sub/b.png") == b"\x89PNG enhanced"
    head = s3_server.client().head_object(Bucket=s3_photos, Key="out/sub/b.png")
    assert head["ContentType"] == "image/png"
    # No folder-marker objects, no temp objects: exactly the one key.
    assert s3_server.list_keys(s3_photos, "out/") == ["out/sub/b.png"]
    assert exists(fs, target) and exists(fs, f"{s3_photos}/out")
    assert not exists(fs, f"{s3_photos}/out/nope.png")

    write_bytes_atomic(fs, f"{s3_photos}/out/_manifest/part-0.parquet", b"m")
    delete_tree_contents(fs, f"{s3_photos}/out/_manifest")
    assert [k for k in s3_server.list_keys(s3_photos, "out/_manifest/") if not k.endswith("/")] == []
    delete_tree_contents(fs, f"{s3_photos}/never-written")  # missing is fine
    with pytest.raises(StorageError, match="whole bucket"):
        delete_tree_contents(fs, s3_photos)


@pytest.mark.s3
def test_s3_failed_write_publishes_nothing(s3_server, s3_bucket: str) -> None:
    fs, path = filesystem_for(f"s3://{s3_bucket}/out/a.jpg", s3_server.s3_options())
    with pytest.raises(TypeError):
        write_bytes_atomic(fs, path, None)  # type: ignore[arg-type]
    assert s3_server.list_keys(s3_bucket) == []  # not even an empty object


@pytest.mark.s3
def test_s3_glob_and_single_object(s3_server, s3_photos: str) -> None:
    options = s3_server.s3_options()
    _, files = list_inputs(f"s3://{s3_photos}/in/**/*.[pP][nN][gG]", options, extensions=IMAGES)
    assert relpaths(files) == ["sub/b.PNG"]
    _, files = list_inputs(f"s3://{s3_photos}/*/*.jpg", options, extensions=IMAGES)
    assert relpaths(files) == ["in/a.jpg", "input2/f.jpg", "other/g.jpg"]
    _, files = list_inputs(f"s3://{s3_photos}/other/g.jpg", options, extensions=IMAGES)
    (single,) = files
    assert (single.uri, single.path, single.relpath, single.size) == (
        f"s3://{s3_photos}/other/g.jpg", f"{s3_photos}/other/g.jpg", "g.jpg", 11)
    # HeadObject (how a single object is found) gives its time but no ETag to pyarrow.
    head = s3_server.client().head_object(Bucket=s3_photos, Key="other/g.jpg")
    assert single.mtime == head["LastModified"] and single.etag is None


@pytest.mark.s3
def test_s3_list_file_with_relative_and_absolute_entries(s3_server, s3_photos: str) -> None:
    s3_server.put_object(
        s3_photos,
        "lists/batch.txt",
        f"# batch 1\n../in/a.jpg\ns3://{s3_photos}/other/g.jpg\n".encode(),
    )
    fs, files = list_inputs(f"s3://{s3_photos}/lists/batch.txt", s3_server.s3_options(), extensions=IMAGES)
    assert isinstance(fs, pafs.S3FileSystem)
    assert [f.uri for f in files] == [f"s3://{s3_photos}/in/a.jpg", f"s3://{s3_photos}/other/g.jpg"]
    # Neither entry is below the list file's folder (lists/): each is named bucket/key.
    assert relpaths(files) == [f"{s3_photos}/in/a.jpg", f"{s3_photos}/other/g.jpg"]
    assert read_bytes(fs, files[1].path) == b"other/g.jpg"

    s3_server.put_object(s3_photos, "lists/bad.txt", b"../../elsewhere/x.jpg\n")
    with pytest.raises(ConfigError, match="leaves the bucket"):
        list_inputs(f"s3://{s3_photos}/lists/bad.txt", s3_server.s3_options(), extensions=IMAGES)


@pytest.mark.s3
def test_s3_missing_bucket_is_actionable(s3_server) -> None:
    options = s3_server.s3_options()
    with pytest.raises(StorageError) as caught:
        list_inputs("s3://no-such-bucket-dce/in/", options, extensions=IMAGES)
    message = str(caught.value)
    assert "bucket 'no-such-bucket-dce' does not exist" in message
    assert s3_server.endpoint_url in message and "AWS_ENDPOINT_URL" in message
    fs, path = filesystem_for("s3://no-such-bucket-dce/x.jpg", options)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-dce' does not exist"):
        write_bytes_atomic(fs, path, b"x")


@pytest.mark.s3
def test_s3_empty_prefix_and_unreachable_endpoint(s3_server, s3_bucket: str) -> None:
    with pytest.raises(StorageError, match="no objects under this prefix"):
        list_inputs(f"s3://{s3_bucket}/nothing/", s3_server.s3_options(), extensions=IMAGES)
    with socket.socket() as held:  # a port bound here and never listened on: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        dead = S3Options(endpoint_url=f"http://127.0.0.1:{port}", access_key="k", secret_key="s", max_attempts=2)
        with pytest.raises(StorageError, match=rf"cannot connect to endpoint http://127.0.0.1:{port}"):
            list_inputs(f"s3://{s3_bucket}/x/", dead, extensions=IMAGES)


@pytest.mark.s3
def test_s3_from_env_uses_endpoint_variables(s3_server, s3_photos: str, monkeypatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    _, files = list_inputs(f"s3://{s3_photos}/other", extensions=IMAGES)  # s3=None -> from_env
    assert relpaths(files) == ["g.jpg"]


_WORKER = """
import pickle, sys
fs, path = pickle.loads(sys.stdin.buffer.read())
from dce_batch.storage import read_bytes, write_bytes_atomic
write_bytes_atomic(fs, path + ".copy", read_bytes(fs, path))
print("ok")
"""


@pytest.mark.s3
def test_pickled_s3_filesystem_works_without_any_aws_env(s3_server, s3_photos: str, monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    fs, files = list_inputs(f"s3://{s3_photos}/in", s3_server.s3_options(), extensions=IMAGES)
    clone = pickle.loads(pickle.dumps(fs))
    assert read_bytes(clone, files[0].path) == b"in/a.jpg"

    # What a Ray worker on another node sees: a fresh process, no AWS_* variables, no ~/.aws.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME="/nonexistent", AWS_EC2_METADATA_DISABLED="true",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    location = Location.parse(f"s3://{s3_photos}/in", s3_server.s3_options())
    result = subprocess.run(
        [sys.executable, "-c", _WORKER],
        input=pickle.dumps((location.filesystem, location.child("a.jpg"))),
        env=env, capture_output=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert s3_server.get_object(s3_photos, "in/a.jpg.copy") == b"in/a.jpg"


# --- credentials resolved on each node (moto that checks them) ------------------------------


def _credential_process_profile(tmp_path: Path, name: str, access_key: str, secret_key: str) -> tuple[Path, Path]:
    """A config file whose profile ``name`` gets its keys from a credential_process script that
    logs each call. Returns (config file, call log)."""
    calls = tmp_path / f"{name}-calls.log"
    script = tmp_path / f"{name}-credentials.sh"
    payload = json.dumps({"Version": 1, "AccessKeyId": access_key, "SecretAccessKey": secret_key})
    script.write_text(f"#!/bin/sh\necho called >> '{calls}'\necho '{payload}'\n")
    script.chmod(0o755)
    config = tmp_path / f"{name}-config"
    config.write_text(f"[profile {name}]\ncredential_process = {script}\nregion = us-east-1\n")
    return config, calls


_NODE = """
import pickle, sys
fs, path = pickle.loads(sys.stdin.buffer.read())
from dce_batch.storage import read_bytes, write_bytes_atomic
write_bytes_atomic(fs, path + ".copy", read_bytes(fs, path))
print("ok")
"""


@pytest.mark.s3
def test_profile_name_travels_and_each_node_resolves_its_credentials(
    s3_auth_server, tmp_path: Path, aws_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node given the pickled filesystem uses the driver's profile *name* with its own config
    and credential_process; no key travels, and without the profile name it is refused."""
    bucket = "creds-" + uuid.uuid4().hex[:12]
    s3_auth_server.make_bucket(bucket)
    s3_auth_server.put_object(bucket, "in/a.jpg", b"payload")
    config, calls = _credential_process_profile(tmp_path, "dce-proc", *s3_auth_server.create_user("proc-user"))
    aws_env(AWS_PROFILE="dce-proc", AWS_ENDPOINT_URL=s3_auth_server.endpoint_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))

    location = Location.parse(f"s3://{bucket}/in")  # the driver: from_env, profile dce-proc
    assert relpaths(list_inputs(location.uri, extensions=IMAGES)[1]) == ["a.jpg"]
    with_profile = pickle.dumps((location.filesystem, location.child("a.jpg")))
    assert b"proc-user" not in with_profile and s3_auth_server.secret_key.encode() not in with_profile
    without_profile = pickle.dumps((
        Location.parse(f"s3://{bucket}/in", S3Options(s3_auth_server.endpoint_url, "us-east-1")).filesystem,
        location.child("a.jpg"),
    ))

    # The node: the same config file as the driver (its own ~/.aws), but no AWS_PROFILE.
    node_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    node_env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                    AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path),
                    PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    calls_before = calls.read_text().count("called")
    result = subprocess.run([sys.executable, "-c", _NODE], input=with_profile, env=node_env,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert s3_auth_server.get_object(bucket, "in/a.jpg.copy") == b"payload"
    assert calls.read_text().count("called") > calls_before  # the node ran credential_process

    refused = subprocess.run([sys.executable, "-c", _NODE], input=without_profile, env=node_env,
                             capture_output=True, timeout=120, check=False)
    assert refused.returncode != 0
    assert b"StorageError: cannot read" in refused.stderr and b"access denied" in refused.stderr


# --- credentials end to end: the CLI on a real Ray -----------------------------------------


def _jpeg(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((40, 56, 3)) * 70).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _cli_env(ray_tmp: str, **aws: str) -> dict[str, str]:
    """The environment of a user's shell: their AWS_* variables, a Ray of the job's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", RAY_TMPDIR=ray_tmp, **aws)
    return env


def _manifest_rows(s3_server, bucket: str) -> list[dict]:
    from dce_batch.job.manifest import read_manifest

    return read_manifest(f"s3://{bucket}/out", s3=s3_server.s3_options()).to_pylist()


@pytest.mark.s3
@pytest.mark.ray
@pytest.mark.slow
def test_cli_never_writes_credentials_anywhere(s3_server, s3_bucket: str) -> None:
    """Secret and session token appear in no output, log, manifest or summary, also when an
    input fails and a read fails."""
    secret = "dceSECRET" + uuid.uuid4().hex
    token = "dceTOKEN" + uuid.uuid4().hex
    for i in range(3):
        s3_server.put_object(s3_bucket, f"in/ok{i}.jpg", _jpeg(i))
    s3_server.put_object(s3_bucket, "in/corrupt.jpg", b"\xff\xd8\xff this is not a JPEG")
    s3_server.put_object(s3_bucket, "lists/batch.txt",
                         b"../in/ok0.jpg\n../in/ok1.jpg\n../in/ok2.jpg\n../in/corrupt.jpg\n../in/missing.jpg\n")
    with tempfile.TemporaryDirectory(prefix="dce-ray-", dir="/tmp") as ray_tmp:
        env = _cli_env(ray_tmp, AWS_ENDPOINT_URL=s3_server.endpoint_url, AWS_ACCESS_KEY_ID="AKIADCELEAKTEST",
                       AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token, AWS_REGION="us-east-1")
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "jobs" / "enhance.py"), f"s3://{s3_bucket}/lists/batch.txt",
             f"s3://{s3_bucket}/out/", "--num-actors", "1"],
            cwd=REPO_ROOT, env=env, capture_output=True, timeout=600, check=False,
        )
        assert result.returncode == 3, result.stderr.decode()[-3000:]  # the job ran; 2 inputs failed
        ray_files = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_symlink()]
        places = {"stdout": result.stdout, "stderr": result.stderr}
        places.update({str(p): p.read_bytes() for p in ray_files if p.stat().st_size < 200_000_000})

    rows = {r["input_uri"].rsplit("/", 1)[1]: r for r in _manifest_rows(s3_server, s3_bucket)}
    assert {name: r["status"] for name, r in rows.items()} == {
        "ok0.jpg": "ok", "ok1.jpg": "ok", "ok2.jpg": "ok", "corrupt.jpg": "error", "missing.jpg": "error"}
    assert rows["missing.jpg"]["error"].startswith("StorageError: cannot read")
    assert rows["corrupt.jpg"]["error"].startswith(("CorruptImageError", "UnsupportedImageError"))
    outputs = [k for k in s3_server.list_keys(s3_bucket, "out/")]
    assert any(k.startswith("out/_manifest/part-") for k in outputs)
    assert any(k.startswith("out/_manifest/_run-") and k.endswith(".json") for k in outputs)
    places.update({f"s3://{s3_bucket}/{k}": s3_server.get_object(s3_bucket, k) for k in outputs})

    assert sum(1 for name in places if name.endswith(".log") or name.endswith(".out") or name.endswith(".err")) >= 5
    print(f"searched {len(places)} places for the secret and token:", sorted(places)[:8], "...")
    for needle in (secret, token):
        leaks = [name for name, data in places.items() if needle.encode() in data]
        assert not leaks, f"credential found in {leaks}"


@pytest.mark.s3
@pytest.mark.ray
@pytest.mark.slow
def test_cli_with_a_credential_process_profile(s3_auth_server, tmp_path: Path) -> None:
    """A profile whose keys come from credential_process works end to end: the driver and the
    Ray workers each run the process (the server rejects anything else)."""
    bucket = "proc-" + uuid.uuid4().hex[:12]
    s3_auth_server.make_bucket(bucket)
    for i in range(3):
        s3_auth_server.put_object(bucket, f"in/img{i}.jpg", _jpeg(i))
    access_key, secret_key = s3_auth_server.create_user("cli-proc-user")
    calls = tmp_path / "calls.log"
    script = tmp_path / "credentials.sh"
    payload = json.dumps({"Version": 1, "AccessKeyId": access_key, "SecretAccessKey": secret_key})
    # Logs the process that asked (through the shell that popen may put in between).
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        p=$PPID
        if [ "$(cat /proc/$p/comm)" = "sh" ]; then p=$(awk '/^PPid:/ {{print $2}}' /proc/$p/status); fi
        echo "$p" >> '{calls}'
        echo '{payload}'
        """))
    script.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(f"[profile dce-proc]\ncredential_process = {script}\nregion = us-east-1\n")

    with tempfile.TemporaryDirectory(prefix="dce-ray-", dir="/tmp") as ray_tmp:
        env = _cli_env(ray_tmp, AWS_PROFILE="dce-proc", AWS_CONFIG_FILE=str(config),
                       AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                       AWS_ENDPOINT_URL=s3_auth_server.endpoint_url)
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "jobs" / "enhance.py"), f"s3://{bucket}/in/", f"s3://{bucket}/out/",
             "--num-actors", "1"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()[-3000:]
    keys = s3_auth_server.list_keys(bucket, "out/")
    assert {"out/img0.jpg", "out/img1.jpg", "out/img2.jpg"} <= set(keys)
    callers = set(calls.read_text().split())
    assert str(process.pid) in callers  # the driver (listing, manifest, summary)
    assert callers - {str(process.pid)}, "no Ray worker resolved credentials itself"


@pytest.mark.s3
def test_environment_keys_beat_the_profile_for_listing_too(s3_server, s3_photos: str, aws_env) -> None:
    """As in the AWS SDKs, keys in the environment win over AWS_PROFILE, also for the driver's
    paged listing (botocore would otherwise look only at the profile, which has no keys)."""
    aws_env(config_text="[profile region-only]\nregion = us-east-1\n", AWS_PROFILE="region-only",
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_ENDPOINT_URL=s3_server.endpoint_url)
    from dce_batch.storage import list_inputs_table

    _, table = list_inputs_table(f"s3://{s3_photos}/in/", extensions=IMAGES)
    assert table.column("relpath").to_pylist() == ["a.jpg", "sub/b.PNG"]
