"""Masking secret values (and their base64 forms) as ``***`` in shown output.

Logs are read by byte offset, in pieces, while the task is still writing.
A secret may straddle the edge of a piece, so reads look a little past both
edges (one secret's length) and a read that ends inside what could be the
start of a secret stops before it, to show it whole (masked) next time.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from typing import Any

MASK = b"***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary text everywhere


def _base64_forms(value: bytes) -> set[bytes]:
    """The text ``value`` becomes inside base64 and base64url at each of the 3
    alignments.

    Like GitHub Actions: the characters that also depend on the bytes around
    the secret are left out, and so is padding.
    """
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for lead in range(3):
            encoded = encode(b"\0" * lead + value).rstrip(b"=")
            skip = (lead * 4 + 2) // 3  # characters carrying some of the lead bytes
            total = lead + len(value)
            # the last character mixes in what follows, unless the value ends a group
            end = len(encoded) if total % 3 == 0 else len(encoded) - 1
            form = encoded[skip:end]
            if len(form) >= MIN_SECRET_LEN:
                forms.add(form)
    return forms


class Masker:
    """Replaces every known secret value and its base64 forms with ``***``."""

    def __init__(self, values: Iterable[str] = ()):
        patterns: set[bytes] = set()
        for value in values:
            raw = value.encode("utf-8")
            if len(raw) < MIN_SECRET_LEN:
                continue
            patterns.add(raw)
            patterns |= _base64_forms(raw)
        self.patterns = sorted(patterns, key=len, reverse=True)
        self.longest = len(self.patterns[0]) if self.patterns else 0
        self._re = re.compile(b"|".join(re.escape(p) for p in self.patterns)) \
            if self.patterns else None

    def __bool__(self) -> bool:
        return self._re is not None

    def mask(self, data: bytes) -> bytes:
        return data if self._re is None else self._re.sub(MASK, data)

    def mask_text(self, text: str) -> str:
        return self.mask(text.encode("utf-8")).decode("utf-8", "replace") if self else text

    def mask_value(self, value: Any) -> Any:
        """A JSON value (a result, a table preview's cells) with every string masked."""
        if not self:
            return value
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, dict):
            return {self.mask_value(k): self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value

    def window(self, data: bytes, lo: int, hi: int, more_coming: bool) -> tuple[bytes, int]:
        """Masked bytes of ``data[lo:hi]``, looking at all of ``data`` for context.

        Returns the output and where in ``data`` it ends: past ``hi`` when a
        secret straddles ``hi``, before it when ``data`` ends (``more_coming``:
        the file may still grow) in what may be the first part of a secret.
        """
        if self._re is None:
            return data[lo:hi], hi
        out, pos = [], lo
        for match in self._re.finditer(data):
            start, end = match.span()
            if end <= pos:
                continue
            if start >= hi:
                break
            out.append(data[pos:max(pos, start)])
            out.append(MASK)
            pos = end
        if pos < hi:
            stop = hi
            if more_coming:  # do not show the first part of a secret still being written
                stop = max(pos, min(hi, len(data) - self._partial_tail(data[pos:])))
            out.append(data[pos:stop])
            pos = stop
        return b"".join(out), pos

    def _partial_tail(self, data: bytes) -> int:
        """Length of the longest end of ``data`` that begins some secret."""
        for size in range(min(len(data), self.longest - 1), 0, -1):
            tail = data[-size:]
            if any(p.startswith(tail) for p in self.patterns):
                return size
        return 0

    def stream(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        """Mask a stream of blocks, holding back just enough to see across edges."""
        if self._re is None:
            yield from blocks
            return
        keep = self.longest - 1
        buffer = b""
        for block in blocks:
            buffer += block
            safe = len(buffer) - keep
            if safe <= 0:
                continue
            out, pos = self.window(buffer, 0, safe, more_coming=False)
            buffer = buffer[pos:]
            if out:
                yield out
        if buffer:
            yield self.mask(buffer)
