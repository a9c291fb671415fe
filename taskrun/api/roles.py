"""Which role each route needs: reading a viewer, running an operator, the rest an admin."""

from __future__ import annotations

# Who may call what. Reading needs a viewer, running and cancelling an operator;
# every other change needs an admin, so a route added later is closed by default.
PUBLIC_ROUTES = frozenset({("GET", "/system/health"), ("POST", "/auth/login"),
                           ("POST", "/auth/logout"), ("GET", "/auth/oidc/start"),
                           ("GET", "/auth/oidc/callback")})
OPERATOR_ROUTES = frozenset({("POST", "/tasks/{task_id}/execute"),
                             ("POST", "/tasks/runs/{run_id}/cancel"),
                             ("POST", "/tasks/{task_id}/schedule/pause"),
                             ("POST", "/tasks/{task_id}/schedule/resume")})


def required_role(method: str, path: str) -> str | None:
    if (method, path) in PUBLIC_ROUTES:
        return None
    if method in ("GET", "HEAD") and not path.startswith(("/tokens", "/audit", "/secrets",
                                                          "/auth")):
        return "viewer"
    if (method, path) in OPERATOR_ROUTES:
        return "operator"
    return "admin"


