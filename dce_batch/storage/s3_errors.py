"""What an S3 failure means, read from structured fields wherever the client gives them.

botocore (the driver's listing client) reports S3's error code, the HTTP status and the kind of
connection failure as fields and exception classes: :func:`botocore_failure` reads those.
pyarrow (the AWS SDK for C++ inside it) reports only a message, so its wording is read here and
nowhere else, in :data:`PYARROW_S3_ERROR_PATTERNS`. tests/test_s3_errors.py pins every pattern
to an error that the installed pyarrow produces against moto_server (or a server answering as
S3 does where moto cannot), so a pyarrow release that rewords one fails that test instead of
silently misclassifying errors.
"""

from __future__ import annotations

import enum
import re

__all__ = ["PYARROW_S3_ERROR_PATTERNS", "S3Failure", "botocore_failure", "pyarrow_failure", "s3_failure"]


class S3Failure(enum.Enum):
    """Kinds of S3 failure that call for different advice."""

    NO_SUCH_BUCKET = "no such bucket"
    #: A GET of a key that a listing or a HEAD had found: the object went away in between.
    NO_SUCH_KEY = "no such object"
    TOKEN_REJECTED = "session token expired or invalid"
    KEYS_REJECTED = "access key unknown or secret key wrong"
    #: HTTP 400 with no body: S3's answer to a HEAD request whose credentials it rejects (an
    #: expired or invalid session token, usually), which carries no error code to tell more.
    REJECTED_WITHOUT_CODE = "HTTP 400 without an error code"
    ACCESS_DENIED = "access denied"
    THROTTLED = "throttled"
    TIMEOUT = "timed out"
    UNREACHABLE = "cannot connect"
    SERVER_ERROR = "server error"
    #: An error answer to a GET of an object smaller than the error's XML body: the SDK writes
    #: the body into the object's buffer, overflows it, and does not retry (see io.read_bytes).
    OVERFLOWED_ERROR_BODY = "error body larger than the object"
    NO_CREDENTIALS = "no credentials"


#: pyarrow's wording of each failure, first match wins (a timeout is also worded as a network
#: error, an overflowed error body also as an internal failure). One regular expression per
#: wording, so that the test can show each one on a real error.
PYARROW_S3_ERROR_PATTERNS: tuple[tuple[S3Failure, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (S3Failure.OVERFLOWED_ERROR_BODY, r"Failed to flush response stream"),
        (S3Failure.NO_SUCH_BUCKET, r"AWS Error NO_SUCH_BUCKET during"),
        # With the error's body, or (some SDK states, and 404s without a body) without it.
        (S3Failure.NO_SUCH_KEY, r"AWS Error (NO_SUCH_KEY|RESOURCE_NOT_FOUND) during GetObject"),
        (S3Failure.TOKEN_REJECTED, r"ExceptionName: ExpiredToken Message"),
        (S3Failure.TOKEN_REJECTED, r"ExceptionName: InvalidToken Message"),
        (S3Failure.TOKEN_REJECTED, r"ExceptionName: TokenRefreshRequired Message"),
        (S3Failure.KEYS_REJECTED, r"AWS Error INVALID_ACCESS_KEY_ID during"),
        (S3Failure.KEYS_REJECTED, r"AWS Error SIGNATURE_DOES_NOT_MATCH during"),
        (S3Failure.REJECTED_WITHOUT_CODE, r"AWS Error UNKNOWN \(HTTP status 400\) during \w+ operation: No response body"),
        (S3Failure.ACCESS_DENIED, r"AWS Error ACCESS_DENIED during"),
        (S3Failure.THROTTLED, r"AWS Error SLOW_DOWN during"),
        (S3Failure.THROTTLED, r"AWS Error THROTTLING during"),
        (S3Failure.THROTTLED, r"AWS Error SERVICE_UNAVAILABLE during"),
        (S3Failure.THROTTLED, r"AWS Error UNKNOWN \(HTTP status 503\)"),
        (S3Failure.THROTTLED, r"AWS Error UNKNOWN \(HTTP status 429\)"),
        (S3Failure.TIMEOUT, r"curlCode: 28, Timeout was reached"),
        (S3Failure.TIMEOUT, r"AWS Error REQUEST_TIMEOUT during"),
        (S3Failure.UNREACHABLE, r"AWS Error NETWORK_CONNECTION during"),
        (S3Failure.SERVER_ERROR, r"AWS Error INTERNAL_FAILURE during"),
        (S3Failure.SERVER_ERROR, r"AWS Error UNKNOWN \(HTTP status 5\d\d\)"),
    )
)


def pyarrow_failure(exc: BaseException) -> S3Failure | None:
    """The kind of an error raised by pyarrow's S3 filesystem, or None if not an S3 failure
    known here."""
    text = str(exc)
    for kind, pattern in PYARROW_S3_ERROR_PATTERNS:
        if pattern.search(text):
            return kind
    return None


# S3's error codes (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
_S3_ERROR_CODES = {
    "NoSuchBucket": S3Failure.NO_SUCH_BUCKET,
    "NoSuchKey": S3Failure.NO_SUCH_KEY,
    "ExpiredToken": S3Failure.TOKEN_REJECTED,
    "InvalidToken": S3Failure.TOKEN_REJECTED,
    "TokenRefreshRequired": S3Failure.TOKEN_REJECTED,
    "InvalidAccessKeyId": S3Failure.KEYS_REJECTED,
    "SignatureDoesNotMatch": S3Failure.KEYS_REJECTED,
    "AccessDenied": S3Failure.ACCESS_DENIED,
    "AllAccessDisabled": S3Failure.ACCESS_DENIED,
    "SlowDown": S3Failure.THROTTLED,
    "Throttling": S3Failure.THROTTLED,
    "ThrottlingException": S3Failure.THROTTLED,
    "RequestLimitExceeded": S3Failure.THROTTLED,
    "ServiceUnavailable": S3Failure.THROTTLED,
    "RequestTimeout": S3Failure.TIMEOUT,
    "InternalError": S3Failure.SERVER_ERROR,
}


def botocore_failure(exc: BaseException) -> S3Failure | None:
    """The kind of a botocore exception, from its error code, HTTP status or class."""
    import botocore.exceptions as bce

    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in _S3_ERROR_CODES:
            return _S3_ERROR_CODES[code]
        if status == 400 and code in ("", "400"):  # botocore's code for an answer without a body
            return S3Failure.REJECTED_WITHOUT_CODE
        if status == 403:
            return S3Failure.ACCESS_DENIED
        if status in (429, 503):
            return S3Failure.THROTTLED
        if isinstance(status, int) and status >= 500:
            return S3Failure.SERVER_ERROR
        return None
    # Timeouts first: botocore's ConnectTimeoutError is also an EndpointConnectionError.
    if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError)):
        return S3Failure.TIMEOUT
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectionClosedError)):
        return S3Failure.UNREACHABLE
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
        return S3Failure.NO_CREDENTIALS
    return None


def s3_failure(exc: BaseException) -> S3Failure | None:
    """The kind of an S3 failure raised by botocore or pyarrow, or None."""
    import botocore.exceptions as bce

    if isinstance(exc, (bce.BotoCoreError, bce.ClientError)):
        return botocore_failure(exc)
    return pyarrow_failure(exc)
