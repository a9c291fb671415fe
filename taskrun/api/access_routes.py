"""The API's routes of access: API tokens, sign-in (password and single sign-on),
dashboard sessions and secrets. Each needs an admin but sign-in (see ``roles``)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse

from taskrun import web_login
from taskrun.access import oidc as oidc_mod
from taskrun.api.shapes import (
    RowId,
    SecretValue,
    SignIn,
    TokenCreate,
)
from taskrun.errors import (
    Forbidden,
    InvalidParams,
    NotFound,
    Unauthorized,
)
from taskrun.service.facade import Service

# ---- app -----------------------------------------------------------------



def access_routers(service: Callable[[], Service], who: Callable[[Request], str]
                   ) -> tuple[APIRouter, APIRouter, APIRouter]:
    """(tokens, auth, secrets): the routers, over the app's own ``service`` dependency."""
    tokens = APIRouter(prefix="/tokens", tags=["tokens"])

    @tokens.get("")
    def list_tokens(svc: Service = Depends(service)) -> list[dict]:
        return svc.auth.tokens()

    @tokens.post("", status_code=201)
    def create_token(body: TokenCreate, request: Request,
                     svc: Service = Depends(service)) -> dict:
        token_id, token = svc.auth.create_token(body.name, body.role, who(request))
        return {"id": token_id, "name": body.name, "role": body.role, "token": token}

    @tokens.delete("/{token_id}", status_code=204)
    def revoke_token(token_id: RowId, request: Request, svc: Service = Depends(service)):
        svc.auth.revoke_token(token_id, actor=who(request))
        return Response(status_code=204)

    auth = APIRouter(prefix="/auth", tags=["auth"])

    @auth.post("/login", responses={303: {"description": "signed in (the form): back to "
                                               "the page, with the session cookie"}})
    async def login(request: Request, svc: Service = Depends(service)):
        """Sign in to the dashboard: sets the session cookie.

        The form at ``/login`` posts ``user``, ``password``, ``remember`` and ``next``
        (form-encoded) and is redirected back; a JSON body gets ``{user, role}``.
        """
        web_login.check_origin(request, svc.settings.base_url)
        secure = web_login.is_https(request)
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = SignIn.model_validate_json(await request.body())
            except ValueError as exc:
                raise InvalidParams("a JSON body {user, password, remember} is "
                                    "required") from exc
            identity = await run_in_threadpool(
                svc.auth.login, body.user.strip(), body.password,
                web_login.client_address(request))
            if identity is None:
                raise Unauthorized("Wrong user or password.")
            token = await run_in_threadpool(
                svc.auth.sessions.create, identity.name, body.remember,
                web_login.client_address(request), request.headers.get("user-agent"))
            response = JSONResponse({"user": identity.name, "role": identity.role})
            web_login.set_session_cookie(response, token, body.remember,
                                         svc.settings.session_days, secure)
            return response
        form = dict(await request.form())
        return await run_in_threadpool(web_login.form_login, request, form, svc, secure)

    @auth.post("/logout", status_code=204,
               responses={303: {"description": "signed out (the form): to the sign-in"}})
    async def logout(request: Request, svc: Service = Depends(service)):
        """Sign out: the session is revoked and its cookie cleared."""
        web_login.check_origin(request, svc.settings.base_url)
        await run_in_threadpool(svc.auth.sessions.end, request.cookies.get(web_login.COOKIE))
        wants_page = "text/html" in request.headers.get("accept", "")
        response = (RedirectResponse(f"{web_login.LOGIN_PATH}?out=1", status_code=303)
                    if wants_page else Response(status_code=204))
        web_login.clear_session_cookie(response, web_login.is_https(request))
        return response

    @auth.get("/oidc/start", include_in_schema=False)
    def oidc_start(request: Request, svc: Service = Depends(service), next: str = "/"):
        """Single sign-on: off to the provider (the sign-in form's "Sign in with …")."""
        oidc = svc.auth.oidc
        if oidc is None:
            raise NotFound("Single sign-on is not configured (TASKRUN_OIDC_ISSUER).")
        url, state = oidc.start(web_login.safe_next(next))
        response = RedirectResponse(url, status_code=302)
        response.set_cookie(oidc_mod.STATE_COOKIE, state, max_age=oidc_mod.STATE_TTL_S,
                            path="/api/auth/oidc", httponly=True, samesite="lax",
                            secure=web_login.is_https(request))
        return response

    @auth.get("/oidc/callback", include_in_schema=False)
    def oidc_callback(request: Request, svc: Service = Depends(service), code: str = "",
                      state: str = "", error: str = ""):
        """Back from the provider: signed in with a session cookie, or the form says why."""
        oidc = svc.auth.oidc
        if oidc is None:
            raise NotFound("Single sign-on is not configured (TASKRUN_OIDC_ISSUER).")
        try:
            if error:
                raise Unauthorized(f"The provider did not sign you in ({error[:100]}).")
            identity, target = oidc.finish(code, state,
                                           request.cookies.get(oidc_mod.STATE_COOKIE))
            user = svc.auth.sso_login(identity)
        except (Unauthorized, Forbidden) as exc:
            return web_login.render(error=str(exc), sso=oidc.config.label)
        token = svc.auth.sessions.create(user.name, True, web_login.client_address(request),
                                         request.headers.get("user-agent"))
        response = RedirectResponse(target, status_code=303)
        web_login.set_session_cookie(response, token, True, svc.settings.session_days,
                                     web_login.is_https(request))
        response.delete_cookie(oidc_mod.STATE_COOKIE, path="/api/auth/oidc")
        return response

    @auth.get("/sessions")
    def list_sessions(svc: Service = Depends(service)) -> list[dict]:
        """Live dashboard sessions (admins only); tokens are never shown."""
        return svc.auth.sessions.active()

    @auth.delete("/sessions/{session_id}", status_code=204)
    def revoke_session(session_id: RowId, request: Request,
                       svc: Service = Depends(service)):
        """Sign a browser out: its next click asks for the password again."""
        svc.auth.sessions.revoke(session_id, actor=who(request))
        return Response(status_code=204)

    secrets = APIRouter(prefix="/secrets", tags=["secrets"])

    @secrets.get("")
    def list_secrets(svc: Service = Depends(service), task: str | None = None) -> list[dict]:
        """Names and scopes of stored secrets (values are never returned)."""
        return [s.as_dict() for s in svc.list_secrets(task)]

    @secrets.put("/{name}", status_code=204)
    def set_secret(name: str, body: SecretValue, request: Request,
                   svc: Service = Depends(service), task: str | None = None):
        """Store (or replace) a secret; ``task`` scopes it to one task, else every task."""
        svc.set_secret(name, body.value, task, actor=who(request))
        return Response(status_code=204)

    @secrets.delete("/{name}", status_code=204)
    def delete_secret(name: str, request: Request, svc: Service = Depends(service),
                      task: str | None = None):
        svc.delete_secret(name, task, actor=who(request))
        return Response(status_code=204)

    return tokens, auth, secrets
