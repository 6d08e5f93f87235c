"""Shared pytest fixtures: one real embedded stack (NATS JetStream + Tansu) per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.embedded import EmbeddedStack, run_sync
from connectors.jetstream import connect_nats, ensure_streams
from pipeline.settings import Settings


def _settings_for(stack: EmbeddedStack) -> Settings:
    # Explicit kwargs win over WO_* env, so every test sees the servers actually in use.
    return Settings(
        nats_url=stack.nats_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        data_dir=stack.data_dir,
        # Our own Tansu needs the ListOffsets-fixing transport; an external broker is Kafka.
        kafka_transport="tansu" if stack.manages_kafka else "kafka",
    )


async def _provision(settings: Settings) -> None:
    assert settings.nats_url
    nc, js = await connect_nats(settings.nats_url, max_reconnect_attempts=1)
    try:
        await ensure_streams(js, settings)
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """Started once per session, streams provisioned; WO_NATS_URL / WO_KAFKA_BOOTSTRAP reuse
    external servers instead. Never restart it from a test: use a private EmbeddedStack."""
    with EmbeddedStack(tmp_path_factory.mktemp("stack")) as stack:
        # run_sync uses its own thread and loop, leaving pytest-asyncio's session loop alone.
        run_sync(_provision(_settings_for(stack)))
        yield stack


@pytest.fixture(scope="session")
def stack_settings(embedded_stack: EmbeddedStack) -> Settings:
    """Settings pointing at the session stack's servers and data dir."""
    return _settings_for(embedded_stack)


@pytest.fixture(scope="session")
def nats_url(embedded_stack: EmbeddedStack) -> str:
    return embedded_stack.nats_url


@pytest.fixture(scope="session")
def kafka_bootstrap(embedded_stack: EmbeddedStack) -> str:
    return embedded_stack.kafka_bootstrap


@pytest.fixture
def private_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedStack]:
    """A throwaway stack that always runs its own servers, for tests that stop or crash them."""
    monkeypatch.delenv("WO_NATS_URL", raising=False)
    monkeypatch.delenv("WO_KAFKA_BOOTSTRAP", raising=False)
    with EmbeddedStack(tmp_path / "private") as stack:
        yield stack
