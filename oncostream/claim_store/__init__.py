"""Claim stores: where instances above the inline limit wait while Kafka carries their claim check.

``ClaimStore`` is the interface; ``DirectoryClaimStore`` (``file:`` URIs, one directory) and
``S3ClaimStore`` (``s3:`` URIs, S3-compatible object storage that several pods share) implement it;
``claim_store_from_settings`` builds the one the settings select.
"""

from __future__ import annotations

from oncostream.claim_store.base import ClaimStore
from oncostream.claim_store.directory import DirectoryClaimStore
from oncostream.claim_store.s3 import S3ClaimStore
from oncostream.settings import Settings

__all__ = ["ClaimStore", "DirectoryClaimStore", "S3ClaimStore", "claim_store_from_settings"]


def claim_store_from_settings(settings: Settings) -> ClaimStore:
    """``claim_check_url`` (s3://bucket/prefix) when set, otherwise the directory ``claim_check_dir``."""
    if settings.claim_check_url:
        secret = settings.claim_check_s3_secret_access_key
        key_id = settings.claim_check_s3_access_key_id
        return S3ClaimStore(settings.claim_check_url, endpoint_url=settings.claim_check_s3_endpoint_url,
                            region=settings.claim_check_s3_region,
                            access_key_id=key_id.get_secret_value() if key_id else None,
                            secret_access_key=secret.get_secret_value() if secret else None,
                            max_age_s=settings.claim_check_max_age_s)
    return DirectoryClaimStore(settings.claim_check_dir, settings.claim_check_max_age_s)
