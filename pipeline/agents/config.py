"""Worker settings beyond ``pipeline.settings`` (WO_* environment): clock, timers, sensors."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.timers import ClockMode
from pipeline.topics import CONTROL_CLOCK


class WorkerSettings(BaseSettings):
    """``WO_CLOCK``, ``WO_TIMER_INTERVAL_SECONDS``, ``WO_CONTROL_TOPIC``, ``WO_FAUST_SENSORS``,
    ``WO_SEND_RETRY_MAX_SECONDS``, ``WO_BATCH_MAX``, ``WO_COPY_PER_UPDATE``,
    ``WO_TABLE_SIZE_INTERVAL_SECONDS``."""

    model_config = SettingsConfigDict(env_prefix="WO_", env_file=None, extra="ignore")

    # "wall" in production; "control": now = the ticks on the control topic (pipeline.timers).
    clock: ClockMode = "wall"
    # Wall clock only: how often the group leader sends ticks (timer resolution).
    timer_interval_seconds: float = Field(default=30.0, gt=0)
    control_topic: str = CONTROL_CLOCK
    # Faust's own Prometheus sensor (consumer, producer, table and rebalance metrics).
    faust_sensors: bool = True
    # Wait between retries of a send the broker refused (the step is retried until it succeeds).
    send_retry_max_seconds: float = Field(default=10.0, gt=0)
    # Records per processing batch at most (pipeline.agents.runner); a batch never waits for
    # more records, so this only caps latency and memory under backlog.
    batch_max: int = Field(default=500, ge=1)
    # Copy a table state on every update instead of once per batch and key (tables.base,
    # batch_ownership): slower; for comparisons and as a fallback.
    copy_per_update: bool = False
    # How often wo_table_keys{table} is refreshed (a full key scan of the local tables).
    table_size_interval_seconds: float = Field(default=60.0, gt=0)
