"""Table definitions and the pure state logic: (state, event, now) -> (state, derived events).

Nothing here imports Faust, Kafka or NATS: every reducer is a pure function, testable without a
broker, and the Faust layer (``pipeline/``) only stores states, routes items and sends output.

Shape (uniform, see ``tables.base`` and ``tables.stages.STAGES``)::

    apply(state | None, item, now, *, key, config) -> Result[State]
    tick(state, now, *, config) -> Result[State]            # timer families only
    Result(state, derived, forwards, duplicate, late, expired)

``item`` is a ``DomainEvent`` or a ``Fact`` forwarded by another stage. ``key`` is the table
key; every key starts with the tenant (``{tenant}:{entity}``, ``{tenant}:{day}`` for window
shards, or ``{tenant}``) and a reducer refuses (``TenantMismatchError``) an item or state of
another tenant. ``now`` is the injected clock (timers, window retention, dedup memory); windows
run on event time. ``derived`` are full envelopes for ``wo.derived`` (source wo-stream, actor
SYSTEM, causationId/correlationId from the cause, deterministic UUIDv7 ids, ``tables.derive``);
``forwards`` are facts to re-key into another table (a repartition). States are pydantic models
with ``to_dict``/``from_dict`` (plain JSON). Each state remembers the ids it applied for 7 days
after applying them (``tables.dedup``), so a redelivered item is dropped
(``Result.duplicate``) and memory stays bounded.

How the families connect (topics are the bridge's ``wo.{domain}`` mirrors plus ``wo.derived``)::

    work_order.* ──► wo_children {t}:{wo} ──ChildFact──► wo_masters {t}:{master}
                                                          └─► master_progress_updated
    work_order.* ──► wo_sla {t}:{wo} ──► sla_breached (LATE_COMPLETION, DURATION_OVERRUN,
                         │  tick ──► OVERDUE_OPEN)
                         └─SlaOutcome──► sla_windows {t}:{day}  (1 h / 1 d, 30 d)
    resource.assigned,
    work_order.* ──► wo_assignees {t}:{wo} ──AssignmentFact──► person_certs {t}:{person}
    resource.certification_recorded ─────────────────────────► person_certs
                                         ├─► violation_detected (+ capa) on assignment
                                         └─ tick ──► certification_expiring (30/14/7/1/0 d)
    work_order.*, approval.decision_submitted,
    compliance.*, tool_calibration_due (fan-out to
    each affected order) ──► wo_policy {t}:{wo} ──► violation_detected (+ capa_assessment_required)
    compliance.*, approval.escalated (+ wo.derived) ──► compliance_windows {t}:{day}  (1 d, 30 d)
    every event naming a work order (+ wo.derived) ──► wo_compliance {t}:{wo}
                                         └─ on work_order.closed ──► violation_detected (+ capa)

Modules: ``master_progress``, ``sla``, ``certifications``, ``policy`` (the rules),
``compliance`` (aggregates + summary); shared: ``base``, ``derive``, ``dedup``, ``windows``,
``lifecycle``, ``config`` (per-tenant settings), ``stages`` (descriptors for the Faust layer).
No rule derives from an event of source wo-stream, so derived events never feed back.
"""
