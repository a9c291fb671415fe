"""The dashboard's sign-in over HTTP: a form at ``/login``, a cookie, a redirect.

Streamlit cannot set a cookie (its pages talk over a websocket), so the sign-in
is plain HTTP served by the same process: ``GET /login`` is a small form that
posts to ``/api/auth/login``, which checks the password, creates a session and
answers with an ``HttpOnly; SameSite=Lax`` cookie and a redirect back. Any page
requested by a browser without a live session is redirected to the form first
(``SignInRequired``); the Streamlit script resolves the same cookie on every
rerun (``pages.common.user``).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from taskrun.access.sessions import COOKIE
from taskrun.errors import Forbidden, TooManyAttempts

LOGIN_PATH = "/login"
# Paths that are never a page: the API, the form itself, Streamlit's own routes.
_NOT_PAGES = ("/api/", LOGIN_PATH, "/_stcore/", "/static/", "/component/", "/media/",
              "/favicon")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path.startswith(LOGIN_PATH):
        return "/"
    return target


def login_url(next_path: str | None = None) -> str:
    target = safe_next(next_path)
    return LOGIN_PATH if target == "/" else f"{LOGIN_PATH}?next={quote(target, safe='/')}"


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def is_https(request: Request) -> bool:
    return (request.url.scheme == "https"
            or request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https")


def check_origin(request: Request, base_url: str) -> None:
    """Refuse a cross-site form post (CSRF): browsers name the page that posts in
    ``Origin``; it must be this site (as reached, or as ``TASKRUN_BASE_URL`` says)."""
    origin = request.headers.get("origin")
    if origin is None:
        # No Origin: not a browser's cross-site post (they all send it for POST),
        # unless the fetch metadata says otherwise.
        if request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none"):
            return
        raise Forbidden("Cross-site sign-in requests are refused.")
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    scheme = "https" if is_https(request) else "http"
    base = urlsplit(base_url)
    if origin in (f"{scheme}://{host}", f"{base.scheme}://{base.netloc}"):
        return
    raise Forbidden("Cross-site sign-in requests are refused.")


def set_session_cookie(response: Response, token: str, remember: bool, days: float,
                       secure: bool) -> None:
    # remember off: no Max-Age/Expires, so the cookie ends with the browser session.
    response.set_cookie(COOKIE, token, max_age=int(days * 86400) if remember else None,
                        path="/", httponly=True, samesite="lax", secure=secure)


def clear_session_cookie(response: Response, secure: bool) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=secure)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Task Run Service</title>
<style>
 body {{ font-family: system-ui, sans-serif; background: #f6f7f9; margin: 0; }}
 main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem;
        border-radius: .75rem; box-shadow: 0 1px 4px #0002; }}
 h1 {{ font-size: 1.3rem; margin: 0 0 1.2rem; }}
 label {{ display: block; margin: .8rem 0 .3rem; font-size: .9rem; }}
 input[type=text], input[type=password] {{ width: 100%; box-sizing: border-box;
        padding: .55rem; border: 1px solid #bbb; border-radius: .4rem; font-size: 1rem; }}
 .remember {{ display: flex; gap: .5rem; align-items: center; margin-top: 1rem; }}
 button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; font-size: 1rem; border: 0;
          border-radius: .4rem; background: #ff4b4b; color: #fff; cursor: pointer; }}
 .error {{ background: #fde8e8; color: #8a1c1c; padding: .6rem; border-radius: .4rem; }}
 .note {{ color: #555; font-size: .9rem; }}
 .sso {{ display: block; margin-top: 1rem; text-align: center; padding: .6rem;
        border: 1px solid #bbb; border-radius: .4rem; color: inherit; text-decoration: none; }}
</style></head>
<body><main>
<h1>⚙️ Task Run Service</h1>
{message}
<form method="post" action="/api/auth/login">
 <input type="hidden" name="next" value="{next}">
 <label for="user">User</label>
 <input type="text" id="user" name="user" autocomplete="username" required autofocus
        value="{user}">
 <label for="password">Password</label>
 <input type="password" id="password" name="password" autocomplete="current-password"
        required>
 <div class="remember"><input type="checkbox" id="remember" name="remember" value="1"
      {checked}><label for="remember" style="margin:0">Keep me signed in</label></div>
 <button type="submit">Sign in</button>
</form>
{sso}
</main></body></html>
"""


def render(next_path: str | None = None, error: str | None = None, note: str | None = None,
           user: str = "", remember: bool = True, sso: str | None = None) -> HTMLResponse:
    message = ""
    if error:
        message = f'<p class="error" role="alert">{html.escape(error)}</p>'
    elif note:
        message = f'<p class="note">{html.escape(note)}</p>'
    target = safe_next(next_path)
    button = "" if not sso else (
        f'<a class="sso" href="/api/auth/oidc/start?next={quote(target, safe="/")}">'
        f"Sign in with {html.escape(sso)}</a>")
    body = _PAGE.format(message=message, next=html.escape(target),
                        user=html.escape(user[:64]), checked="checked" if remember else "",
                        sso=button)
    return HTMLResponse(body, headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                   "form-action 'self'; frame-ancestors 'none'"})


def sso_label(svc) -> str | None:
    oidc = svc.auth.oidc if svc is not None else None
    return oidc.config.label if oidc is not None else None


async def login_page(request: Request) -> HTMLResponse:
    note = "You have been signed out." if request.query_params.get("out") else None
    from taskrun.service.facade import default_service

    return render(request.query_params.get("next"), note=note,
                  sso=sso_label(await run_in_threadpool(default_service)))


def form_login(request: Request, form: dict, svc, secure: bool) -> Response:
    """The form's post: a redirect with the cookie, or the form again with the reason.

    The form comes back as 200: it is a page to read, and a browser logs every
    4xx document as a console error. Scripts post JSON and get 401 and 429.
    """
    name = str(form.get("user", "")).strip()
    password = str(form.get("password", ""))
    remember = bool(form.get("remember"))
    target = safe_next(str(form.get("next", "")))
    try:
        identity = svc.auth.login(name, password, client_address(request))
    except TooManyAttempts as exc:
        return render(target, error=str(exc), user=name, remember=remember,
                      sso=sso_label(svc))
    if identity is None:
        return render(target, error="Wrong user or password.", user=name, remember=remember,
                      sso=sso_label(svc))
    token = svc.auth.sessions.create(identity.name, remember, client_address(request),
                                     request.headers.get("user-agent"))
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, token, remember, svc.settings.session_days, secure)
    return response


class SignInRequired:
    """ASGI middleware: a browser asking for a page without a live session is sent
    to the form (with the page to come back to). Everything else passes untouched."""

    def __init__(self, app, get_service: Callable | None = None):
        self.app = app
        self._get_service = get_service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith(_NOT_PAGES):
            return await self.app(scope, receive, send)
        request = Request(scope)
        if "text/html" not in request.headers.get("accept", ""):
            return await self.app(scope, receive, send)
        svc = self._service()
        if svc is None or not svc.auth.enabled:
            return await self.app(scope, receive, send)
        token = request.cookies.get(COOKIE)
        if await run_in_threadpool(svc.auth.session_identity, token) is not None:
            return await self.app(scope, receive, send)
        target = path + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        response = RedirectResponse(login_url(target), status_code=302,
                                    headers={"Cache-Control": "no-store"})
        await response(scope, receive, send)

    def _service(self):
        if self._get_service is None:
            from taskrun.service.facade import default_service
            self._get_service = default_service
        try:
            return self._get_service()
        except Exception:  # not ready: let the page say so rather than loop on the form
            return None


class NoFraming:
    """ASGI middleware: no page of this server may be shown inside another site's frame
    (``frame-ancestors 'self'``, and ``X-Frame-Options`` for older browsers), so a
    signed-in admin cannot be made to click through an invisible dashboard. ``'self'``,
    not ``'none'``: the dashboard's own components (the code editor) are frames of
    this origin."""

    HEADERS = ((b"content-security-policy", b"frame-ancestors 'self'"),
               (b"x-frame-options", b"SAMEORIGIN"))

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def framed(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in self.HEADERS if h[0] not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, framed)
