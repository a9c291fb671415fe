"""Which role each route needs: reading a viewer, running an operator, the rest an admin."""

from __future__ import annotations

# Who may call what. Reading needs a viewer, running and cancelling an operator;
# every other change needs an admin, so a route added later is closed by default.
PUBLIC_ROUTES = frozenset({("GET", "/system/health"), ("POST", "/auth/login"),
                           ("POST", "/auth/logout"), ("GET", "/auth/oidc/start"),
                           ("GET", "/auth/oidc/callback")})
# Reads that are not for every viewer: the app log (user names, client addresses),
# the host's processes (every command line), uploads by their hash (any run's input).
ADMIN_READS = frozenset({("GET", "/logs/app.log"), ("GET", "/system/processes")})
OPERATOR_READS = frozenset({("GET", "/uploads/{sha}")})
# Reads sent as POST because they carry a body.
VIEWER_POSTS = frozenset({("POST", "/query")})
# The only routes a signed link opens (GET only): downloads the dashboard hands out
# and the reads one server makes of another's files (a live log by offset among them).
SIGNED_ROUTES = frozenset({"/logs/{name}", "/logs/{name}/download",
                           "/tasks/runs/{run_id}/outputs/{name:path}",
                           "/tasks/runs/{run_id}/preview/{name:path}", "/uploads/{sha}"})
OPERATOR_ROUTES = frozenset({("POST", "/tasks/{task_id}/execute"),
                             ("POST", "/tasks/runs/{run_id}/cancel"),
                             ("POST", "/tasks/{task_id}/schedule/pause"),
                             ("POST", "/tasks/{task_id}/schedule/resume"),
                             ("POST", "/workflows/{wid}/repair"),
                             ("POST", "/workflows/{wid}/cancel")})


def required_role(method: str, path: str) -> str | None:
    if (method, path) in PUBLIC_ROUTES:
        return None
    if (method, path) in ADMIN_READS:
        return "admin"
    if (method, path) in OPERATOR_READS:
        return "operator"
    if (method, path) in VIEWER_POSTS:
        return "viewer"
    if method in ("GET", "HEAD") and not path.startswith(("/tokens", "/audit", "/secrets",
                                                          "/auth")):
        return "viewer"
    if (method, path) in OPERATOR_ROUTES:
        return "operator"
    return "admin"


