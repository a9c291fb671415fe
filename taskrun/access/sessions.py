"""Dashboard sign-ins that last: opaque session tokens in a cookie, kept hashed.

A sign-in creates a row with the user, creation, last use and expiry; the
browser gets 256 random bits (the cookie), the database only their sha256.
Every request and every Streamlit rerun resolves the cookie to the user as
the database has it now: a revoked session, a deleted user or a changed role
take effect at the next interaction (after ``CACHE_S`` on another replica).

Failed sign-ins are throttled per user and per client address before the
argon2 check, so a flood of guesses costs the server nothing but a lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from taskrun.access import audit
from taskrun.errors import NotFound, TaskRunError, TooManyAttempts
from taskrun.history.db import Database
from taskrun.history.models import User, WebSession, utcnow

COOKIE = "taskrun_session"
TOKEN_PREFIX = "trs_"
CACHE_S = 5.0  # how long a resolved cookie is trusted before the database is asked again
PRUNE_EVERY_S = 3600  # rows of long-ended sessions go, on a sign-in at most this often
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often
_T = WebSession.__table__


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SessionUser:
    session_id: int
    name: str
    role: str


class Sessions:
    def __init__(self, db: Database, days: float):
        self.db = db
        self.lifetime = timedelta(days=days)
        self._cache: dict[str, tuple[float, SessionUser | None]] = {}
        self._lock = threading.Lock()
        self._pruned_at = float("-inf")

    def create(self, name: str, remember: bool, client: str | None = None,
               user_agent: str | None = None) -> str:
        """A new session for ``name``; returns the token (the cookie's value)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.prune()
        with self.db.begin() as c:
            c.execute(sa.insert(_T).values(
                token_hash=token_hash(token), user_name=name, created_at=now, last_used_at=now,
                expires_at=now + self.lifetime, persistent=remember,
                client=(client or "")[:64] or None, user_agent=(user_agent or "")[:200] or None))
        return token

    def resolve(self, token: str | None) -> SessionUser | None:
        """Who the token signs in, or None (unknown, revoked, expired, user gone)."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        hashed = token_hash(token)
        now_mono = time.monotonic()
        with self._lock:
            hit = self._cache.get(hashed)
        if hit is not None and now_mono - hit[0] < CACHE_S:
            return hit[1]
        now = utcnow()
        with self.db.connect() as c:
            row = c.execute(
                sa.select(_T.c.id, _T.c.last_used_at, User.name, User.role)
                .join(User, User.name == _T.c.user_name)
                .where(_T.c.token_hash == hashed, _T.c.revoked_at.is_(None),
                       _T.c.expires_at > now)).first()
        found = SessionUser(row.id, row.name, row.role) if row else None
        if row is not None and now - row.last_used_at > _TOUCH_EVERY:
            try:
                with self.db.begin() as c:
                    c.execute(sa.update(_T).where(_T.c.id == row.id).values(last_used_at=now))
            except TaskRunError:  # a full or read-only disk: still signed in, not noted
                pass
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[hashed] = (now_mono, found)
        return found

    def end(self, token: str | None) -> None:
        """Sign-out: the session of this token is revoked (nothing if it is not one)."""
        if not token:
            return
        hashed = token_hash(token)
        with self.db.begin() as c:
            c.execute(sa.update(_T).where(_T.c.token_hash == hashed, _T.c.revoked_at.is_(None))
                      .values(revoked_at=utcnow()))
        self._forget()

    def revoke(self, session_id: int, actor: str | None = None) -> None:
        with self.db.begin() as c:
            done = c.execute(sa.update(_T).where(_T.c.id == session_id,
                                                 _T.c.revoked_at.is_(None))
                             .values(revoked_at=utcnow())).rowcount
            if done:
                audit.record(self.db, actor, "session.revoke", str(session_id), conn=c)
        if not done:
            raise NotFound(f"No active session with id {session_id}.")
        self._forget()

    def revoke_user(self, name: str, conn) -> None:
        """Every session of ``name`` (its password changed, or it was deleted)."""
        conn.execute(sa.update(_T).where(_T.c.user_name == name, _T.c.revoked_at.is_(None))
                     .values(revoked_at=utcnow()))
        self._forget()

    def active(self) -> list[dict]:
        cols = (_T.c.id, _T.c.user_name, _T.c.created_at, _T.c.last_used_at, _T.c.expires_at,
                _T.c.persistent, _T.c.client, _T.c.user_agent)
        with self.db.connect() as c:
            rows = c.execute(sa.select(*cols).where(_T.c.revoked_at.is_(None),
                                                    _T.c.expires_at > utcnow())
                             .order_by(_T.c.last_used_at.desc())).all()
        return [dict(r._mapping) for r in rows]

    def prune(self) -> int:
        """Rows of sessions that ended more than a lifetime ago (retention calls this)."""
        cutoff = utcnow() - self.lifetime
        with self.db.begin() as c:
            return c.execute(sa.delete(_T).where(sa.or_(_T.c.expires_at < cutoff,
                                                        _T.c.revoked_at < cutoff))).rowcount

    def _forget(self) -> None:
        with self._lock:
            self._cache.clear()


class Throttle:
    """Failed sign-ins per key (a user, a client address) in a sliding window.

    The first ``free`` failures cost nothing extra; after them each attempt must
    wait ``2 ** (failures - free)`` seconds after the last failure (at most
    ``MAX_WAIT_S``). A success forgets the user's failures.
    """

    WINDOW_S = 15 * 60
    MAX_WAIT_S = 300.0

    def __init__(self, free: int):
        self.free = free
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(key)
            if not times:
                return 0.0
            while times and now - times[0] > self.WINDOW_S:
                times.popleft()
            over = len(times) - self.free
            if over < 0:
                return 0.0
            return max(0.0, times[-1] + min(2.0 ** over, self.MAX_WAIT_S) - now)

    MAX_KEYS = 10_000

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.pop(key, None) or deque(maxlen=64)
            times.append(now)
            self._failures[key] = times  # last in the order: the most recent failure
            while len(self._failures) > self.MAX_KEYS:
                # A flood of made-up names: the keys that failed longest ago go first,
                # so the ones being throttled now stay throttled.
                del self._failures[next(iter(self._failures))]

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class SignInGate:
    """Both throttles in front of a password check: per (user, client) and per client.

    Never per user alone: guesses at a user's password from one address must not
    lock that user out of every other address, theirs included.
    """

    def __init__(self):
        self.by_user = Throttle(free=5)  # keyed by (user, client)
        self.by_client = Throttle(free=20)  # a team behind one NAT address

    def check(self, name: str, client: str | None) -> None:
        wait = max(self.by_user.wait(f"u:{name}\0{client}"),
                   self.by_client.wait(f"c:{client}") if client else 0.0)
        if wait > 0:
            raise TooManyAttempts(
                f"Too many failed sign-ins: try again in {max(1, round(wait))} s.", wait)

    def failed(self, name: str, client: str | None) -> None:
        self.by_user.failed(f"u:{name}\0{client}")
        if client:
            self.by_client.failed(f"c:{client}")

    def succeeded(self, name: str, client: str | None = None) -> None:
        self.by_user.forget(f"u:{name}\0{client}")
