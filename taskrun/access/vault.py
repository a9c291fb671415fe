"""Task secrets: stored encrypted (Fernet), handed only to the tasks that ask for them.

A value is written once and never read back through the UI, API or CLI; the
only ways out are a task's environment (when its metadata lists the name)
and the masker, which hides every stored value in the logs people read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from taskrun import keys
from taskrun.access import audit
from taskrun.access.masking import MIN_SECRET_LEN, Masker
from taskrun.errors import InvalidName, NotFound, TaskRunError
from taskrun.history.db import Database
from taskrun.history.models import Secret, utcnow
from taskrun.settings import Settings
from taskrun.store.metadata import SECRET_NAME_RE
from taskrun.store.tasks import check_name

MAX_VALUE = 64 * 1024
_T = Secret.__table__


class InvalidSecret(TaskRunError):
    http_status = 422


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: never its value."""

    name: str
    task: str | None
    updated_at: datetime
    updated_by: str | None

    def as_dict(self) -> dict:
        return {"name": self.name, "task": self.task, "updated_at": self.updated_at,
                "updated_by": self.updated_by}


def _check(name: str, task: str | None) -> str:
    if not SECRET_NAME_RE.fullmatch(name or ""):
        raise InvalidName(f"Invalid secret name {name[:80]!r}: use letters, digits and "
                          "underscores, not starting with a digit (like DB_PASSWORD).")
    return check_name(task) if task else ""


class Vault:
    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self._settings = settings
        self._fernet: Fernet | None = None
        self._mark_key: bytes | None = None
        self._masker: tuple[tuple, Masker] | None = None
        self._lock = threading.Lock()

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            master = keys.master_key(self._settings.home, self._settings.secret_key)
            self._fernet = Fernet(base64.urlsafe_b64encode(keys.derive(master, "secrets")))
        return self._fernet

    def marks(self, values: dict[str, str]) -> dict[str, str]:
        """A keyed hash of each value: two runs' marks differ when a secret's value
        changed, and tell nothing of the value (not even a guess at a short one)."""
        if not values:
            return {}
        if self._mark_key is None:
            master = keys.master_key(self._settings.home, self._settings.secret_key)
            self._mark_key = keys.derive(master, "secret-marks")
        return {name: hmac.new(self._mark_key, f"{name}\0{value}".encode(),
                               hashlib.sha256).hexdigest()[:16]
                for name, value in sorted(values.items())}

    def set(self, name: str, value: str, task: str | None = None, actor: str | None = None) -> None:
        scope = _check(name, task)
        if not isinstance(value, str) or not value:
            raise InvalidSecret("A secret needs a value.")
        if len(value.encode()) < MIN_SECRET_LEN:
            raise InvalidSecret(f"A secret must be at least {MIN_SECRET_LEN} bytes long, "
                                "so that masking it in logs cannot hide ordinary text.")
        if len(value.encode()) > MAX_VALUE:
            raise InvalidSecret(f"A secret may be at most {MAX_VALUE} bytes long.")
        if "\0" in value:
            raise InvalidSecret("A secret cannot contain NUL characters (environment values).")
        token = self._cipher().encrypt(value.encode()).decode()
        now = utcnow()
        with self.db.begin() as c:
            done = c.execute(sa.update(_T).where(_T.c.task == scope, _T.c.name == name).values(
                ciphertext=token, updated_at=now, updated_by=actor)).rowcount
            if not done:
                c.execute(sa.insert(_T).values(task=scope, name=name, ciphertext=token,
                                               updated_at=now, updated_by=actor))
            audit.record(self.db, actor, "secret.set", f"{scope or '*'}/{name}", conn=c)

    def delete(self, name: str, task: str | None = None, actor: str | None = None) -> None:
        scope = _check(name, task)
        with self.db.begin() as c:
            if not c.execute(sa.delete(_T).where(_T.c.task == scope, _T.c.name == name)).rowcount:
                where = f"task '{scope}'" if scope else "all tasks"
                raise NotFound(f"No secret '{name}' for {where}.")
            audit.record(self.db, actor, "secret.delete", f"{scope or '*'}/{name}", conn=c)

    def list(self, task: str | None = None) -> list[SecretInfo]:
        query = sa.select(_T.c.name, _T.c.task, _T.c.updated_at, _T.c.updated_by).order_by(
            _T.c.task, _T.c.name)
        if task is not None:
            query = query.where(_T.c.task.in_(["", task]))
        with self.db.connect() as c:
            return [SecretInfo(r.name, r.task or None, r.updated_at, r.updated_by)
                    for r in c.execute(query)]

    def resolve(self, task: str, names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
        """Values for ``names`` (the task's own first, then shared), and the missing names."""
        if not names:
            return {}, []
        with self.db.connect() as c:
            rows = c.execute(sa.select(_T.c.name, _T.c.task, _T.c.ciphertext).where(
                _T.c.name.in_(names), _T.c.task.in_(["", task]))).all()
        found: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: r.task == ""):  # the task's own come first
            if row.name not in found:
                found[row.name] = self._decrypt(row.ciphertext, row.name)
        return found, [n for n in names if n not in found]

    def _decrypt(self, token: str, name: str) -> str:
        try:
            return self._cipher().decrypt(token.encode()).decode()
        except InvalidToken:
            raise InvalidSecret(f"Secret '{name}' cannot be decrypted: the secret key changed "
                                "(TASKRUN_SECRET_KEY or secret.key); set it again.") from None

    def masker_for(self, task: str, names: Iterable[str]) -> Masker:
        """A masker for the values a run of ``task`` received (``names``, as its record
        keeps them): a log is masked with its own run's secrets only, so what a task
        prints can never be used to test whether some value is another task's secret."""
        wanted = tuple(sorted(set(names)))
        if not wanted:
            return Masker()
        try:
            values, _missing = self.resolve(task, wanted)
        except InvalidSecret:
            return self.masker()  # undecryptable: every readable value, to be safe
        return Masker(values.values())

    def masker(self) -> Masker:
        """A masker for every stored value, rebuilt only when the secrets change."""
        with self.db.connect() as c:
            stamp = tuple(c.execute(sa.select(sa.func.count(), sa.func.max(_T.c.updated_at),
                                              sa.func.max(_T.c.id))).one())
        with self._lock:
            if self._masker is None or self._masker[0] != stamp:
                with self.db.connect() as c:
                    tokens = c.execute(sa.select(_T.c.ciphertext)).scalars().all()
                values = []
                for token in tokens:
                    try:
                        values.append(self._cipher().decrypt(token.encode()).decode())
                    except InvalidToken:
                        continue  # unreadable: it cannot reach a task either
                self._masker = (stamp, Masker(values))
            return self._masker[1]
