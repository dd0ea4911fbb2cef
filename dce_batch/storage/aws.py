"""S3 settings, resolved the way the AWS SDKs resolve them, and the S3 filesystem built from them.

Configuration (profiles, ``AWS_CONFIG_FILE`` / ``AWS_SHARED_CREDENTIALS_FILE``, region, endpoint
URLs including ``services`` sections, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``, ``AWS_MAX_ATTEMPTS``) is read with botocore, the library
behind the AWS CLI and boto3, so it follows the same rules as every other AWS tool.

Credentials are *not* read here and never travel with a filesystem, unless the caller put keys
into :class:`S3Options` itself. A :class:`PortableS3FileSystem` pickles as its non-secret
settings (endpoint, region, profile name, retries, timeouts) and is rebuilt from them on each
Ray node, where the AWS SDK inside pyarrow resolves credentials through its default chain:
environment variables, the profile (static keys, SSO, ``credential_process``, assumed roles),
web identity (EKS pod roles), container and instance roles. Those providers refresh temporary
credentials themselves, so a job may run for longer than any one set of credentials lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, CredentialsError
from dce_batch.limits import MAX_OUTAGE_WAIT_S, check_number

__all__ = ["DEFAULT_MAX_ATTEMPTS", "DEFAULT_OUTAGE_WAIT_S", "PortableS3FileSystem", "S3Options", "s3_client",
           "s3_filesystem"]

#: Attempts per S3 request (the first try plus retries) unless AWS_MAX_ATTEMPTS or the profile's
#: ``max_attempts`` says otherwise. The AWS default of 3 is meant for interactive calls; a batch
#: job that makes millions of requests should ride out a few consecutive throttling answers.
DEFAULT_MAX_ATTEMPTS = 10
#: Seconds for which a request that failed all its attempts because the store was unreachable or
#: failing is tried again (:mod:`.outages`): a store down for a few minutes (a restart, a failover)
#: delays a run instead of stopping it. It may outlast the lease's takeover bound: a run whose lease
#: another run took over meanwhile finds out at its next heartbeat and stops, as a frozen one does.
DEFAULT_OUTAGE_WAIT_S = 300.0
#: Seconds to wait for a TCP connection to the endpoint.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Seconds without a single byte arriving after which a request is abandoned (and retried): how
#: long a hung server or dead connection may stall a read or write.
DEFAULT_REQUEST_TIMEOUT_S = 30.0

# Used when a custom endpoint is given without a region: MinIO, moto and most S3-compatibles
# accept any region, and signing needs *some* region.
DEFAULT_ENDPOINT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 or an S3-compatible store.

    ``access_key`` / ``secret_key`` / ``session_token`` are for callers that must use exactly
    those keys; they are then pickled into the filesystem and sent to every node. Leave them
    ``None`` (what :meth:`from_env` does) and every node resolves its own credentials through
    the AWS default chain, including refreshes of temporary ones. ``profile`` names the AWS
    profile that chain uses on each node. ``anonymous`` sends unsigned requests (public buckets).
    Secrets are hidden from ``repr`` so they never end up in logs.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    anonymous: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    outage_wait_s: float = DEFAULT_OUTAGE_WAIT_S

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            split_endpoint(self.endpoint_url)  # validates; raises ConfigError
        if bool(self.access_key) != bool(self.secret_key):
            raise ConfigError(
                "S3 credentials are incomplete: give both the access key and the secret key, or "
                "neither to let each node use the AWS default credential chain"
            )
        if self.session_token and not self.access_key:
            raise ConfigError(
                "an S3 session token was given without an access key and secret key; give all "
                "three, or none to use the AWS default credential chain"
            )
        if self.anonymous and self.access_key:
            raise ConfigError("S3 access cannot be both anonymous and with keys; choose one")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(
                f"S3 max_attempts (AWS_MAX_ATTEMPTS) must be a whole number >= 1, got {self.max_attempts!r}"
            )
        if not (self.connect_timeout_s > 0 and self.request_timeout_s > 0):
            raise ConfigError("S3 connect and request timeouts must be positive numbers of seconds")
        check_number("the S3 outage wait in seconds (--s3-outage-wait)", self.outage_wait_s, 0, MAX_OUTAGE_WAIT_S)

    @property
    def has_keys(self) -> bool:
        """Whether explicit keys were given (and so travel with the filesystem)."""
        return bool(self.access_key)

    @classmethod
    def from_env(cls, *, endpoint_url: str | None = None, profile: str | None = None) -> S3Options:
        """Options from the standard AWS variables and shared config files, via botocore.

        Precedence is the AWS SDKs': an explicit ``endpoint_url`` (the CLI's ``--s3-endpoint``)
        beats ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``, then the profile's ``services``
        section, then the profile's ``endpoint_url`` (all but the first are skipped when
        ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is true). ``AWS_REGION`` beats
        ``AWS_DEFAULT_REGION``, which beats the profile's region. The profile is ``profile``, else
        ``AWS_PROFILE`` / ``AWS_DEFAULT_PROFILE``; a named profile must exist.

        No keys are read: the result holds only non-secret settings, and each node resolves
        credentials itself (see the module docstring).
        """
        import botocore.exceptions

        session = botocore_session(profile)
        profile_name = session.get_config_variable("profile")
        try:
            scoped = session.get_scoped_config()
            region = _env("AWS_REGION") or session.get_config_variable("region")
            endpoint = endpoint_url
            if endpoint is None and not session.get_config_variable("ignore_configured_endpoint_urls"):
                endpoint = _configured_endpoint(session, scoped)
            max_attempts = session.get_config_variable("max_attempts")
        except botocore.exceptions.ProfileNotFound as exc:
            raise ConfigError(
                f"AWS profile {profile_name!r} (AWS_PROFILE) not found in {_config_files(session)}; "
                "fix AWS_PROFILE or set AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE"
            ) from exc
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            # ConfigParseError, bad AWS_MAX_ATTEMPTS (ValueError from int()), ...
            raise ConfigError(f"cannot read the AWS configuration: {exc}") from exc
        return cls(
            endpoint_url=(endpoint or "").strip() or None,
            region=(region or "").strip() or None,
            profile=profile_name or None,
            max_attempts=int(max_attempts) if max_attempts else DEFAULT_MAX_ATTEMPTS,
        )


def _env(name: str) -> str | None:
    """A non-empty environment variable (AWS treats an empty variable as unset)."""
    value = os.environ.get(name, "").strip()
    return value or None


def botocore_session(profile: str | None = None):
    """A botocore session reading this process's environment and AWS config files."""
    import botocore.session

    session = botocore.session.Session()
    if profile:
        session.set_config_variable("profile", profile)
    return session


def _config_files(session) -> str:
    config = session.get_config_variable("config_file")
    credentials = session.get_config_variable("credentials_file")
    return f"{os.path.expanduser(config)} and {os.path.expanduser(credentials)}"


def _configured_endpoint(session, scoped_config: dict) -> str | None:
    """The S3 endpoint URL configured by environment or config file, as botocore resolves it."""
    # botocore's own resolver for endpoint_url (env service > env global > services section >
    # profile); it is what session.create_client uses, without creating a client.
    from botocore.configprovider import ConfiguredEndpointProvider

    return ConfiguredEndpointProvider(
        full_config=session.full_config, scoped_config=scoped_config, client_name="s3"
    ).provide()


def split_endpoint(endpoint_url: str) -> tuple[str, str]:
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


# --------------------------------------------------------------------------------------------
# Credentials: checked on the driver, never carried
# --------------------------------------------------------------------------------------------


def check_credentials(options: S3Options) -> None:
    """CredentialsError now if no credentials can be found at all, not a vague error later.

    Without credentials the AWS SDK sends requests that fail with an unhelpful error (or, on a
    non-AWS machine, first waits for the instance-metadata service). The driver must list the
    inputs anyway, so it needs credentials as much as the workers do. Keys found here are only
    looked at, never kept: each node resolves its own.
    """
    if options.has_keys or options.anonymous:
        return
    # The answer depends on the AWS_* environment: cache by a digest of it (no secrets kept).
    aws_env = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
    problem = _credential_problem(options.profile, hashlib.sha256(repr(aws_env).encode()).hexdigest())
    if problem is not None:
        raise CredentialsError(problem)


@functools.lru_cache(maxsize=16)
def _credential_problem(profile: str | None, _aws_env_digest: str) -> str | None:
    """Why no credentials are available, or None. Cached per profile and AWS_* environment, so a
    ``credential_process`` or SSO lookup is not repeated for every URI."""
    import botocore.exceptions

    # The SDK inside pyarrow takes keys from the environment first, whatever the profile; a
    # botocore session with a profile set would skip them, so look at them here.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return None
    session = botocore_session(profile)
    where = f"profile {profile!r}" if profile else "the environment and the default profile"
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        # PartialCredentialsError, CredentialRetrievalError (credential_process failed),
        # SSO token expired, ProfileNotFound ... botocore's messages name the cause, never a secret.
        return f"cannot get AWS credentials from {where}: {exc}"
    if credentials is None:
        return (
            f"no AWS credentials found in {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile that has credentials (keys, SSO, "
            "credential_process, role_arn), or run where an instance or pod role provides them"
        )
    return None


# --------------------------------------------------------------------------------------------
# The filesystem
# --------------------------------------------------------------------------------------------

# The AWS SDK inside pyarrow takes the profile only from AWS_PROFILE / AWS_DEFAULT_PROFILE, read
# when the filesystem's credential providers are created (pyarrow has no profile argument).
# Setting them is process-wide, hence the lock and the restore.
_PROFILE_ENV_LOCK = threading.Lock()
_PROFILE_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@contextlib.contextmanager
def _profile_environment(profile: str | None) -> Iterator[None]:
    if not profile:
        yield
        return
    with _PROFILE_ENV_LOCK:
        saved = {name: os.environ.get(name) for name in _PROFILE_VARIABLES}
        try:
            for name in _PROFILE_VARIABLES:
                os.environ[name] = profile
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _pyarrow_kwargs(options: S3Options) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "region": options.region,
        "connect_timeout": options.connect_timeout_s,
        "request_timeout": options.request_timeout_s,
        # The AWS SDK's "default" strategy: exponential backoff (0, 50, 100, 200 ms ... per
        # retry), every retryable error (throttling, 5xx, dropped connections, timeouts).
        # Its "standard" strategy would add jitter, but pyarrow (<= 26) never returns its retry
        # tokens: after 100 retries in the life of a filesystem it stops retrying for good,
        # which a long job reaches (tests/test_s3_faults.py shows both). The SDK counts
        # retries, not attempts, hence the -1.
        "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=options.max_attempts - 1),
        # One PUT for a small write instead of create/upload/complete of a multipart upload.
        "allow_delayed_open": True,
    }
    if options.endpoint_url:
        scheme, netloc = split_endpoint(options.endpoint_url)
        kwargs.update(endpoint_override=netloc, scheme=scheme)
    if options.anonymous:
        kwargs["anonymous"] = True
    elif options.has_keys:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key)
        if options.session_token:
            kwargs["session_token"] = options.session_token
    return kwargs


class PortableS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem that pickles as its :class:`S3Options` and is rebuilt from them.

    pyarrow's own pickle carries resolved keys (expiring with the credentials they came from)
    and drops the retry strategy. This one carries only what the options hold, and each node
    that unpickles it builds a fresh client: its own credential chain, the same endpoint,
    region, profile name, retries and timeouts.
    """

    def __init__(self, options: S3Options) -> None:
        if options.region is None:
            raise ValueError("PortableS3FileSystem needs a region; use s3_filesystem()")
        kwargs = _pyarrow_kwargs(options)
        with _profile_environment(options.profile):
            try:
                super().__init__(**kwargs)
            except TypeError:  # pyarrow < 16 has no allow_delayed_open
                kwargs.pop("allow_delayed_open")
                super().__init__(**kwargs)
        self._options = options

    @property
    def options(self) -> S3Options:
        """The settings this filesystem was built from (what travels to other nodes)."""
        return self._options

    def __reduce__(self):
        return (PortableS3FileSystem, (self._options,))


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


def _with_profile_settings(options: S3Options) -> S3Options:
    """Fill a missing region/endpoint from the named profile's config (S3Options built in code
    with ``profile=`` but not through :meth:`S3Options.from_env`)."""
    if not options.profile or (options.region and options.endpoint_url):
        return options
    import botocore.exceptions

    session = botocore_session(options.profile)
    try:
        scoped = session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(
            f"AWS profile {options.profile!r} not found in {_config_files(session)}"
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"cannot read the AWS configuration: {exc}") from exc
    endpoint = options.endpoint_url
    if endpoint is None and not session.get_config_variable("ignore_configured_endpoint_urls"):
        endpoint = _configured_endpoint(session, scoped)
    return dataclasses.replace(
        options, region=options.region or scoped.get("region"), endpoint_url=endpoint or None
    )


def s3_filesystem(options: S3Options, bucket: str) -> PortableS3FileSystem:
    """The filesystem for ``bucket``, with everything a remote node needs settled here.

    Runs on the driver: fills in the region (from the profile, the custom endpoint's default,
    or by asking AWS where the bucket lives) and checks that credentials exist at all
    (CredentialsError if not).
    """
    options = _with_profile_settings(options)
    check_credentials(options)
    region = options.region
    if region is None:
        region = DEFAULT_ENDPOINT_REGION if options.endpoint_url else _aws_bucket_region(bucket)
    return PortableS3FileSystem(dataclasses.replace(options, region=region or DEFAULT_ENDPOINT_REGION))


def s3_client(options: S3Options):
    """A botocore S3 client configured exactly like the job's S3 filesystem (endpoint, region,
    retries, timeouts, addressing), with credentials in the precedence its SDK uses: keys given in
    code, then keys in the environment (which the SDK inside pyarrow prefers to any profile), else
    the profile's chain (SSO, credential_process ...). Made per call: the environment it reads may change."""
    import botocore
    import botocore.config

    config = botocore.config.Config(
        region_name=options.region,
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.request_timeout_s,
        retries={"mode": "standard", "max_attempts": options.max_attempts},
        signature_version=botocore.UNSIGNED if options.anonymous else None,
        # Path-style addressing for custom endpoints, as pyarrow does (http://host/bucket/key).
        s3={"addressing_style": "path"} if options.endpoint_url else None,
        # The endpoint is exactly the filesystem's, never one from the environment.
        ignore_configured_endpoint_urls=True,
    )
    keys = {}
    if options.has_keys:
        keys = {"aws_access_key_id": options.access_key, "aws_secret_access_key": options.secret_key,
                "aws_session_token": options.session_token}
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # The SDK inside pyarrow prefers these to any profile; a session with a profile would not.
        keys = {"aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "aws_session_token": os.environ.get("AWS_SESSION_TOKEN") or None}
    return botocore_session(options.profile).create_client("s3", endpoint_url=options.endpoint_url, config=config,
                                                         **keys)
