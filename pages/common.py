"""What every page shares: the navigation, the sidebar status, the service handle."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from taskrun import fmt
from taskrun.auth import ANONYMOUS_ADMIN, Identity
from taskrun.errors import TaskRunError
from taskrun.service import Service, default_service
from taskrun.status import ICONS, RunStatus

HERE = Path(__file__).resolve().parent


def service() -> Service:
    """The process-wide service (started by the server's lifespan, or here on first use)."""
    return default_service()


PAGES = {
    "tasks": st.Page(str(HERE / "tasks.py"), title="Tasks", icon="🗂️", url_path="tasks",
                     default=True),
    "editor": st.Page(str(HERE / "editor.py"), title="Editor", icon="📝", url_path="editor"),
    "runs": st.Page(str(HERE / "runs.py"), title="Runs & logs", icon="📜", url_path="runs"),
    "system": st.Page(str(HERE / "system.py"), title="System", icon="🖥️", url_path="system"),
    "admin": st.Page(str(HERE / "admin.py"), title="Admin", icon="🔐", url_path="admin"),
}


def visible_pages() -> list:
    """The pages this session may open: Admin only for admins."""
    return [p for key, p in PAGES.items() if key != "admin" or can("admin")]


def user() -> Identity:
    """Who is signed in to this browser session (everyone is a local admin with auth off)."""
    if not service().auth.enabled:
        return ANONYMOUS_ADMIN
    return st.session_state.get("auth_user") or Identity("nobody", "viewer")


def can(role: str) -> bool:
    return user().can(role)


def needs(role: str) -> str | None:
    """A tooltip saying why an action is disabled, or None when the user may do it."""
    return None if can(role) else f"Needs the {role} role"


def sign_in() -> None:
    st.title("Task Run Service")
    with st.form("sign-in"):
        name = st.text_input("User", key="signin_user")
        password = st.text_input("Password", type="password", key="signin_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        identity = service().auth.login(name.strip(), password)
        if identity is None:
            st.error("Wrong user or password.")
        else:
            st.session_state.auth_user = identity
            st.rerun()


def run_navigation() -> None:
    st.set_page_config(page_title="Task Run Service", page_icon="⚙️", layout="wide")
    if service().auth.enabled and not st.session_state.get("auth_user"):
        # Route as usual (so the URL and its query survive the sign-in), but build
        # nothing of the page itself for a session that has not signed in.
        st.navigation(list(PAGES.values()), position="hidden")
        sign_in()
        st.stop()  # and no page runs after this script, whatever the runner does
    nav = st.navigation(visible_pages())
    with st.sidebar:
        if service().auth.enabled:
            me = user()
            st.caption(f"Signed in as **{me.name}** ({me.role})")
            if st.button("Sign out", key="sign-out"):
                st.session_state.auth_user = None
                st.rerun()
        sidebar_status()
    nav.run()


@st.fragment(run_every=2.0)
def sidebar_status() -> None:
    try:
        status = service().supervisor_status()
    except TaskRunError as exc:
        st.error(str(exc))
        return
    alive = "🟢 supervisor running" if status.get("alive") else "🔴 supervisor stopped"
    st.caption(alive)
    c1, c2 = st.columns(2)
    c1.metric("Running", status["running"])
    c2.metric("Queued", status["queued"])
    st.progress(min(1.0, status["slots_in_use"] / max(1, status["max_concurrency"])),
                text=f"Slots {status['slots_in_use']} of {status['max_concurrency']}")


def status_label(status: str) -> str:
    try:
        return f"{ICONS[RunStatus(status)]} {status}"
    except ValueError:
        return status


def show_error(exc: Exception) -> None:
    """A refused action shows its reason, never a stack trace."""
    st.error(str(exc), icon="⚠️")


def run_summary(run) -> str:
    parts = [f"Run #{run.id}", status_label(run.status)]
    if run.exit_code is not None:
        parts.append(f"exit code {run.exit_code}")
    if run.signal:
        parts.append(run.signal)
    parts.append(fmt.duration(run.duration))
    return " · ".join(parts)
