"""Who may do what: users with roles for the dashboard, bearer tokens for the API.

Roles are ordered: ``viewer`` reads tasks, runs, logs and system; ``operator``
also runs and cancels; ``admin`` also writes tasks and manages users and tokens.
Passwords are kept as argon2 hashes, tokens as sha256 (they are 256 random bits,
so a fast hash loses nothing and lets a lookup by hash find them).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from taskrun import keys
from taskrun.access import audit
from taskrun.access.sessions import Sessions, SignInGate
from taskrun.errors import (
    Conflict,
    Forbidden,
    InvalidParams,
    NotFound,
    TaskRunError,
    TooManyAttempts,
)
from taskrun.history.db import Database
from taskrun.history.models import ApiToken, User, utcnow
from taskrun.settings import Settings
from taskrun.status import ROLES

MAX_LINK_TTL_S = 900  # a signed link lasts minutes: a download, a peer's read
log = logging.getLogger("taskrun.auth")

TOKEN_PREFIX = "trk_"
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so both cases take as long.

    Made on the first sign-in, not at import: an argon2 hash costs ~0.13 s, which
    every CLI command and every server start paid.
    """
    return _HASHER.hash("not a password anyone has")

_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS_ADMIN = Identity("local", "admin")  # who everyone is when auth is off


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidParams(f"role must be one of {', '.join(ROLES)}")
    return role


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.enabled = settings.auth
        self._admin_password = settings.admin_password
        self._env_token = settings.api_token
        self._settings = settings
        self._key: bytes | None = None
        self.sessions = Sessions(db, settings.session_days)
        self.gate = SignInGate()
        self._oidc = None

    @property
    def oidc(self):
        """Single sign-on, when ``TASKRUN_OIDC_ISSUER`` is set (else None)."""
        if self._oidc is None and self._settings.oidc_issuer:
            from taskrun.access.oidc import Oidc, OidcConfig

            s = self._settings
            self._oidc = Oidc(OidcConfig(
                issuer=s.oidc_issuer, client_id=s.oidc_client_id,
                client_secret=s.oidc_client_secret, label=s.oidc_label,
                default_role=s.oidc_default_role or None,
                redirect_uri=s.base_url.rstrip("/") + "/api/auth/oidc/callback"),
                keys.derive(keys.master_key(s.home, s.secret_key), "oidc-state"))
        return self._oidc

    def sso_login(self, identity: str) -> Identity:
        """The local user a signed-on identity is; created with the default role if
        one is set; refused (Forbidden) otherwise."""
        with self.db.connect() as c:
            row = c.execute(sa.select(User.role).where(User.name == identity)).first()
        if row is None:
            role = self._settings.oidc_default_role
            if not role:
                audit.record(self.db, identity, "login.sso_refused", "no local user")
                raise Forbidden(f"{identity} has no account here; ask an admin to add the "
                                "user (named by that e-mail).")
            self.set_user(identity, secrets.token_urlsafe(32), role, actor="sso")
            row = type("Row", (), {"role": role})
        log.info("user %s signed in (single sign-on)", identity)
        audit.record(self.db, identity, "login.success", "sso")
        return Identity(identity, row.role)

    # ---- signed links (downloads from the dashboard, which holds no API token) --

    def _secret(self) -> bytes:
        if self._key is None:
            master = keys.master_key(self._settings.home, self._settings.secret_key)
            self._key = keys.derive(master, "signed-links")
        return self._key

    def sign(self, resource: str, ttl: float = 300, method: str = "GET") -> str:
        """``exp=…&sig=…`` that lets the bearer ``method`` ``resource`` until it expires
        (at most ``MAX_LINK_TTL_S`` from now)."""
        exp = int(time.time() + min(ttl, MAX_LINK_TTL_S))
        return f"exp={exp}&sig={self._link_mac(method, resource, exp)}"

    def verify_signed(self, resource: str, exp: str, sig: str, method: str = "GET") -> bool:
        """Whether ``sig`` signs this method on this path until ``exp``, not yet passed
        and no further ahead than a link is ever given for (a longer one is forged)."""
        now = time.time()
        if not exp.isdigit() or not now <= int(exp) <= now + MAX_LINK_TTL_S + 5:
            return False
        return hmac.compare_digest(self._link_mac(method, resource, int(exp)), sig)

    def _link_mac(self, method: str, resource: str, exp: int) -> str:
        # The method is signed too: a link for reading a path never lets its holder
        # change anything there, whatever the router would accept.
        message = f"link\0{method.upper()}\0{resource}\0{exp}".encode()
        return hmac.new(self._secret(), message, "sha256").hexdigest()

    def bootstrap(self) -> str | None:
        """First start without users: create ``admin``; return a generated password."""
        if not self.enabled:
            log.warning("TASKRUN_AUTH=off: the dashboard and the API are open to anyone "
                        "who can reach this server")
            return None
        with self.db.connect() as c:
            if c.execute(sa.select(sa.func.count()).select_from(User)).scalar_one():
                return None
        password = self._admin_password or secrets.token_urlsafe(12)
        try:
            self.set_user("admin", password, "admin")
        except Conflict:  # another process created it a moment ago
            return None
        log.warning("created user 'admin' (password %s)",
                    "from TASKRUN_ADMIN_PASSWORD" if self._admin_password else "printed once "
                    "in the server output")
        return None if self._admin_password else password

    # ---- users -----------------------------------------------------------

    def set_user(self, name: str, password: str, role: str, actor: str | None = None) -> None:
        """Create a user, or change an existing user's password and role."""
        check_role(role)
        if not name or len(name) > 64 or len(password) < 8:
            raise InvalidParams("a user needs a name (1-64 characters) and a password of "
                                "at least 8 characters")
        hashed = _HASHER.hash(password)
        with self.db.begin() as c:
            updated = c.execute(sa.update(User).where(User.name == name).values(
                password_hash=hashed, role=role)).rowcount
            if not updated:
                c.execute(sa.insert(User).values(name=name, password_hash=hashed, role=role,
                                                 created_at=utcnow()))
            else:  # a new password signs out every browser that knew the old one
                self.sessions.revoke_user(name, c)
            audit.record(self.db, actor or "system", "user.set", name, role, conn=c)

    def delete_user(self, name: str, actor: str | None = None) -> None:
        with self.db.begin() as c:
            if not c.execute(sa.delete(User).where(User.name == name)).rowcount:
                raise NotFound(f"User '{name}' does not exist.")
            self.sessions.revoke_user(name, c)
            audit.record(self.db, actor, "user.delete", name, conn=c)

    def users(self) -> list[dict]:
        with self.db.connect() as c:
            rows = c.execute(sa.select(User.name, User.role, User.created_at)
                             .order_by(User.name)).all()
        return [dict(r._mapping) for r in rows]

    def login(self, name: str, password: str, client: str | None = None) -> Identity | None:
        """The user if the password matches; None otherwise (same cost either way).

        Raises ``TooManyAttempts`` without checking the password while the user or
        the client address is backing off after repeated failures.
        """
        name = name[:64]
        try:
            self.gate.check(name, client)
        except TooManyAttempts:
            audit.record(self.db, name, "login.throttled", client)
            raise
        with self.db.connect() as c:
            row = c.execute(sa.select(User.password_hash, User.role)
                            .where(User.name == name)).first()
        try:
            _HASHER.verify(row.password_hash if row else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            self.gate.failed(name, client)
            log.warning("failed sign-in for %r from %s", name, client or "-")
            audit.record(self.db, name, "login.failure", client)
            return None
        if row is None:
            return None
        self.gate.succeeded(name, client)
        log.info("user %s signed in", name)
        audit.record(self.db, name, "login.success", client)
        return Identity(name, row.role)

    def session_identity(self, token: str | None) -> Identity | None:
        """Who a dashboard session cookie signs in, as the database has it now."""
        found = self.sessions.resolve(token)
        return Identity(found.name, found.role) if found else None

    # ---- tokens ----------------------------------------------------------

    def create_token(self, name: str, role: str, created_by: str | None = None) -> tuple[int, str]:
        """A new token: (id, the token itself, shown this once)."""
        check_role(role)
        if not name or len(name) > 64:
            raise InvalidParams("a token needs a name of 1-64 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.begin() as c:
            token_id = c.execute(sa.insert(ApiToken).values(
                name=name, token_hash=_token_hash(token), role=role, created_by=created_by,
                created_at=utcnow())).inserted_primary_key[0]
            audit.record(self.db, created_by, "token.create", f"{token_id} {name}", role, conn=c)
        log.info("token %d (%s, %s) created by %s", token_id, name, role, created_by or "-")
        return token_id, token

    def tokens(self) -> list[dict]:
        cols = (ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.created_by,
                ApiToken.created_at, ApiToken.last_used_at, ApiToken.revoked_at)
        with self.db.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(*cols).order_by(ApiToken.id))]

    def revoke_token(self, token_id: int, actor: str | None = None) -> None:
        with self.db.begin() as c:
            done = c.execute(sa.update(ApiToken).where(
                ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(
                revoked_at=utcnow())).rowcount
            if done:
                audit.record(self.db, actor, "token.revoke", str(token_id), conn=c)
        if not done:
            raise NotFound(f"No active token with id {token_id}.")
        log.info("token %d revoked", token_id)

    def check_token(self, token: str) -> Identity | None:
        if self._env_token and hmac.compare_digest(token.encode(), self._env_token.encode()):
            return Identity("TASKRUN_API_TOKEN", "admin")
        hashed = _token_hash(token)
        with self.db.connect() as c:
            row = c.execute(sa.select(ApiToken.id, ApiToken.name, ApiToken.role,
                                      ApiToken.last_used_at).where(
                ApiToken.token_hash == hashed, ApiToken.revoked_at.is_(None))).first()
        if row is None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
            try:
                with self.db.begin() as c:
                    c.execute(sa.update(ApiToken).where(ApiToken.id == row.id)
                              .values(last_used_at=now))
            except TaskRunError:  # a full or read-only disk: reads go on, unnoted
                pass
        return Identity(f"token:{row.name}", row.role)
