"""What guards the console: a session cookie signed by a secret of this process, the CSRF token
derived from it, the admin key checked in constant time (never kept), and the response headers
that keep pages from running anything but the console's own scripts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SESSION_COOKIE = "simconsole_session"
CSRF_FIELD = "csrf"

# No inline script or style, nothing from elsewhere, never inside another site's frame.
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class Sessions:
    """Session ids signed with HMAC-SHA256 under a secret drawn at start: a restart ends every
    session (nothing to store, nothing to leak). The CSRF token is a second HMAC of the session
    id, so it is checked without server-side state and differs per session."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, purpose: str, value: str) -> str:
        mac = hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def new_cookie(self) -> str:
        session = secrets.token_urlsafe(24)
        return f"{session}.{self._mac('session', session)}"

    def session_of(self, cookie: str | None) -> str | None:
        """The session id a cookie carries, if this process signed it."""
        if not cookie or "." not in cookie:
            return None
        session, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac.encode(), self._mac("session", session).encode()):
            return None
        return session

    def csrf_token(self, session: str) -> str:
        return self._mac("csrf", session)

    def csrf_ok(self, session: str | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())


def key_fingerprint(key: str | None, accepted: Iterable[str]) -> str | None:
    """The audit fingerprint of an accepted admin key (engine.adminkeys), None otherwise."""
    from engine.adminkeys import accepted_fingerprint

    if not key:
        return None
    return accepted_fingerprint(key, accepted)
