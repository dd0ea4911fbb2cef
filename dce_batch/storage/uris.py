"""URIs -> pyarrow filesystems, folders on them (:class:`Location`), and errors that say what to do.

Everything works on :mod:`pyarrow.fs` filesystems so one code path serves local folders, S3 and
S3-compatible stores (MinIO, Cloudflare R2, Ceph, moto) natively, and other stores (``gs://``,
``az://``, ``hf://``, ``memory://`` ...) through fsspec. Every filesystem and :class:`Location`
pickles, so it can be sent to Ray workers.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, CredentialsError, StorageError
from dce_batch.storage.aws import PortableS3FileSystem, S3Options, s3_filesystem
from dce_batch.storage.outages import OutageOutlasted
from dce_batch.storage.s3_errors import S3Failure, s3_failure

__all__ = ["Location", "filesystem_for"]

S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})
LOCAL_SCHEMES = frozenset({"", "file"})
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)

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


def split_scheme(uri: str) -> tuple[str, str]:
    """``"s3://b/k"`` -> ``("s3", "b/k")``; a plain path -> ``("", path)``."""
    match = SCHEME_RE.match(uri)
    if match is None:
        return "", uri
    return match.group(1).lower(), match.group(2)


def local_path(scheme: str, rest: str) -> str:
    """Absolute, normalised local path of a plain path or ``file://`` URI."""
    if scheme == "file":
        parts = urlsplit("file://" + rest)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(
                f"cannot open file://{rest}: file URIs on another host are not supported; "
                "mount the share and use its local path"
            )
        rest = unquote(parts.path)
    return os.path.abspath(os.path.expanduser(rest))


def require_uri(uri: str) -> str:
    """``uri`` without surrounding blanks; ConfigError if it is empty or not valid UTF-8."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("an empty path or URI was given; pass a folder, file or s3:// URI")
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:  # bytes from the command line that are not UTF-8
        shown = uri.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"the path {shown!r} is not valid UTF-8 (the bytes shown as \\xNN); rename it, "
                          "or name it through a folder or a list file") from None
    return uri.strip()


def filesystem_for(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path of ``uri`` inside it.

    * local paths and ``file://`` -> ``(LocalFileSystem, absolute path)``
    * ``s3://`` / ``s3a://`` -> ``(PortableS3FileSystem, "bucket/key")``; ``s3=None`` means
      :meth:`S3Options.from_env`. CredentialsError if no AWS credentials can be found at all.
    * other schemes -> fsspec, wrapped for pyarrow, if its implementation is installed

    Trailing slashes are dropped from the returned path.
    """
    uri = require_uri(uri)
    scheme, rest = split_scheme(uri)
    if scheme in LOCAL_SCHEMES:
        return pafs.LocalFileSystem(), local_path(scheme, rest)
    if scheme in S3_SCHEMES:
        path = rest.strip("/")
        bucket = path.split("/", 1)[0]
        if not bucket:
            raise StorageError(f"invalid URI {uri!r}: write it as s3://bucket/prefix")
        options = s3 if s3 is not None else S3Options.from_env()
        return s3_filesystem(options, bucket), path
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


def fsspec_protocol(fs: pafs.FileSystem) -> str | None:
    """fsspec protocol of a wrapped fsspec filesystem, else None."""
    if not isinstance(fs, pafs.PyFileSystem):
        return None
    inner = getattr(fs.handler, "fs", None)
    protocol = getattr(inner, "protocol", None)
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else None
    return protocol


def s3_endpoint(fs: pafs.FileSystem) -> str | None:
    """``"http://host:port"`` of a custom-endpoint S3 filesystem, else None (AWS itself)."""
    if isinstance(fs, PortableS3FileSystem):
        return fs.options.endpoint_url.rstrip("/") if fs.options.endpoint_url else None
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


def uri_prefix(fs: pafs.FileSystem) -> str:
    """What to put before a filesystem path to get a URI (empty for local paths)."""
    if isinstance(fs, pafs.S3FileSystem):
        return "s3://"
    protocol = fsspec_protocol(fs)
    if protocol is not None:
        return f"{protocol}://"
    return ""


def display(fs: pafs.FileSystem, path: str) -> str:
    """The URI of ``path`` on ``fs``, for messages and manifests."""
    return uri_prefix(fs) + path


def fs_kind(fs: pafs.FileSystem) -> tuple[str, str | None]:
    """What makes two filesystems the same storage: type and (for S3) endpoint."""
    if isinstance(fs, pafs.S3FileSystem):
        return ("s3", s3_endpoint(fs))
    protocol = fsspec_protocol(fs)
    if protocol is not None:
        return ("fsspec", protocol)
    return (fs.type_name, None)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def _attempts(fs: pafs.FileSystem, exc: BaseException) -> str:
    if not isinstance(fs, PortableS3FileSystem):
        return "its retries"
    attempts = f"{fs.options.max_attempts} attempts (AWS_MAX_ATTEMPTS)"
    if isinstance(exc, OutageOutlasted):
        attempts += f", tried again for {exc.waited_s:.0f} s (--s3-outage-wait)"
    return attempts


def _s3_reason(kind: S3Failure, exc: BaseException, fs: pafs.FileSystem, path: str) -> tuple[type[StorageError], str]:
    """The error type and the reason (what to check) for an S3 failure of ``kind``."""
    endpoint = s3_endpoint(fs)
    endpoint_text = f"endpoint {endpoint}" if endpoint else "the AWS endpoint"
    text = str(exc)
    if kind is S3Failure.NO_SUCH_BUCKET:
        bucket = path.split("/", 1)[0]
        return StorageError, (f"bucket {bucket!r} does not exist ({endpoint_text}; check the bucket name and "
                              "AWS_ENDPOINT_URL / --s3-endpoint)")
    if kind is S3Failure.NO_SUCH_KEY:
        return StorageError, ("no such object: it was deleted or renamed after it was listed (the next run lists "
                              "the inputs again), or a list file names an object that does not exist")
    if kind is S3Failure.TOKEN_REJECTED:
        return CredentialsError, (
            f"the credentials were rejected by {endpoint_text}: the session token has expired or is not valid. "
            "Renew the temporary credentials (`aws sso login`, or a new AWS_SESSION_TOKEN together with its "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), and check that no AWS_SESSION_TOKEN is left over "
            "from another session")
    if kind is S3Failure.KEYS_REJECTED:
        return CredentialsError, (
            f"the credentials were rejected by {endpoint_text}: the access key is unknown there or the secret "
            "key does not match it. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile's keys, "
            "AWS_PROFILE) and that they belong to this endpoint (AWS_ENDPOINT_URL / --s3-endpoint)")
    if kind is S3Failure.REJECTED_WITHOUT_CODE:
        return CredentialsError, (
            f"{endpoint_text} refused the request with HTTP 400 and no error code, which is how S3 answers a "
            "request whose credentials it rejects: most often an expired or invalid session token. Renew the "
            "temporary credentials (`aws sso login`, or a new AWS_SESSION_TOKEN with its AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY; unset a stale AWS_SESSION_TOKEN), and check that the keys and AWS_REGION "
            f"belong to this endpoint ({text})")
    if kind is S3Failure.ACCESS_DENIED:
        return StorageError, (
            f"access denied by {endpoint_text} (check the credentials this node gets from "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE or its "
            "instance/pod role, and that they may access this bucket)")
    if kind is S3Failure.THROTTLED:
        return StorageError, (f"{endpoint_text} kept asking to slow down (throttling) after {_attempts(fs, exc)}; "
                              f"lower --num-actors, or raise AWS_MAX_ATTEMPTS or --s3-outage-wait ({text})")
    if kind is S3Failure.TIMEOUT:
        return StorageError, (f"{endpoint_text} did not answer in time after {_attempts(fs, exc)}; a longer "
                              f"outage needs a higher --s3-outage-wait ({text})")
    if kind is S3Failure.UNREACHABLE:
        return StorageError, (f"cannot connect to {endpoint_text} (check AWS_ENDPOINT_URL / --s3-endpoint and "
                              f"that the server is running and reachable from this node; tried {_attempts(fs, exc)})")
    if kind is S3Failure.NO_CREDENTIALS:
        return CredentialsError, f"no usable AWS credentials: {text}"
    # SERVER_ERROR, and OVERFLOWED_ERROR_BODY when its retries ran out: the server kept failing.
    return StorageError, f"{endpoint_text} kept failing with server errors after {_attempts(fs, exc)} ({text})"


def storage_error(exc: BaseException, action: str, fs: pafs.FileSystem, path: str) -> StorageError:
    """Turn a low-level error into a StorageError (CredentialsError when S3 rejected the
    credentials) that says what to check.

    S3 failures are recognised by :func:`~dce_batch.storage.s3_errors.s3_failure` (botocore's
    error codes, or the one table of pyarrow's wording); local ones by their exception class.
    Messages name the operation and the S3 error code, never credentials.
    """
    where = display(fs, path)
    kind = s3_failure(exc) if isinstance(fs, pafs.S3FileSystem) else None
    if kind is not None:
        error_type, reason = _s3_reason(kind, exc, fs, path)
        return error_type(f"cannot {action} {where}: {reason}")
    if isinstance(exc, FileNotFoundError) and isinstance(fs, pafs.LocalFileSystem) and os.path.islink(path):
        reason = f"a broken symbolic link (its target {os.readlink(path)} does not exist)"
    elif isinstance(exc, FileNotFoundError) and isinstance(fs, pafs.S3FileSystem):
        # pyarrow's HEAD before a GET finds no object: a 404 carries no error code to classify.
        reason = _s3_reason(S3Failure.NO_SUCH_KEY, exc, fs, path)[1]
    elif isinstance(exc, FileNotFoundError):
        reason = "no such file or object"
    elif isinstance(exc, PermissionError):
        reason = "permission denied (check the folder's owner and permissions)"
    elif isinstance(exc, IsADirectoryError):
        reason = "it is a folder, not a file"
    elif isinstance(exc, NotADirectoryError):
        reason = "a parent of it is a file, not a folder"
    else:
        reason = str(exc) or type(exc).__name__
    return StorageError(f"cannot {action} {where}: {reason}")


def get_info(fs: pafs.FileSystem, target, action: str, path: str):
    """``fs.get_file_info`` with errors turned into StorageError."""
    try:
        return fs.get_file_info(target)
    except OSError as exc:
        raise storage_error(exc, action, fs, path) from exc


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def validate_relpath(relpath: str) -> list[str]:
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
    elif SCHEME_RE.match(relpath):
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


def is_within(folder: str, path: str) -> bool:
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
        return cls(uri=display(fs, path), filesystem=fs, path=path)

    def child(self, relpath: str) -> str:
        """Filesystem path of ``relpath`` (``"/"``-separated) under this folder.

        Raises StorageError if ``relpath`` is absolute, has ``..``/``.``/empty parts or
        backslashes: input keys come from users and buckets, and must never make an output
        path escape the output folder.
        """
        joined = _join(self.path, validate_relpath(relpath))
        # Belt and braces: the parts check above already rules escapes out.
        if not is_within(self.path, posixpath.normpath(joined)):
            raise StorageError(f"invalid relative path {relpath!r}: it escapes {self.uri}")
        return joined

    def child_uri(self, relpath: str) -> str:
        """Like :meth:`child`, as a full URI (``s3://bucket/prefix/rel`` or a local path)."""
        return display(self.filesystem, self.child(relpath))

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this folder or inside it, on the same storage.

        Local paths are compared after resolving symlinks, so an OUTPUT reached through a link
        into INPUT is caught. Object-store prefixes compare whole path segments:
        ``s3://b/in`` contains ``s3://b/in/x`` but not ``s3://b/input2``.
        """
        if fs_kind(self.filesystem) != fs_kind(other.filesystem):
            return False
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return is_within(os.path.realpath(self.path), os.path.realpath(other.path))
        return is_within(self.path.strip("/"), other.path.strip("/"))
