"""Seeded traffic generator: (seed, config) -> a reproducible stream of domain events; no I/O."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from events.envelope import DomainEvent
from events.factory import make_event
from pipeline.simulate import background, workorders
from pipeline.simulate.world import (
    Ctx,
    Emit,
    Sleep,
    Spawn,
    Story,
    Tenant,
    WaitFor,
    iso,
    make_tenant,
    tenant_ids,
    to_ms,
)

DEFAULT_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
# A work order emits about 1.5 events per simulated hour, so a tenant needs this many
# simulated "story hours" per hour to fill its share of the traffic without noise.
STORY_HOURS = 4000.0
# Odds of each kind of step: advance a ready story, start a new one, background noise.
STORY_WEIGHT = 10.0
NEW_WEIGHT = 2.0
NOISE_WEIGHT = 0.6


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; equal configs produce byte-identical streams."""

    seed: int = 0
    tenants: int = 3
    events: int | None = 1000  # None = endless
    start: datetime = DEFAULT_START
    # Mean simulated seconds between consecutive events (exponential gaps, >= 1 ms).
    mean_gap_seconds: float = 60.0
    # Bound on a tenant's parallel stories (a master's children may exceed it); by default
    # sized so that work orders, not background noise, make up most of the traffic.
    max_active_stories: int | None = None

    def __post_init__(self) -> None:
        if self.tenants < 1:
            raise ValueError("tenants must be >= 1")
        if self.events is not None and self.events < 0:
            raise ValueError("events must be >= 0 (or None for endless)")
        if not self.mean_gap_seconds > 0:
            raise ValueError("mean_gap_seconds must be > 0")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.max_active_stories is not None and self.max_active_stories < 1:
            raise ValueError("max_active_stories must be >= 1")


@dataclass(frozen=True)
class SimEvent:
    """One generated event before it becomes a DomainEvent: the envelope's inputs."""

    tenant_id: str
    type: str
    data: dict
    actor: dict
    source: str
    timestamp: str
    event_id: str
    correlation_id: str
    causation_id: str
    regulatory: bool | None


@dataclass
class _Running:
    """A story in a tenant's pool, with its trace ids and what it waits for."""

    story: Story
    correlation_id: str
    last_event_id: str
    to_send: str | None = None
    wait: Sleep | WaitFor | None = None

    def ready(self, now_ms: int) -> bool:
        if self.wait is None:
            return True
        if isinstance(self.wait, Sleep):
            return now_ms >= self.wait.until_ms
        return self.wait.ready()


def simulated_tenant_ids(seed: int, tenants: int) -> list[str]:
    """The tenant ids a simulation with this seed uses (its RNG's first draw)."""
    return tenant_ids(random.Random(_rng_seed(seed)), tenants)


def _rng_seed(seed: int) -> str:
    # Seeding with a string is stable across Python versions (sha512 of the text).
    return f"wo-stream-simulate/{seed}"


class _Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(_rng_seed(config.seed))
        self.ctx = Ctx(self.rng, to_ms(config.start))
        self.tenants = [make_tenant(self.rng, t) for t in tenant_ids(self.rng, config.tenants)]
        self.pools: dict[str, list[_Running]] = {t.id: [] for t in self.tenants}
        self.mean_gap_ms = config.mean_gap_seconds * 1000
        self.max_active = config.max_active_stories or min(
            5000, max(8, math.ceil(STORY_HOURS / (config.mean_gap_seconds * config.tenants)))
        )

    def run(self) -> Iterator[SimEvent]:
        emitted = 0
        limit = self.config.events
        # The first tick is the start time itself; later ones add exponential gaps.
        gap = 0
        while limit is None or emitted < limit:
            self.ctx.now_ms += gap
            tenant = self.rng.choice(self.tenants)
            yield self._next_event(tenant)
            emitted += 1
            gap = max(1, round(self.rng.expovariate(1.0 / self.mean_gap_ms)))

    def _next_event(self, tenant: Tenant) -> SimEvent:
        ctx = self.ctx
        if not tenant.provisioned:
            # A tenant's first event is always its provisioning.
            trace = ctx.new_id()
            return self._event(tenant, background.tenant_provisioned(ctx, tenant), trace, trace)
        pool = self.pools[tenant.id]
        # Each pass either emits or changes the pool (a story waits, spawns or ends), and
        # noise always emits, so this terminates.
        while True:
            ready = [r for r in pool if r.ready(ctx.now_ms)]
            room = len(pool) < self.max_active
            weights = (STORY_WEIGHT if ready else 0.0, NEW_WEIGHT if room else 0.0, NOISE_WEIGHT)
            action = self.rng.choices(("story", "new", "noise"), weights)[0]
            if action == "noise":
                trace = ctx.new_id()
                return self._event(tenant, background.noise(ctx, tenant), trace, trace)
            if action == "new":
                trace = ctx.new_id()
                story = (
                    workorders.master_story(ctx, tenant)
                    if self.rng.random() < 0.2
                    else workorders.work_order_story(ctx, tenant)
                )
                running = _Running(story, trace, trace)
                pool.append(running)
            else:
                running = self.rng.choice(ready)
            event = self._advance(tenant, running)
            if event is not None:
                return event

    def _advance(self, tenant: Tenant, running: _Running) -> SimEvent | None:
        """Step a story until it emits (returns the event) or waits/ends (returns None)."""
        pool = self.pools[tenant.id]
        running.wait = None
        while True:
            try:
                step = running.story.send(running.to_send)
            except StopIteration:
                pool.remove(running)
                return None
            running.to_send = None
            if isinstance(step, Emit):
                event = self._event(tenant, step, running.correlation_id, running.last_event_id)
                running.last_event_id = running.to_send = event.event_id
                return event
            if isinstance(step, Spawn):
                pool.append(_Running(step.story, running.correlation_id, step.cause_id))
                continue
            running.wait = step
            if not running.ready(self.ctx.now_ms):
                return None

    def _event(
        self, tenant: Tenant, emit: Emit, correlation_id: str, causation_id: str
    ) -> SimEvent:
        tenant.audit_entries += 1
        return SimEvent(
            tenant_id=tenant.id,
            type=emit.type,
            data=emit.data,
            actor=emit.actor.as_dict(),
            source=str(emit.source),
            timestamp=iso(self.ctx.now_ms),
            # Strictly increasing simulated ms per event makes the UUIDv7 ids time-ordered.
            event_id=self.ctx.new_id(),
            correlation_id=correlation_id,
            causation_id=causation_id,
            regulatory=emit.regulatory,
        )


def generate_raw(config: SimConfig) -> Iterator[SimEvent]:
    """The simulation's envelope inputs, in publish order."""
    return _Simulation(config).run()


def generate(config: SimConfig) -> Iterator[DomainEvent]:
    """The simulation as validated DomainEvents, in publish order."""
    for sim in generate_raw(config):
        yield make_event(
            sim.type,
            sim.data,
            tenant_id=sim.tenant_id,
            actor=sim.actor,
            source=sim.source,
            timestamp=sim.timestamp,
            correlation_id=sim.correlation_id,
            causation_id=sim.causation_id,
            event_id=sim.event_id,
            regulatory=sim.regulatory,
        )
