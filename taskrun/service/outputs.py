"""The service's part about what runs produced: outputs listed, read, previewed.

A mixin of ``service.Service`` (which it reads ``db``, ``settings`` and ``auth``
from): the facade stays one object for its adapters, this concept its own module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun.errors import InvalidName, InvalidParams, NotFound
from taskrun.history import versions
from taskrun.history.models import Run
from taskrun.history.queries import find_run
from taskrun.runs import inspection, run_files
from taskrun.status import RunStatus
from taskrun.store import displays, notebooks, outputs

if TYPE_CHECKING:
    from taskrun.history.db import Database
    from taskrun.settings import Settings

_T = Run.__table__


class RunProducts:
    db: Database
    settings: Settings

    def run_outputs(self, run_id: int) -> list[dict]:
        """The files the run left in its output dir (recorded at its end)."""
        return list(find_run(self.db, run_id).outputs or [])

    def _output(self, run_id: int, name: str) -> tuple[Run, dict, Path]:
        run = find_run(self.db, run_id)
        try:
            outputs.check_name(name)
        except ValueError as exc:
            raise InvalidName(str(exc)) from None
        entry = next((o for o in run.outputs or () if o["name"] == name), None)
        if entry is None:
            raise NotFound(f"Run {run_id} has no output named {name[:200]!r}.")
        return run, entry, run_files.run_dir(self.settings, run.id) / "outputs" / name

    def output_stream(self, run_id: int, name: str, forward: bool = True
                      ) -> tuple[dict, Iterator[bytes]]:
        """(its entry, its bytes in blocks): from this server's data dir, or from the
        server that ran it (unless ``forward`` is off: a peer is asking)."""
        run, entry, path = self._output(run_id, name)
        try:
            fd = outputs.open_regular(path)
        except FileNotFoundError:
            if forward and not self.db.is_sqlite and run.owner:
                from taskrun.service import peers

                remote = peers.stream(self, run, f"/api/tasks/runs/{run.id}/outputs/{name}")
                if remote is not None:
                    return entry, remote
            raise NotFound(f"The output {name!r} of run {run_id} is no longer kept.") from None
        except OSError as exc:
            raise NotFound(f"The output {name!r} of run {run_id} cannot be read: {exc}.") \
                from None

        def blocks() -> Iterator[bytes]:
            with os.fdopen(fd, "rb") as f:
                while block := f.read(256 * 1024):
                    yield block

        return entry, blocks()

    def latest_outputs(self) -> dict[str, tuple[int, dict]]:
        """Per task: (run id, main output) of its latest successful run that made any."""
        latest = (sa.select(_T.c.task, sa.func.max(_T.c.id).label("id"))
                  .where(_T.c.status == RunStatus.SUCCEEDED.value, _T.c.outputs.is_not(None))
                  .group_by(_T.c.task).subquery())
        with self.db.connect() as c:
            rows = c.execute(sa.select(_T.c.id, _T.c.task, _T.c.outputs)
                             .join(latest, latest.c.id == _T.c.id)).all()
        found = {}
        for run_id, task, made in rows:
            main = outputs.main_output(made)
            if main is not None:
                found[task] = (run_id, main)
        return found

    def output_bytes(self, run_id: int, name: str, limit: int = 50 << 20) -> bytes:
        """A (small) output whole, for the dashboard to draw; NotFound past ``limit``."""
        entry, stream = self.output_stream(run_id, name)
        if entry["size"] > limit:
            raise NotFound(f"{name} is larger than {limit >> 20} MB: download it instead.")
        data = b"".join(stream)
        # Drawn on the dashboard (text, charts): masked like the log. (Downloads are
        # the file as written.)
        masker = self.run_masker(self.get_run(run_id))
        return masker.mask(data) if masker and entry.get("kind") in ("text", "chart") else data

    def output_preview(self, run_id: int, name: str, rows: int = outputs.PREVIEW_ROWS,
                       forward: bool = True) -> dict:
        """A table output's first rows: {"columns", "rows", "total"}."""
        run, entry, path = self._output(run_id, name)
        if entry.get("kind") != "table":
            raise InvalidParams(f"{name} is not a table ({entry.get('kind')}): no preview")
        if not path.exists() and forward and not self.db.is_sqlite and run.owner:
            from taskrun.service import peers

            remote = peers.get_json(self, run, f"/api/tasks/runs/{run.id}/preview/{name}",
                                    {"rows": rows})
            if remote is not None:
                return remote
        try:
            shown = inspection.preview(path, name, rows)  # (a reader's crash is its own)
        except FileNotFoundError:
            raise NotFound(f"The output {name!r} of run {run_id} is no longer kept.") from None
        except (ValueError, OSError) as exc:
            raise InvalidParams(str(exc)) from None
        masker = self.run_masker(run)
        if masker:  # a table a task wrote may hold what it was given
            shown = shown | {"rows": masker.mask_value(shown["rows"])}
        return shown | {"total": entry.get("rows")}

    def run_display(self, run_id: int, index: int) -> dict:
        """One display of a run's cell: ``{kind, mime, data, rows?, columns?, truncated?}``.

        Written by the task (untrusted): read within the display limit, masked with the
        run's secrets, and HTML allow-list sanitized (no script, no handler, no frame:
        it is shown in the dashboard's own origin)."""
        run = find_run(self.db, run_id)
        path = run_files.run_dir(self.settings, run.id) / "displays" / f"{int(index)}.json"
        limit = int(self.settings.display_max_kb * 1024) + 4096
        try:
            with open(path, "rb") as f:
                raw = f.read(limit + 1)
        except (OSError, ValueError):
            raise NotFound(f"Run {run_id} has no display {index}.") from None
        if len(raw) > limit:
            raise NotFound(f"Display {index} of run {run_id} is over the display limit.")
        try:
            item = json.loads(raw)
        except ValueError:
            raise NotFound(f"Display {index} of run {run_id} is not readable.") from None
        if not isinstance(item, dict) or item.get("kind") not in displays.KINDS:
            raise NotFound(f"Display {index} of run {run_id} is not readable.")
        return displays.safe(item, self.run_masker(run))

    def run_notebook(self, run_id: int) -> dict:
        """The run as a notebook (nbformat 4.5): the version that ran, cell by cell, with
        each cell's output, displays, failure and timing (``store.notebooks``)."""
        run = find_run(self.db, run_id)
        source = None
        if run.code_sha:
            try:
                source = versions.get(self.db, run.task, run.code_sha).content
            except NotFound:
                source = None
        if source is None:
            source, _ = self.store.read(run.task)
        cells = self.run_cells(run_id)
        end = max([c.get("log_end") or 0 for c in cells] or [0])
        text = self.read_log(run_id, 0, max_bytes=max(end, 1)).content.encode() if end else b""

        def output(cell: dict) -> str:
            start, stop = cell.get("log_start"), cell.get("log_end")
            if start is None or stop is None:
                return ""
            return text[start:stop].decode("utf-8", "replace")

        def display(index: int) -> dict | None:
            try:
                return self.run_display(run_id, index)
            except NotFound:
                return None

        return notebooks.export(source, cells, {**run.model_dump(mode="json")},
                                output=output, display=display, failure=run.failure)
