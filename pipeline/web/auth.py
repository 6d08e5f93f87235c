"""Bearer tokens -> one tenant each: parsed from ``WO_WEB_TOKENS``, compared in constant time.

``WO_WEB_TOKENS`` is ``token=tenant[,token=tenant...]``. Only SHA-256 digests of the tokens are
kept; a presented token is compared against every digest with :func:`hmac.compare_digest`, so
neither the time taken nor an error message depends on a token's value. Tokens never appear in
exceptions, ``repr`` or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field

from pydantic import SecretStr

from events.subjects import TENANT_ID_PATTERN
from pipeline.web.errors import ApiError

log = logging.getLogger(__name__)

_TENANT = re.compile(TENANT_ID_PATTERN)
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, no spaces: what a Bearer header carries
MIN_TOKEN_LENGTH = 16
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="wo-stream"'}


class TokenConfigError(ValueError):
    """``WO_WEB_TOKENS`` is malformed; the message names the entry's position, never a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Tokens:
    """The configured tokens (as digests) and the tenant each one grants."""

    entries: tuple[tuple[bytes, str], ...] = field(default=(), repr=False)

    @classmethod
    def parse(cls, raw: SecretStr | str | None) -> Tokens:
        """Tokens from ``token=tenant,...``; empty when unset (every request is then refused)."""
        text = raw.get_secret_value() if isinstance(raw, SecretStr) else (raw or "")
        entries: list[tuple[bytes, str]] = []
        for n, item in enumerate((p.strip() for p in text.split(",")), start=1):
            if not item:
                continue
            token, sep, tenant = item.rpartition("=")
            token, tenant = token.strip(), tenant.strip()
            if not sep or not token or not _TOKEN.fullmatch(token):
                raise TokenConfigError(f"WO_WEB_TOKENS entry {n}: expected token=tenant")
            if not _TENANT.fullmatch(tenant):
                raise TokenConfigError(f"WO_WEB_TOKENS entry {n}: tenant is not a tenant id")
            digest = _digest(token)
            if any(hmac.compare_digest(digest, d) for d, _ in entries):
                raise TokenConfigError(f"WO_WEB_TOKENS entry {n}: token given twice")
            if len(token) < MIN_TOKEN_LENGTH:
                log.warning("WO_WEB_TOKENS entry %d: token shorter than %d characters",
                            n, MIN_TOKEN_LENGTH)  # fmt: skip
            entries.append((digest, tenant))
        return cls(tuple(entries))

    def __len__(self) -> int:
        return len(self.entries)

    def tenant_for(self, token: str) -> str | None:
        """The tenant ``token`` grants, or None; every entry is compared (no early exit)."""
        digest = _digest(token)
        found: str | None = None
        for known, tenant in self.entries:
            if hmac.compare_digest(digest, known) and found is None:
                found = tenant
        return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not _TOKEN.fullmatch(token):
        return None
    return token


def caller_tenant(tokens: Tokens, header: str | None) -> str:
    """The tenant of the request's bearer token; 401 without one or for an unknown one."""
    token = bearer(header)
    tenant = tokens.tenant_for(token) if token is not None else None
    if tenant is None:
        reason = "missing bearer token" if token is None else "unknown bearer token"
        raise ApiError(401, "unauthorized", reason)
    return tenant


def authorize(tokens: Tokens, header: str | None, path_tenant: str) -> str:
    """401 without a valid token, 403 if it grants another tenant; returns the path tenant."""
    tenant = caller_tenant(tokens, header)
    if not hmac.compare_digest(tenant.encode(), path_tenant.encode()):
        raise ApiError(403, "forbidden", "the token does not grant this tenant")
    return path_tenant
