"""Task Run Service: ``streamlit run app.py`` serves the dashboard at / and the API at /api.

Streamlit imports this file as the ASGI app (``app`` below) and, for every
browser session, runs it as the page script (``__main__``). Both share one
process-wide service: one supervisor, one database.
"""

import os
from contextlib import asynccontextmanager

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

if __name__ == "__main__":
    from pages.common import run_navigation

    run_navigation()
else:
    from streamlit.runtime.pages_manager import PagesManager

    from taskrun.api import create_api
    from taskrun.service.facade import default_service, shutdown_default
    from taskrun.web_login import LOGIN_PATH, NoFraming, SignInRequired, login_page

    @asynccontextmanager
    async def lifespan(_app):
        # Settings may come from `.streamlit/secrets.toml` alone (Streamlit Community
        # Cloud): its root-level keys become environment variables, before the
        # service reads its settings.
        try:
            from streamlit.runtime.secrets import secrets_singleton

            secrets_singleton.load_if_toml_exists()
        except Exception:  # (a malformed secrets file is Streamlit's to report)
            pass
        if not os.environ.get("TASKRUN_BASE_URL"):
            # Its default follows the port actually served (and so does the URL other
            # servers reach this one at, unless TASKRUN_ADVERTISE_URL says otherwise).
            os.environ["TASKRUN_BASE_URL"] = \
                f"http://localhost:{st.config.get_option('server.port')}"
        default_service()  # start the supervisor with the server, not on the first visit
        yield
        shutdown_default()  # stop claiming; end running tasks as cancelled ("shutdown")

    # Streamlit treats a `pages/` folder as the old automatic multipage mode until
    # some session calls st.navigation; a first visit straight to /editor would
    # then run the page without this script's navigation. Our pages are declared
    # with st.navigation only.
    PagesManager.uses_pages_directory = False

    app = st.App(__file__, routes=[Mount("/api", app=create_api()),
                                   Route(LOGIN_PATH, login_page, methods=["GET"])],
                 middleware=[Middleware(NoFraming), Middleware(SignInRequired)],
                 lifespan=lifespan)
