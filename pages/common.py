"""What every page shares: the navigation, the sidebar status, the service handle."""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import urlsplit

import streamlit as st

from taskrun import fmt
from taskrun.access.auth import ANONYMOUS_ADMIN, Identity
from taskrun.access.sessions import COOKIE
from taskrun.errors import TaskRunError
from taskrun.service.facade import Service, default_service
from taskrun.web_login import LOGIN_PATH, safe_next

HERE = Path(__file__).resolve().parent


def service() -> Service:
    """The process-wide service (started by the server's lifespan, or here on first use)."""
    return default_service()


PAGES = {
    "tasks": st.Page(str(HERE / "tasks.py"), title="Tasks", icon=":material/folder_open:",
                     url_path="tasks", default=True),
    "editor": st.Page(str(HERE / "editor.py"), title="Editor", icon=":material/edit_note:",
                      url_path="editor"),
    "runs": st.Page(str(HERE / "runs.py"), title="Runs & logs", icon=":material/receipt_long:",
                    url_path="runs"),
    "system": st.Page(str(HERE / "system.py"), title="System", icon=":material/monitor_heart:",
                      url_path="system"),
    "admin": st.Page(str(HERE / "admin.py"), title="Admin",
                     icon=":material/admin_panel_settings:", url_path="admin"),
}


def visible_pages() -> list:
    """The pages this session may open: Admin only for admins."""
    return [p for key, p in PAGES.items() if key != "admin" or can("admin")]


def user() -> Identity | None:
    """Who is signed in to this browser (everyone is a local admin with auth off).

    The session cookie is resolved on every rerun (cached for seconds by the
    service): a session revoked or a user deleted is signed out at the next click.
    """
    if not service().auth.enabled:
        return ANONYMOUS_ADMIN
    return service().auth.session_identity(session_token())


def session_token() -> str | None:
    """The browser's session cookie (set by the sign-in form, ``taskrun.web_login``)."""
    value = st.context.cookies.get(COOKIE)
    return value if isinstance(value, str) else None


def signed_in() -> Identity:
    """The user, or the page stops here with the way to sign in (a session ended
    between two clicks of the same page, or while a fragment refreshes)."""
    me = user()
    if me is None:
        signed_out()
        st.stop()
    return me


def can(role: str) -> bool:
    me = user()
    return me is not None and me.can(role)


def needs(role: str) -> str | None:
    """A tooltip saying why an action is disabled, or None when the user may do it."""
    return None if can(role) else f"Needs the {role} role"


# Plain HTML buttons (for real form posts) drawn like Streamlit's own.
_BUTTON = ("padding: .3rem .8rem; border: 1px solid rgba(49, 51, 63, .2); border-radius: .5rem;"
           " background: transparent; color: inherit; font: inherit; cursor: pointer")


def here() -> str:
    """This page's path and query, to come back to after signing in."""
    parts = urlsplit(st.context.url or "/")
    return parts.path + (f"?{parts.query}" if parts.query else "")


def signed_out() -> None:
    st.title("Task Run Service")
    st.info("You are not signed in, or your session has ended.")
    # A form, not a link: Streamlit takes a same-site link for a page of its own.
    st.html(f'<form method="get" action="{LOGIN_PATH}">'
            f'<input type="hidden" name="next" value="{html.escape(safe_next(here()))}">'
            f'<button type="submit" style="{_BUTTON}">Sign in</button></form>')


def run_navigation() -> None:
    st.set_page_config(page_title="Task Run Service", page_icon=":material/settings:",
                       layout="wide")
    me = user()
    if me is None:
        # Route as usual (so the URL and its query survive), but build nothing of
        # the page itself for a browser that is not signed in.
        st.navigation(list(PAGES.values()), position="hidden")
        signed_out()
        st.stop()  # and no page runs after this script, whatever the runner does
    nav = st.navigation(visible_pages())
    with st.sidebar:
        if service().auth.enabled:
            st.caption(f"Signed in as **{me.name}** ({me.role})")
            # A real form post: the session is revoked and the cookie cleared by the
            # server (a script cannot touch an HttpOnly cookie), then the sign-in form.
            st.html('<form method="post" action="/api/auth/logout">'
                    f'<button type="submit" style="{_BUTTON}">Sign out</button></form>')
        # Counts move only while runs are active; idle, a look every 5 s will do.
        st.fragment(run_every=2.0 if service().view.active_runs() else 5.0)(sidebar_status)()
    nav.run()


def sidebar_status() -> None:
    try:
        status = service().view.status()
    except TaskRunError as exc:
        st.error(str(exc))
        return
    alive = (":green[:material/circle:] supervisor running" if status.get("alive")
             else ":red[:material/circle:] supervisor stopped")
    st.caption(alive)
    c1, c2 = st.columns(2)
    c1.metric("Running", status["running"])
    c2.metric("Queued", status["queued"])
    st.progress(min(1.0, status["slots_in_use"] / max(1, status["max_concurrency"])),
                text=f"Slots {status['slots_in_use']} of {status['max_concurrency']}")


def following(key: str, active: bool, every: float):
    """A fragment decorator that reruns every ``every`` s only while ``active``.

    A fragment cannot change its own timer, so one that follows a run calls
    ``ended(key, …)`` on each refresh: once the run is over, one full rerun
    draws its final state and leaves the fragment without a timer.
    """
    st.session_state[key] = active
    return st.fragment(run_every=every if active else None)


def ended(key: str, active: bool) -> None:
    if st.session_state.get(key) and not active:
        st.session_state[key] = False
        st.rerun(scope="app")


_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|www|@)")


def plain(text: object, limit: int = 2000) -> str:
    """Untrusted text (a param, a task's message, a file name, a server's error) for a
    Markdown label: every ASCII punctuation mark escaped, so it shows as written and
    never becomes a link, an image, a code span that closes early, a colour or an
    icon; line breaks flattened; long text cut."""
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[:limit] + "…"
    # Escapes do not stop the renderer's autolinks (a bare URL, www., an address): a
    # zero-width space after the scheme, "www" and "@" does, and reads the same.
    flat = _AUTOLINK.sub("\\1\u200b", flat)
    return _PUNCTUATION.sub(r"\\\1", flat)


# Material Symbols, not emoji: a browser without an emoji font draws those as boxes.
STATUS_ICONS = {
    "queued": ":gray[:material/schedule:]", "running": ":blue[:material/play_circle:]",
    "succeeded": ":green[:material/check_circle:]", "failed": ":red[:material/cancel:]",
    "timed_out": ":orange[:material/timer_off:]", "cancelled": ":gray[:material/block:]",
    "lost": ":violet[:material/help:]", "skipped": ":gray[:material/skip_next:]",
    "not_run": ":gray[:material/pause_circle:]"}


def status_label(status: str, rich: bool = True) -> str:
    """A status for a Markdown label (its icon first); ``rich=False``: plain text (a
    table cell)."""
    status = str(status)
    return f"{STATUS_ICONS[status]} {status}" if rich and status in STATUS_ICONS else status


def show_error(exc: Exception) -> None:
    """A refused action shows its reason (as text: it may quote input), never a trace."""
    st.error(plain(exc), icon=":material/warning:")


def run_summary(run) -> str:
    parts = [f"Run #{run.id}", status_label(run.status)]
    if run.exit_code is not None:
        parts.append(f"exit code {run.exit_code}")
    if run.signal:
        parts.append(run.signal)
    parts.append(fmt.duration(run.duration))
    return " · ".join(parts)
