"""Runtime configuration, read from WO_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
    # The worker's Prometheus metrics carry tenant labels (domain metrics), so they are not on
    # the tenant API's port (any tenant's token holder reaches that one) but on their own,
    # bound to WO_BRIDGE_METRICS_HOST (loopback by default); 0 = not served.
    worker_metrics_port: int = Field(default=9111, ge=0, le=65535)

    app_id: str = "wo-stream"
    # Faust's consumer loop without a task per record (pipeline/agents/consumer.py): 1.25-1.3x
    # worker throughput (bench/README.md). Its one restart-test loss was Faust's restart races,
    # fixed in the same module; set false to get Faust's own loop back.
    faust_fast_drain: bool = True

    # NATS <-> Kafka bridge (connectors/bridge.py, ingress.py, egress.py).
    # Metrics and /healthz; port 0 = no HTTP server. Loopback by default: expose deliberately.
    bridge_metrics_host: str = "127.0.0.1"
    bridge_metrics_port: int = Field(default=9108, ge=0, le=65535)
    # One active ingress per durable: per-key order needs a single reader (see ingress.py).
    ingress_durable: str = "wo-stream-ingress"
    ingress_filter_subject: str = "wo.>"
    ingress_batch_size: int = Field(default=500, ge=1)
    ingress_fetch_timeout_seconds: float = Field(default=1.0, gt=0)
    ingress_ack_wait_seconds: float = Field(default=30.0, gt=0)
    # "auto": idempotent producer when the broker grants a producer id (Tansu does not).
    kafka_idempotence: Literal["auto", "on", "off"] = "auto"
    kafka_request_timeout_ms: int = Field(default=10_000, ge=100)
    kafka_max_batch_bytes: int = Field(default=1_048_576, ge=1024)
    # §1.4: dead letter after 5 failed writes, exponential backoff in between.
    kafka_retry_attempts: int = Field(default=5, ge=1)
    kafka_retry_base_seconds: float = Field(default=1.0, ge=0)
    kafka_retry_max_seconds: float = Field(default=16.0, ge=0)
    nats_publish_timeout_seconds: float = Field(default=5.0, gt=0)
    egress_topic: str = "wo.derived"
    egress_group: str = "wo-stream-egress"
    egress_batch_size: int = Field(default=500, ge=1)
    # A group's first join on Tansu takes half the session timeout.
    egress_session_timeout_ms: int = Field(default=10_000, ge=1000)

    # Audit trail writer (pipeline/audit_writer.py): SQLite in data_dir unless a DSN is given.
    audit_dsn: SecretStr | None = None
    # Ed25519 seed, base64 of 32 raw bytes; unset = a dev key kept in data_dir (warned).
    audit_signing_key: SecretStr | None = None
    audit_group: str = "wo-stream-audit"
    audit_batch_size: int = Field(default=500, ge=1)
    # Incremental integrity check + signed checkpoint of each chain head, this often.
    audit_check_interval_seconds: float = Field(default=60.0, gt=0)
    # Every N-th check round is FULL (from genesis): incremental rounds do not re-read entries
    # below the last verified head, so a deletion there is found by the next FULL round.
    audit_full_check_every: int = Field(default=60, ge=1)
    audit_session_timeout_ms: int = Field(default=10_000, ge=1000)
    audit_metrics_port: int = Field(default=9109, ge=0, le=65535)

    # Webhook dispatcher (pipeline/webhooks.py, docs/webhooks.md). Subscriptions: a JSON/YAML
    # file; the secrets in it are read from env vars it names (never logged).
    webhook_subscriptions: Path | None = None
    webhook_group: str = "wo-stream-webhooks"
    webhook_batch_size: int = Field(default=500, ge=1)
    webhook_session_timeout_ms: int = Field(default=10_000, ge=1000)
    webhook_metrics_port: int = Field(default=9110, ge=0, le=65535)
    # SSRF guard: only global unicast addresses unless these admit more (e.g. on-prem ERP).
    webhook_allow_private_networks: bool = False
    # http:// subscription URLs (bodies are L3/L4 events): refused unless this is set (dev, tests).
    webhook_allow_http: bool = False
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_max_response_bytes: int = Field(default=65_536, ge=0)
    webhook_endpoint_concurrency: int = Field(default=4, ge=1)
    # §8: exponential backoff with jitter, 48 h max, then the dead-letter stream.
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=4 * 3600.0, gt=0)
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    webhook_retry_budget_seconds: float = Field(default=48 * 3600.0, ge=0)
    # Finished deliveries are remembered this long, so a re-read event is not sent again.
    webhook_retention_days: float = Field(default=8.0, gt=0)
    # How often the dispatcher looks for deliveries changed outside it (``webhooks requeue``).
    webhook_rescan_seconds: float = Field(default=5.0, gt=0)

    @property
    def tansu(self) -> bool:
        """Whether Kafka is the embedded Tansu broker (``kafka_transport``, "auto": no
        ``kafka_bootstrap`` given), whose ListOffsets answer needs the Tansu-aware clients."""
        if self.kafka_transport == "auto":
            return self.kafka_bootstrap is None
        return self.kafka_transport == "tansu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def redact_url(url: str | None) -> str:
    """``url`` (or a comma-separated list of them) without user info, for logs and banners.

    nats-py takes ``nats://user:password@host`` and ``nats://token@host``; printing the URL as
    configured would put the credential into every log line and banner that names the server.
    """
    if not url:
        return str(url)
    parts = []
    for part in (p.strip() for p in url.split(",")):
        netloc = urlsplit(part).netloc if "://" in part else part
        if "@" in netloc:
            part = part.replace(netloc, "***@" + netloc.rsplit("@", 1)[1], 1)
        parts.append(part)
    return ",".join(parts)
