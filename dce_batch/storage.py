"""Paths and URIs on local disks and object storage, behind one small API.

Everything here works on :mod:`pyarrow.fs` filesystems so one code path serves local folders,
S3 and S3-compatible stores (MinIO, Cloudflare R2, Ceph, moto) natively, and other stores
(``gs://``, ``az://``, ``hf://``, ``memory://`` ...) through fsspec.

Two properties matter for running on Ray:

* Every filesystem, :class:`Location` and :class:`InputFile` pickles, and an S3 filesystem carries
  its endpoint, region and keys *inside* the pickle. A Ray worker on another node has neither the
  driver's environment variables nor its ``~/.aws`` files, so it must not need them.
* Writes are atomic: a file appears under its final name only once it is complete, so a crash or
  a pre-empted node never leaves a half-written image that a later run would mistake for done.

This module imports no Ray, so it can be tested with plain pytest.
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import mimetypes
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import ConfigError, StorageError

__all__ = [
    "LIST_FILE_SUFFIXES",
    "MANIFEST_DIR",
    "InputFile",
    "Location",
    "S3Options",
    "delete_tree_contents",
    "exists",
    "filesystem_for",
    "list_files",
    "list_inputs",
    "read_bytes",
    "write_bytes_atomic",
]

#: Suffixes that make an INPUT a *list file* of image URIs rather than an image.
LIST_FILE_SUFFIXES = (".parquet", ".csv", ".txt", ".lst")

#: Folder that holds run manifests under OUTPUT; never treated as input.
MANIFEST_DIR = "_manifest"

_S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})
_LOCAL_SCHEMES = frozenset({"", "file"})
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)
_GLOB_CHARS = frozenset("*?[")

# Used when a custom endpoint is given without a region: MinIO, moto and most S3-compatibles
# accept any region, and signing needs *some* region.
_DEFAULT_ENDPOINT_REGION = "us-east-1"

# fsspec protocols whose single upload is already atomic (the object appears only when complete).
# Other fsspec filesystems (sftp, smb, ...) get a temp file + rename like local disks.
_OBJECT_STORE_PROTOCOLS = frozenset(
    {"gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "hf", "memory", "r2", "b2", "wasb", "wasbs"}
)

# Package to ``pip install`` per fsspec scheme, for the "missing implementation" message.
_FSSPEC_PACKAGES = {
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "adl": "adlfs",
    "hf": "huggingface_hub",
    "http": "aiohttp requests",
    "https": "aiohttp requests",
    "sftp": "paramiko",
    "ssh": "paramiko",
    "oss": "ossfs",
}


# --------------------------------------------------------------------------------------------
# S3 options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 or an S3-compatible store.

    Fields left ``None`` fall back to the AWS SDK's default chain *on each node* (IAM roles,
    instance metadata), which is what you want on AWS. Secrets are hidden from ``repr`` so they
    never end up in logs.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _split_endpoint(self.endpoint_url)  # validates; raises ConfigError
        if bool(self.access_key) != bool(self.secret_key):
            raise ConfigError(
                "S3 credentials are incomplete: set both the access key (AWS_ACCESS_KEY_ID / "
                "aws_access_key_id) and the secret key (AWS_SECRET_ACCESS_KEY / "
                "aws_secret_access_key), or neither to use the default credential chain"
            )
        if self.session_token and not self.access_key:
            raise ConfigError(
                "an S3 session token (AWS_SESSION_TOKEN) was given without an access key and "
                "secret key; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY too"
            )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, endpoint_url: str | None = None
    ) -> S3Options:
        """Options from the standard AWS variables and shared config files.

        Precedence follows the AWS SDKs: an explicit ``endpoint_url`` (the CLI's
        ``--s3-endpoint``) beats ``AWS_ENDPOINT_URL_S3``, which beats ``AWS_ENDPOINT_URL``,
        which beats the profile's ``endpoint_url``; keys in the environment beat the profile's;
        ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` beat the profile's region.

        The profile (``AWS_PROFILE``, else ``default`` if present) is read here, on the driver,
        with :mod:`configparser` because the keys must travel inside the pickled filesystem to
        Ray workers that have no ``~/.aws`` of their own. The files are
        ``AWS_SHARED_CREDENTIALS_FILE`` / ``AWS_CONFIG_FILE`` from ``env`` (default
        ``~/.aws/credentials`` / ``~/.aws/config``). A profile without static keys (SSO, roles)
        leaves the keys None: each node then uses its own default credential chain.
        """
        env = os.environ if env is None else env
        access_key = _env(env, "AWS_ACCESS_KEY_ID")
        secret_key = _env(env, "AWS_SECRET_ACCESS_KEY")
        session_token = _env(env, "AWS_SESSION_TOKEN")
        region = _env(env, "AWS_REGION", "AWS_DEFAULT_REGION")
        ignore_configured = (_env(env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").lower() in (
            "1",
            "true",
        )
        env_endpoint = (
            None if ignore_configured else _env(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        )
        profile_name = _env(env, "AWS_PROFILE", "AWS_DEFAULT_PROFILE")

        profile: dict[str, str] = {}
        if profile_name or not access_key:
            # An explicitly named profile must exist; the implicit "default" may be absent.
            profile = _read_profile(profile_name or "default", env, required=bool(profile_name))

        if not access_key and profile:
            access_key = profile.get("aws_access_key_id")
            secret_key = profile.get("aws_secret_access_key")
            session_token = profile.get("aws_session_token")
        if not access_key:
            # Keys come as a set; a lone token from the environment is meaningless without them.
            session_token = None

        endpoint = endpoint_url or env_endpoint
        if endpoint is None and not ignore_configured:
            endpoint = profile.get("endpoint_url")

        return cls(
            endpoint_url=endpoint or None,
            region=region or profile.get("region") or None,
            access_key=access_key or None,
            secret_key=secret_key or None,
            session_token=session_token or None,
            profile=profile_name or ("default" if profile else None),
        )


def _env(env: Mapping[str, str], *names: str) -> str | None:
    """First non-empty value among ``names`` (AWS treats an empty variable as unset)."""
    for name in names:
        value = env.get(name)
        if value:
            return value.strip()
    return None


def _read_ini(path: Path) -> configparser.ConfigParser:
    """Parse an AWS shared config/credentials file; missing is an empty file."""
    # No interpolation: secret keys may contain "%".
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse AWS config file {path}: {exc}") from exc
    return parser


def _nested(value: str) -> dict[str, str]:
    """Parse an AWS nested setting (``s3 =\\n  endpoint_url = ...``) into a dict."""
    result: dict[str, str] = {}
    for line in value.splitlines():
        key, sep, val = line.partition("=")
        if sep:
            result[key.strip().lower()] = val.strip()
    return result


def _read_profile(name: str, env: Mapping[str, str], *, required: bool) -> dict[str, str]:
    """Settings of AWS profile ``name`` from the credentials and config files, merged.

    Returns lowercase keys ``aws_access_key_id``, ``aws_secret_access_key``,
    ``aws_session_token``, ``region`` and ``endpoint_url`` where present.
    """
    cred_path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()
    config_path = Path(env.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    credentials = _read_ini(cred_path)
    config = _read_ini(config_path)

    # The credentials file names sections "name"; the config file "profile name" (but "default").
    config_section = "default" if name == "default" else f"profile {name}"
    found_cred = credentials.has_section(name)
    found_config = config.has_section(config_section) or (
        name == "default" and config.has_section("profile default")
    )
    if not (found_cred or found_config):
        if required:
            raise ConfigError(
                f"AWS profile {name!r} (AWS_PROFILE) not found: no [{name}] section in "
                f"{cred_path} and no [{config_section}] section in {config_path}; fix "
                "AWS_PROFILE or set AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE"
            )
        return {}

    settings: dict[str, str] = {}
    if found_config:
        if not config.has_section(config_section):
            config_section = "profile default"  # also accepted by the AWS CLI
        section = config[config_section]
        settings.update({k: v.strip() for k, v in section.items() if "\n" not in v.strip()})
        # Endpoint precedence within the config file: service-specific first.
        endpoint = _nested(section.get("s3", "")).get("endpoint_url")
        services = section.get("services")
        if services and config.has_section(f"services {services}"):
            endpoint = _nested(config[f"services {services}"].get("s3", "")).get(
                "endpoint_url", endpoint
            )
        if endpoint:
            settings["endpoint_url"] = endpoint
    if found_cred:
        # The credentials file wins over keys written in the config file, as in the AWS CLI.
        settings.update({k: v.strip() for k, v in credentials[name].items()})
    return {k: v for k, v in settings.items() if v}


def _split_endpoint(endpoint_url: str) -> tuple[str, str]:
    """``"http://host:9000"`` -> ``("http", "host:9000")``; ConfigError if it is not a URL."""
    parts = urlsplit(endpoint_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"invalid S3 endpoint {endpoint_url!r}: write it as a URL with its scheme, e.g. "
            "http://127.0.0.1:9000 or https://<account>.r2.cloudflarestorage.com "
            "(AWS_ENDPOINT_URL / --s3-endpoint)"
        )
    if parts.path.strip("/") or parts.query:
        raise ConfigError(
            f"invalid S3 endpoint {endpoint_url!r}: it must not contain a path; put the bucket "
            "in the s3:// URI instead (s3://bucket/prefix)"
        )
    return parts.scheme, parts.netloc


@functools.lru_cache(maxsize=256)
def _aws_bucket_region(bucket: str) -> str | None:
    """The AWS region of ``bucket``, or None if it cannot be found out (no network, no bucket).

    Asked once on the driver so that workers, whose environment may lack AWS_REGION, are sent a
    filesystem already pointed at the right region instead of failing with redirects.
    """
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None


def _s3_filesystem(options: S3Options, bucket: str) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with every setting explicit, so its pickle is self-contained."""
    if options.profile and not options.access_key:
        # A profile named directly in S3Options (not via from_env): resolve its keys here too.
        # Not required: from_env may have found it through files this process's env does not
        # name, and a profile without static keys (SSO, roles) is served by the default chain.
        profile = _read_profile(options.profile, os.environ, required=False)
        if profile.get("aws_access_key_id"):
            options = dataclasses.replace(
                options,
                access_key=profile.get("aws_access_key_id"),
                secret_key=profile.get("aws_secret_access_key"),
                session_token=profile.get("aws_session_token"),
                region=options.region or profile.get("region"),
                endpoint_url=options.endpoint_url or profile.get("endpoint_url"),
            )

    kwargs: dict[str, object] = {}
    region = options.region
    if options.endpoint_url:
        # pyarrow's S3FileSystem does not read AWS_ENDPOINT_URL itself; pass it through.
        scheme, netloc = _split_endpoint(options.endpoint_url)
        kwargs.update(endpoint_override=netloc, scheme=scheme)
        region = region or _DEFAULT_ENDPOINT_REGION
    elif region is None:
        region = _aws_bucket_region(bucket)
    if region:
        kwargs["region"] = region
    if options.access_key:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key)
        if options.session_token:
            kwargs["session_token"] = options.session_token
    try:
        # Delayed open turns a small write into one PUT instead of a 3-request multipart upload.
        return pafs.S3FileSystem(allow_delayed_open=True, **kwargs)
    except TypeError:  # pyarrow < 16 has no allow_delayed_open
        return pafs.S3FileSystem(**kwargs)


# --------------------------------------------------------------------------------------------
# URIs and filesystems
# --------------------------------------------------------------------------------------------


def _split_scheme(uri: str) -> tuple[str, str]:
    """``"s3://b/k"`` -> ``("s3", "b/k")``; a plain path -> ``("", path)``."""
    match = _SCHEME_RE.match(uri)
    if match is None:
        return "", uri
    return match.group(1).lower(), match.group(2)


def _local_path(scheme: str, rest: str) -> str:
    """Absolute, normalised local path of a plain path or ``file://`` URI."""
    if scheme == "file":
        parts = urlsplit("file://" + rest)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(
                f"cannot open file://{rest}: file URIs on another host are not supported; "
                "mount the share and use its local path"
            )
        rest = unquote(parts.path)
    path = os.path.abspath(os.path.expanduser(rest))
    return path


def _require_uri(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("an empty path or URI was given; pass a folder, file or s3:// URI")
    return uri.strip()


def filesystem_for(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path of ``uri`` inside it.

    * local paths and ``file://`` -> ``(LocalFileSystem, absolute path)``
    * ``s3://`` / ``s3a://`` -> ``(S3FileSystem, "bucket/key")``; ``s3=None`` means
      :meth:`S3Options.from_env`
    * other schemes -> fsspec, wrapped for pyarrow, if its implementation is installed

    Trailing slashes are dropped from the returned path.
    """
    uri = _require_uri(uri)
    scheme, rest = _split_scheme(uri)
    if scheme in _LOCAL_SCHEMES:
        return pafs.LocalFileSystem(), _local_path(scheme, rest)
    if scheme in _S3_SCHEMES:
        path = rest.strip("/")
        bucket = path.split("/", 1)[0]
        if not bucket:
            raise StorageError(f"invalid URI {uri!r}: write it as s3://bucket/prefix")
        options = s3 if s3 is not None else S3Options.from_env()
        return _s3_filesystem(options, bucket), path
    return _fsspec_filesystem(uri, scheme)


def _fsspec_filesystem(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow wrapper around fsspec's implementation of ``scheme``."""
    import fsspec  # imported lazily: only needed for non-S3 object stores

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        package = _FSSPEC_PACKAGES.get(scheme, "the package named above")
        raise StorageError(
            f"cannot open {uri}: {scheme}:// needs an extra package ({exc}); "
            f"run `pip install {package}` on every node of the cluster"
        ) from exc
    except ValueError as exc:
        raise StorageError(
            f"cannot open {uri}: unknown URI scheme {scheme}://; use a local path, s3:// "
            "(also for MinIO/R2 with --s3-endpoint) or a scheme fsspec supports (gs://, az://, ...)"
        ) from exc
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError, OSError) as exc:
        raise StorageError(f"cannot open {uri}: {exc}") from exc
    path = path.rstrip("/") or path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _fsspec_protocol(fs: pafs.FileSystem) -> str | None:
    """fsspec protocol of a wrapped fsspec filesystem, else None."""
    if not isinstance(fs, pafs.PyFileSystem):
        return None
    inner = getattr(fs.handler, "fs", None)
    protocol = getattr(inner, "protocol", None)
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else None
    return protocol


def _s3_endpoint(fs: pafs.FileSystem) -> str | None:
    """``"http://host:port"`` of a custom-endpoint S3 filesystem, else None (AWS itself)."""
    if not isinstance(fs, pafs.S3FileSystem):
        return None
    try:
        options = fs.__reduce__()[1][0]  # the settings pyarrow pickles; no public accessor
    except (AttributeError, IndexError, TypeError):
        return None
    endpoint = options.get("endpoint_override") if isinstance(options, dict) else None
    if not endpoint:
        return None
    return f"{options.get('scheme') or 'https'}://{endpoint}"


def _uri_prefix(fs: pafs.FileSystem) -> str:
    """What to put before a filesystem path to get a URI (empty for local paths)."""
    if isinstance(fs, pafs.S3FileSystem):
        return "s3://"
    protocol = _fsspec_protocol(fs)
    if protocol is not None:
        return f"{protocol}://"
    return ""


def _display(fs: pafs.FileSystem, path: str) -> str:
    return _uri_prefix(fs) + path


def _fs_kind(fs: pafs.FileSystem) -> tuple[str, str | None]:
    """What makes two filesystems the same storage: type and (for S3) endpoint."""
    if isinstance(fs, pafs.S3FileSystem):
        return ("s3", _s3_endpoint(fs))
    protocol = _fsspec_protocol(fs)
    if protocol is not None:
        return ("fsspec", protocol)
    return (fs.type_name, None)


def _storage_error(exc: BaseException, action: str, fs: pafs.FileSystem, path: str) -> StorageError:
    """Turn a low-level error into a StorageError that says what to check."""
    where = _display(fs, path)
    text = str(exc)
    upper = text.upper()
    is_s3 = isinstance(fs, pafs.S3FileSystem)
    endpoint = _s3_endpoint(fs) if is_s3 else None
    endpoint_text = f"endpoint {endpoint}" if endpoint else "the AWS endpoint"

    if is_s3 and ("NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper):
        bucket = path.split("/", 1)[0]
        reason = (
            f"bucket {bucket!r} does not exist ({endpoint_text}; check the bucket name and "
            "AWS_ENDPOINT_URL / --s3-endpoint)"
        )
    elif is_s3 and ("NETWORK_CONNECTION" in upper or "CURLCODE" in upper):
        reason = (
            f"cannot connect to {endpoint_text} (check AWS_ENDPOINT_URL / --s3-endpoint and that "
            "the server is running and reachable from this node)"
        )
    elif is_s3 and any(
        marker in upper
        for marker in (
            "ACCESS_DENIED",
            "ACCESSDENIED",
            "INVALID_ACCESS_KEY_ID",
            "INVALIDACCESSKEYID",
            "SIGNATURE_DOES_NOT_MATCH",
            "SIGNATUREDOESNOTMATCH",
            "EXPIRED_TOKEN",
            "EXPIREDTOKEN",
            "HTTP RESPONSE CODE: 403",
        )
    ):
        reason = (
            f"access denied by {endpoint_text} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "/ AWS_SESSION_TOKEN or AWS_PROFILE, and that they may access this bucket)"
        )
    elif isinstance(exc, FileNotFoundError):
        reason = "no such file or object"
    elif isinstance(exc, PermissionError):
        reason = "permission denied (check the folder's owner and permissions)"
    elif isinstance(exc, IsADirectoryError):
        reason = "it is a folder, not a file"
    elif isinstance(exc, NotADirectoryError):
        reason = "a parent of it is a file, not a folder"
    else:
        reason = text or type(exc).__name__
    return StorageError(f"cannot {action} {where}: {reason}")


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def _validate_relpath(relpath: str) -> list[str]:
    """The parts of a safe relative path; StorageError for anything that could escape."""
    if not isinstance(relpath, str) or not relpath:
        raise StorageError("invalid relative path '': it is empty")
    problem = None
    if "\\" in relpath:
        problem = "it contains a backslash"
    elif "\0" in relpath:
        problem = "it contains a NUL character"
    elif relpath.startswith("/"):
        problem = "it is absolute"
    elif _SCHEME_RE.match(relpath):
        problem = "it is a URI, not a relative path"
    parts = relpath.split("/")
    if problem is None:
        if any(part in ("", ".", "..") for part in parts):
            problem = "it has empty, '.' or '..' parts"
    if problem is not None:
        raise StorageError(
            f"invalid relative path {relpath!r}: {problem}; an input name can never place an "
            "output outside the output folder"
        )
    return parts


def _join(base: str, parts: list[str]) -> str:
    """``base`` + ``/`` + parts, without doubling the separator at a root."""
    tail = "/".join(parts)
    if base in ("", "/"):
        return base + tail
    return base.rstrip("/") + "/" + tail


def _is_within(folder: str, path: str) -> bool:
    """``path`` is ``folder`` or below it (string-wise, on normalised paths)."""
    folder = folder.rstrip("/")
    path = path.rstrip("/")
    return folder == "" or path == folder or path.startswith(folder + "/")


@dataclass(frozen=True)
class Location:
    """A folder (or object-store prefix) on some filesystem; picklable for Ray.

    ``uri`` is normalised: no trailing slash, ``s3a://`` written ``s3://``, local paths
    absolute. ``path`` is the folder's path inside ``filesystem``.
    """

    uri: str
    filesystem: pafs.FileSystem = field(compare=False)
    path: str

    @classmethod
    def parse(cls, uri: str, s3: S3Options | None = None) -> Location:
        """The Location of a folder/prefix URI (it need not exist yet)."""
        fs, path = filesystem_for(uri, s3)
        return cls(uri=_display(fs, path), filesystem=fs, path=path)

    def child(self, relpath: str) -> str:
        """Filesystem path of ``relpath`` (``"/"``-separated) under this folder.

        Raises StorageError if ``relpath`` is absolute, has ``..``/``.``/empty parts or
        backslashes: input keys come from users and buckets, and must never make an output
        path escape the output folder.
        """
        joined = _join(self.path, _validate_relpath(relpath))
        # Belt and braces: the parts check above already rules escapes out.
        if not _is_within(self.path, posixpath.normpath(joined)):
            raise StorageError(f"invalid relative path {relpath!r}: it escapes {self.uri}")
        return joined

    def child_uri(self, relpath: str) -> str:
        """Like :meth:`child`, as a full URI (``s3://bucket/prefix/rel`` or a local path)."""
        return _display(self.filesystem, self.child(relpath))

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this folder or inside it, on the same storage.

        Local paths are compared after resolving symlinks, so an OUTPUT reached through a link
        into INPUT is caught. Object-store prefixes compare whole path segments:
        ``s3://b/in`` contains ``s3://b/in/x`` but not ``s3://b/input2``.
        """
        if _fs_kind(self.filesystem) != _fs_kind(other.filesystem):
            return False
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return _is_within(os.path.realpath(self.path), os.path.realpath(other.path))
        return _is_within(self.path.strip("/"), other.path.strip("/"))


# --------------------------------------------------------------------------------------------
# Listing inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input image.

    ``relpath`` is ``"/"``-separated and relative to the input root; it is what gets mirrored
    under OUTPUT. ``size`` is None when unknown (list files are not stat-ed, to stay fast).
    """

    uri: str
    path: str
    relpath: str
    size: int | None

    @property
    def root(self) -> str:
        """Filesystem path of the input root this file's ``relpath`` is relative to."""
        return self.path[: len(self.path) - len(self.relpath)].rstrip("/") or "/"


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """``["JPG", ".png"]`` -> ``{".jpg", ".png"}``."""
    if isinstance(extensions, str):
        extensions = [extensions]
    result = frozenset(
        ("." + ext.strip().lstrip(".")).lower() for ext in extensions if ext.strip().lstrip(".")
    )
    if not result:
        raise ConfigError("no image extensions given; pass e.g. .jpg, .jpeg, .png")
    return result


def _skipped(relpath: str) -> bool:
    """Hidden files/folders and anything in a ``_manifest`` folder are never inputs."""
    parts = relpath.split("/")
    return any(part.startswith(".") for part in parts) or MANIFEST_DIR in parts[:-1]


def _has_extension(name: str, extensions: frozenset[str]) -> bool:
    return posixpath.splitext(name)[1].lower() in extensions


def _relative(base: str, path: str) -> str:
    base = base.rstrip("/")
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return path.lstrip("/")


def _get_info(fs: pafs.FileSystem, target, action: str, path: str):
    """``fs.get_file_info`` with errors turned into StorageError."""
    try:
        return fs.get_file_info(target)
    except OSError as exc:
        raise _storage_error(exc, action, fs, path) from exc


def _missing_error(fs: pafs.FileSystem, path: str, uri: str) -> StorageError:
    """Explain why nothing exists at ``path``, naming the thing to check."""
    if isinstance(fs, pafs.S3FileSystem):
        bucket = path.split("/", 1)[0]
        endpoint = _s3_endpoint(fs)
        endpoint_text = f"endpoint {endpoint}" if endpoint else "the AWS endpoint"
        bucket_info = _get_info(fs, bucket, "list", bucket)
        if bucket_info.type == pafs.FileType.NotFound:
            return StorageError(
                f"cannot list {uri}: bucket {bucket!r} does not exist ({endpoint_text}; check the "
                "bucket name and AWS_ENDPOINT_URL / --s3-endpoint, and that the credentials in "
                "AWS_ACCESS_KEY_ID / AWS_PROFILE belong to that endpoint)"
            )
        return StorageError(f"cannot list {uri}: no objects under this prefix in bucket {bucket!r}")
    if isinstance(fs, pafs.LocalFileSystem):
        return StorageError(
            f"cannot list {uri}: no such file or folder (relative paths are taken from the "
            f"current folder {os.getcwd()})"
        )
    return StorageError(f"cannot list {uri}: no such file, folder or prefix")


def _nothing_found(uri: str, what: str, extensions: frozenset[str], seen: int) -> StorageError:
    exts = ", ".join(sorted(extensions))
    detail = (
        f"{seen} file(s) found but none ends in {exts}"
        if seen
        else f"no files ending in {exts}"
    )
    return StorageError(
        f"no input images in {uri}: {detail} ({what}; hidden files and {MANIFEST_DIR} folders "
        "are skipped); check the path and --extensions"
    )


def _list_tree(
    fs: pafs.FileSystem,
    base: str,
    extensions: frozenset[str],
    *,
    recursive: bool = True,
    pattern: re.Pattern[str] | None = None,
) -> tuple[list[InputFile], int]:
    """Files under ``base`` with an image extension (and matching ``pattern`` if given).

    Returns the files and how many candidate files were seen, for the "nothing found" message.
    """
    infos = _get_info(fs, pafs.FileSelector(base, recursive=recursive), "list", base)
    prefix = _uri_prefix(fs)
    found: list[InputFile] = []
    seen = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relpath = _relative(base, info.path)
        if _skipped(relpath) or (pattern is not None and not pattern.fullmatch(relpath)):
            continue
        seen += 1
        if _has_extension(relpath, extensions):
            found.append(InputFile(prefix + info.path, info.path, relpath, info.size))
    return found, seen


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a ``/``-separated glob: ``*``, ``?``, ``[...]`` stay in one segment,
    a ``**`` segment matches any number of segments (including none)."""
    segments = pattern.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        i = 0
        while i < len(segment):
            char = segment[i]
            if char == "*":
                out.append("[^/]*")
            elif char == "?":
                out.append("[^/]")
            elif char == "[" and _class_end(segment, i) > 0:
                end = _class_end(segment, i)
                body = segment[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                out.append("[" + body + "]")
                i = end
            else:
                out.append(re.escape(char))
            i += 1
        if not last:
            out.append("/")
    return re.compile("".join(out), re.DOTALL)


def _class_end(segment: str, start: int) -> int:
    """Index of the "]" closing the character class opened at ``start``, or -1."""
    j = start + 1
    if j < len(segment) and segment[j] == "!":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1  # a "]" first in the class is a literal, as in fnmatch
    return segment.find("]", j)


def _split_glob(path: str) -> tuple[str, str]:
    """``"bucket/photos/**/*.jpg"`` -> ``("bucket/photos", "**/*.jpg")``."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if _GLOB_CHARS & set(part):
            return "/".join(parts[:index]) or ("/" if path.startswith("/") else ""), "/".join(
                parts[index:]
            )
    return path, ""


def _list_glob(
    fs: pafs.FileSystem, path: str, uri: str, extensions: frozenset[str]
) -> list[InputFile]:
    base, pattern = _split_glob(path)
    if isinstance(fs, pafs.S3FileSystem) and not base:
        raise StorageError(f"cannot list {uri}: the bucket name cannot be a pattern")
    info = _get_info(fs, base, "list", base)
    if info.type != pafs.FileType.Directory:
        raise _missing_error(fs, base, _display(fs, base))
    # A single-segment pattern ("a/*.png") needs one level only: avoids listing a whole bucket.
    recursive = "/" in pattern or "**" in pattern
    files, seen = _list_tree(
        fs, base, extensions, recursive=recursive, pattern=_glob_regex(pattern)
    )
    if not files:
        what = f"files matching {pattern!r} under {_display(fs, base)}"
        raise _nothing_found(uri, what, extensions, seen)
    return files


# --- list files ------------------------------------------------------------------------------


def _is_text(column_type: pa.DataType) -> bool:
    """Whether an Arrow column type holds strings (plain, large, view or dictionary-encoded)."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    is_view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return (
        pa.types.is_string(column_type)
        or pa.types.is_large_string(column_type)
        or bool(is_view and is_view(column_type))
    )


def _pick_column(table: pa.Table, source: str) -> tuple[str, list[str]]:
    """The URI column of a list-file table: ``uri`` or ``path`` (any case), else the first
    string column. Returns its name and non-empty values."""
    by_name = {name.strip().lower(): name for name in table.column_names}
    name = by_name.get("uri") or by_name.get("path")
    if name is None:
        for candidate, column_type in zip(table.column_names, table.schema.types):
            if _is_text(column_type):
                name = candidate
                break
    if name is None:
        raise ConfigError(
            f"list file {source} has no 'uri' or 'path' column and no text column; "
            "put the image URIs in a column named 'uri'"
        )
    values = table.column(name).cast(pa.string()).to_pylist()
    return name, [v.strip() for v in values if v is not None and v.strip()]


def _looks_like_reference(text: str, extensions: frozenset[str]) -> bool:
    """Whether a CSV header cell is really a first URI (a header-less file)."""
    return "/" in text or _has_extension(text.strip(), extensions)


def _parse_list_file(data: bytes, source: str, extensions: frozenset[str]) -> list[str]:
    """URIs listed in a .parquet / .csv / .txt / .lst file, in file order."""
    suffix = posixpath.splitext(source)[1].lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return _pick_column(pq.read_table(pa.BufferReader(data)), source)[1]
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(pa.BufferReader(data))
            name, values = _pick_column(table, source)
            by_name = {n.strip().lower() for n in table.column_names}
            if "uri" not in by_name and "path" not in by_name and _looks_like_reference(
                name, extensions
            ):
                # No header row: the "column name" is the first URI. Re-read without a header.
                table = pacsv.read_csv(
                    pa.BufferReader(data),
                    read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                )
                values = _pick_column(table, source)[1]
            return values
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ConfigError(f"cannot parse list file {source}: {exc}") from exc
    # .txt / .lst: one URI per line; full-line '#' comments and blank lines ignored.
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot parse list file {source}: it is not UTF-8 text") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _resolve_entry(entry: str, list_fs: pafs.FileSystem, list_dir: str) -> str:
    """An entry as an absolute URI; relative entries are taken from the list file's folder."""
    scheme, _ = _split_scheme(entry)
    if scheme or entry.startswith("/") or entry.startswith("~"):
        return entry
    prefix = _uri_prefix(list_fs)
    if prefix == "":
        return os.path.normpath(os.path.join(list_dir, entry))
    if "\\" in entry:
        raise ConfigError(f"list entry {entry!r} contains a backslash; write it with '/'")
    joined = posixpath.normpath(posixpath.join(list_dir, entry))
    # On object stores the first path part is the bucket: '..' may move between prefixes but
    # not out of the list file's bucket.
    if joined.split("/", 1)[0] != list_dir.split("/", 1)[0] or joined.startswith(".."):
        raise ConfigError(
            f"list entry {entry!r} leaves the bucket of the list file {prefix}{list_dir}; "
            "write it as a full URI"
        )
    return prefix + joined


def _storage_kind(uri: str) -> str:
    """Which filesystem an entry lives on, for the "one filesystem" rule."""
    scheme, _ = _split_scheme(uri)
    if scheme in _LOCAL_SCHEMES:
        return "local"
    if scheme in _S3_SCHEMES:
        return "s3"
    return scheme


def _entry_path(uri: str, fs: pafs.FileSystem) -> str:
    """Filesystem path of a listed URI on ``fs`` (already known to be its kind)."""
    scheme, rest = _split_scheme(uri)
    if scheme in _LOCAL_SCHEMES:
        return _local_path(scheme, rest)
    if scheme in _S3_SCHEMES:
        return rest.strip("/")
    inner = fs.handler.fs
    return type(inner)._strip_protocol(uri)


def _common_dir(paths: list[str]) -> str:
    """Longest common folder of ``paths`` (``"/"``-separated)."""
    split = [p.split("/")[:-1] for p in paths]
    common = split[0]
    for parts in split[1:]:
        n = 0
        while n < len(common) and n < len(parts) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


def _list_from_list_file(
    list_fs: pafs.FileSystem,
    list_path: str,
    uri: str,
    s3: S3Options | None,
    extensions: frozenset[str],
) -> tuple[pafs.FileSystem, list[InputFile]]:
    entries = _parse_list_file(read_bytes(list_fs, list_path), uri, extensions)
    if not entries:
        raise StorageError(f"list file {uri} lists no image URIs (it is empty or all comments)")
    list_dir = posixpath.dirname(list_path)
    resolved = [_resolve_entry(entry, list_fs, list_dir) for entry in entries]

    kinds: dict[str, str] = {}
    for entry in resolved:
        kinds.setdefault(_storage_kind(entry), entry)
    if len(kinds) > 1:
        examples = "; ".join(f"{kind}: {example}" for kind, example in kinds.items())
        raise ConfigError(
            f"list file {uri} mixes filesystems ({examples}); all listed images must be on one "
            "filesystem — split it into one list file per storage"
        )

    (kind,) = kinds
    if kind == _storage_kind(_uri_prefix(list_fs) + list_path):
        fs = list_fs  # same storage as the list file: reuse its filesystem and credentials
    else:
        fs, _ = filesystem_for(resolved[0], s3)
    prefix = _uri_prefix(fs)

    paths = list(dict.fromkeys(_entry_path(entry, fs) for entry in resolved))
    root = _common_dir(paths)
    files = [
        InputFile(uri=prefix + path, path=path, relpath=_relative(root, path), size=None)
        for path in paths
    ]
    return fs, files


# --- entry point -----------------------------------------------------------------------------


def list_inputs(
    input_uri: str, s3: S3Options | None = None, *, extensions: Iterable[str]
) -> tuple[pafs.FileSystem, list[InputFile]]:
    """Find the input images of a run.

    ``input_uri`` may be a local folder (searched recursively), a glob (``photos/**/*.jpg``,
    ``s3://b/a/*.png``), an object-store prefix, a single image, or a list file
    (``.parquet``/``.csv``/``.txt``/``.lst``) naming images — for buckets too large to list on
    every run. Folders, prefixes and globs yield only files with one of ``extensions`` (any
    case) and skip hidden files and ``_manifest`` folders; list files are taken as given.

    Returns the filesystem of the images and the images sorted by ``relpath``, without
    duplicates. StorageError if nothing is found or the location is missing or unreachable.
    """
    exts = _normalise_extensions(extensions)
    input_uri = _require_uri(input_uri)
    fs, path = filesystem_for(input_uri, s3)
    uri = _display(fs, path)

    has_glob = bool(_GLOB_CHARS & set(path))
    info = _get_info(fs, path, "list", path)
    if has_glob and info.type == pafs.FileType.NotFound:
        files = _list_glob(fs, path, uri, exts)
    elif info.type == pafs.FileType.File:
        if posixpath.splitext(path)[1].lower() in LIST_FILE_SUFFIXES:
            fs, files = _list_from_list_file(fs, path, uri, s3, exts)
        else:
            # A single file named explicitly is taken as given, like list-file entries.
            files = [InputFile(uri, path, posixpath.basename(path), info.size)]
    elif info.type == pafs.FileType.Directory:
        files, seen = _list_tree(fs, path, exts)
        if not files:
            raise _nothing_found(uri, "searched recursively", exts, seen)
    else:
        raise _missing_error(fs, path, uri)

    unique = {f.path: f for f in files}
    return fs, sorted(unique.values(), key=lambda f: f.relpath)


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole content of ``path``; StorageError saying why if it cannot be read."""
    try:
        # compression=None: never transparently gunzip a file just because it ends in .gz.
        with fs.open_input_stream(path, compression=None) as stream:
            return stream.read()
    except OSError as exc:
        raise _storage_error(exc, "read", fs, path) from exc


def list_files(fs: pafs.FileSystem, path: str) -> set[str]:
    """Paths of every file under the folder ``path`` (recursive); empty if it does not exist.

    One listing instead of a request per file: how a resumed run checks which outputs exist.
    """
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    infos = _get_info(fs, selector, "list", path)
    return {info.path for info in infos if info.type == pafs.FileType.File}


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or folder (prefix) exists at ``path``."""
    return _get_info(fs, path, "check", path).type != pafs.FileType.NotFound


def _temp_name(path: str) -> str:
    """Hidden temp name next to ``path``: skipped by listings, recognisable as debris."""
    folder, name = posixpath.split(path)
    # Keep within the usual 255-byte name limit even for long names.
    stem = name.encode("utf-8")[:200].decode("utf-8", "ignore")
    return posixpath.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp")


def _write_local_atomic(path: str, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over the final name."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temp = _temp_name(path)
    # os.open with 0o666 lets the umask decide permissions, as for any normally created file
    # (tempfile.mkstemp would leave outputs readable by their owner only).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # Data on disk before the rename: after a crash the name holds old or new, never half.
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _write_stream(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """One streamed upload; on S3 the object appears only when ``close`` completes it."""
    # Check the payload *before* opening: a stream closed after a failed first write would
    # publish an empty object under the final name.
    payload = memoryview(data)
    content_type = mimetypes.guess_type(path)[0]
    metadata = None
    if content_type and isinstance(fs, pafs.S3FileSystem):
        metadata = {"Content-Type": content_type}  # so browsers/consoles preview outputs
    stream = fs.open_output_stream(path, compression=None, metadata=metadata)
    try:
        stream.write(payload)
    finally:
        # pyarrow does not complete a multipart upload whose parts failed, so closing after an
        # I/O error cannot publish a partial object; it only reports the error.
        stream.close()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no half-written file is ever visible under its name.

    Local disks: temp file (``.<name>.<random>.tmp``) in the same folder, fsync, atomic rename.
    S3 and object stores: one PUT / multipart upload is already atomic, so write directly.
    Other fsspec filesystems: temp file then move. Parent folders are created as needed
    (but no folder-marker objects on S3).
    """
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            _write_local_atomic(path, data)
        elif isinstance(fs, pafs.S3FileSystem):
            _write_stream(fs, path, data)
        else:
            parent = posixpath.dirname(path)
            if parent:
                fs.create_dir(parent, recursive=True)
            if _fsspec_protocol(fs) in _OBJECT_STORE_PROTOCOLS:
                _write_stream(fs, path, data)
            else:
                temp = _temp_name(path)
                try:
                    _write_stream(fs, temp, data)
                    fs.move(temp, path)
                except BaseException:
                    try:
                        fs.delete_file(temp)
                    except OSError:
                        pass
                    raise
    except OSError as exc:
        raise _storage_error(exc, "write", fs, path) from exc


def delete_tree_contents(fs: pafs.FileSystem, path: str) -> None:
    """Delete everything inside folder/prefix ``path`` (for ``--overwrite``); missing is fine.

    Refuses filesystem roots and whole buckets: the folders this is meant for (manifests) are
    always below OUTPUT, so a root here is a bug or a typo, not an intent.
    """
    stripped = path.strip("/")
    if not stripped or (not isinstance(fs, pafs.LocalFileSystem) and "/" not in stripped):
        raise StorageError(
            f"refusing to delete the contents of {_display(fs, path) or '/'}: it is a filesystem "
            "root or a whole bucket; point at a folder inside it"
        )
    info = _get_info(fs, path, "delete", path)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        raise StorageError(
            f"cannot delete the contents of {_display(fs, path)}: it is a file, not a folder"
        )
    try:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    except OSError as exc:
        raise _storage_error(exc, "delete", fs, path) from exc
