"""Bearer tokens for the Business Central API: a fixed token, or OAuth 2.0 client credentials.

Both kinds say which configuration (by environment variable name, never by value) a
refusal is about, so a 401 can tell the operator what to fix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Protocol

import httpx

from orders_etl.sources.base import CredentialRejected, SourceError
from orders_etl.sources.business_central.errors import Throttled, TransientError, retry_after_s

SOURCE = "business_central"
# Client-credentials scope of the Business Central API (service-to-service).
DEFAULT_SCOPE = "https://api.businesscentral.dynamics.com/.default"
TOKEN_URL_TEMPLATE = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
# Renew this long before expiry, so a token never lapses in the middle of a page.
RENEW_MARGIN_S = 300.0


class TokenSource(Protocol):
    #: The setting a refusal is about, by environment variable name.
    credential: str
    #: Whether a fresh token can be obtained after a 401 (a fixed token cannot).
    renewable: bool

    def token(self) -> str: ...

    def invalidate(self) -> None: ...

    def refused(self, status: int) -> CredentialRejected:
        """The error for a 401/403 from the API with this credential."""
        ...


class StaticToken:
    """``BC_ACCESS_TOKEN``: used as given, never renewed."""

    credential = "BC_ACCESS_TOKEN"
    renewable = False

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ValueError("BC_ACCESS_TOKEN is empty")
        self._token = token.strip()

    def __repr__(self) -> str:
        return "StaticToken(<BC_ACCESS_TOKEN>)"

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        return None

    def refused(self, status: int) -> CredentialRejected:
        if status == 403:
            return CredentialRejected(
                SOURCE,
                "HTTP 403: BC_ACCESS_TOKEN was accepted but is not allowed to read sales documents of this "
                "company; give its user or app a permission set with read access (e.g. D365 READ)",
            )
        return CredentialRejected(
            SOURCE,
            "HTTP 401: Business Central refused BC_ACCESS_TOKEN (expired, revoked or issued for another "
            "tenant/environment); issue a new token, or set BC_TENANT_ID, BC_CLIENT_ID and BC_CLIENT_SECRET "
            "so tokens are obtained and renewed automatically",
        )


class ClientCredentials:
    """OAuth 2.0 client-credentials grant against Microsoft Entra ID, renewed before expiry."""

    credential = "BC_CLIENT_ID/BC_CLIENT_SECRET"
    renewable = True

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client,
        token_url: str | None = None,
        scope: str = DEFAULT_SCOPE,
        clock: Callable[[], float] = time.monotonic,
        renew_margin_s: float = RENEW_MARGIN_S,
    ) -> None:
        missing = [
            name
            for name, value in (
                ("BC_TENANT_ID", tenant_id),
                ("BC_CLIENT_ID", client_id),
                ("BC_CLIENT_SECRET", client_secret),
            )
            if not (value or "").strip()
        ]
        if missing:
            raise ValueError(f"OAuth client credentials need {', '.join(missing)}")
        self._client_id = client_id.strip()
        self._secret = client_secret
        self._http = http
        self.token_url = token_url or TOKEN_URL_TEMPLATE.format(tenant=tenant_id.strip())
        self._scope = scope
        self._clock = clock
        self._renew_margin_s = renew_margin_s
        self._token: str | None = None
        self._renew_at = 0.0
        #: How many tokens were obtained (progress and tests).
        self.issued = 0

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self._client_id!r}, token_url={self.token_url!r})"

    def token(self) -> str:
        if self._token is None or self._clock() >= self._renew_at:
            self._fetch()
        assert self._token is not None
        return self._token

    def invalidate(self) -> None:
        self._token = None

    def refused(self, status: int) -> CredentialRejected:
        if status == 403:
            return CredentialRejected(
                SOURCE,
                "HTTP 403: the app BC_CLIENT_ID authenticated but may not read this company's sales "
                "documents; in Business Central open 'Microsoft Entra Applications', select the app and "
                "grant it a permission set with read access (e.g. D365 READ)",
            )
        return CredentialRejected(
            SOURCE,
            "HTTP 401: Business Central refused the token issued for BC_CLIENT_ID/BC_CLIENT_SECRET even "
            "after renewing it; register the app in Business Central ('Microsoft Entra Applications', "
            "state Enabled), grant it the API permission 'API.ReadWrite.All' (Dynamics 365 Business "
            "Central) with admin consent, and check that BC_TENANT_ID is the tenant of BC_BASE_URL",
        )

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret,
            "scope": self._scope,
        }
        try:
            response = self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise TransientError(f"token endpoint timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientError(f"token endpoint unreachable ({type(exc).__name__})") from None
        if response.status_code == 429:
            # Entra ID throttles too, and says how long to wait: waited out like the API's.
            raise Throttled(retry_after_s(response.headers.get("Retry-After")))
        if response.status_code >= 500:
            raise TransientError(f"token endpoint answered HTTP {response.status_code}")
        if response.status_code == 404:
            raise SourceError(
                SOURCE, f"token endpoint {self.token_url} not found (HTTP 404); check BC_TOKEN_URL"
            )
        body = _json_object(response)
        if response.status_code != 200:
            # Entra answers 400/401 with {"error": "invalid_client", "error_codes": [7000215], ...}.
            # Only the error code and AADSTS number are repeated: the description may echo input.
            error = str(body.get("error") or f"HTTP {response.status_code}")
            codes = body.get("error_codes") or []
            aadsts = f", AADSTS{codes[0]}" if codes and isinstance(codes[0], int) else ""
            raise CredentialRejected(
                SOURCE,
                f"the token endpoint refused BC_CLIENT_ID/BC_CLIENT_SECRET ({error}{aadsts}); check the "
                "client id, that BC_CLIENT_SECRET is the secret's value (not its id) and has not expired, "
                "and that BC_TENANT_ID is the tenant of the app registration",
            )
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TransientError("token endpoint answered without an access_token")
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        # Short-lived tokens (tests, unusual policies) renew half-way instead of never.
        margin = min(self._renew_margin_s, lifetime / 2)
        self._token = token
        self._renew_at = self._clock() + lifetime - margin
        self.issued += 1


def _json_object(response: httpx.Response) -> dict:
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}
