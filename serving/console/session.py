"""Console sessions: log in with an operator API key, get a signed session cookie.

The cookie (``HttpOnly``, ``SameSite=Strict``, path ``/console``) holds a random
session id and its HMAC under a per-process secret; the server keeps what the id
stands for (the API key's id, the user, the CSRF token, the expiry). Every
request checks the key again in Postgres, so revoking the key ends its console
sessions at once. Every POST carries a CSRF token bound to the session (or, on
the login form, to a short-lived pre-login cookie). A ``user`` key gets 403.
Sessions live in this process: a restart logs everyone out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from fastapi import Request
from psycopg_pool import ConnectionPool

from serving.auth import DEV_USER, User, bearer_token
from serving.errors import Forbidden

SESSION_COOKIE = "ratchet_console"
PRE_COOKIE = "ratchet_console_login"
COOKIE_PATH = "/console"
SESSION_SECONDS = 8 * 3600


class LoginRequired(Exception):
    """No valid console session: pages redirect to the login form."""


@dataclass
class Session:
    user: User
    csrf: str
    expires: float


@dataclass
class ConsoleSessions:
    """The console's sessions in this process, and the secret that signs their ids."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    seconds: float = SESSION_SECONDS
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sign(self, value: str) -> str:
        mac = hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()
        return f"{value}.{mac}"

    def unsign(self, signed: str | None) -> str | None:
        if not signed or "." not in signed:
            return None
        value, _, mac = signed.rpartition(".")
        return value if hmac.compare_digest(self.sign(value), f"{value}.{mac}") else None

    def create(self, user: User) -> tuple[str, Session]:
        """A new session for ``user``: (the cookie value, the session)."""
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.time() + self.seconds)
        with self._lock:
            now = time.time()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            self._sessions[sid] = session
        return self.sign(sid), session

    def get(self, cookie: str | None) -> Session | None:
        sid = self.unsign(cookie)
        if sid is None:
            return None
        with self._lock:
            session = self._sessions.get(sid)
        if session is None or session.expires < time.time():
            return None
        return session

    def drop(self, cookie: str | None) -> None:
        sid = self.unsign(cookie)
        if sid is not None:
            with self._lock:
                self._sessions.pop(sid, None)

    def login_token(self, pre_cookie: str) -> str:
        """The login form's CSRF token, bound to the pre-login cookie."""
        return hmac.new(self.secret, b"login:" + pre_cookie.encode(), hashlib.sha256).hexdigest()


def key_still_valid(pool: ConnectionPool, user: User) -> bool:
    """The session's API key exists and is not revoked (blocking: run in a thread)."""
    if not user.key_id:  # --no-auth mode
        return True
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT 1 FROM api_keys WHERE id = %s AND revoked_at IS NULL", (user.key_id,)
        ).fetchone()
    return row is not None


def require_operator(user: User) -> User:
    if not user.has_role("operator"):
        raise Forbidden(f"the console needs the operator role; you are {user.role}")
    return user


async def console_user(request: Request) -> tuple[User, Session | None]:
    """Who is using the console: the session cookie's user, or a bearer key's.

    Raises :class:`LoginRequired` without either, :class:`Forbidden` (403) for a
    role below operator, ``Unauthorized`` (401) for a bad bearer key."""
    state = request.app.state.ratchet
    sessions: ConsoleSessions = state.console
    session = sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        if not await asyncio.to_thread(key_still_valid, state.pool, session.user):
            sessions.drop(request.cookies.get(SESSION_COOKIE))
            raise LoginRequired()
        return require_operator(session.user), session
    if not state.settings.auth:
        return DEV_USER, None
    header = request.headers.get("authorization")
    if header:
        user = await state.keys.authenticate_async(bearer_token(header))
        return require_operator(user), None
    raise LoginRequired()


def check_csrf(request: Request, session: Session | None, token: str | None) -> None:
    """A POST from a session must carry its CSRF token. Bearer callers need none (a
    browser never sends an Authorization header on its own); a POST with neither (in
    --no-auth mode) is refused: log in first, which gives a session and a token."""
    if session is None:
        if request.headers.get("authorization"):
            return
        raise Forbidden("log in to the console first (/console/login)")
    if not token or not hmac.compare_digest(token, session.csrf):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")


__all__ = [
    "COOKIE_PATH",
    "PRE_COOKIE",
    "SESSION_COOKIE",
    "ConsoleSessions",
    "LoginRequired",
    "Session",
    "check_csrf",
    "console_user",
]
