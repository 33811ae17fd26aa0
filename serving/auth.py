"""API keys and rate limits.

A key is ``rk_`` + 40 url-safe characters, shown once by ``ratchet keys create``;
Postgres holds only its sha256 with the user and role. Each key has a token
bucket in this process (``rate_limit_per_minute`` sustained, ``rate_limit_burst``
at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import psycopg
from psycopg_pool import ConnectionPool

from serving.errors import RateLimited, Unauthorized

logger = logging.getLogger(__name__)

Role = Literal["user", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
_RANK = {"user": 0, "operator": 1, "admin": 2}
KEY_PREFIX = "rk_"


@dataclass(frozen=True)
class User:
    """Who is calling: the key's owner and role."""

    id: str
    role: Role
    key_id: str = ""  # the API key used ("" in --no-auth mode)

    def has_role(self, role: Role) -> bool:
        """True when this user's role is ``role`` or above (user < operator < admin)."""
        return _RANK[self.role] >= _RANK[role]


DEV_USER = User(id="dev", role="admin", key_id="")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(conn: psycopg.Connection, *, user_id: str, role: str) -> str:
    """Store a new key for ``user_id`` (created if new) and return the key itself."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not user_id.strip():
        raise ValueError("user must not be empty")
    key = KEY_PREFIX + secrets.token_urlsafe(30)
    with conn.transaction():
        conn.execute("INSERT INTO users (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (user_id,))
        conn.execute(
            "INSERT INTO api_keys (id, key_hash, prefix, user_id, role)"
            " VALUES (%s, %s, %s, %s, %s)",
            (uuid.uuid4(), hash_key(key), key[:8], user_id, role),
        )
    return key


class KeyStore:
    """Looks keys up in Postgres, with a short in-process cache.

    Each server process remembers a key's answer (its user, or "unknown") for
    ``cache_seconds``: a revoked key keeps working, and a key created after a
    failed attempt with it keeps failing, for at most that long. Past
    ``max_entries`` cached keys, expired answers are dropped (all of them if
    none has expired), so random keys cannot grow the cache without bound."""

    def __init__(
        self, pool: ConnectionPool, *, cache_seconds: float = 30.0, max_entries: int = 10_000
    ) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[float, User | None]] = {}
        self._cache_seconds = cache_seconds
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def authenticate(self, key: str) -> User:
        """The user owning ``key``; raises Unauthorized for unknown or revoked keys.
        Blocks on Postgres when the key is not cached: use :meth:`authenticate_async`
        on an event loop."""
        digest = hash_key(key)
        found, user = self._cached(digest)
        if not found:
            user = self._lookup(digest)
        return _known(user)

    async def authenticate_async(self, key: str) -> User:
        """:meth:`authenticate` for the event loop: answers from the cache without
        leaving the loop, and queries Postgres in a worker thread on a miss."""
        digest = hash_key(key)
        found, user = self._cached(digest)
        if not found:
            user = await asyncio.to_thread(self._lookup, digest)
        return _known(user)

    def _cached(self, digest: str) -> tuple[bool, User | None]:
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < self._cache_seconds:
            return True, hit[1]
        return False, None

    def _lookup(self, digest: str) -> User | None:
        now = time.monotonic()
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT id, user_id, role FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        user = User(id=row[1], role=row[2], key_id=str(row[0])) if row else None
        with self._lock:
            if len(self._cache) >= self._max_entries:
                fresh = {
                    d: hit for d, hit in self._cache.items() if now - hit[0] < self._cache_seconds
                }
                self._cache = fresh if len(fresh) < self._max_entries else {}
            self._cache[digest] = (now, user)
        return user


def _known(user: User | None) -> User:
    if user is None:
        raise Unauthorized("invalid API key")
    return user


class RateLimiter:
    """A token bucket per key, in this process."""

    def __init__(
        self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock  # seconds; tests pass a clock they move by hand
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise RateLimited with the wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimited(retry_after=(1.0 - tokens) / self._rate)
            self._buckets[key] = (tokens - 1.0, now)


def bearer_token(header: str | None) -> str:
    """The key from an ``Authorization: Bearer <key>`` header; raises Unauthorized."""
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return token.strip()
