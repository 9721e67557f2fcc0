"""Credentials for the Admin API: a fixed access token, or the client-credentials grant.

Secrets are held in :class:`Secret`, whose ``repr``/``str`` never show the value, so a
credential that ends up in a log line, a traceback's locals or Dagster metadata reads
``<secret>``. A refused credential raises :class:`CredentialRejected` naming *which*
credential (by its environment variable) and how to fix it, never its value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

import httpx

from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.shopify.errors import SOURCE, TransientError, redact

ACCESS_TOKEN_HEADER = "X-Shopify-Access-Token"


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class TokenProvider(Protocol):
    #: Which credential this is, in words an operator can act on (names the env vars).
    credential: str
    #: What to check when Shopify refuses it.
    how_to_fix: str

    def headers(self) -> dict[str, str]:
        """Request headers carrying a valid token (fetching or renewing it if needed)."""

    def renew_after_rejection(self) -> bool:
        """After a 401: get a fresh token and return True, or False if that cannot help."""

    def secrets(self) -> list[str]:
        """Every secret value this provider holds or has issued, for redaction."""


class StaticAccessToken:
    """An Admin API access token (``SHOPIFY_ACCESS_TOKEN``), sent as ``X-Shopify-Access-Token``."""

    credential = "the Admin API access token (SHOPIFY_ACCESS_TOKEN)"
    how_to_fix = (
        "check that SHOPIFY_ACCESS_TOKEN is the app's current Admin API token for this shop "
        "(it is revoked when the app is uninstalled or the token rotated)"
    )

    def __init__(self, token: str | Secret) -> None:
        self._token = token if isinstance(token, Secret) else Secret(token)

    def headers(self) -> dict[str, str]:
        return {ACCESS_TOKEN_HEADER: self._token.reveal()}

    def renew_after_rejection(self) -> bool:
        return False  # a fixed token cannot renew itself

    def secrets(self) -> list[str]:
        return [self._token.reveal()]

    def __repr__(self) -> str:
        return "StaticAccessToken(<secret>)"


class ClientCredentialsToken:
    """Tokens from the client-credentials grant, renewed before they expire.

    ``POST {shop}/admin/oauth/access_token`` with ``grant_type=client_credentials``,
    ``client_id`` and ``client_secret`` (form-encoded) answers ``{"access_token", "scope",
    "expires_in"}``; tokens live about 24 h. A token is renewed when less than
    ``renew_margin`` of its life is left (at most 5 minutes), and once more after a 401 in
    case it was revoked early.
    """

    credential = "the client credentials (SHOPIFY_CLIENT_ID / SHOPIFY_CLIENT_SECRET)"
    how_to_fix = (
        "check SHOPIFY_CLIENT_ID and SHOPIFY_CLIENT_SECRET against the app's settings in the Dev "
        "Dashboard, and that the app is installed on this shop"
    )

    def __init__(
        self,
        shop_url: str,
        client_id: str,
        client_secret: str | Secret,
        http: httpx.Client,
        *,
        clock: Callable[[], float] = time.monotonic,
        renew_margin_s: float = 300.0,
    ) -> None:
        if not client_id or not client_id.strip():
            raise ValueError("client_id must not be blank")
        self._url = shop_url.rstrip("/") + "/admin/oauth/access_token"
        self._client_id = client_id
        self._client_secret = client_secret if isinstance(client_secret, Secret) else Secret(client_secret)
        self._http = http
        self._clock = clock
        self._renew_margin_s = renew_margin_s
        self._token: Secret | None = None
        self._renew_at = 0.0
        self._issued: list[str] = []
        self.tokens_fetched = 0

    def headers(self) -> dict[str, str]:
        if self._token is None or self._clock() >= self._renew_at:
            self._fetch()
        assert self._token is not None
        return {ACCESS_TOKEN_HEADER: self._token.reveal()}

    def renew_after_rejection(self) -> bool:
        self._token = None
        return True

    def secrets(self) -> list[str]:
        return [self._client_secret.reveal(), *self._issued]

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.reveal(),
        }
        try:
            response = self._http.post(self._url, data=form, headers={"Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise TransientError(f"token request timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientError(f"token request failed ({type(exc).__name__})") from None
        if response.status_code in (400, 401, 403):
            raise CredentialRejected(
                SOURCE,
                f"Shopify refused {self.credential} at {self._url} (HTTP {response.status_code}"
                f"{_oauth_error(response, self.secrets())}): {self.how_to_fix}",
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"token request answered HTTP {response.status_code}")
        if response.status_code != 200:
            raise SourceError(SOURCE, f"token request to {self._url} answered HTTP {response.status_code}")
        try:
            body = response.json(parse_float=Decimal)
            token = body["access_token"]
            expires_in = float(body.get("expires_in") or 0)
        except (ValueError, KeyError, TypeError):
            raise TransientError("token response was not the expected JSON") from None
        self._token = Secret(token)
        self._issued.append(token)
        self.tokens_fetched += 1
        now = self._clock()
        if expires_in > 0:
            self._renew_at = now + expires_in - min(self._renew_margin_s, expires_in / 10)
        else:
            self._renew_at = float("inf")  # no expiry announced: renew only after a 401

    def __repr__(self) -> str:
        return f"ClientCredentialsToken(client_id={self._client_id!r}, client_secret=<secret>)"


def _oauth_error(response: httpx.Response, secrets: list[str]) -> str:
    """``, invalid_client`` from an OAuth error body, if there is one (redacted, short)."""
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f", {redact(str(code), secrets)[:80]}" if code else ""
