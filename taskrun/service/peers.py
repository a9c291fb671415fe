"""Reading a run's log (and outputs) from the server that ran it, when that is another
server; fetching an upload a run needs from the server that took it.

A run's log lives in the data dir of the server that claimed it. Servers that
share a database but not a data dir read each other's logs over HTTP, with the
same offset protocol as the API (``GET /api/logs/{name}?offset=…``), on a link
signed with the key every server derives from ``TASKRUN_SECRET_KEY`` (so the
servers of one service must share it). The answering server reads its own file
and never forwards again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from taskrun.errors import NotReady
from taskrun.runs import logs, replicas

if TYPE_CHECKING:
    from taskrun.history.models import Run
    from taskrun.service.facade import Service

log = logging.getLogger("taskrun.peers")

PEER_HEADER = "x-taskrun-peer"  # a read asked by another server: answered from here only
TIMEOUT_S = 5


def _keeper(svc: Service, run: Run) -> dict | None:
    """The server keeping ``run``'s log, when that is another server."""
    keeper = replicas.keeper(svc.db, run.owner)
    if keeper is None or keeper["home"] == str(svc.settings.home):
        return None
    return keeper


def _signed(svc: Service, keeper: dict, resource: str, query: dict) -> urllib.request.Request:
    url = (keeper["advertise_url"].rstrip("/") + urllib.parse.quote(resource) + "?"
           + urllib.parse.urlencode(query) + ("&" if query else "")
           + svc.auth.sign(resource, ttl=60))
    return urllib.request.Request(url, headers={PEER_HEADER: "1"})


def _unreachable(run: Run, keeper: dict, exc: BaseException) -> NotReady:
    return NotReady(
        f"The log and outputs of run {run.id} are kept by the server {run.owner} on "
        f"{keeper['host']} "
        f"({keeper['advertise_url']}), which cannot be reached now ({exc}).")


def stream_log(svc: Service, run: Run) -> Iterator[bytes] | None:
    """``run``'s whole log (secrets masked by its server) in blocks, from the server
    that keeps it; None when it is not elsewhere. Unreachable: NotReady, before the
    first byte (a download that broke later ends short, as any broken download)."""
    return stream(svc, run, f"/api/logs/{logs.log_name(run.task, run.id)}/download")


def stream(svc: Service, run: Run, resource: str) -> Iterator[bytes] | None:
    """A file of ``run`` (an output) in blocks from the server that keeps it; None when
    it is not elsewhere (or that server has it not either)."""
    keeper = _keeper(svc, run)
    if keeper is None:
        return None
    req = _signed(svc, keeper, resource, {})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except OSError as exc:
        if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
            return None
        raise _unreachable(run, keeper, exc) from exc

    def blocks() -> Iterator[bytes]:
        with resp:
            while block := resp.read(64 * 1024):
                yield block

    return blocks()


def get_json(svc: Service, run: Run, resource: str, query: dict) -> dict | None:
    """A JSON answer about ``run`` (an output's preview) from the server keeping it."""
    keeper = _keeper(svc, run)
    if keeper is None:
        return None
    req = _signed(svc, keeper, resource, query)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
            return None
        raise _unreachable(run, keeper, exc) from exc


def read_log(svc: Service, run: Run, offset: int, max_bytes: int, tail_bytes: int | None,
             lines: int | None) -> logs.LogChunk | None:
    """The piece of ``run``'s log its server has, or None when the log is not elsewhere."""
    keeper = _keeper(svc, run)
    if keeper is None:
        return None
    query = {"offset": offset, "max_bytes": max_bytes}
    if tail_bytes is not None:
        query["tail"] = tail_bytes
    if lines is not None:
        query["lines"] = lines
    req = _signed(svc, keeper, f"/api/logs/{logs.log_name(run.task, run.id)}", query)
    req.add_header("accept", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
            return None
        raise _unreachable(run, keeper, exc) from exc
    return logs.LogChunk(data["content"], data["offset"], data["next_offset"], data["size"],
                         data["complete"])


def fetch_upload(svc: Service, sha: str, target: Path) -> bool:
    """Copy the upload ``sha`` from whichever live server has it into ``target``
    (checked against its sha256); False when none has it."""
    mine = str(svc.settings.home)
    for keeper in replicas.listing(svc.db):
        if keeper["home"] == mine or keeper["stopped_at"] is not None:
            continue
        req = _signed(svc, keeper, f"/api/uploads/{sha}", {})
        part = target.with_name(f".fetch-{sha}-{os.getpid()}")
        try:
            digest = hashlib.sha256()
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp, open(part, "wb") as out:
                while block := resp.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != sha:
                raise OSError("its bytes do not match its sha256")
            os.chmod(part, 0o444)
            os.replace(part, target)
            return True
        except OSError as exc:
            if not (isinstance(exc, urllib.error.HTTPError) and exc.code == 404):
                log.warning("could not fetch upload %s from %s: %s", sha[:12],
                            keeper["advertise_url"], exc)
        finally:
            part.unlink(missing_ok=True)
    return False
