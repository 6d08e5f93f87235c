"""Runtime configuration, read from WO_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of wo-stream; secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(env_prefix="WO_", env_file=None, extra="ignore")

    # Given servers; when unset, the embedded stack starts its own.
    nats_url: str | None = None
    kafka_bootstrap: str | None = None
    # Faust transport: "tansu" works around the embedded Tansu broker's ListOffsets bug
    # (connectors/tansu_transport.py); "auto" = tansu when kafka_bootstrap is unset (embedded).
    kafka_transport: Literal["auto", "kafka", "tansu"] = "auto"

    data_dir: Path = Field(default=Path("data"))
    stream_name: str = "WO_EVENTS"
    dlq_stream_name: str = "WO_DLQ"
    stream_max_age_days: int = 7
    duplicate_window_seconds: int = 120
    # Dead letters outlive the 7-day event stream so operators can triage after a week off.
    dlq_max_age_days: int = 30
    # 1 for the embedded/standalone server; a clustered deployment sets 3.
    stream_replicas: int = 1

    max_payload_bytes: int = 1024 * 1024
    partitions: int = 8

    web_port: int = 6066
    web_tokens: SecretStr | None = None

    app_id: str = "wo-stream"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
