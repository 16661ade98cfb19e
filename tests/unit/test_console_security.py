"""The console's guards without a server: admin keys compared by digest in constant time, and
session cookies and CSRF tokens that only this process could have signed."""

from __future__ import annotations

import hashlib

from console.security import Sessions, key_fingerprint
from engine.adminkeys import accepted_fingerprint

KEY = "k3y-for-unit-tests"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


def test_a_key_is_accepted_by_its_digest_and_named_by_a_prefix_of_it() -> None:
    assert accepted_fingerprint(KEY, [OTHER, DIGEST]) == "sha256:" + DIGEST[:12]
    assert accepted_fingerprint(KEY, [DIGEST.upper()]) == "sha256:" + DIGEST[:12]
    assert accepted_fingerprint(KEY + " ", [DIGEST]) is None
    assert accepted_fingerprint(DIGEST, [DIGEST]) is None  # the digest is not the key
    assert accepted_fingerprint(KEY, []) is None
    assert key_fingerprint("", [DIGEST]) is None and key_fingerprint(None, [DIGEST]) is None


def test_sessions_and_csrf_tokens_are_this_processs_own() -> None:
    sessions, other = Sessions(), Sessions()
    cookie = sessions.new_cookie()
    session = sessions.session_of(cookie)
    assert session is not None and other.session_of(cookie) is None
    assert sessions.session_of(cookie + "x") is None
    assert sessions.session_of(session + ".forged") is None
    assert sessions.session_of("") is None and sessions.session_of(None) is None
    token = sessions.csrf_token(session)
    assert sessions.csrf_ok(session, token)
    assert not other.csrf_ok(session, token)
    assert not sessions.csrf_ok(session, "")
    assert not sessions.csrf_ok(None, token)
    second = sessions.session_of(sessions.new_cookie())
    assert second is not None and not sessions.csrf_ok(second, token)
