"""Webhook subscription file (``WO_WEBHOOK_SUBSCRIPTIONS``, JSON or YAML), validated by pydantic.

Example (YAML)::

    subscriptions:
      - id: acme-erp
        tenant_id: tenant_acme
        url: https://erp.acme.example/wo/hooks
        events: ["work_order.*", "compliance.violation_detected"]
        secret_env: WO_WEBHOOK_SECRET_ACME     # or  secret: "${WO_WEBHOOK_SECRET_ACME}"
        previous_secret_env: WO_WEBHOOK_SECRET_ACME_OLD   # optional, while rotating
        active: true

Secrets are SecretStr and read from the environment variables named; errors name the variable
or the field, never a value. URLs are only checked for syntax here: the SSRF guard refuses
forbidden ones at delivery time (dead-lettered as ``WEBHOOK_URL_FORBIDDEN``), so one tenant's
bad URL never stops the others' webhooks; ``check_urls`` lists them for a startup warning.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from yarl import URL

from connectors.webhook_http import AddressPolicy, ForbiddenTarget
from events.subjects import is_valid_tenant_id
from tables.webhooks import Subscription, is_valid_subscription_id, validate_pattern

MIN_SECRET_BYTES = 16
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """The subscription file is missing, unreadable or invalid (message has no secret values)."""


class SubscriptionConfig(BaseModel):
    """One subscription as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    tenant_id: str
    url: str = Field(repr=False)
    events: list[str] = Field(min_length=1)
    secret: SecretStr | None = None
    secret_env: str | None = None
    previous_secret_env: str | None = None
    active: bool = True

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not is_valid_subscription_id(value):
            raise ValueError("id must be 1-64 characters of [A-Za-z0-9_-]")
        return value

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not is_valid_tenant_id(value):
            raise ValueError("tenant_id must be 1-64 characters of [A-Za-z0-9_-]")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parsed = URL(value)
        except (ValueError, TypeError) as exc:
            raise ValueError("url is not a valid URL") from exc
        if not parsed.scheme:
            raise ValueError("url needs a scheme")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return [validate_pattern(p) for p in value]

    @field_validator("secret_env", "previous_secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("must be an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> SubscriptionConfig:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret and secret_env")
        return self

    def resolve(self, env: Mapping[str, str]) -> Subscription:
        """The runtime subscription, secrets read from ``env``."""
        if self.secret_env is not None:
            secret = _from_env(env, self.secret_env, self.id)
        else:
            assert self.secret is not None
            raw = self.secret.get_secret_value()
            ref = _ENV_REF.fullmatch(raw)
            secret = _from_env(env, ref.group(1), self.id) if ref else raw
        previous = None
        if self.previous_secret_env is not None:
            previous = _from_env(env, self.previous_secret_env, self.id).encode()
        # The previous secret signs every request during a rotation too: same minimum.
        for name, value in (("secret", secret.encode()), ("previous secret", previous)):
            if value is not None and len(value) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"subscription {self.id}: {name} shorter than {MIN_SECRET_BYTES} bytes"
                )
        return Subscription(
            id=self.id,
            tenant_id=self.tenant_id,
            url=self.url,
            patterns=tuple(self.events),
            secret=secret.encode(),
            active=self.active,
            previous_secret=previous,
        )


class SubscriptionFile(BaseModel):
    """The whole file: ``{"subscriptions": [...]}`` with unique ids."""

    model_config = ConfigDict(extra="forbid")

    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> SubscriptionFile:
        seen: set[str] = set()
        for sub in self.subscriptions:
            if sub.id in seen:
                raise ValueError(f"duplicate subscription id {sub.id}")
            seen.add(sub.id)
        return self


def _from_env(env: Mapping[str, str], name: str, sub_id: str) -> str:
    value = env.get(name)
    if not value:
        raise ConfigError(f"subscription {sub_id}: environment variable {name} is not set")
    return value


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read webhook subscriptions {path}: {exc.strerror}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            from ruamel.yaml import YAML
        except ImportError as exc:
            raise ConfigError("YAML subscriptions need ruamel.yaml; or use JSON") from exc
        try:
            return YAML(typ="safe", pure=True).load(text)
        except Exception as exc:
            raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno})") from exc


def load_subscriptions(
    path: str | Path, env: Mapping[str, str] | None = None
) -> list[Subscription]:
    """Read, validate and resolve the subscription file; ConfigError on any problem."""
    data = _read(Path(path))
    if isinstance(data, list):
        data = {"subscriptions": data}
    try:
        parsed = SubscriptionFile.model_validate(data)
    except ValueError as exc:
        # pydantic's text echoes input values (secrets!): report locations and messages only.
        errors = getattr(exc, "errors", None)
        if callable(errors):
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in errors(include_input=False, include_url=False)
            )
        else:
            detail = type(exc).__name__
        raise ConfigError(f"{path}: invalid webhook subscriptions: {detail}") from None
    source = os.environ if env is None else env
    return [s.resolve(source) for s in parsed.subscriptions]


def check_urls(subscriptions: list[Subscription], policy: AddressPolicy) -> dict[str, str]:
    """Subscription id -> refusal reason, for URLs the guard refuses without resolving DNS."""
    out: dict[str, str] = {}
    for sub in subscriptions:
        try:
            policy.check_url(sub.url)
        except ForbiddenTarget as exc:
            out[sub.id] = exc.reason
    return out
