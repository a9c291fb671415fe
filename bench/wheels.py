"""Tiny wheels built on the spot: a local wheelhouse for task environments that needs
no package index (the benchmarks' ``envs`` suite and the tests use it offline)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def wheel(folder: Path, name: str, version: str, body: str = "",
          requires: tuple[str, ...] = ()) -> Path:
    """``<folder>/<name>-<version>-py3-none-any.whl``: a package ``name`` whose
    ``__init__`` holds ``body`` (default: ``VERSION = "<version>"``)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": body or f"VERSION = {version!r}\n",
             f"{dist}.dist-info/METADATA": meta,
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: taskrun-tests\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    path = folder / f"{dist}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for arcname, text in files.items():
            data = text.encode()
            z.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist}.dist-info/RECORD,,")
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def offline(folder: Path) -> dict[str, str]:
    """uv's settings for installing from ``folder`` alone."""
    return {"UV_FIND_LINKS": str(folder), "UV_OFFLINE": "1", "UV_NO_INDEX": "1"}
