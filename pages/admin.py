"""Admin: users, API tokens, task secrets and the audit trail (admins only)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import plain, service, show_error, signed_in
from taskrun.access.auth import ROLES
from taskrun.errors import TaskRunError

svc = service()
me = signed_in()
st.title("Admin")
if not me.can("admin"):
    # The navigation hides this page from others; a page must not rely on being hidden.
    st.error("This page needs the admin role.")
    st.stop()

_wall = svc.health()["checks"].get("isolation")
if _wall is not None:  # what walls tasks off from this server's data, key and process
    (st.caption if _wall["mode"] != "off" else st.warning)(
        f"Isolation: **{_wall['mode']}** — {plain(_wall['note'])}")

users_tab, sessions_tab, tokens_tab, secrets_tab, audit_tab = st.tabs(
    ["Users", "Sessions", "API tokens", "Secrets", "Audit trail"])

with users_tab:
    st.dataframe(pd.DataFrame(svc.auth.users()), hide_index=True, width="stretch")
    with st.form("user-form", clear_on_submit=True):
        st.markdown("**Add a user or change one's password and role**")
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("User name", key="user_name")
        password = c2.text_input("Password", type="password", key="user_password")
        role = c3.selectbox("Role", ROLES, key="user_role")
        if st.form_submit_button("Save user"):
            try:
                svc.auth.set_user(name.strip(), password, role, actor=me.name)
                st.success(f"User {name.strip()} saved.")
            except TaskRunError as exc:
                show_error(exc)
    others = [u["name"] for u in svc.auth.users() if u["name"] != me.name]
    if others:
        c1, c2 = st.columns([3, 1])
        doomed = c1.selectbox("Delete a user", others, key="user_delete")
        if c2.button("Delete user", key="user_delete_btn"):
            try:
                svc.auth.delete_user(doomed, actor=me.name)
                st.rerun()
            except TaskRunError as exc:
                show_error(exc)

with sessions_tab:
    st.caption("Browsers signed in to the dashboard. Revoking one signs it out at its next "
               "click; changing a user's password or deleting the user revokes all of theirs.")
    live_sessions = svc.auth.sessions.active()
    if live_sessions:
        st.dataframe(pd.DataFrame(live_sessions), hide_index=True, width="stretch")
        c1, c2 = st.columns([3, 1])
        ended = c1.selectbox("Revoke a session", live_sessions, key="session_revoke",
                             format_func=lambda x: f"{x['id']} · {x['user_name']} · "
                                                   f"{x['client'] or '-'} · last used "
                                                   f"{x['last_used_at']:%Y-%m-%d %H:%M}")
        if c2.button("Revoke", key="session_revoke_btn"):
            try:
                svc.auth.sessions.revoke(ended["id"], actor=me.name)
                st.rerun()
            except TaskRunError as exc:
                show_error(exc)
    else:
        st.caption("No live sessions.")

with tokens_tab:
    tokens = svc.auth.tokens()
    if tokens:
        st.dataframe(pd.DataFrame(tokens), hide_index=True, width="stretch")
    with st.form("token-form", clear_on_submit=True):
        st.markdown("**Create a token** (shown once)")
        c1, c2 = st.columns(2)
        token_name = c1.text_input("Name", key="token_name")
        token_role = c2.selectbox("Role", ROLES, key="token_role")
        if st.form_submit_button("Create token"):
            try:
                _, secret = svc.auth.create_token(token_name.strip(), token_role, me.name)
                st.session_state.new_token = secret
            except TaskRunError as exc:
                show_error(exc)
    if st.session_state.get("new_token"):
        st.success("Copy the token now; it is not shown again.")
        st.code(st.session_state.pop("new_token"), language=None)
    live = [t for t in tokens if not t["revoked_at"]]
    if live:
        c1, c2 = st.columns([3, 1])
        choice = c1.selectbox("Revoke a token", live, key="token_revoke",
                              format_func=lambda t: f"{t['id']} · {t['name']} ({t['role']})")
        if c2.button("Revoke", key="token_revoke_btn"):
            svc.auth.revoke_token(choice["id"], actor=me.name)
            st.rerun()

with secrets_tab:
    st.caption("Values are stored encrypted and never shown again. A task receives a secret "
               "as an environment variable when its metadata lists it "
               "(`secrets = [\"DB_PASSWORD\"]`); every stored value is shown as `***` in logs.")
    stored = svc.list_secrets()
    if stored:
        st.dataframe(pd.DataFrame([{**s.as_dict(), "task": s.task or "(all tasks)"}
                                   for s in stored]), hide_index=True, width="stretch")
    with st.form("secret-form", clear_on_submit=True):
        st.markdown("**Set a secret**")
        c1, c2, c3 = st.columns(3)
        secret_name = c1.text_input("Name", placeholder="DB_PASSWORD", key="secret_name")
        secret_task = c2.text_input("Task (empty: every task)", key="secret_task")
        secret_value = c3.text_input("Value", type="password", key="secret_value")
        if st.form_submit_button("Save secret"):
            try:
                svc.set_secret(secret_name.strip(), secret_value, secret_task.strip() or None,
                               actor=me.name)
                st.success(f"Secret {secret_name.strip()} saved.")
            except TaskRunError as exc:
                show_error(exc)
    if stored:
        c1, c2 = st.columns([3, 1])
        gone = c1.selectbox("Delete a secret", stored, key="secret_delete",
                            format_func=lambda s: f"{s.name} ({s.task or 'all tasks'})")
        if c2.button("Delete secret", key="secret_delete_btn"):
            svc.delete_secret(gone.name, gone.task, actor=me.name)
            st.rerun()

with audit_tab:
    events = svc.audit_events(limit=500)
    if events:
        st.dataframe(pd.DataFrame(events)[["at", "actor", "action", "target", "detail"]],
                     hide_index=True, width="stretch")
    else:
        st.caption("Nothing recorded yet.")
