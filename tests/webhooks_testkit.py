"""Helpers of the webhook tests: a real aiohttp receiver on 127.0.0.1, a fake clock, a DLQ sink."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from connectors.dead_letter import DeadLetter
from connectors.webhook_http import WebhookSender
from connectors.webhook_store import AsyncWebhookStore, WebhookStore
from events.envelope import DomainEvent
from events.keys import record_key
from events.subjects import topic_for
from pipeline.settings import Settings
from pipeline.webhooks import Dispatcher, WebhookMetrics, address_policy, http_limits, store_path
from tables.webhooks import Subscription

SECRET = b"whsec_test_0123456789abcdef"


async def wait_for(cond: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` every 10 ms until true; TimeoutError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {within}s")
        await asyncio.sleep(0.01)


async def wait_for_async(cond: Callable[[], Any], within: float = 10.0, what: str = "it") -> None:
    """Like wait_for, for a coroutine function condition."""
    deadline = time.monotonic() + within
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {within}s")
        await asyncio.sleep(0.02)


def tenant() -> str:
    return f"wh_{uuid.uuid4().hex[:10]}"


def verify_like_a_receiver(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    """The receiver-side check exactly as docs/webhooks.md shows it (independent of our code)."""
    parts = [p.split("=", 1) for p in headers["Wo-Signature"].split(",")]
    t = next(v for k, v in parts if k == "t")
    sigs = [v for k, v in parts if k == "v1"]
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return t == headers["Wo-Timestamp"] and any(hmac.compare_digest(expected, s) for s in sigs)


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1. Paths: /ok (200), /fail (500), /redirect (302),
    /hold (waits for ``release``), /gate (200 for ``gate_limit`` requests, then holds),
    /slow (sleeps ``slow_seconds``), /big (2xx, 1 MiB body)."""

    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow_seconds: float = 2.0
    hold_ok: bool = True  # /hold answers 200 (else 503) once released
    port: int = 0
    gate_limit: int | None = None  # /gate answers this many at once, then holds like /hold
    gate_seen: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str | None = None, event_id: str | None = None) -> int:
        return sum(
            1
            for h in self.hits
            if (path is None or h.path == path)
            and (event_id is None or h.headers.get("Wo-Event-Id") == event_id)
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits.append(Hit(request.path, dict(request.headers), body, time.monotonic()))
        if request.path == "/ok":
            return web.Response(status=200, text="ok")
        if request.path == "/fail":
            return web.Response(status=500, text="nope")
        if request.path == "/redirect":
            raise web.HTTPFound(self.url("/ok"))
        if request.path == "/hold":
            await self.release.wait()
            return web.Response(status=200 if self.hold_ok else 503)
        if request.path == "/gate":
            self.gate_seen += 1
            if self.gate_limit is not None and self.gate_seen > self.gate_limit:
                await self.release.wait()
            return web.Response(status=200)
        if request.path == "/slow":
            await asyncio.sleep(self.slow_seconds)
            return web.Response(status=200)
        if request.path == "/big":
            return web.Response(status=200, body=b"x" * (1 << 20))
        return web.Response(status=404)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(name="connects")
async def connects_fixture(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address the event loop is asked to connect a socket to (delegating)."""
    loop = asyncio.get_running_loop()
    seen: list[Any] = []
    real = loop.sock_connect

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        seen.append(address)
        await real(sock, address)

    monkeypatch.setattr(loop, "sock_connect", sock_connect)
    return seen


async def produce(bootstrap: str, events: Sequence[DomainEvent]) -> None:
    """Write events to their domain topics as the bridge does (value, key, headers)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            headers = [
                ("wo-event-id", event.id.encode()),
                ("wo-type", event.type.encode()),
                ("wo-tenant", event.tenantId.encode()),
            ]
            await producer.send_and_wait(
                topic_for(event.type), event.canonical_bytes(),
                key=record_key(event).encode(), headers=headers,
            )  # fmt: skip
    finally:
        await producer.stop()


class FakeClock:
    """A clock the test moves; ``sleep_until`` returns once the clock reached the moment."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep_until(self, when: float) -> None:
        if when <= self.t:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (when, fut)
        self._waiters.append(entry)
        try:
            await fut
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def advance_to(self, when: float) -> None:
        self.t = max(self.t, when)
        for at, fut in list(self._waiters):
            if at <= self.t and not fut.done():
                fut.set_result(None)


@dataclass
class ListSink:
    """A dead-letter sink that keeps the letters (for tests without NATS)."""

    letters: list[DeadLetter] = field(default_factory=list)

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


def webhook_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an in-process dispatcher; loopback receivers allowed by CIDR."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "webhook_allowed_networks": ["127.0.0.0/8"],
        "webhook_allow_http": True,  # the receivers are plain-HTTP aiohttp servers
        "webhook_metrics_port": 0,
        "webhook_timeout_seconds": 10.0,
        "webhook_connect_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


def subscription(sub_id: str, tenant_id: str, url: str, *patterns: str) -> Subscription:
    return Subscription(sub_id, tenant_id, url, patterns or ("*",), SECRET)


@dataclass
class Running:
    """An in-process dispatcher running in a task, with its parts."""

    dispatcher: Dispatcher
    store: AsyncWebhookStore
    sender: WebhookSender
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.sender.close()
        await self.store.close()


async def start_dispatcher(
    settings: Settings,
    subscriptions: list[Subscription],
    *,
    sink: Any = None,
    clock: Any = None,
    rng: Any = None,
    consume: bool = False,
    sender: WebhookSender | None = None,
    stop: asyncio.Event | None = None,
) -> Running:
    stop = stop or asyncio.Event()
    store = AsyncWebhookStore(WebhookStore(store_path(settings)))
    sender = sender or WebhookSender(address_policy(settings), http_limits(settings))
    dispatcher = Dispatcher(
        settings, subscriptions, store=store, sender=sender,
        dead_letters=sink if sink is not None else ListSink(), stop=stop,
        metrics=WebhookMetrics.create(), clock=clock, rng=rng,
    )  # fmt: skip
    task = asyncio.create_task(dispatcher.run(consume=consume))
    return Running(dispatcher, store, sender, stop, task)


def fail_first_call(store: Any, method: str, error: Exception) -> dict[str, int]:
    """Make ``store.<method>`` raise ``error`` on its first call only; returns the call count."""
    real = getattr(store, method)
    calls = {"n": 0}

    def patched(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return real(*args)

    setattr(store, method, patched)
    return calls
