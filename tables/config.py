"""Per-tenant settings of the reducers: thresholds, horizons and window layout (pure data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

from tables.dedup import DEDUP_HORIZON
from tables.windows import WindowSpec, shard_spec

_30_DAYS = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """Settings of one tenant; the defaults are the issue's.

    duration_overrun_percent: DURATION_OVERRUN when variancePercent exceeds this (strictly).
    certification_thresholds_days: days before expiry at which certification_expiring fires,
        once each (0 = on the expiry instant).
    certification_horizon: a person's open work order is affected by an expiring certification
        when it is scheduled to end after ``expiry - horizon`` (0 = only after the expiry).
    dedup_horizon: how long applied ids are remembered (catalog §1.4 retention).
    schedule_grace: how long a completion waits for its work order's schedule (created may
        arrive after completed) before it is evaluated without one.
    close_grace: how long after ``work_order.closed`` (event time) its complianceSummary is
        checked, so events stamped before the close but delivered after it (other topics)
        are counted.
    sla_windows / compliance_windows: tumbling windows of the per-tenant aggregates; the
        largest one shards the table (``tables.windows``), the others must divide it.
    """

    duration_overrun_percent: float = 20.0
    certification_thresholds_days: tuple[int, ...] = (30, 14, 7, 1, 0)
    certification_horizon: timedelta = timedelta(days=7)
    dedup_horizon: timedelta = DEDUP_HORIZON
    schedule_grace: timedelta = timedelta(hours=1)
    close_grace: timedelta = timedelta(hours=1)
    sla_windows: tuple[WindowSpec, ...] = (
        WindowSpec("1h", timedelta(hours=1), _30_DAYS),
        WindowSpec("1d", timedelta(days=1), _30_DAYS),
    )
    compliance_windows: tuple[WindowSpec, ...] = (WindowSpec("1d", timedelta(days=1), _30_DAYS),)

    def __post_init__(self) -> None:
        days = self.certification_thresholds_days
        if not days or any(d < 0 for d in days) or len(set(days)) != len(days):
            raise ValueError("certification thresholds must be distinct non-negative day counts")
        # Descending order is what "next threshold" walks.
        object.__setattr__(self, "certification_thresholds_days", tuple(sorted(days, reverse=True)))
        if self.dedup_horizon <= timedelta(0) or self.certification_horizon < timedelta(0):
            raise ValueError("horizons must not be negative")
        for windows in (self.sla_windows, self.compliance_windows):
            if not windows or len({w.name for w in windows}) != len(windows):
                raise ValueError("window names must be unique")
            shard_spec(windows)


DEFAULT_CONFIG = TenantConfig()


@dataclass(frozen=True, slots=True)
class Config:
    """Settings of all tenants: a default plus per-tenant overrides."""

    default: TenantConfig = DEFAULT_CONFIG
    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    def for_tenant(self, tenant: str) -> TenantConfig:
        return self.tenants.get(tenant, self.default)
