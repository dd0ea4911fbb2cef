"""How the page links to a full-size input or output.

Local outputs are linked relative to the report (the page keeps working when OUTPUT is moved or
copied), local inputs as ``file://`` URLs. For ``s3://`` the links are presigned HTTPS GET URLs
(boto3, ``pip install 'dce-batch[s3]'``) valid for ``expires_s`` when credentials are available;
anyone holding the page can then fetch those objects until they expire. Without boto3 or
credentials (or with ``expires_s=0``) the ``s3://`` URI is shown as text, and the page says why.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.fs as pafs

from dce_batch.storage import Location, S3Options

__all__ = ["DEFAULT_PRESIGN_EXPIRES_S", "LinkMaker"]

DEFAULT_PRESIGN_EXPIRES_S = 7 * 24 * 3600  # the longest SigV4 allows


class LinkMaker:
    """URLs for the images a page shows, and one sentence saying what kind of links they are."""

    def __init__(self, output: Location, s3: S3Options | None, expires_s: int = DEFAULT_PRESIGN_EXPIRES_S,
                 *, now: datetime | None = None) -> None:
        self.output = output
        self.s3 = s3
        self.expires_s = expires_s
        self.expires_at = (now or datetime.now(timezone.utc)) + timedelta(seconds=expires_s)
        self._client: Any = None
        self.presign_problem: str | None = None  # why s3:// links are text, once known
        self.used_presigned = False
        self.used_text = False

    def href(self, uri: str) -> str | None:
        """A URL for ``uri``, or None when it can only be shown as text."""
        if uri.startswith(("s3://", "s3a://")):
            url = self._presign(uri)
            if url is None:
                self.used_text = True
            else:
                self.used_presigned = True
            return url
        if "://" in uri and not uri.startswith("file://"):
            self.used_text = True
            return None  # gs://, az://, ...: no portable link
        path = uri.removeprefix("file://")
        if isinstance(self.output.filesystem, pafs.LocalFileSystem):
            base = self.output.path.rstrip("/")
            if path.startswith(base + "/"):
                # Relative to _report/: the page keeps working when OUTPUT is moved or copied.
                return "../" + quote(path[len(base) + 1:])
        return Path(path).as_uri() if path.startswith("/") else None

    def policy(self) -> str:
        """One sentence for the page about the links :meth:`href` has made so far."""
        if self.used_presigned:
            return (f"Links to object storage are presigned HTTPS URLs valid until "
                    f"{self.expires_at:%Y-%m-%d %H:%M} UTC: anyone with this file can open those images until then.")
        if self.used_text:
            reason = f" ({self.presign_problem})" if self.presign_problem else ""
            return f"Images in object storage are shown by URI, not linked{reason}."
        return "Links open the full-size images on this machine (outputs relative to this report, inputs as file:// URLs)."

    def _presign(self, uri: str) -> str | None:
        if self.expires_s <= 0:
            self.presign_problem = "presigned links were turned off"
            return None
        client = self._s3_client()
        if client is None:
            return None
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=int(self.expires_s))

    def _s3_client(self) -> Any:
        if self._client is not None or self.presign_problem is not None:
            return self._client
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            self.presign_problem = "boto3 is not installed (pip install 'dce-batch[s3]')"
            return None
        options = self.s3 or S3Options.from_env()
        session = boto3.session.Session(aws_access_key_id=options.access_key,
                                        aws_secret_access_key=options.secret_key,
                                        aws_session_token=options.session_token,
                                        profile_name=None if options.access_key else options.profile)
        if session.get_credentials() is None:
            self.presign_problem = "no S3 credentials to sign links with"
            return None
        self._client = session.client("s3", endpoint_url=options.endpoint_url,
                                      region_name=options.region or session.region_name or "us-east-1",
                                      config=Config(signature_version="s3v4"))
        return self._client
