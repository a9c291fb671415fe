"""A cell's displays as the dashboard and the API hand them out: what a task wrote,
made safe to show in the dashboard's own origin.

HTML goes through an allow-list sanitizer (``nh3``: tables and formatting kept; no
script, event handler, style, frame, form or ``javascript:`` link); SVG is only
ever shown as an image (a script in it does not run there); every string is masked
with the run's secrets, as its log is.
"""

from __future__ import annotations

from typing import Any

import nh3

KINDS = {"table", "chart", "image", "html", "markdown", "json", "text"}
TAGS = {"a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd",
        "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "li", "ol",
        "p", "pre", "s", "small", "span", "strong", "sub", "sup", "table", "tbody", "td",
        "tfoot", "th", "thead", "tr", "u", "ul"}
ATTRIBUTES = {"*": {"class", "title"}, "a": {"href"}, "td": {"colspan", "rowspan"},
              "th": {"colspan", "rowspan"}}


def sanitize(html: str) -> str:
    return nh3.clean(str(html), tags=TAGS, attributes=ATTRIBUTES, url_schemes={"http", "https"},
                     link_rel="noopener noreferrer nofollow")


def safe(item: dict, masker: Any = None) -> dict:
    out = {k: item.get(k) for k in ("kind", "mime", "data", "rows", "columns", "truncated")
           if k in item}
    if masker:
        out = masker.mask_value(out)
    if out["kind"] == "html":
        out["data"] = sanitize(out.get("data") or "")
    if out["kind"] == "image" and out.get("mime") not in ("image/png", "image/svg+xml"):
        out.update(kind="text", mime="text/plain", data="(an image of another kind)")
    return out
