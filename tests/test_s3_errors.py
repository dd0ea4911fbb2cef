"""What an S3 failure means: pyarrow's wording pinned to real errors, botocore's codes, and the
errors a user then reads (dce_batch.storage.s3_errors, storage_error).

Every error here is produced by the installed pyarrow or botocore talking HTTP to a real server:
moto_server (missing buckets, unknown keys, wrong secrets), tests/fault_proxy.py in front of it
(throttling, server errors), and tests/s3_error_server.py for S3's answers that moto never gives
(rejected session tokens, other throttling codes, a hung endpoint).
"""

from __future__ import annotations

import uuid

import pyarrow.fs as pafs
import pytest

from dce_batch.errors import CredentialsError, StorageError
from dce_batch.storage import (
    S3Options,
    filesystem_for,
    list_inputs_table,
    read_bytes,
    write_bytes_atomic,
)
from dce_batch.storage.s3_errors import (
    PYARROW_S3_ERROR_PATTERNS,
    S3Failure,
    botocore_failure,
    pyarrow_failure,
)
from dce_batch.storage.uris import storage_error
from tests.fault_proxy import FaultProxy, fault_proxy  # noqa: F401 - fault_proxy is a fixture
from tests.s3_error_server import S3ErrorServer, s3_error_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.s3

IMAGES = (".jpg",)
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port


def _fs(endpoint: str, **settings) -> pafs.S3FileSystem:
    """The job's own S3 filesystem for ``endpoint`` (one attempt unless told otherwise)."""
    options = {"endpoint_url": endpoint, "region": "us-east-1", "access_key": "testing",
               "secret_key": "testing", "max_attempts": 1, **settings}
    return filesystem_for("s3://bucket", S3Options(**options))[0]


def _error_of(operation) -> OSError:
    with pytest.raises(OSError) as caught:
        operation()
    return caught.value


def _list(fs: pafs.FileSystem, path: str):
    return lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True))


def _head(fs: pafs.FileSystem, path: str):
    return lambda: fs.get_file_info(path)


def _deciding_pattern(exc: BaseException) -> int | None:
    """Index of the pattern that classifies ``exc`` (the first that matches)."""
    return next((i for i, (_, p) in enumerate(PYARROW_S3_ERROR_PATTERNS) if p.search(str(exc))), None)


def test_every_pyarrow_wording_is_pinned_to_a_real_error(s3_server, s3_auth_server, fault_proxy,
                                                         s3_error_server: S3ErrorServer) -> None:
    """Each pattern of PYARROW_S3_ERROR_PATTERNS decides the kind of at least one error that this
    pyarrow really raises, and each such error gets the kind S3 meant. A pyarrow release that
    words an error differently fails here instead of misclassifying it in a run."""
    bucket = s3_server.make_bucket(f"pins-{uuid.uuid4().hex[:12]}")
    s3_server.put_object(bucket, "tiny.jpg", b"x")  # smaller than any XML error body
    auth_bucket = s3_auth_server.make_bucket(f"pins-{uuid.uuid4().hex[:12]}")
    unknown_key = _fs(s3_auth_server.endpoint_url, access_key="AKIAUNKNOWNTESTKEY01", secret_key="x")
    wrong_secret = _fs(s3_auth_server.endpoint_url, access_key=s3_auth_server.access_key, secret_key="wrong")
    proxied = _fs(fault_proxy.url)
    proxied_with_a_retry = _fs(fault_proxy.url, max_attempts=2)
    erring = _fs(s3_error_server.url)

    def from_proxy(kind: str, operation):
        fault_proxy.fail_first = 1  # the first attempt of each request fails
        fault_proxy.configure(kinds=(kind,))
        return _error_of(operation)

    def from_error_server(status: int, code: str, operation):
        s3_error_server.answer(status, code)
        return _error_of(operation)

    def read_after_delete():
        s3_server.put_object(bucket, "gone.jpg", b"x" * 5000)
        stream = _fs(s3_server.endpoint_url).open_input_stream(f"{bucket}/gone.jpg")  # the HEAD finds it
        s3_server.client().delete_object(Bucket=bucket, Key="gone.jpg")
        stream.read()

    def timed_out():
        s3_error_server.stall(30)
        return _error_of(_head(_fs(s3_error_server.url, request_timeout_s=0.5), "bucket/k.jpg"))

    cases = {
        # The SDK retries the HEAD; the GET's error body overflows the 1-byte buffer.
        "GET of a tiny object answered 503": (S3Failure.OVERFLOWED_ERROR_BODY, lambda: from_proxy(
            "slow_down", lambda: proxied_with_a_retry.open_input_stream(f"{bucket}/tiny.jpg").read())),
        "GET of an object deleted after its HEAD": (S3Failure.NO_SUCH_KEY, lambda: _error_of(read_after_delete)),
        "ListObjectsV2 of a missing bucket": (S3Failure.NO_SUCH_BUCKET, lambda: _error_of(
            _list(_fs(s3_server.endpoint_url), f"no-such-bucket-{uuid.uuid4().hex[:8]}/in"))),
        "ListObjectsV2 400 ExpiredToken": (S3Failure.TOKEN_REJECTED, lambda: from_error_server(
            400, "ExpiredToken", _list(erring, "bucket/in"))),
        "ListObjectsV2 400 InvalidToken": (S3Failure.TOKEN_REJECTED, lambda: from_error_server(
            400, "InvalidToken", _list(erring, "bucket/in"))),
        "ListObjectsV2 400 TokenRefreshRequired": (S3Failure.TOKEN_REJECTED, lambda: from_error_server(
            400, "TokenRefreshRequired", _list(erring, "bucket/in"))),
        "ListObjectsV2 with an unknown access key": (S3Failure.KEYS_REJECTED, lambda: _error_of(
            _list(unknown_key, f"{auth_bucket}/in"))),
        "ListObjectsV2 with a wrong secret key": (S3Failure.KEYS_REJECTED, lambda: _error_of(
            _list(wrong_secret, f"{auth_bucket}/in"))),
        "HeadObject 400 without a body": (S3Failure.REJECTED_WITHOUT_CODE, lambda: from_error_server(
            400, "ExpiredToken", _head(erring, "bucket/k.jpg"))),
        "HeadObject with an unknown access key": (S3Failure.ACCESS_DENIED, lambda: _error_of(
            _head(unknown_key, f"{auth_bucket}/k.jpg"))),
        "ListObjectsV2 503 SlowDown": (S3Failure.THROTTLED, lambda: from_proxy(
            "slow_down", _list(proxied, f"{bucket}/slow"))),
        "ListObjectsV2 503 Throttling": (S3Failure.THROTTLED, lambda: from_error_server(
            503, "Throttling", _list(erring, "bucket/in"))),
        "ListObjectsV2 503 ServiceUnavailable": (S3Failure.THROTTLED, lambda: from_error_server(
            503, "ServiceUnavailable", _list(erring, "bucket/in"))),
        "HeadObject 503": (S3Failure.THROTTLED, lambda: from_proxy(
            "slow_down", _head(proxied, f"{bucket}/slow.jpg"))),
        "HeadObject 429": (S3Failure.THROTTLED, lambda: from_error_server(
            429, "TooManyRequests", _head(erring, "bucket/k.jpg"))),
        "HeadObject without an answer": (S3Failure.TIMEOUT, timed_out),
        "ListObjectsV2 400 RequestTimeout": (S3Failure.TIMEOUT, lambda: from_error_server(
            400, "RequestTimeout", _list(erring, "bucket/in"))),
        "HeadObject to a closed port": (S3Failure.UNREACHABLE, lambda: _error_of(
            _head(_fs(DEAD_ENDPOINT), "bucket/k.jpg"))),
        "ListObjectsV2 500 InternalError": (S3Failure.SERVER_ERROR, lambda: from_proxy(
            "internal_error", _list(proxied, f"{bucket}/internal"))),
        "HeadObject 500": (S3Failure.SERVER_ERROR, lambda: from_proxy(
            "internal_error", _head(proxied, f"{bucket}/internal.jpg"))),
    }
    wrong, decided_by = [], set()
    for name, (expected, produce) in cases.items():
        error = produce()
        if pyarrow_failure(error) is not expected:
            wrong.append(f"{name}: expected {expected}, got {pyarrow_failure(error)} for {error}")
        decided_by.add(_deciding_pattern(error))
    assert not wrong, "\n".join(wrong)
    unpinned = [p.pattern for i, (_, p) in enumerate(PYARROW_S3_ERROR_PATTERNS) if i not in decided_by]
    assert not unpinned, f"patterns that decide no real error (reworded by pyarrow?): {unpinned}"


def _botocore_client(endpoint: str, **config):
    import botocore.config
    import botocore.session

    return botocore.session.Session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1},
                                      s3={"addressing_style": "path"}, **config))


def test_botocore_errors_are_classified_by_code_status_and_class(s3_error_server: S3ErrorServer) -> None:
    client = _botocore_client(s3_error_server.url)
    listed = {
        (400, "ExpiredToken"): S3Failure.TOKEN_REJECTED,
        (400, "InvalidToken"): S3Failure.TOKEN_REJECTED,
        (403, "InvalidAccessKeyId"): S3Failure.KEYS_REJECTED,
        (403, "SignatureDoesNotMatch"): S3Failure.KEYS_REJECTED,
        (403, "AccessDenied"): S3Failure.ACCESS_DENIED,
        (404, "NoSuchBucket"): S3Failure.NO_SUCH_BUCKET,
        (503, "SlowDown"): S3Failure.THROTTLED,
        (500, "InternalError"): S3Failure.SERVER_ERROR,
        (502, "BadGateway"): S3Failure.SERVER_ERROR,  # not an S3 code: the status decides
    }
    for (status, code), expected in listed.items():
        s3_error_server.answer(status, code)
        error = _error_of_botocore(lambda: client.list_objects_v2(Bucket="bucket", Prefix="in/"))
        assert botocore_failure(error) is expected, (status, code, error)
    s3_error_server.answer(400, "ExpiredToken")  # a HEAD's answer has no body, so no code
    assert botocore_failure(_error_of_botocore(lambda: client.head_object(Bucket="bucket", Key="k"))) \
        is S3Failure.REJECTED_WITHOUT_CODE
    s3_error_server.stall(30)
    impatient = _botocore_client(s3_error_server.url, read_timeout=0.5)
    assert botocore_failure(_error_of_botocore(lambda: impatient.list_objects_v2(Bucket="bucket"))) \
        is S3Failure.TIMEOUT
    closed = _botocore_client(DEAD_ENDPOINT)
    assert botocore_failure(_error_of_botocore(lambda: closed.list_objects_v2(Bucket="bucket"))) \
        is S3Failure.UNREACHABLE


def test_an_object_deleted_after_it_was_listed_says_so(s3_server):
    """A GET of a key that the listing's HEAD had found: the row says the object went away and that
    the next run lists the inputs again, not the SDK's bare wording."""
    bucket = s3_server.make_bucket(f"gone-{uuid.uuid4().hex[:12]}")
    s3_server.put_object(bucket, "in/a.jpg", b"x" * 5000)
    fs = _fs(s3_server.endpoint_url)
    stream = fs.open_input_stream(f"{bucket}/in/a.jpg")
    s3_server.client().delete_object(Bucket=bucket, Key="in/a.jpg")
    error = storage_error(_error_of(stream.read), "read", fs, f"{bucket}/in/a.jpg")
    assert str(error) == (f"cannot read s3://{bucket}/in/a.jpg: no such object: it was deleted or renamed after it "
                          "was listed (the next run lists the inputs again), or a list file names an object that "
                          "does not exist")


def _error_of_botocore(operation) -> Exception:
    import botocore.exceptions

    with pytest.raises((botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)) as caught:
        operation()
    return caught.value


# --- what the user reads --------------------------------------------------------------------


@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidToken"])
def test_a_rejected_session_token_is_a_credentials_error_that_says_what_to_renew(
    s3_error_server: S3ErrorServer, code: str
) -> None:
    """What S3 answers to an expired or garbage session token (moto accepts any token, so the
    answer comes from tests/s3_error_server.py): 400 with the code in an XML body, and a bare 400
    to a HEAD. This proves the messages for that answer; it cannot prove that AWS still answers
    so, which S3's error documentation states."""
    s3_error_server.answer(400, code)
    options = S3Options(endpoint_url=s3_error_server.url, region="us-east-1", access_key="AKIATEST",
                        secret_key="secret", session_token="garbage-token", max_attempts=1)
    # The listing's first request is a HEAD: a bare 400, nothing but the status to go by.
    with pytest.raises(CredentialsError) as caught:
        list_inputs_table("s3://bucket/in/", options, extensions=IMAGES)
    message = str(caught.value)
    assert message.startswith("cannot list s3://bucket/in: ")
    assert "refused the request with HTTP 400" in message and "credentials" in message
    assert "AWS_SESSION_TOKEN" in message and "aws sso login" in message
    assert "garbage-token" not in message and "secret" not in message.replace("AWS_SECRET_ACCESS_KEY", "")

    fs, _ = filesystem_for("s3://bucket", options)
    with pytest.raises(CredentialsError, match="cannot write s3://bucket/out/a.jpg: the credentials were "
                                                "rejected .*session token has expired or is not valid"):
        write_bytes_atomic(fs, "bucket/out/a.jpg", b"x" * (6 * 1024 * 1024))  # a multipart upload: a body
    with pytest.raises(CredentialsError, match="cannot read s3://bucket/in/a.jpg: .*HTTP 400"):
        read_bytes(fs, "bucket/in/a.jpg")


def test_the_listing_client_turns_error_codes_into_the_same_errors(s3_error_server: S3ErrorServer) -> None:
    """The driver's paged listing uses botocore: its error codes give the same errors."""
    fs = _fs(s3_error_server.url)
    client = _botocore_client(s3_error_server.url)
    s3_error_server.answer(400, "ExpiredToken")
    token = _error_of_botocore(lambda: client.list_objects_v2(Bucket="bucket"))
    error = storage_error(token, "list", fs, "bucket/in")
    assert isinstance(error, CredentialsError) and "session token has expired or is not valid" in str(error)
    s3_error_server.answer(404, "NoSuchBucket")
    missing = storage_error(_error_of_botocore(lambda: client.list_objects_v2(Bucket="bucket")), "list", fs,
                            "bucket/in")
    assert type(missing) is StorageError and "bucket 'bucket' does not exist" in str(missing)
