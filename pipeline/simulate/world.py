"""The simulated world: tenants, their staff, assets, tools and work orders; the step context."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events.enums import ActorType, ApprovalRole, EventSource, Priority, WorkOrderStatus
from events.enums import WorkOrderType as WOType
from pipeline.simulate.ids import seeded_uuid7

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 24 * HOUR_MS

# Statuses nothing returns from.
TERMINAL = frozenset({WorkOrderStatus.COMPLETED, WorkOrderStatus.CLOSED, WorkOrderStatus.CANCELLED})

TENANT_WORDS = (
    "acme_bio", "helix_pharma", "nordic_vax", "orion_labs", "cobalt_med", "sierra_gen",
    "atlas_cell", "verdant_rx", "lumen_dx", "pioneer_bio", "quanta_pharma", "redwood_med",
)  # fmt: skip
REGIONS = ("us-east-1", "us-west-2", "eu-central-1", "eu-west-1", "ap-southeast-2")
FRAMEWORKS = ("FDA_21_CFR_11", "HIPAA", "SOC2", "GDPR", "EU_GMP_ANNEX_11", "ISO_13485")
ASSET_KINDS = (
    ("Bioreactor", "BR"), ("Lyophilizer", "LY"), ("HPLC", "HP"), ("Autoclave", "AC"),
    ("Filling line", "FL"), ("Cleanroom", "CR"), ("Chromatography skid", "CS"),
    ("Water-for-injection loop", "WFI"), ("Stability chamber", "SC"), ("Tablet press", "TP"),
)  # fmt: skip
# Role of each kind of person: (RBAC role printed in actor.role, approval role if an approver).
STAFF: tuple[tuple[str, int, ApprovalRole | None], ...] = (
    ("planner", 2, None),
    ("technician", 5, None),
    ("supervisor", 2, ApprovalRole.SUPERVISOR),
    ("qa_approver", 2, ApprovalRole.QUALITY_ASSURANCE),
    ("validation_lead", 1, ApprovalRole.VALIDATION),
    ("technical_reviewer", 1, ApprovalRole.TECHNICAL_REVIEWER),
    ("tenant_admin", 1, None),
)
AGENT_NODES = (
    "wo-planner", "compliance-checker", "schedule-optimizer", "doc-writer", "risk-assessor",
)  # fmt: skip


@dataclass(frozen=True)
class Actor:
    """Who did it (catalog §1.2 actor)."""

    id: str
    type: ActorType
    role: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "type": str(self.type), "role": self.role}


SCHEDULER = Actor("wo-scheduler", ActorType.SYSTEM, "scheduler")
COMPLIANCE_ENGINE = Actor("wo-compliance-engine", ActorType.SYSTEM, "compliance_engine")
ORCHESTRATOR = Actor("agent-orchestrator", ActorType.SYSTEM, "orchestrator")
BACKUP_SERVICE = Actor("backup-service", ActorType.SYSTEM, "operations")
PLATFORM_OPS = Actor("usr-platform-ops-01", ActorType.HUMAN, "platform_admin")


@dataclass(frozen=True)
class Emit:
    """A story's request to publish one event now."""

    type: str
    data: dict[str, Any]
    actor: Actor
    source: EventSource
    regulatory: bool | None = None


@dataclass(frozen=True)
class Sleep:
    """Resume the story no earlier than this simulated time."""

    until_ms: int


@dataclass(frozen=True)
class WaitFor:
    """Resume the story once the predicate holds (another story's progress)."""

    ready: Callable[[], bool]


@dataclass(frozen=True)
class Spawn:
    """Start another story in the same tenant (a master's children), caused by `cause_id`."""

    story: Story
    cause_id: str


Step = Emit | Sleep | WaitFor | Spawn
# A story is a generator of steps; after an Emit it is sent the published event's id.
Story = Generator[Step, str | None, None]


@dataclass
class WorkOrder:
    """What the simulator remembers about one work order (its own view, not an event)."""

    id: str
    type: WOType
    regulatory: bool
    priority: Priority
    created_ms: int
    estimated_hours: float
    scheduled_start_ms: int
    scheduled_end_ms: int
    master_id: str | None = None
    depends_on: list[WorkOrder] = field(default_factory=list)
    children: list[WorkOrder] = field(default_factory=list)
    status: WorkOrderStatus = WorkOrderStatus.DRAFT
    announced: bool = False  # its work_order.created is out
    completed_announced: bool = False
    version: int = 1
    started_ms: int | None = None
    assignee: str | None = None
    audit_entries: int = 0
    signatures: int = 0
    deviations: int = 0
    serious_deviation: bool = False
    approvals: int = 0

    @property
    def done(self) -> bool:
        """Dependants may start: the work_order.completed event is out."""
        return self.completed_announced

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Certification:
    """A person's training record; recorded again with a later expiry when renewed."""

    person_id: str
    name: str
    expires_ms: int


@dataclass
class Tenant:
    """One tenant: its staff, assets, tools and live work orders."""

    id: str
    staff: dict[str, list[Actor]]
    assets: list[tuple[str, str]]
    tools: list[str]
    frameworks: list[str]
    region: str
    provisioned: bool = False
    work_orders: dict[str, WorkOrder] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    breakers: dict[str, tuple[str, int]] = field(default_factory=dict)
    # experienceId -> certification held by a technician (resource.certification_recorded).
    certifications: dict[str, Certification] = field(default_factory=dict)
    audit_entries: int = 0

    def people(self, role: str) -> list[Actor]:
        return self.staff[role]

    def approvers(self, role: ApprovalRole) -> list[Actor]:
        for name, _count, approval_role in STAFF:
            if approval_role == role:
                return self.staff[name]
        raise KeyError(role)

    def active(self) -> list[WorkOrder]:
        return [wo for wo in self.work_orders.values() if wo.announced and not wo.terminal]


def tenant_ids(rng: random.Random, count: int) -> list[str]:
    """Distinct, subject-safe tenant ids: the named ones first, then numbered ones."""
    words = rng.sample(TENANT_WORDS, min(count, len(TENANT_WORDS)))
    ids = [f"tenant_{w}" for w in words]
    ids += [f"tenant_{rng.choice(TENANT_WORDS)}_{n:03d}" for n in range(len(ids), count)]
    return ids


def make_tenant(rng: random.Random, tenant_id: str) -> Tenant:
    """A tenant with a deterministic staff, asset and tool list."""
    word = tenant_id.removeprefix("tenant_")
    short = word.split("_")[0][:5]
    staff = {
        role: [
            Actor(f"usr-{short}-{role}-{n:02d}", ActorType.HUMAN, role) for n in range(1, count + 1)
        ]
        for role, count, _ in STAFF
    }
    assets = []
    for n in range(12):
        kind, code = rng.choice(ASSET_KINDS)
        number = rng.randint(100, 899)
        assets.append((f"AST-{code}-{number}-{n:02d}", f"{kind} {code}-{number}"))
    tools = [f"TOOL-{rng.choice(('TW', 'PG', 'TC', 'BAL', 'PIP'))}-{n:04d}" for n in range(8)]
    frameworks = sorted(rng.sample(FRAMEWORKS, rng.randint(2, 4)))
    if "FDA_21_CFR_11" not in frameworks:
        frameworks = sorted([*frameworks, "FDA_21_CFR_11"])  # every tenant here is GxP
    return Tenant(tenant_id, staff, assets, tools, frameworks, rng.choice(REGIONS))


class Ctx:
    """Shared state of one simulation: the seeded RNG and the simulated clock."""

    def __init__(self, rng: random.Random, now_ms: int) -> None:
        self.rng = rng
        self.now_ms = now_ms

    def new_id(self, at_ms: int | None = None) -> str:
        """A seeded UUIDv7 stamped with simulated time."""
        return seeded_uuid7(self.now_ms if at_ms is None else at_ms, self.rng)

    def after(self, min_hours: float, max_hours: float) -> int:
        """A simulated time between min and max hours from now (minute resolution)."""
        minutes = self.rng.randint(round(min_hours * 60), round(max_hours * 60))
        return self.now_ms + minutes * MINUTE_MS

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


def iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds and Z, e.g. 2026-03-02T08:00:00.000Z."""
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def to_ms(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("start time must be timezone-aware")
    return int(at.timestamp() * 1000)


def quarter_hour(ms: int) -> int:
    """Round up to the next quarter hour: planners schedule on the quarter."""
    step = 15 * MINUTE_MS
    return -(-ms // step) * step
