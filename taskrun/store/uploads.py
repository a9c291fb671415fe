"""Files given to runs through ``file`` params.

An upload is checked (its name, extension and size) while it is streamed to disk,
before any run is queued, and kept once per distinct content under the data dir's
``uploads/<sha256>``. The run's params name it as ``{"file", "size", "sha256"}``,
so a retry, a re-run with the same params or a Ray job find the same bytes. At
launch the run gets a read-only copy in its own ``runs/<id>/inputs/`` (the task
cannot change what a later attempt will read), removed when the run ends; the
upload itself goes once no run in the history names it any more (``collect``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from taskrun.errors import InvalidParams

if TYPE_CHECKING:
    from taskrun.settings import Settings
    from taskrun.store.metadata import Param, TaskMeta

log = logging.getLogger("taskrun.uploads")

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME = 200
CHUNK = 1 << 20
# An upload younger than this is kept even if no run names it yet: its run may be
# being queued right now.
GRACE_S = 3600


def file_name(param: str, name: Any) -> str:
    """The uploaded file's own name, if it is a plain file name; InvalidParams otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidParams(f"param '{param}': the upload has no file name")
    bad = ("\x00" in name or "/" in name or "\\" in name or name in (".", "..")
           or any(ord(ch) < 32 or ch == "\x7f" for ch in name))
    if bad or len(name.encode()) > MAX_NAME:
        raise InvalidParams(f"param '{param}': file name {name[:80]!r} is not allowed "
                            f"(a plain name of at most {MAX_NAME} bytes: no path, no control "
                            "characters)")
    return name


def _check_extension(param: Param, name: str) -> None:
    if param.accept and not name.lower().endswith(param.accept):
        raise InvalidParams(f"param '{param.name}': {name!r} is not one of the accepted "
                            f"types ({', '.join(param.accept)})")


def limit_bytes(settings: Settings, param: Param) -> int:
    mb = settings.upload_max_mb if param.max_mb is None else min(param.max_mb,
                                                                settings.upload_max_mb)
    return int(mb * 1024 * 1024)


def check_ref(param: Param, value: Any) -> dict:
    """A file param's value as params keep it: ``{"file", "size", "sha256"}``."""
    if not isinstance(value, dict) or set(value) != {"file", "size", "sha256"} or not \
            isinstance(value["sha256"], str) or not SHA_RE.match(value["sha256"]) or \
            isinstance(value["size"], bool) or not isinstance(value["size"], int):
        raise InvalidParams(f"param '{param.name}' is a file: upload it (multipart/form-data "
                            "part, the dashboard's upload, the CLI's name=@path)")
    name = file_name(param.name, value["file"])
    _check_extension(param, name)
    return {"file": name, "size": value["size"], "sha256": value["sha256"]}


class Uploads:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.uploads_dir
        # Servers sharing a database: an upload taken by another one is fetched from it.
        self.fetch: Callable[[str, Path], bool] | None = None

    def path(self, sha: str) -> Path:
        if not SHA_RE.match(sha):
            raise InvalidParams("not an upload")
        return self.root / sha

    def store(self, param: Param, name: Any, stream: IO[bytes]) -> dict:
        """Stream one upload to disk, checked on the way; the value its param is given."""
        if param.type != "file":
            raise InvalidParams(f"param '{param.name}' is not a file param "
                                f"(its type is {param.type})")
        name = file_name(param.name, name)
        _check_extension(param, name)
        limit = limit_bytes(self.settings, param)
        from taskrun import storage

        storage.check_floor(self.settings, "take an upload")
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".part-{os.getpid()}-{time.monotonic_ns()}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(temp, "xb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise InvalidParams(
                            f"param '{param.name}': {name!r} is larger than "
                            f"{limit / (1 << 20):g} MB (the limit for this param)")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            final = self.root / sha
            os.chmod(temp, 0o444)
            os.replace(temp, final)  # the same bytes again: one copy
            os.utime(final)  # (its age counts from its last use)
        except OSError as exc:
            raise storage.unavailable(exc, None, "keep the upload") or exc from None
        finally:
            temp.unlink(missing_ok=True)
        return {"file": name, "size": size, "sha256": sha}

    def open(self, sha: str) -> IO[bytes]:
        """An upload's bytes (for a server that needs it for a run it claimed)."""
        from taskrun.errors import NotFound

        try:
            return open(self.path(sha), "rb")
        except OSError:
            raise NotFound("No such upload here.") from None

    def check_kept(self, meta: TaskMeta, values: dict[str, Any]) -> None:
        """Every file a run's params name is still kept (a re-run after it was removed is
        refused now, not failed at its launch)."""
        for param in meta.params:
            value = values.get(param.name)
            if param.type == "file" and isinstance(value, dict) and \
                    not self.ensure(value["sha256"]):
                raise InvalidParams(f"param '{param.name}': the file {value['file']!r} is no "
                                    "longer kept; upload it again")

    def ensure(self, sha: str) -> bool:
        """The upload is in this server's store, or could be fetched into it."""
        path = self.path(sha)
        if path.exists():
            return True
        if self.fetch is None:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        return self.fetch(sha, path)

    def copy_into(self, run_dir: Path, param: str, value: dict) -> Path:
        """The run's own read-only copy of an upload: ``inputs/<param>/<file name>``."""
        source = self.path(value["sha256"])
        self.ensure(value["sha256"])  # (else the copy below says it is gone)
        target = run_dir / "inputs" / param / value["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)  # (in the kernel: copy_file_range/sendfile)
        os.chmod(target, 0o444)
        return target

    def collect(self, named: set[str], now: float | None = None) -> int:
        """Remove uploads not in ``named`` (the shas runs name) and older than the grace."""
        if not self.root.exists():
            return 0
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.root):
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > GRACE_S
            except OSError:
                continue
            if old and entry.name not in named:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError as exc:
                    log.warning("could not remove upload %s: %s", entry.name, exc)
        return removed
