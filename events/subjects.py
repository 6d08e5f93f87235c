"""NATS subjects ``wo.{tenant}.{domain}.{event}`` (catalog §1.3), tenant-id tokens and Kafka topics.

Tenant ids become a NATS subject token, so they must be one safe token: the alphabet is
``[A-Za-z0-9_-]``, 1 to 64 characters (``TENANT_ID_PATTERN``). That excludes the token
separator ``.``, the wildcards ``*`` and ``>``, whitespace, control characters and non-ASCII
(look-alike characters would give two spellings of one tenant), so a tenant id can never widen a
subscription or reach another tenant's subjects.

Event types are ``{prefix}.{name}`` (e.g. ``work_order.status_changed``); the prefix maps to the
subject's domain token (``work_order`` -> ``workorder``, the others map to themselves) and the
name is kept as is. The mapping is structural: subjects of types not (yet) registered still
build and parse, so a new type needs no change here unless it brings a new domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUBJECT_ROOT = "wo"
TENANT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*\.[a-z][a-z0-9]*(?:_[a-z0-9]+)*$"
_TENANT_ID_RE = re.compile(TENANT_ID_PATTERN)
_EVENT_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
_EVENT_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

# Event-type prefix -> subject domain token (catalog §1.3).
TYPE_PREFIX_TO_DOMAIN: dict[str, str] = {
    "work_order": "workorder",
    "approval": "approval",
    "compliance": "compliance",
    "agent": "agent",
    "resource": "resource",
    "system": "system",
}
DOMAIN_TO_TYPE_PREFIX: dict[str, str] = {d: p for p, d in TYPE_PREFIX_TO_DOMAIN.items()}
DOMAINS: tuple[str, ...] = tuple(TYPE_PREFIX_TO_DOMAIN.values())

# Subject domain -> Kafka topic the bridge mirrors it to: one topic per domain.
DOMAIN_TOPICS: dict[str, str] = {domain: f"{SUBJECT_ROOT}.{domain}" for domain in DOMAINS}


class SubjectError(ValueError):
    """A subject, tenant id or event type that cannot be used to build or parse a subject."""


@dataclass(frozen=True, slots=True)
class SubjectParts:
    """The parts of a subject; ``event_type`` is the full catalog type."""

    tenant_id: str
    domain: str
    event_type: str

    @property
    def subject(self) -> str:
        return subject_for(self.tenant_id, self.event_type)

    @property
    def topic(self) -> str:
        return DOMAIN_TOPICS[self.domain]


def is_valid_tenant_id(value: object) -> bool:
    """True if ``value`` is usable as a tenant id (see the module docstring for the alphabet)."""
    return isinstance(value, str) and _TENANT_ID_RE.fullmatch(value) is not None


def validate_tenant_id(value: object) -> str:
    """Return ``value`` if it is a valid tenant id, else raise SubjectError (never echoing it)."""
    if not isinstance(value, str) or _TENANT_ID_RE.fullmatch(value) is None:
        raise SubjectError("tenant id must be 1-64 characters of [A-Za-z0-9_-]")
    return value


def is_valid_event_type(value: object) -> bool:
    """True if ``value`` is shaped like a catalog event type and has a known domain prefix."""
    if not isinstance(value, str) or _EVENT_TYPE_RE.fullmatch(value) is None:
        return False
    return value.partition(".")[0] in TYPE_PREFIX_TO_DOMAIN


def domain_for(event_type: str) -> str:
    """Subject domain token of an event type, e.g. ``work_order.created`` -> ``workorder``."""
    if not is_valid_event_type(event_type):
        raise SubjectError(
            "event type must be '{prefix}.{name}' in lower snake case with prefix one of "
            + ", ".join(TYPE_PREFIX_TO_DOMAIN)
        )
    return TYPE_PREFIX_TO_DOMAIN[event_type.partition(".")[0]]


def topic_for(event_type: str) -> str:
    """Kafka topic that carries an event type, e.g. ``approval.requested`` -> ``wo.approval``."""
    return DOMAIN_TOPICS[domain_for(event_type)]


def subject_for(tenant_id: str, event_type: str) -> str:
    """NATS subject, e.g. (tenant_abc, work_order.created) -> wo.tenant_abc.workorder.created."""
    validate_tenant_id(tenant_id)
    domain = domain_for(event_type)
    return f"{SUBJECT_ROOT}.{tenant_id}.{domain}.{event_type.partition('.')[2]}"


def parse_subject(subject: str) -> SubjectParts:
    """Split a concrete (wildcard-free) subject into tenant, domain and full event type."""
    if not isinstance(subject, str):
        raise SubjectError("subject must be a string")
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[0] != SUBJECT_ROOT:
        raise SubjectError("subject must have exactly four tokens: wo.{tenant}.{domain}.{event}")
    _, tenant_id, domain, name = tokens
    validate_tenant_id(tenant_id)
    if domain not in DOMAIN_TO_TYPE_PREFIX:
        raise SubjectError("subject domain must be one of " + ", ".join(DOMAINS))
    if _EVENT_NAME_RE.fullmatch(name) is None:
        raise SubjectError("subject event name must be lower snake case")
    return SubjectParts(tenant_id, domain, f"{DOMAIN_TO_TYPE_PREFIX[domain]}.{name}")
