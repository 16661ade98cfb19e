"""Admin keys: accepted when their SHA-256 is configured (SIM_ADMIN_KEYS_SHA256), compared in
constant time; what the audit records is a fingerprint (a prefix of the digest), never the key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def fingerprint_of(digest_hex: str) -> str:
    """The audit's name for a key: the first 12 hex digits of its SHA-256."""
    return "sha256:" + digest_hex[:12]


def accepted_fingerprint(key: str, accepted_digests: Iterable[str]) -> str | None:
    """The fingerprint of `key` if its SHA-256 is one of `accepted_digests` (hex), else None.
    Every digest is compared, each with hmac.compare_digest, so the time taken does not tell
    how much of a guess matched or which digest did."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = False
    for accepted in accepted_digests:
        found |= hmac.compare_digest(digest.encode(), accepted.strip().lower().encode())
    return fingerprint_of(digest) if found else None
