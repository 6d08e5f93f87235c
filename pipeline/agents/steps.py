"""What one record does to the tables, computed before anything is written (no Faust here).

A :class:`Step` is the complete effect of one input record on the partition that received it:
the table values to write (or delete), the derived events for ``wo.derived``, the facts to
forward and the events to re-key through the repartition topic, and the signals for the
metrics. The Faust layer (:mod:`pipeline.agents.runner`) sends a step's records, waits for
their acks, and only then writes its table values, so a crash never leaves a table ahead of
output it did not send (see the runner's docstring).

Routing rule: an item is applied to a table key here only if the key belongs to the record's
partition (``partition_of(key) == partition``); otherwise it is re-keyed through the
repartition topic to the partition that owns the key. Input topics are keyed by entity, so most
items are applied where they arrive; approvals (keyed by approvalId), window shards (keyed by
tenant and day), calibration fan-outs and the forwarded facts are the ones that move.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from events.envelope import DomainEvent
from events.ids import unix_ms
from pipeline.topics import partition_of
from tables.base import (
    Fact,
    Forward,
    Result,
    TableState,
    disown,
    is_own,
    owned_by_batch,
    split_key,
)
from tables.config import Config, TenantConfig
from tables.stages import BY_NAME, STAGES, Stage

log = logging.getLogger(__name__)

Reader = Callable[[str, str], dict[str, Any] | None]
"""``read(table, key)``: the stored value (``to_dict`` form) or None."""
Decoder = Callable[[Stage, str, dict[str, Any]], TableState]
"""``decode(stage, key, raw)``: the state model of a value ``read`` returned."""


def refusal_detail(exc: BaseException) -> str:
    """What a reducer's error says, for a dead letter: field paths and rules, no input values.

    A pydantic error's text quotes the invalid input, so only its locations and error types
    are kept; the reducers' own errors name keys, tenants and rules (never payload values).
    """
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        return f"{type(exc).__name__}: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in errors
        )
    return f"{type(exc).__name__}: {exc}"


def from_dict(stage: Stage, key: str, raw: dict[str, Any]) -> TableState:
    return stage.state.from_dict(raw)


@dataclass(slots=True)
class Write:
    """Store ``value`` under ``key`` of ``stage`` (None: delete the key)."""

    stage: str
    key: str
    value: dict[str, Any] | None
    deadline_ms: int | None = None  # next timer deadline of the new value (timer tables)
    state: TableState | None = None  # the model ``value`` was dumped from (decode cache)


@dataclass(slots=True)
class Step:
    """The effect of one record on its partition (see the module docstring)."""

    partition: int
    writes: list[Write] = field(default_factory=list)
    derived: list[DomainEvent] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    reroutes: dict[str, list[str]] = field(default_factory=dict)  # key -> tables
    # (signal, table) -> count; a defaultdict, not a Counter: one Step per record, and
    # Counter() costs a Python-level update() call per construction
    signals: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    # (table, reason, detail) of each table that refused the record: it goes to dead letters
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.writes or self.derived or self.forwards or self.reroutes)


class Planner:
    """Applies the reducers of ``tables.stages`` for one partition's records."""

    def __init__(
        self,
        read: Reader,
        *,
        partitions: int,
        config: Config | None = None,
        stages: Iterable[Stage] = STAGES,
        decode: Decoder = from_dict,
        forget: Callable[[str, str], None] = lambda table, key: None,
    ) -> None:
        self.read = read
        self.decode = decode
        self.forget = forget  # drop the decoded state of (table, key) kept for this batch
        self.partitions = partitions
        self.config = config or Config()
        self.stages = tuple(stages)
        self.routed = tuple(s for s in self.stages if s.route is not None)
        self.routed_derived = tuple(s for s in self.routed if s.derived_inputs)
        self.timed = tuple(s for s in self.stages if s.tick is not None)
        self.windowed = tuple(s for s in self.stages if s.expired is not None)

    # -- inputs ------------------------------------------------------------------------------

    def event(
        self, event: DomainEvent, partition: int, now: datetime, *, derived_source: bool = False
    ) -> Step:
        """An input event (domain topic, or ``wo.derived`` for the counting tables only).

        An event wo-stream derived itself goes only to the counting tables wherever it comes
        from: the bridge mirrors ``wo.derived`` back onto the domain topics, and no other table
        uses our own events (no rule derives from them), so they would only fill dedup memory.
        """
        step = Step(partition)
        config = self.config.for_tenant(event.tenantId)
        for stage in self.routed_derived if derived_source or is_own(event) else self.routed:
            for key in stage.route(event, config):  # type: ignore[misc]
                if self._owns(key, partition):
                    self._apply(step, stage, key, event, now, config)
                else:
                    step.reroutes.setdefault(key, []).append(stage.name)
        return step

    def rerouted(
        self, event: DomainEvent, stages: Iterable[str], key: str, partition: int, now: datetime
    ) -> Step:
        """An event re-keyed to ``key`` for ``stages`` (from the repartition topic)."""
        step = Step(partition)
        config = self.config.for_tenant(event.tenantId)
        for name in stages:
            self._apply_here(step, BY_NAME[name], key, event, now, config)
        return step

    def fact(self, stage: str, key: str, fact: Fact, partition: int, now: datetime) -> Step:
        """A fact forwarded by another table (from the repartition topic)."""
        step = Step(partition)
        self._apply_here(step, BY_NAME[stage], key, fact, now, self.config.for_tenant(fact.tenant))
        return step

    def timers(
        self,
        partition: int,
        now: datetime,
        due: Iterable[tuple[str, str]],
        shards: Iterable[tuple[str, str]] = (),
    ) -> Step:
        """Run the timer reducer of due keys and delete window shards beyond retention."""
        step = Step(partition)
        for name, key in due:
            stage = BY_NAME[name]
            raw = self.read(name, key)
            if raw is None or stage.tick is None:
                continue
            try:
                state = self.decode(stage, key, raw)
                config = self.config.for_tenant(state.tenant)
                result = stage.tick(state, now, config=config)
                self._record(step, stage, key, state, raw, result, config)
            except Exception:  # a bad stored value must not stop every other timer
                log.exception("timer of %s[%s] failed; key skipped", name, key)
                step.signals["error", name] += 1
                continue
            step.signals["timer", name] += 1
        for name, key in shards:
            stage = BY_NAME[name]
            tenant, _ = split_key(key)
            if stage.expired is not None and stage.expired(
                key, now, self.config.for_tenant(tenant)
            ):
                step.writes.append(Write(name, key, None))
                step.signals["deleted", name] += 1
        return step

    def deadline_ms(self, stage: str, value: dict[str, Any]) -> int | None:
        """Next timer deadline of a stored value (for rebuilding the timer index)."""
        s = BY_NAME[stage]
        if s.next_deadline is None:
            return None
        state = s.state.from_dict(value)
        when = s.next_deadline(state, self.config.for_tenant(state.tenant))
        return None if when is None else unix_ms(when)

    # -- internals ---------------------------------------------------------------------------

    def _owns(self, key: str, partition: int) -> bool:
        return partition_of(key, self.partitions) == partition

    def _apply_here(
        self,
        step: Step,
        stage: Stage,
        key: str,
        item: DomainEvent | Fact,
        now: datetime,
        config: TenantConfig,
    ) -> None:
        if not self._owns(key, partition=step.partition):
            # Only a producer that ignores partition_of can cause this: applying it here would
            # put the key's state into another partition's changelog.
            owner = partition_of(key, self.partitions)
            log.error(
                "%s[%s] arrived in partition %d; not applied", stage.name, key, step.partition
            )
            step.signals["error", stage.name] += 1
            detail = f"key of partition {owner} arrived in partition {step.partition}"
            step.refused.append((stage.name, "misrouted", detail))
            return
        self._apply(step, stage, key, item, now, config)

    def _apply(
        self,
        step: Step,
        stage: Stage,
        key: str,
        item: DomainEvent | Fact,
        now: datetime,
        config: TenantConfig,
    ) -> None:
        raw = self.read(stage.name, key)
        state: TableState | None = None
        try:
            state = None if raw is None else self.decode(stage, key, raw)
            owned = state is not None and owned_by_batch(state)
            result = stage.apply(state, item, now, key=key, config=config)
            # here too: the next deadline of an extreme (valid) timestamp can overflow
            self._record(step, stage, key, state, raw, result, config, updated_in_place=owned)
        except Exception as exc:  # tenant mismatch, unreadable state: refuse this item, say so
            log.exception("%s[%s] refused item %s; skipped", stage.name, key, item.id)
            step.signals["error", stage.name] += 1
            step.refused.append((stage.name, "refused", refusal_detail(exc)))
            if state is not None and owned_by_batch(state):
                # it may have been changed halfway: decode the last good value again
                disown(state)
                self.forget(stage.name, key)
            return

    def _record(
        self,
        step: Step,
        stage: Stage,
        key: str,
        state: TableState | None,
        raw: dict[str, Any] | None,
        result: Result[Any],
        config: TenantConfig,
        *,
        updated_in_place: bool = False,
    ) -> None:
        if result.duplicate:
            step.signals["duplicate", stage.name] += 1
            # Faust writes RocksDB before the changelog send is acked: after a kill -9 the local
            # value can be ahead of the changelog. Writing it back on a redelivered duplicate
            # lets the changelog catch up before the partition moves or the disk is lost.
            if raw is not None:
                step.writes.append(
                    Write(stage.name, key, raw, self._deadline(stage, state, config), state)
                )
            return
        if result.late:
            step.signals["late", stage.name] += 1
        if result.expired:
            step.signals["expired", stage.name] += result.expired
        if result.state is not state or updated_in_place:
            deadline = self._deadline(stage, result.state, config)
            step.writes.append(
                Write(stage.name, key, result.state.to_dict(), deadline, result.state)
            )
        step.derived.extend(result.derived)
        step.forwards.extend(result.forwards)

    @staticmethod
    def _deadline(stage: Stage, state: TableState | None, config: TenantConfig) -> int | None:
        if stage.next_deadline is None or state is None:
            return None
        when = stage.next_deadline(state, config)
        return None if when is None else unix_ms(when)
