"""The S3 claim store: claim-checked instances in S3-compatible object storage that several pods share.

Objects are ``s3://BUCKET/PREFIX/<sha256>.dcm`` (content-addressed). A claim check arrives in an
untrusted record, so ``read`` is confined like the directory store: the bucket must be the configured
one and the key must lie directly under the configured prefix with a plain name, or nothing is
requested at all. The size is compared on a HEAD before any byte is fetched; the GET asks for exactly
the declared byte range, only of the object version the HEAD saw (If-Match), and never reads more than
the claim check declares; the SHA-256 is checked after. Objects are deleted once the study that used
them is committed and collected by age otherwise; writes carry Content-MD5, so a corrupted upload is
refused by the server.

An unreachable or refusing server (network, 5xx, denied credentials) raises ClaimStoreUnavailable after
botocore's own bounded retries, never RejectedInstance: a claim check is judged only on an answer about
its object.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from typing import Any
from urllib.parse import urlparse

from oncostream.claim_store.base import OBJECT_SUFFIX, ClaimStore, size_mismatch, verified
from oncostream.contracts import ClaimCheck
from oncostream.errors import ClaimStoreUnavailable, RejectedInstance
from oncostream.transport_security import refuse_credentials_in_clear

log = logging.getLogger(__name__)

_READ_STEP = 4 * 1024 * 1024
_SUFFIX = OBJECT_SUFFIX
# S3 bucket naming rules (lower case, digits, dots, hyphens; 3-63 characters)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# a name directly under the prefix: what a claim check may point at
_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_CONTENT_ADDRESSED = re.compile(r"[0-9a-f]{64}\.dcm")
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3ClaimStore(ClaimStore):
    """One bucket and prefix of an S3-compatible object store (``s3:`` URIs), through boto3."""

    scheme = "s3"

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 max_age_s: float = 7 * 24 * 3600.0, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_attempts: int = 4):
        if not isinstance(url, str):
            raise TypeError(f"url must be a string s3://bucket/prefix, got {type(url).__name__}")
        parsed = urlparse(url)
        if parsed.scheme != "s3" or parsed.query or parsed.fragment or parsed.params:
            raise ValueError(f"url must be s3://bucket[/prefix], got {url!r}")
        if not _BUCKET.fullmatch(parsed.netloc or "") or ".." in parsed.netloc:
            raise ValueError(f"url: {parsed.netloc!r} is not a valid S3 bucket name")
        segments = [s for s in parsed.path.split("/") if s]
        if any(not _PREFIX_SEGMENT.fullmatch(s) for s in segments):
            raise ValueError(f"url: prefix {parsed.path!r} must be /-separated names of letters, digits, '.', '_' "
                             "and '-' (no '..', no empty or hidden segments)")
        if endpoint_url is not None and urlparse(endpoint_url).scheme not in ("http", "https"):
            raise ValueError(f"endpoint_url must be an http(s) URL, got {endpoint_url!r}")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        if access_key_id is not None and endpoint_url is not None:
            refuse_credentials_in_clear(endpoint_url, "endpoint_url")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.bucket = parsed.netloc
        self.prefix = "".join(f"{s}/" for s in segments)
        self.max_age_s = max_age_s
        self._client = _client(endpoint_url, region, access_key_id, secret_access_key,
                               connect_timeout_s, read_timeout_s, max_attempts)

    def __repr__(self) -> str:
        return f"S3ClaimStore('s3://{self.bucket}/{self.prefix}')"

    # -- producer side
    def write(self, data: bytes) -> ClaimCheck:
        digest = hashlib.sha256(data).hexdigest()
        key = f"{self.prefix}{digest}{_SUFFIX}"
        claim = ClaimCheck(uri=f"s3://{self.bucket}/{key}", sha256=digest, size=len(data))
        existing = self._head(key)
        if existing is not None and existing["ContentLength"] == len(data):
            return claim
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self._call("put_object", Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5,
                   ContentType="application/dicom", Metadata={"sha256": digest})
        return claim

    # -- consumer side
    def read(self, claim: ClaimCheck) -> bytes:
        key = self._confined_key(claim.uri)
        head = self._head(key)
        if head is None:
            raise RejectedInstance("claim_check_unresolvable", "claim-checked object is not in the claim store "
                                   "(deleted or never written)")
        if head["ContentLength"] != claim.size:
            raise size_mismatch()
        data = b""
        if claim.size > 0:
            data = self._get_exactly(key, claim.size, head.get("ETag"))
        return verified(data, claim)

    def delete(self, claim: ClaimCheck) -> bool:
        try:
            key = self._confined_key(claim.uri)
        except RejectedInstance:
            return False
        if key != f"{self.prefix}{claim.sha256}{_SUFFIX}" or self._head(key) is None:
            return False
        self._call("delete_object", Bucket=self.bucket, Key=key)
        return True

    def collect(self, now: float | None = None) -> int:
        """Delete content-addressed objects directly under the prefix whose last modification is older
        than ``max_age_s`` (the server's clock)."""
        now = time.time() if now is None else now
        removed = 0
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"))
        except Exception as exc:  # noqa: BLE001 - botocore errors have no common root with OSError
            raise _unavailable("list", exc) from exc
        for page in pages:
            for entry in page.get("Contents", []):
                name = entry["Key"][len(self.prefix):]
                if not _CONTENT_ADDRESSED.fullmatch(name):
                    continue
                if now - entry["LastModified"].timestamp() > self.max_age_s:
                    self._call("delete_object", Bucket=self.bucket, Key=entry["Key"])
                    removed += 1
        if removed:
            log.info("claim store %r: %d objects older than %.0f s deleted", self, removed, self.max_age_s)
        return removed

    # -- confinement and requests
    def _confined_key(self, uri: str) -> str:
        """The object key an ``s3:`` URI names, if it lies directly under this store's bucket and prefix."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.query or parsed.fragment or parsed.params:
            raise RejectedInstance("claim_check_refused", "claim check is not an s3 URI of this claim store")
        if parsed.netloc != self.bucket:
            raise RejectedInstance("claim_check_refused", "claim check points outside the claim store's bucket")
        key = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        name = key[len(self.prefix):] if key.startswith(self.prefix) else None
        if name is None or not _OBJECT_NAME.fullmatch(name):
            raise RejectedInstance("claim_check_refused", "claim check points outside the claim store's prefix")
        return key

    def _head(self, key: str) -> dict | None:
        """The object's HEAD answer, None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise _unavailable("HEAD", exc) from exc
        except Exception as exc:  # noqa: BLE001 - connection errors are BotoCoreError, not OSError
            raise _unavailable("HEAD", exc) from exc

    def _get_exactly(self, key: str, size: int, etag: str | None) -> bytes:
        from botocore.exceptions import ClientError

        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes=0-{size - 1}"}
        if etag:
            request["IfMatch"] = etag
        try:
            answer = self._client.get_object(**request)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _MISSING:
                raise RejectedInstance("claim_check_unresolvable", "claim-checked object was deleted while being "
                                       "read") from exc
            if code in ("412", "PreconditionFailed"):
                raise RejectedInstance("claim_check_mismatch", "claim-checked object changed while being "
                                       "read") from exc
            raise _unavailable("GET", exc) from exc
        except Exception as exc:  # noqa: BLE001
            raise _unavailable("GET", exc) from exc
        body = answer["Body"]
        chunks, remaining = [], size
        try:
            while remaining > 0:
                chunk = body.read(min(remaining, _READ_STEP))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        except Exception as exc:  # noqa: BLE001 - a connection cut mid-body
            raise _unavailable("GET", exc) from exc
        finally:
            body.close()
        return b"".join(chunks)

    def _call(self, operation: str, **request) -> dict:
        try:
            return getattr(self._client, operation)(**request)
        except Exception as exc:  # noqa: BLE001 - ClientError and BotoCoreError alike
            raise _unavailable(operation, exc) from exc


def _client(endpoint_url, region, access_key_id, secret_access_key, connect_timeout_s, read_timeout_s, max_attempts):
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region, connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
        retries={"mode": "standard", "max_attempts": max_attempts},
        # a self-hosted endpoint (an IP, a service name) has no per-bucket host names
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # checksums only where S3 requires them: S3-compatible servers do not all accept the
        # CRC32 trailers recent botocore adds by default (integrity comes from Content-MD5 and SHA-256)
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key_id,
                                          aws_secret_access_key=secret_access_key, config=config)


def _error_code(exc) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", ""))


def _unavailable(operation: str, exc: Exception) -> ClaimStoreUnavailable:
    code = _error_code(exc)
    return ClaimStoreUnavailable(f"claim store {operation} failed: {type(exc).__name__}" + (f" {code}" if code else ""))
