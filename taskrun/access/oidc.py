"""Single sign-on with an OpenID Connect provider (optional, beside local users).

The authorization code flow with PKCE, done by this process's HTTP side: the
``/login`` form's "Sign in with …" goes to ``/api/auth/oidc/start``, which sends
the browser to the provider with a fresh state and nonce (kept in a signed,
short-lived cookie); the provider sends it back to ``/api/auth/oidc/callback``,
which exchanges the code for an ID token, checks it (signature against the
provider's keys, issuer, audience, expiry, nonce) and signs the browser in with
the same session cookie a password sign-in gets. The identity (the verified
e-mail, else the subject) must be a local user an admin created, or is created
with ``TASKRUN_OIDC_DEFAULT_ROLE`` when that is set; otherwise it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from taskrun.errors import Unauthorized

STATE_COOKIE = "taskrun_oidc"
STATE_TTL_S = 600  # a sign-in at the provider must be done within this
_HTTP_TIMEOUT_S = 10
_METADATA_TTL_S = 3600


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    label: str
    default_role: str | None
    redirect_uri: str


MAX_IDENTITY = 64  # a user name's length


class Oidc:
    def __init__(self, config: OidcConfig, key: bytes):
        self.config = config
        self._key = key
        self._metadata: tuple[float, dict] | None = None
        self._keys: tuple[float, dict] | None = None
        self._lock = threading.Lock()

    # ---- the provider's documents (cached) --------------------------------

    def metadata(self) -> dict:
        with self._lock:
            if self._metadata and time.monotonic() - self._metadata[0] < _METADATA_TTL_S:
                return self._metadata[1]
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = _get_json(url)
        if str(doc.get("issuer", "")).rstrip("/") != self.config.issuer.rstrip("/"):
            # (OpenID Connect Discovery 4.3: a document for another issuer is not used)
            raise Unauthorized(f"The provider at {self.config.issuer} names another issuer "
                               f"({str(doc.get('issuer'))[:200]!r}); check TASKRUN_OIDC_ISSUER.")
        with self._lock:
            self._metadata = (time.monotonic(), doc)
        return doc

    def _key_set(self, refresh: bool = False) -> dict:
        with self._lock:
            if not refresh and self._keys and time.monotonic() - self._keys[0] < _METADATA_TTL_S:
                return self._keys[1]
        keys = _get_json(self.metadata()["jwks_uri"])
        with self._lock:
            self._keys = (time.monotonic(), keys)
        return keys

    # ---- the flow ---------------------------------------------------------

    def start(self, next_path: str) -> tuple[str, str]:
        """(the provider's authorization URL, the state cookie's value)."""
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri, "scope": "openid email profile",
            "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256"})
        endpoint = self.metadata()["authorization_endpoint"]
        cookie = self._seal({"state": state, "nonce": nonce, "verifier": verifier,
                             "next": next_path, "exp": int(time.time()) + STATE_TTL_S})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", cookie

    def finish(self, code: str, state: str, cookie: str | None) -> tuple[str, str]:
        """The signed-in identity and where to go next; Unauthorized when anything is off."""
        kept = self._open(cookie)
        if kept is None or not hmac.compare_digest(kept["state"], state or ""):
            raise Unauthorized("The sign-in expired or did not start here; try again.")
        tokens = self._exchange(code, kept["verifier"])
        claims = self._verify(tokens.get("id_token", ""), kept["nonce"])
        email = claims.get("email")
        # An e-mail names a local user only when the provider vouches for it: an
        # unverified one is whatever the account's owner typed.
        identity = email if email and claims.get("email_verified") is True \
            else claims.get("sub")
        if not identity:
            raise Unauthorized("The provider named no user.")
        identity = str(identity)
        if len(identity) > MAX_IDENTITY:  # cut short, it could name someone else
            raise Unauthorized(f"The provider's name for this user is longer than "
                               f"{MAX_IDENTITY} characters; ask an admin.")
        return identity, kept["next"]

    def _exchange(self, code: str, verifier: str) -> dict:
        body = urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": self.config.redirect_uri, "code_verifier": verifier,
            "client_id": self.config.client_id}).encode()
        basic = base64.b64encode(f"{urllib.parse.quote(self.config.client_id)}:"
                                 f"{urllib.parse.quote(self.config.client_secret)}".encode())
        req = urllib.request.Request(self.metadata()["token_endpoint"], data=body, headers={
            "content-type": "application/x-www-form-urlencoded", "accept": "application/json",
            "authorization": f"Basic {basic.decode()}"})
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise Unauthorized(f"The provider refused the sign-in ({exc}).") from exc

    def _verify(self, id_token: str, nonce: str) -> dict:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.metadata()["issuer"]},
            aud={"essential": True, "value": self.config.client_id},
            nonce={"essential": True, "value": nonce}, exp={"essential": True})
        for refresh in (False, True):  # the provider may have rotated its keys
            try:
                token = jwt.decode(id_token, KeySet.import_key_set(self._key_set(refresh)))
                registry.validate(token.claims)
                return token.claims
            except JoseError as exc:
                error = exc
            except ValueError as exc:
                error = exc
        raise Unauthorized(f"The provider's ID token was not valid ({error}).")

    # ---- the state cookie -------------------------------------------------

    def _seal(self, data: dict) -> str:
        raw = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{raw}.{_b64(hmac.new(self._key, raw.encode(), 'sha256').digest())}"

    def _open(self, cookie: str | None) -> dict | None:
        raw, _, mac = (cookie or "").partition(".")
        good = _b64(hmac.new(self._key, raw.encode(), "sha256").digest())
        if not raw or not hmac.compare_digest(mac, good):
            return None
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return data if data.get("exp", 0) >= time.time() else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise Unauthorized(f"The sign-in provider cannot be reached ({exc}).") from exc
