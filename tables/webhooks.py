"""Webhook logic without I/O: subscription matching, HMAC signatures, backoff, delivery states.

Signature scheme (documented for receivers in ``docs/webhooks.md``)::

    Wo-Timestamp: <t>                                  (unix seconds, integer)
    Wo-Signature: t=<t>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The signed message is the ASCII timestamp, a dot and the raw request body bytes; a receiver
recomputes the HMAC with its shared secret, compares in constant time and rejects timestamps
outside its tolerance (replays). Several ``v1=`` entries may appear (secret rotation): any match
verifies.

Retry policy: after the n-th failed attempt the next one is due after
``min(base * 2**(n-1), cap) * (1 + u)``, ``u`` uniform in ``[-jitter, +jitter]``, but never later
than ``first attempt + budget`` (48 h, catalog §8); a failure at or after that deadline makes the
delivery ``dead`` (``WEBHOOK_DELIVERY_EXPIRED``). A refused target (SSRF guard) is dead at once
(``WEBHOOK_URL_FORBIDDEN``): retrying cannot make a forbidden address allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from events.subjects import EVENT_TYPE_PATTERN, TYPE_PREFIX_TO_DOMAIN

SIGNATURE_HEADER = "Wo-Signature"
TIMESTAMP_HEADER = "Wo-Timestamp"
EVENT_ID_HEADER = "Wo-Event-Id"
EVENT_TYPE_HEADER = "Wo-Event-Type"
TENANT_HEADER = "Wo-Tenant"
DELIVERY_HEADER = "Wo-Delivery-Id"
ATTEMPT_HEADER = "Wo-Attempt"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300

EXPIRED = "WEBHOOK_DELIVERY_EXPIRED"
FORBIDDEN = "WEBHOOK_URL_FORBIDDEN"
# A stored delivery whose tenant is not the subscription's (its id was given to another
# tenant while deliveries were still queued): never sent, dead-lettered for triage.
TENANT_MISMATCH = "WEBHOOK_TENANT_MISMATCH"

SUBSCRIPTION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_SUBSCRIPTION_ID_RE = re.compile(SUBSCRIPTION_ID_PATTERN)
_EVENT_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


# -- subscriptions and matching ----------------------------------------------------------------


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is ``*``, ``{prefix}.*`` or a full event type, else ValueError."""
    if pattern == "*":
        return pattern
    prefix, dot, name = pattern.partition(".")
    if dot and name == "*" and prefix in TYPE_PREFIX_TO_DOMAIN:
        return pattern
    if _EVENT_TYPE_RE.fullmatch(pattern) and prefix in TYPE_PREFIX_TO_DOMAIN:
        return pattern
    raise ValueError(
        "event pattern must be '*', '{prefix}.*' or a full event type, prefix one of "
        + ", ".join(TYPE_PREFIX_TO_DOMAIN)
    )


def pattern_matches(pattern: str, event_type: str) -> bool:
    """Whether an event type matches one (validated) pattern."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.partition(".")[0] == pattern[:-2] and "." in event_type
    return pattern == event_type


def is_valid_subscription_id(value: object) -> bool:
    """Subscription ids go into headers and store keys: one safe token."""
    return isinstance(value, str) and _SUBSCRIPTION_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Subscription:
    """One tenant's endpoint; ``secret`` is kept out of ``repr`` so it never reaches a log."""

    id: str
    tenant_id: str
    url: str = field(repr=False)  # may carry a token in its query string
    patterns: tuple[str, ...]
    secret: bytes = field(repr=False)
    active: bool = True
    previous_secret: bytes | None = field(default=None, repr=False)  # still signed during rotation

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """The secrets to sign with: current first, then the previous one while rotating."""
        if self.previous_secret is None:
            return (self.secret,)
        return self.secret, self.previous_secret

    def matches(self, tenant_id: str, event_type: str) -> bool:
        """Active, same tenant, and one pattern matches the type."""
        return (
            self.active
            and tenant_id == self.tenant_id
            and any(pattern_matches(p, event_type) for p in self.patterns)
        )


class SubscriptionIndex:
    """Active subscriptions by tenant, for matching many events quickly."""

    def __init__(self, subscriptions: Iterable[Subscription]) -> None:
        self._all = {s.id: s for s in subscriptions}
        self._by_tenant: dict[str, list[Subscription]] = {}
        for sub in self._all.values():
            if sub.active:
                self._by_tenant.setdefault(sub.tenant_id, []).append(sub)

    def __len__(self) -> int:
        return len(self._all)

    def get(self, subscription_id: str) -> Subscription | None:
        return self._all.get(subscription_id)

    def active(self) -> list[Subscription]:
        return [s for s in self._all.values() if s.active]

    def has_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self._by_tenant

    def matching(self, tenant_id: str, event_type: str) -> list[Subscription]:
        """The active subscriptions of ``tenant_id`` whose patterns match ``event_type``."""
        return [s for s in self._by_tenant.get(tenant_id, ()) if s.matches(tenant_id, event_type)]


# -- signatures --------------------------------------------------------------------------------


def signed_message(timestamp: int, body: bytes) -> bytes:
    """The bytes the HMAC covers: ``b"<timestamp>." + body``."""
    return str(int(timestamp)).encode("ascii") + b"." + body


def compute_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of the signed message."""
    return hmac.new(secret, signed_message(timestamp, body), hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[bytes], timestamp: int, body: bytes) -> str:
    """``t=<timestamp>,v1=<sig>[,v1=<sig>...]``, one ``v1`` per secret (rotation)."""
    parts = [f"t={int(timestamp)}"]
    parts += [f"{SIGNATURE_VERSION}={compute_signature(s, timestamp, body)}" for s in secrets]
    return ",".join(parts)


def parse_signature_header(header: str) -> tuple[int, list[str]] | None:
    """``(timestamp, [v1 signatures])`` or None when the header is malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, eq, value = item.strip().partition("=")
        if not eq:
            return None
        if key == "t":
            if timestamp is not None or not _TIMESTAMP_RE.fullmatch(value):
                return None
            timestamp = int(value)
        elif key == SIGNATURE_VERSION and _HEX_RE.fullmatch(value):
            signatures.append(value)
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_signature(
    header: str,
    body: bytes,
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True if a ``v1`` signature matches one secret and ``t`` is within ``tolerance`` of now."""
    parsed = parse_signature_header(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if abs(now - timestamp) > tolerance:
        return False
    ok = False
    for secret in secrets:
        expected = compute_signature(secret, timestamp, body)
        for candidate in signatures:
            ok |= hmac.compare_digest(expected, candidate)  # no early exit: constant work
    return ok


# -- backoff -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter inside a total budget (defaults: 30 s doubling, 4 h cap,
    ±20 % jitter, 48 h budget)."""

    base_seconds: float = 30.0
    max_seconds: float = 4 * 3600.0
    jitter: float = 0.2
    budget_seconds: float = 48 * 3600.0

    def __post_init__(self) -> None:
        if self.base_seconds <= 0 or self.max_seconds < self.base_seconds:
            raise ValueError("backoff needs 0 < base_seconds <= max_seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.budget_seconds < 0:
            raise ValueError("budget_seconds must be >= 0")

    def nominal(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed ones, without jitter."""
        exponent = min(max(failures - 1, 0), 64)
        return min(self.base_seconds * 2.0**exponent, self.max_seconds)

    def bounds(self, failures: int) -> tuple[float, float]:
        """The interval the jittered delay falls in."""
        nominal = self.nominal(failures)
        return nominal * (1 - self.jitter), nominal * (1 + self.jitter)

    def delay(self, failures: int, rng: random.Random) -> float:
        """Jittered delay after ``failures`` failed attempts."""
        return self.nominal(failures) * (1 + rng.uniform(-self.jitter, self.jitter))

    def schedule(self, rng: random.Random, start: float = 0.0) -> list[float]:
        """Every attempt time of a delivery that always fails (first attempt at ``start``)."""
        times = [start]
        deadline = start + self.budget_seconds
        failures = 0
        while times[-1] < deadline:
            failures += 1
            times.append(min(times[-1] + self.delay(failures, rng), deadline))
        return times


# -- delivery state ----------------------------------------------------------------------------


class Status(StrEnum):
    """Where a delivery stands; ``delivered`` and ``dead`` are final."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class OutcomeKind(StrEnum):
    """What one attempt did; the metric label ``result``."""

    DELIVERED = "delivered"
    HTTP_ERROR = "http_error"  # non-2xx answer (redirects included: they are not followed)
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"  # DNS, refused, reset, TLS
    FORBIDDEN = "forbidden"  # the SSRF guard refused the URL or address: permanent


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one attempt; ``detail`` is a code or class name, never a URL or a secret."""

    kind: OutcomeKind
    status: int | None = None
    detail: str | None = None

    @property
    def summary(self) -> str:
        if self.status is not None:
            return f"HTTP {self.status}"
        return f"{self.kind}:{self.detail}" if self.detail else str(self.kind)


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """The durable part of one (subscription, event) delivery."""

    status: Status
    attempts: int
    next_attempt_at: float
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    last_error: str | None = None
    finished_at: float | None = None
    dead_reason: str | None = None

    @classmethod
    def new(cls, now: float) -> DeliveryState:
        """A fresh delivery, due at once."""
        return cls(Status.PENDING, 0, now)


def apply_outcome(
    state: DeliveryState,
    outcome: Outcome,
    *,
    started_at: float,
    now: float,
    policy: BackoffPolicy,
    rng: random.Random,
) -> DeliveryState:
    """The state after one attempt that started at ``started_at`` and ended at ``now``."""
    if state.status is not Status.PENDING:
        raise ValueError("only a pending delivery can be attempted")
    first = state.first_attempt_at if state.first_attempt_at is not None else started_at
    attempted = replace(
        state, attempts=state.attempts + 1, first_attempt_at=first, last_attempt_at=started_at
    )
    if outcome.kind is OutcomeKind.DELIVERED:
        return replace(attempted, status=Status.DELIVERED, last_error=None, finished_at=now)
    if outcome.kind is OutcomeKind.FORBIDDEN:
        return _dead(attempted, outcome, now, FORBIDDEN)
    deadline = first + policy.budget_seconds
    if now >= deadline:
        return _dead(attempted, outcome, now, EXPIRED)
    next_at = min(now + policy.delay(attempted.attempts, rng), deadline)
    return replace(attempted, next_attempt_at=next_at, last_error=outcome.summary)


def refuse(state: DeliveryState, now: float, reason: str, detail: str) -> DeliveryState:
    """Dead without an attempt (nothing was sent): ``reason`` is a dead-letter code."""
    return replace(
        state, status=Status.DEAD, last_error=detail, finished_at=now, dead_reason=reason
    )


def _dead(state: DeliveryState, outcome: Outcome, now: float, reason: str) -> DeliveryState:
    return replace(
        state, status=Status.DEAD, last_error=outcome.summary, finished_at=now, dead_reason=reason
    )
